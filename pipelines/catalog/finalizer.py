"""Partition registration and the partition finalizer (Secor's, without ZooKeeper).

Registration: ``RegisteringSink`` wraps a table's ``CutSink``. After a cut is durable it
reads the cut's manifest, and each partition (``dt=…/hr=…``) this process has not seen yet
is registered in the catalog and recorded as ``_sluice/<table>/partitions/<path>`` in the
store, before the cut's offset may be committed. So a partition is queryable as soon as
its first object lands (within the rotation age), and a failure to register retries the
cut instead of losing the registration.

Finalization: an hour (or day) ``[start, end)`` is *final* once every Kafka partition of the
table's topics has committed past ``end + lateness`` in Kafka record time: for each
partition, the first offset whose timestamp is at or after ``end + lateness``
(``offsets_for_times``) is committed, or, when no such record exists yet, the partition
is caught up (committed = end offset) and the wall clock has passed ``end + lateness``. An
idle partition therefore never holds an hour open. Kafka record timestamps stand in for
event time; ``lateness`` absorbs producer skew, and the table's own ``max_past`` window
governs what is written at all.

Exactly one finalizer wins: a finalizer that finds the hour complete writes
``<path>/_SUCCESS`` and sets the catalog parameter ``sluice.final=true`` (both idempotent:
one object, one value, whoever writes them), then records the decision with a conditional
put of ``_sluice/<table>/final/<path>`` (first writer wins, in S3 itself, so it survives
restarts and works across workers). A crash between the marker and the record leaves the
hour a candidate, and the next pass of any worker completes it.

A cut that writes into a partition a backfill has swapped to a rebuilt generation copies its
object there too, before the commit (``locations.follow_location``).

Data arriving after finalization is still written (nothing is dropped or dead-lettered for
it); it is counted in ``sluice_rows_after_final_total`` and logged, so consumers of
``_SUCCESS`` can be told to re-run that hour.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import Counter

from pipelines.batching.partitions import Cut, CutSink
from pipelines.catalog.base import FINAL_PARAMETER, Catalog, partition_values
from pipelines.catalog.locations import (
    current_prefix,
    default_prefix,
    expire_replaced,
    follow_location,
)
from pipelines.tables import TableSpec
from pipelines.writers.manifest import Manifest, read_manifest
from pipelines.writers.store import ObjectStore

log = logging.getLogger(__name__)
ROWS_AFTER_FINAL = Counter(
    "sluice_rows_after_final_total",
    "Rows written into a partition after it was finalized (its _SUCCESS is stale)",
    ["table"],
)
FINALIZED = Counter("sluice_partitions_finalized_total", "Partitions finalized", ["table"])


def registered_key(table: str, path: str) -> str:
    return f"_sluice/{table}/partitions/{path}"


def final_key(table: str, path: str) -> str:
    return f"_sluice/{table}/final/{path}"


def success_key(table: str, path: str) -> str:
    return f"{table}/{path}/_SUCCESS"


def object_partition(key: str, table: str) -> str:
    """``app_logs/dt=…/hr=…/x.parquet`` → ``dt=…/hr=…``."""
    rest = key.split(f"{table}/", 1)[1] if key.startswith(f"{table}/") else key
    return "/".join(p for p in rest.split("/")[:-1] if "=" in p)


def partition_bounds(spec: TableSpec, path: str) -> tuple[datetime, datetime]:
    values = partition_values(spec, path)
    day = datetime.strptime(values[0], "%Y-%m-%d").replace(tzinfo=UTC)
    if len(values) == 1:
        return day, day + timedelta(days=1)
    start = day + timedelta(hours=int(values[1]))
    return start, start + timedelta(hours=1)


class RegisteringSink:
    """A ``CutSink`` that registers the partitions a cut wrote (see the module docstring)."""

    def __init__(
        self, inner: CutSink, store: ObjectStore, catalog: Catalog, spec: TableSpec, location: str
    ) -> None:
        self.inner, self.store, self.catalog = inner, store, catalog
        self.spec, self.location = spec, location
        self._known: set[str] = set()
        self._final: set[str] = set()

    async def write(self, cut: Cut) -> None:
        await self.inner.write(cut)
        manifest = await asyncio.to_thread(
            read_manifest, self.store, self.spec.name, cut.topic, cut.partition, cut.start
        )
        if manifest is not None:
            await asyncio.to_thread(self._register, manifest)

    def _register(self, manifest: Manifest) -> None:
        rows: dict[str, int] = {}
        for entry in manifest.objects:
            path = object_partition(entry.key, self.spec.name)
            rows[path] = rows.get(path, 0) + entry.rows
            # A partition a backfill swapped out reads from its generation: follow it there.
            follow_location(self.store, self.spec.name, path, entry.key)
        new = sorted(p for p in rows if p not in self._known)
        if new:
            self.catalog.add_partitions(self.spec, self.location, new)
            for path in new:
                self.store.put(registered_key(self.spec.name, path), b"", if_absent=True)
                if self.store.get(final_key(self.spec.name, path)) is not None:
                    self._final.add(path)
            self._known.update(new)
        for path, n in rows.items():
            if path in self._final:
                ROWS_AFTER_FINAL.labels(self.spec.name).inc(n)
                log.warning(
                    "%s/%s: %d rows arrived after the partition was finalized (_SUCCESS is stale)",
                    self.spec.name,
                    path,
                    n,
                )


@dataclass(frozen=True)
class _Progress:
    tps: list[tuple[str, int]]
    committed: dict[tuple[str, int], int]
    ends: dict[tuple[str, int], int]


class KafkaProgress(Protocol):
    """What the finalizer asks Kafka (async; faked in unit tests)."""

    async def partitions(self, topics: Sequence[str]) -> list[tuple[str, int]]: ...

    async def committed(
        self, group: str, tps: Sequence[tuple[str, int]]
    ) -> dict[tuple[str, int], int]: ...

    async def end_offsets(self, tps: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]: ...

    async def offsets_for_time(
        self, tps: Sequence[tuple[str, int]], epoch_ms: int
    ) -> dict[tuple[str, int], int | None]: ...

    async def first_record_at(self, tp: tuple[str, int], offset: int) -> int | None:
        """The offset of the first record at or after ``offset``; None if there is none
        before the end (only transaction markers, or nothing)."""
        ...


@dataclass
class Finalizer:
    """Declares hours final for one table; safe to run in every worker at once."""

    spec: TableSpec
    store: ObjectStore
    catalog: Catalog
    kafka: KafkaProgress
    group: str
    lateness_seconds: float
    clock: Callable[[], float] = time.time
    grace_seconds: float | None = None
    """When set, each pass also deletes what backfills replaced longer ago than this."""

    def candidates(self) -> list[str]:
        """Registered partitions without a final record, oldest first."""
        name = self.spec.name
        reg = _paths(self.store.list(f"_sluice/{name}/partitions/"), f"_sluice/{name}/partitions/")
        final = _paths(self.store.list(f"_sluice/{name}/final/"), f"_sluice/{name}/final/")
        return sorted(set(reg) - set(final))

    async def _progress(self) -> _Progress | None:
        """One snapshot of the table's partitions, committed and end offsets per pass."""
        tps = await self.kafka.partitions(self.spec.topics)
        if not tps:
            return None
        committed = await self.kafka.committed(self.group, tps)
        return _Progress(tps, committed, await self.kafka.end_offsets(tps))

    async def passed(self, progress: _Progress, when: datetime) -> bool:
        """Whether every Kafka partition of the table has committed past ``when``."""
        firsts = await self.kafka.offsets_for_time(progress.tps, int(when.timestamp() * 1000))
        for tp in progress.tps:
            done = progress.committed.get(tp, -1)
            first = firsts.get(tp)
            if first is None:
                if self.clock() < when.timestamp():
                    return False
                # Behind the end: caught up only if what is left holds no record (the
                # commit marker of a transaction takes an offset no consumer sees).
                if done < progress.ends.get(tp, 0) and (
                    done < 0 or await self.kafka.first_record_at(tp, done) is not None
                ):
                    return False
            elif done < first:
                return False
        return True

    async def run_once(self) -> list[str]:
        """Finalize what can be; returns the paths this pass declared or repaired as final."""
        done: list[str] = []
        lateness = timedelta(seconds=self.lateness_seconds)
        due: list[tuple[str, datetime]] = []
        for path in await asyncio.to_thread(self.candidates):
            watermark = partition_bounds(self.spec, path)[1] + lateness
            if self.clock() >= watermark.timestamp():
                due.append((path, watermark))
        progress = await self._progress() if due else None
        for path, watermark in due:
            if progress is None or not await self.passed(progress, watermark):
                continue
            # Mark first, then record: a crash in between leaves the hour a candidate, and
            # the next pass (of any worker) marks it again (idempotent) and records it.
            await asyncio.to_thread(self._mark, path)
            record = json.dumps({"finalized_at": self.clock(), "watermark": watermark.isoformat()})
            won = await asyncio.to_thread(
                self.store.put, final_key(self.spec.name, path), record.encode(), True
            )
            if won:
                FINALIZED.labels(self.spec.name).inc()
                log.info(
                    "%s/%s: final (every partition committed past %s)",
                    self.spec.name,
                    path,
                    watermark,
                )
            done.append(path)
        if self.grace_seconds is not None:
            for prefix in await asyncio.to_thread(
                expire_replaced, self.store, self.spec.name, self.grace_seconds, self.clock
            ):
                log.info("%s: deleted %s/ (replaced by a backfill)", self.spec.name, prefix)
        return done

    def _mark(self, path: str) -> None:
        self.store.put(success_key(self.spec.name, path), b"")
        where = current_prefix(self.store, self.spec.name, path)
        if where != default_prefix(self.spec.name, path):
            self.store.put(f"{where}/_SUCCESS", b"")
        self.catalog.set_partition_parameters(self.spec, path, {FINAL_PARAMETER: "true"})


def _paths(listing: Iterable[tuple[str, int]], prefix: str) -> list[str]:
    return [key.removeprefix(prefix) for key, _ in listing if key.startswith(prefix)]


async def run_forever(
    finalizers: Sequence[Finalizer],
    interval: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """The worker's finalizer loop: errors are logged and retried next pass, never fatal."""
    while True:
        for f in finalizers:
            try:
                await f.run_once()
            except Exception:
                log.exception(
                    "finalizer pass for %s failed; retrying in %.0fs", f.spec.name, interval
                )
        await sleep(interval)
