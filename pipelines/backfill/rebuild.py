"""Rebuilding a backfill's chunks: Kafka offsets → Parquet objects in the run's generation.

A chunk is ``[first, end)`` offsets of one Kafka partition (``Plan.chunks``). Its records are
read with the job's own consumer (assigned partitions, no group: the live sink's group and
commits are untouched), decoded and partitioned by the table's own ``TableWriter.encode``,
and every object of a rebuilt hour is uploaded to ``<table>/_backfill/<run>/<path>/``,
named ``<topic>-<partition>-<first>.parquet``. Rows of hours outside the run are not kept
(their hours keep their current objects); records that no longer decode are dead-lettered
with the reason (the detail names the run), at least once.

Then the chunk's marker ``_sluice/<table>/backfill/<run>/chunks/<topic>/<p>/<first>.json``
is written. A chunk with a marker is done; a chunk without one is redone from scratch, and
since its input (the same offsets), its reference time (the newest record time in the chunk)
and its object names are fixed, redoing it writes the same bytes. That is what makes the
job resumable after a kill and safe to run in several processes at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.backfill.plan import Plan, run_prefix
from pipelines.batching.partitions import Cut
from pipelines.catalog.finalizer import object_partition
from pipelines.catalog.locations import generation_prefix
from pipelines.deadletter import DeadLetter, DeadLetterWriter
from pipelines.errors import TerminalError
from pipelines.writers.store import ObjectStore
from pipelines.writers.table_writer import TableWriter

log = logging.getLogger(__name__)
Chunk = tuple[str, int, int, int]


def chunk_key(table: str, run: str, chunk: Chunk) -> str:
    topic, partition, first, _ = chunk
    return f"{run_prefix(table, run)}chunks/{topic}/{partition:05d}/{first:020d}.json"


@dataclass(frozen=True)
class ChunkResult:
    objects: dict[str, list[tuple[str, int]]]
    """Rebuilt hour → (key, rows) of its objects from this chunk."""
    records: int
    rejected: list[int]
    """Offsets dead-lettered by this rebuild."""
    elsewhere: int
    """Rows that belong to hours outside the run (left where they are)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "objects": {h: [[k, n] for k, n in objs] for h, objs in self.objects.items()},
                "records": self.records,
                "rejected": self.rejected,
                "elsewhere": self.elsewhere,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ChunkResult:
        try:
            d = json.loads(data)
            return cls(
                {h: [(str(k), int(n)) for k, n in objs] for h, objs in d["objects"].items()},
                int(d["records"]),
                [int(o) for o in d["rejected"]],
                int(d["elsewhere"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TerminalError(f"corrupt backfill chunk marker: {err}") from err


def done_chunks(store: ObjectStore, plan: Plan) -> dict[Chunk, ChunkResult]:
    """The chunks that have a marker, with what they wrote."""
    out: dict[Chunk, ChunkResult] = {}
    for chunk in plan.chunks():
        data = store.get(chunk_key(plan.table, plan.run, chunk))
        if data is not None:
            out[chunk] = ChunkResult.from_json(data)
    return out


class Fetcher:
    """Reads ``[first, end)`` of one partition (its own aiokafka consumer per call)."""

    def __init__(self, bootstrap: str, client_id: str, max_bytes: int) -> None:
        self.bootstrap, self.client_id, self.max_bytes = bootstrap, client_id, max_bytes

    async def fetch(self, topic: str, partition: int, first: int, end: int) -> list[Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=f"{self.client_id}-backfill",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=max(self.max_bytes, 1 << 20),
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            begin = (await consumer.beginning_offsets([tp]))[tp]
            if first < begin:
                raise TerminalError(
                    f"{topic}[{partition}]: offsets {first}-{begin - 1} are no longer in Kafka "
                    f"(retention); this run cannot finish, start a later range"
                )
            consumer.seek(tp, first)
            records: list[Any] = []
            idle = 0
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=10_000)
                got = [r for r in batch.get(tp, []) if r.offset < end]
                if not got:
                    idle += 1
                    if idle > 15:
                        raise TerminalError(
                            f"{topic}[{partition}]: no records past offset "
                            f"{await consumer.position(tp)} of {first}-{end - 1} in 30 s"
                        )
                    continue
                idle = 0
                records.extend(got)
            return records
        finally:
            await consumer.stop()


class ChunkBuilder:
    """Rebuilds chunks of one run; ``run`` works through the pending ones in parallel."""

    def __init__(
        self,
        plan: Plan,
        writer: TableWriter,
        fetcher: Fetcher,
        dead_letters: DeadLetterWriter,
        parallelism: int,
        on_records: Callable[[int], None],
        on_skipped: Callable[[int], None],
    ) -> None:
        self.plan, self.writer, self.fetcher = plan, writer, fetcher
        self.dead_letters, self.parallelism = dead_letters, parallelism
        self.on_records, self.on_skipped = on_records, on_skipped
        self.hours = frozenset(plan.hours)

    async def run(self, pending: Sequence[Chunk]) -> int:
        """Rebuild ``pending`` (shuffled, so parallel processes mostly pick different
        chunks; a chunk done meanwhile by another is skipped). Returns chunks built."""
        queue = list(pending)
        random.shuffle(queue)
        built = 0
        # Fault injection for the resume test (unset in production): SIGKILL after n chunks.
        kill_after = int(os.environ.get("SLUICE_FAILPOINT_KILL_AFTER_CHUNKS", "0") or 0)

        async def worker() -> None:
            nonlocal built
            while queue:
                chunk = queue.pop()
                key = chunk_key(self.plan.table, self.plan.run, chunk)
                if await asyncio.to_thread(self.writer.store.get, key) is not None:
                    self.on_skipped(chunk[3] - chunk[2])
                    continue
                result = await self.build(chunk)
                await asyncio.to_thread(self.writer.store.put, key, result.to_json())
                built += 1
                self.on_records(chunk[3] - chunk[2])
                if built == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)

        await asyncio.gather(*(worker() for _ in range(max(1, self.parallelism))))
        return built

    async def build(self, chunk: Chunk) -> ChunkResult:
        topic, partition, first, end = chunk
        records = await self.fetcher.fetch(topic, partition, first, end)
        if not records:
            return ChunkResult({}, 0, [], 0)
        cut = Cut(topic, partition, first, records, "backfill", 0, 0.0)
        cut_time = max(int(r.timestamp) for r in records) // 1000
        encoded = await asyncio.to_thread(self.writer.encode, cut, cut_time)
        spec, store = self.writer.spec, self.writer.store
        objects: dict[str, list[tuple[str, int]]] = {}
        elsewhere = 0
        uploads = []
        for obj in encoded.objects:
            path = object_partition(obj.key, spec.name)
            if path not in self.hours:
                elsewhere += obj.rows
                continue
            name = f"{topic}-{partition:05d}-{first:020d}.parquet"
            key = f"{generation_prefix(spec.name, self.plan.run, path)}/{name}"
            objects.setdefault(path, []).append((key, obj.rows))
            uploads.append(asyncio.to_thread(store.put, key, obj.data))
        letters = [
            DeadLetter(
                d.topic,
                d.partition,
                d.offset,
                d.key,
                d.value,
                d.reason,
                f"{d.detail} (backfill run {self.plan.run})",
                d.table,
            )
            for d in encoded.letters
        ]
        if letters:
            await self.dead_letters.send(letters)
        await asyncio.gather(*uploads)
        return ChunkResult(objects, len(records), [d.offset for d in letters], elsewhere)
