"""``sluice verify``: a table checked against Kafka, offset by offset.

For every Kafka partition of the table's topics, the offsets whose records were appended in
``[from, to)`` (Kafka record time, found with ``offsets_for_times``) and already committed by
the sink's group must each be in the table exactly once, or in the dead-letter topic. The
evidence is read, not trusted: every Parquet object under the table is read (its
``_partition``/``_offset`` columns only), every cut manifest is checked against the objects
it names, and the dead-letter topic is read for this table's records.

Reported, each with the objects involved: offsets missing (a gap), offsets present twice (a
duplicate object or overlapping cuts), objects a manifest names that are gone, and objects
no manifest names. Hours a backfill swapped in are read from their current generation and
checked against that run's record; replaced directories are ignored. Cost: one read of every
current object of the table (two small columns each).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipelines.backfill.swap import hour_key
from pipelines.catalog.finalizer import object_partition
from pipelines.catalog.locations import all_current, default_prefix
from pipelines.tables import TableSpec
from pipelines.writers.manifest import Manifest
from pipelines.writers.store import ObjectStore

TP = tuple[str, int]


@dataclass
class Report:
    """What ``verify`` found; ``ok`` when nothing is wrong."""

    checked: dict[TP, tuple[int, int]] = field(default_factory=dict)
    """Per partition, the offset range [lo, hi) checked."""
    rows: int = 0
    dead_lettered: int = 0
    gaps: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    unreferenced_objects: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.gaps or self.duplicates or self.missing_objects or self.unreferenced_objects
        )

    def lines(self) -> list[str]:
        out = [
            f"{t}[{p}]: offsets {lo}-{hi - 1}" if hi > lo else f"{t}[{p}]: no offsets"
            for (t, p), (lo, hi) in sorted(self.checked.items())
        ]
        out.append(f"rows {self.rows}, dead-lettered {self.dead_lettered}")
        for title, items in (
            ("GAP", self.gaps),
            ("DUPLICATE", self.duplicates),
            ("MISSING OBJECT", self.missing_objects),
            ("UNREFERENCED OBJECT", self.unreferenced_objects),
        ):
            out.extend(f"{title}: {item}" for item in items)
        out.append("OK: every offset exactly once" if self.ok else "MISMATCH")
        return out


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted offsets → inclusive runs."""
    runs: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if runs and o == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], o)
        else:
            runs.append((o, o))
    return runs


async def offset_ranges(
    bootstrap: str, group: str, topics: Iterable[str], start: datetime, end: datetime
) -> dict[TP, tuple[int, int]]:
    """Per partition, [first offset at/after ``start``, first at/after ``end``), capped at
    what ``group`` has committed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        meta = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(meta.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        lasts = await consumer.offsets_for_times({tp: int(end.timestamp() * 1000) for tp in tps})
        out: dict[TP, tuple[int, int]] = {}
        for tp in tps:
            lo = firsts[tp].offset if firsts[tp] is not None else ends[tp]
            hi = lasts[tp].offset if lasts[tp] is not None else ends[tp]
            done = await consumer.committed(tp) or 0
            out[(tp.topic, tp.partition)] = (lo, max(lo, min(hi, done)))
        return out
    finally:
        await consumer.stop()


async def dead_lettered(
    bootstrap: str, table: str, topics: Iterable[str], suffix: str
) -> dict[TP, set[int]]:
    """Source offsets of this table's records in the dead-letter topics (read to their end)."""
    out: dict[TP, set[int]] = defaultdict(set)
    for topic in topics:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            meta = await consumer._client.fetch_all_metadata()
            parts = meta.partitions_for_topic(topic + suffix) or set()
            tps = [TopicPartition(topic + suffix, p) for p in parts]
            if not tps:
                continue
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=2000)
                if not batch:
                    break
                for tp, records in batch.items():
                    for rec in records:
                        h = {k: v.decode() for k, v in rec.headers}
                        if h.get("sluice.table") == table:
                            src = (h["sluice.source.topic"], int(h["sluice.source.partition"]))
                            out[src].add(int(h["sluice.source.offset"]))
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
    return out


