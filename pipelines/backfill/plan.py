"""What a warehouse backfill will do: its hours, the offsets it reads, its chunks.

A backfill rebuilds the *event-time* hours ``[from, to)`` of a table. It re-reads, per Kafka
partition, the offsets whose records were appended in ``[from - lateness, to + lateness)``
(``offsets_for_times``), capped at what the live sink's group has committed (so nothing it
rebuilds is written again by the live sink). Rows of those hours that sit outside that
window (very late or very early records) are carried over from the current objects, so the
window decides what is re-decoded, never what is kept.

The plan is stored (``_sluice/<table>/backfill/<run>/plan.json``, first writer wins) before
any work: a resumed or parallel run uses the stored ranges, so every process computes the
same chunks and the same objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipelines.catalog.locations import check_run_id
from pipelines.errors import TerminalError
from pipelines.tables import TableSpec
from pipelines.writers.layout import partition_path

TP = tuple[str, int]


@dataclass(frozen=True)
class Plan:
    run: str
    table: str
    start: str
    """ISO time, inclusive."""
    end: str
    """ISO time, exclusive."""
    hours: tuple[str, ...]
    """Partition paths rebuilt, ascending."""
    ranges: dict[TP, tuple[int, int]] = field(default_factory=dict)
    """Per Kafka partition, offsets [lo, hi) re-read."""
    chunk_records: int = 200_000
    created_at: float = 0.0

    def chunks(self) -> list[tuple[str, int, int, int]]:
        """(topic, partition, first, end-exclusive) of every unit of work."""
        out = []
        for (topic, p), (lo, hi) in sorted(self.ranges.items()):
            for s in range(lo, hi, self.chunk_records):
                out.append((topic, p, s, min(s + self.chunk_records, hi)))
        return out

    @property
    def records(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges.values())

    def range_of(self, topic: str, partition: int) -> tuple[int, int] | None:
        return self.ranges.get((topic, partition))

    def to_json(self) -> bytes:
        d = {
            "run": self.run,
            "table": self.table,
            "start": self.start,
            "end": self.end,
            "hours": list(self.hours),
            "ranges": [[t, p, lo, hi] for (t, p), (lo, hi) in sorted(self.ranges.items())],
            "chunk_records": self.chunk_records,
            "created_at": self.created_at,
        }
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        try:
            d = json.loads(data)
            return cls(
                run=str(d["run"]),
                table=str(d["table"]),
                start=str(d["start"]),
                end=str(d["end"]),
                hours=tuple(str(h) for h in d["hours"]),
                ranges={(str(t), int(p)): (int(lo), int(hi)) for t, p, lo, hi in d["ranges"]},
                chunk_records=int(d["chunk_records"]),
                created_at=float(d["created_at"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TerminalError(f"corrupt backfill plan: {err}") from err


def run_prefix(table: str, run: str) -> str:
    return f"_sluice/{table}/backfill/{run}/"


def plan_key(table: str, run: str) -> str:
    return f"{run_prefix(table, run)}plan.json"


def done_key(table: str, run: str) -> str:
    """Written when every hour of the run is swapped in: a rerun reports, and does nothing."""
    return f"{run_prefix(table, run)}done.json"


def hours_between(spec: TableSpec, start: datetime, end: datetime) -> list[str]:
    """The partition paths of ``[start, end)``; both ends must be partition boundaries."""
    step = timedelta(days=1) if spec.partitioning == "daily" else timedelta(hours=1)
    unit = "a day (00:00 UTC)" if spec.partitioning == "daily" else "an hour"
    for name, t in (("--from", start), ("--to", end)):
        t = t.astimezone(UTC)
        if t.minute or t.second or t.microsecond or (spec.partitioning == "daily" and t.hour):
            raise TerminalError(
                f"{name} {t.isoformat()} is not on {unit} boundary: {spec.name} is "
                f"partitioned {spec.partitioning}; a backfill rebuilds whole partitions"
            )
    if end <= start:
        raise TerminalError("--to must be after --from")
    out, t = [], start.astimezone(UTC)
    while t < end:
        out.append(partition_path(spec, t))
        t += step
    if len(out) > 24 * 31:
        raise TerminalError(f"{len(out)} partitions in one backfill: split the range (max 744)")
    return out


def default_run_id(spec: TableSpec, start: datetime, end: datetime) -> str:
    """``<from>-<to>-<contract hash>``: rerunning the same command continues the same run;
    changing the table's contract (the usual fix) starts a new one."""
    try:
        contract = Path(spec.source).read_bytes()
    except OSError:
        contract = spec.name.encode()
    digest = hashlib.sha256(contract).hexdigest()[:8]
    fmt = "%Y%m%dt%H%M"
    return check_run_id(
        f"{start.astimezone(UTC).strftime(fmt)}-{end.astimezone(UTC).strftime(fmt)}-{digest}"
    )


