"""Writes one cut of one partition into a table: the commit protocol's write half.

``TableWriter.write(cut)`` does, in order (docs/design.md, "Exactly once"):

1. Decode the cut's values into Arrow (vectorized; bad values become dead letters), or, for
   a ``RecordsDecoder``, gather the rows its records already carry (the trace router's).
2. Apply the table's late/early window against the cut's reference time, which is the
   manifest's ``cut_time`` when a previous owner recorded one, so replays decide the same.
3. Group rows by ``dt``/``hr`` and encode one Parquet object per group, each named
   ``<table>/<partition path>/<topic>-<partition>-<cut start>.parquet``.
4. Claim the cut in its manifest (first writer wins). If the manifest records another end
   or reference time, raise ``CutConflictError``: the caller re-forms the cut to match.
5. Send the dead letters and wait for the broker's acknowledgement.
6. Upload every object (each ``put`` is atomic; an overwrite by a replay is identical).

When ``write`` returns, every record of the cut is durable as a row or a dead letter, and
the caller may commit ``cut.end + 1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import metrics
from pipelines.batching.partitions import Cut, CutConflictError
from pipelines.deadletter import DeadLetter, DeadLetterWriter
from pipelines.decoders.base import Decoder, RecordsDecoder
from pipelines.tables import TableSpec
from pipelines.writers.layout import object_key, partition_groups
from pipelines.writers.manifest import Manifest, ObjectEntry, claim, read_manifest
from pipelines.writers.parquet import encode_parquet
from pipelines.writers.store import ObjectStore

LATE, EARLY = "late", "early"
# Decoding holds ~3.5x its input while it runs (joined values, parser blocks, builders):
# decoding a cut in chunks of this size bounds that transient whatever the cut size.
DECODE_CHUNK_BYTES = 16 << 20
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedObject:
    key: str
    data: bytes
    rows: int


@dataclass(frozen=True)
class EncodedCut:
    objects: list[EncodedObject]
    letters: list[DeadLetter]


class TableWriter:
    """The ``CutSink`` of one table. Thread-safe encode; uploads in parallel."""

    def __init__(
        self,
        spec: TableSpec,
        decoder: Decoder,
        store: ObjectStore,
        prefix: str,
        dead_letters: DeadLetterWriter,
        max_message_bytes: int,
        wall_clock: Callable[[], float] = time.time,
        upload_parallelism: int = 4,
        encode_slots: asyncio.Semaphore | None = None,
        screens_records: bool = True,
    ) -> None:
        self.spec = spec
        self.decoder = decoder
        self.store = store
        self.prefix = prefix
        self.dead_letters = dead_letters
        self.max_message_bytes = min(max_message_bytes, spec.max_record_bytes)
        self.wall_clock = wall_clock
        self._uploads = asyncio.Semaphore(upload_parallelism)
        # Encoding is CPU-bound (pyarrow is multi-threaded already) and expands a cut ~2-3x
        # in memory while it runs: one at a time per worker bounds both.
        self._encode_slots = encode_slots or asyncio.Semaphore(1)
        self.screens_records = screens_records
        """False when the records' producer of rows (the trace router) already dead-letters
        null and oversized values: then every record goes to the decoder as it is."""

    async def write(self, cut: Cut) -> None:
        spec = self.spec
        standing = await asyncio.to_thread(
            read_manifest, self.store, spec.name, cut.topic, cut.partition, cut.start
        )
        if standing is not None and standing.end != cut.end:
            raise CutConflictError(standing.end)
        if standing is not None:
            log.info(
                "%s[%d]: rewriting the recorded cut %d-%d (a replay after a crash or rebalance)",
                cut.topic,
                cut.partition,
                cut.start,
                cut.end,
            )
            metrics.CUT_REPLAYS.labels(spec.name).inc()
        cut_time = standing.cut_time if standing is not None else int(self.wall_clock())
        async with self._encode_slots:
            encoded = await asyncio.to_thread(self.encode, cut, cut_time)
        mine = Manifest(
            table=spec.name,
            topic=cut.topic,
            partition=cut.partition,
            start=cut.start,
            end=cut.end,
            objects=tuple(ObjectEntry(o.key, o.rows) for o in encoded.objects),
            dead_lettered=len(encoded.letters),
            reason=cut.reason,
            cut_time=cut_time,
        )
        if standing is None:
            standing = await asyncio.to_thread(claim, self.store, mine)
            if standing.end != cut.end:
                raise CutConflictError(standing.end)
        if standing.cut_time != cut_time:
            raise CutConflictError(standing.end)  # same end, another clock: follow theirs
        if encoded.letters:
            await self.dead_letters.send(encoded.letters)
        await asyncio.gather(*(self._upload(o) for o in encoded.objects))
        self._count(cut, encoded)

    async def _upload(self, obj: EncodedObject) -> None:
        async with self._uploads:
            t0 = time.monotonic()
            await asyncio.to_thread(self.store.put, obj.key, obj.data)
            metrics.UPLOAD_SECONDS.labels(self.spec.name).observe(time.monotonic() - t0)

    def _count(self, cut: Cut, encoded: EncodedCut) -> None:
        name = self.spec.name
        metrics.RECORDS_IN.labels(name).inc(len(cut.records))
        metrics.RECORDS_WRITTEN.labels(name).inc(sum(o.rows for o in encoded.objects))
        metrics.OBJECTS_WRITTEN.labels(name).inc(len(encoded.objects))
        metrics.BYTES_WRITTEN.labels(name).inc(sum(len(o.data) for o in encoded.objects))
        metrics.CUTS.labels(name, cut.reason).inc()
        for letter in encoded.letters:
            metrics.DEAD_LETTERED.labels(name, letter.reason).inc()

    def encode(self, cut: Cut, cut_time: int) -> EncodedCut:
        """Steps 1-3: pure CPU work (pyarrow releases the GIL), run in a thread."""
        spec = self.spec
        values: list[bytes] = []
        letters: list[DeadLetter] = []
        keep: list[int] = []
        for i, rec in enumerate(cut.records):
            value = rec.value
            if not self.screens_records:
                keep.append(i)
                values.append(value or b"")
            elif value is None:
                letters.append(self._letter(cut, i, "unparseable", "null value (tombstone)"))
            elif len(value) > self.max_message_bytes:
                letters.append(
                    self._letter(
                        cut, i, "oversized", f"{len(value)} bytes > {self.max_message_bytes}"
                    )
                )
            else:
                keep.append(i)
                values.append(value)
        tables, positions = [], []
        for lo, hi in _chunks(values, DECODE_CHUNK_BYTES):
            if isinstance(self.decoder, RecordsDecoder):  # rows built upstream (the router)
                decoded = self.decoder.decode_records([cut.records[i] for i in keep[lo:hi]])
            else:
                decoded = self.decoder.decode(values[lo:hi])
            if decoded.unknown_fields_dropped:
                metrics.UNKNOWN_FIELDS_DROPPED.labels(spec.name).inc(decoded.unknown_fields_dropped)
            for rej in decoded.rejected:
                letters.append(self._letter(cut, keep[lo + rej.index], rej.reason, rej.detail))
            tables.append(decoded.table)
            positions += [keep[lo + i] for i in decoded.indices]
        table = pa.concat_tables(tables or [self.decoder.decode([]).table])
        table, positions, late = self._late_window(table, positions, cut_time)
        letters.extend(self._letter(cut, pos, kind, detail) for pos, kind, detail in late)
        offsets = pa.array([cut.records[p].offset for p in positions], pa.int64())
        table = table.append_column(
            pa.field("_partition", pa.int32(), nullable=False),
            pa.array([cut.partition] * len(positions), pa.int32()),
        )
        table = table.append_column(pa.field("_offset", pa.int64(), nullable=False), offsets)
        objects = []
        for path, rows in sorted(partition_groups(spec, table).items()):
            part = table if len(rows) == table.num_rows else _rows_of(table, rows)
            key = object_key(self.prefix, spec.name, path, cut.topic, cut.partition, cut.start)
            objects.append(EncodedObject(key, encode_parquet(part), part.num_rows))
        letters.sort(key=lambda d: d.offset)
        return EncodedCut(objects, letters)

    def _late_window(
        self,
        table: pa.Table,
        positions: list[int],
        cut_time: int,
    ) -> tuple[pa.Table, list[int], list[tuple[int, str, str]]]:
        """Count rows outside [cut_time - max_past, cut_time + max_future]; under the
        ``dead_letter`` policy also take them out of the table."""
        spec = self.spec
        if table.num_rows == 0:
            return table, positions, []
        ts = pc.cast(
            table.column(spec.event_time_field).combine_chunks(),
            pa.timestamp("s", tz="UTC"),
            safe=False,
        )
        epoch = pc.cast(ts, pa.int64())
        lo = cut_time - int(spec.max_past.total_seconds())
        hi = cut_time + int(spec.max_future.total_seconds())
        is_late = pc.less(epoch, pa.scalar(lo, pa.int64()))
        is_early = pc.greater(epoch, pa.scalar(hi, pa.int64()))
        n_late = int(pc.sum(pc.cast(is_late, pa.int64())).as_py() or 0)
        n_early = int(pc.sum(pc.cast(is_early, pa.int64())).as_py() or 0)
        if not n_late and not n_early:
            return table, positions, []
        for kind, n in ((LATE, n_late), (EARLY, n_early)):
            if n:
                metrics.LATE_RECORDS.labels(spec.name, kind, spec.late_policy).inc(n)
        if spec.late_policy != "dead_letter":
            return table, positions, []
        out = pc.or_(is_late, is_early)
        flags = out.to_pylist()
        seconds = epoch.to_pylist()
        letters = [
            (
                positions[i],
                LATE if (seconds[i] or 0) < lo else EARLY,
                f"event time {seconds[i]} outside [{lo}, {hi}] (epoch s)",
            )
            for i, bad in enumerate(flags)
            if bad
        ]
        kept = [p for p, bad in zip(positions, flags, strict=True) if not bad]
        return table.filter(pc.invert(out)), kept, letters

    def _letter(self, cut: Cut, index: int, reason: str, detail: str) -> DeadLetter:
        rec = cut.records[index]
        return DeadLetter(
            topic=cut.topic,
            partition=cut.partition,
            offset=rec.offset,
            key=getattr(rec, "key", None),
            value=rec.value,
            reason=reason,
            detail=detail,
            table=self.spec.name,
        )


def _chunks(values: list[bytes], limit: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of ``values`` of about ``limit`` bytes each (at least one value)."""
    spans, lo, size = [], 0, 0
    for i, value in enumerate(values):
        size += len(value)
        if size >= limit:
            spans.append((lo, i + 1))
            lo, size = i + 1, 0
    if lo < len(values):
        spans.append((lo, len(values)))
    return spans


def _rows_of(table: pa.Table, rows: list[int]) -> pa.Table:
    """``table``'s rows at ascending positions ``rows``, in order. A filter works chunk by
    chunk, where ``take`` would join the chunks first (and fail past 2 GiB of strings)."""
    mask = [False] * table.num_rows
    for row in rows:
        mask[row] = True
    return table.filter(pa.array(mask, pa.bool_()))