def verify_table(
    spec: TableSpec,
    store: ObjectStore,
    ranges: dict[TP, tuple[int, int]],
    letters: dict[TP, set[int]],
) -> Report:
    """Check every offset of ``ranges`` against the table's objects, manifests and letters."""
    report = Report(checked=dict(ranges))
    seen: dict[TP, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    swapped = all_current(store, spec.name)

    def current_dir(path: str) -> str:
        loc = swapped.get(path)
        return loc.prefix if loc is not None else default_prefix(spec.name, path)

    keys = [
        k
        for k, _ in store.list(f"{spec.name}/")
        if k.endswith(".parquet")
        and k.rsplit("/", 1)[0] == current_dir(object_partition(k, spec.name))
    ]
    existing = set(keys)
    for key in keys:
        data = store.get(key)
        if data is None:
            continue
        table = pq.read_table(io.BytesIO(data), columns=["_partition", "_offset"])
        topic = key.rsplit("/", 1)[-1].rsplit("-", 2)[0]
        if topic not in spec.topics:  # a renamed copy: attribute it to the (first) topic
            topic = spec.topics[0]
        for p, o in zip(
            table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True
        ):
            seen[(topic, int(p or 0))][int(o or 0)].append(key)
    referenced: set[str] = set()  # as they would be named in the partition's current place

    def named(key: str, rows: int, what: str) -> None:
        path = object_partition(key, spec.name)
        here = f"{current_dir(path)}/{key.rsplit('/', 1)[-1]}"
        referenced.add(here)
        if here not in existing:
            report.missing_objects.append(f"{key} ({rows} rows of {what})")

    for topic in spec.topics:
        for mkey, _ in store.list(f"_sluice/{spec.name}/manifests/{topic}/"):
            data = store.get(mkey)
            if data is None:
                continue
            m = Manifest.from_json(data)
            for entry in m.objects:
                if object_partition(entry.key, spec.name) in swapped:
                    # Rebuilt since: only a late copy of this object would be in the generation.
                    path = object_partition(entry.key, spec.name)
                    referenced.add(f"{current_dir(path)}/{entry.key.rsplit('/', 1)[-1]}")
                    continue
                what = f"{topic}[{m.partition}] {m.start}-{m.end}, named by {mkey}"
                named(entry.key, entry.rows, what)
    for path, loc in swapped.items():
        data = store.get(hour_key(spec.name, loc.run, path))
        if data is None:
            report.missing_objects.append(f"{loc.prefix}/ (the record of backfill run {loc.run})")
            continue
        for key, rows in json.loads(data)["objects"]:
            named(str(key), int(rows), f"{path}, backfill run {loc.run}")
    report.unreferenced_objects = sorted(existing - referenced)
    for tp, (lo, hi) in sorted(ranges.items()):
        offsets = seen.get(tp, {})
        lettered = letters.get(tp, set())
        missing, doubled = [], []
        for o in range(lo, hi):
            where = offsets.get(o, [])
            if len(where) > 1:
                doubled.append((o, where))
            elif not where and o not in lettered:
                missing.append(o)
            if where:
                report.rows += 1
            elif o in lettered:
                report.dead_lettered += 1
        for a, b in _ranges(missing):
            report.gaps.append(f"{tp[0]}[{tp[1]}] offsets {a}-{b} ({b - a + 1}) in no object")
        for o, where in doubled[:20]:
            report.duplicates.append(f"{tp[0]}[{tp[1]}] offset {o} in {', '.join(sorted(where))}")
        if len(doubled) > 20:
            report.duplicates.append(f"{tp[0]}[{tp[1]}] ... {len(doubled)} duplicated offsets")
    return report