@dataclass(frozen=True)
class PartitionState:
    """What Kafka says about one partition, for planning and the retention check."""

    earliest: int
    earliest_time: datetime | None
    """Record time of the earliest retained record (None when the partition is empty)."""
    end: int
    committed: int | None
    lo: int
    hi_wanted: int


async def partition_states(
    bootstrap: str,
    group: str,
    topics: Sequence[str],
    window_start: datetime,
    window_end: datetime,
) -> dict[TP, PartitionState]:
    """Offsets of every partition of ``topics``: retained, end, committed by ``group``, and
    the first offsets at ``window_start`` and ``window_end`` (Kafka record time)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        meta = await consumer._client.fetch_all_metadata()
        missing = [t for t in topics if meta.partitions_for_topic(t) is None]
        if missing:
            raise TerminalError(f"topic(s) {', '.join(missing)} do not exist in Kafka")
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(meta.partitions_for_topic(t) or ())
        ]
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.offsets_for_times(
            {tp: int(window_start.timestamp() * 1000) for tp in tps}
        )
        lasts = await consumer.offsets_for_times(
            {tp: int(window_end.timestamp() * 1000) for tp in tps}
        )
        out: dict[TP, PartitionState] = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            found = firsts[tp]
            last = lasts[tp]
            out[(tp.topic, tp.partition)] = PartitionState(
                earliest=begins[tp],
                earliest_time=await _record_time(consumer, tp, begins[tp], ends[tp]),
                end=ends[tp],
                committed=committed,
                lo=found.offset if found is not None else ends[tp],
                hi_wanted=last.offset if last is not None else ends[tp],
            )
        return out
    finally:
        await consumer.stop()


async def _record_time(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, end: int
) -> datetime | None:
    if offset >= end:
        return None
    consumer.assign([tp])
    consumer.seek(tp, offset)
    batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
    records = batch.get(tp, [])
    if not records:
        raise TerminalError(f"{tp.topic}[{tp.partition}]: could not read offset {offset}")
    return datetime.fromtimestamp(records[0].timestamp / 1000, UTC)


def retention_problems(
    spec: TableSpec,
    hours: Sequence[str],
    states: dict[TP, PartitionState],
    lateness: timedelta,
    now: datetime | None = None,
) -> list[str]:
    """Hours whose records may no longer all be in Kafka, with each partition's earliest
    retained time: a partition that lost records (log start > 0) must still hold everything
    from an hour's start minus ``lateness``."""
    from pipelines.catalog.finalizer import partition_bounds

    now = datetime.now(UTC) if now is None else now
    lost = {
        # A partition whose whole log was deleted (start == end > 0) keeps nothing before now.
        tp: s.earliest_time or now
        for tp, s in states.items()
        if s.earliest > 0 and (s.earliest_time is not None or s.earliest >= s.end)
    }
    if not lost:
        return []
    gone = [
        h for h in hours if any(partition_bounds(spec, h)[0] - lateness < t for t in lost.values())
    ]
    if not gone:
        return []
    earliest = max(lost.values())
    step = timedelta(days=1) if spec.partitioning == "daily" else timedelta(hours=1)
    first_ok = _ceil(earliest + lateness, step)
    lines = [
        f"{len(gone)} of the {len(hours)} partitions are no longer (fully) in Kafka: "
        f"{', '.join(gone)}",
        *(
            f"  {t}[{p}] keeps records from {when.isoformat()} (offset {states[(t, p)].earliest})"
            if states[(t, p)].earliest_time is not None
            else f"  {t}[{p}] keeps no records (offsets 0-{states[(t, p)].earliest - 1} deleted)"
            for (t, p), when in sorted(lost.items())
        ),
        f"  the earliest partition that can be rebuilt starts at {first_ok.isoformat()} "
        f"(retained data minus the catalog lateness of {lateness})",
    ]
    return lines


def _ceil(t: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    n = -(-(t - epoch) // step)
    return epoch + n * step
