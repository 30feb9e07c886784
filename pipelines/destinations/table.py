"""The ``table`` destination: routed spans into a Parquet spans table, exactly once.

It is the warehouse sink's machinery inside the router: a ``PartitionSet`` cuts the span
topic's records (every record, so cuts stay contiguous) and a ``TableWriter`` writes each cut
through the manifest protocol. The spans are not decoded a second time: the router hands
``add`` the spans it decoded and routed here, ``add`` turns each fetched batch's spans into
Arrow rows at once (one call per batch; natively from the bytes of OTLP protobuf messages,
``spans.native``), and every record carries its slice of
those rows into its cut. Routing is deterministic, so a replay builds the same rows.
A message routed here is *done* for this destination when the cut holding it is durable; the
router commits only then, so a crash replays it and the manifest makes the rewrite identical.
The router also commits only at a cut boundary of this table (``commit_point``): a new owner
starts where a cut of the old owner started, finds its manifest and follows it. A commit
inside a cut (its messages done for every destination, its cut not yet, or durable up to a
later end) would make the new owner cut differently and store rows twice.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import pyarrow as pa

from pipelines.batching.buffer import MemoryBudget, RotationPolicy, SourceRecord
from pipelines.batching.partitions import CutSink, PartitionSet, Pauser, Rewind, StartOf
from pipelines.deadletter import DeadLetterWriter
from pipelines.decoders.base import OVERSIZED, DecodedBatch, Rejected
from pipelines.spans import SpanView
from pipelines.spans.native import ROWS_TOO_LARGE, native_rows
from pipelines.spans.table import to_arrow
from pipelines.tables import TableSpec
from pipelines.writers.store import ObjectStore
from pipelines.writers.table_writer import TableWriter

log = logging.getLogger(__name__)
Done = Callable[[Hashable, int, int], None]
# What one buffered record costs beyond its value and rows (the warehouse's figure).
RECORD_OVERHEAD_BYTES = 800


@dataclass(frozen=True, slots=True)
class RoutedRecord:
    """A span-topic record with its rows: ``rows[first : first + count]`` are the spans of
    this record that the router sent to the table (``rows`` is shared by its fetched batch)."""

    offset: int
    key: bytes | None
    value: bytes | None
    rows: pa.Table
    first: int
    count: int
    nbytes: int
    """The value's bytes plus this record's share of ``rows`` (for the memory budget)."""
    rejected: str = ""
    """Why this record's spans could not become rows (then ``count`` is 0): the table
    writer dead-letters it with that detail, reason ``oversized``."""


class RoutedRowsDecoder:
    """The ``RecordsDecoder`` of a table destination: gathers the rows of ``RoutedRecord``s.

    Bad messages are not reported here (the router dead-letters them itself), except one
    whose spans could not become rows (``RoutedRecord.rejected``)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        if values:
            raise TypeError("a table destination's rows come with its records (decode_records)")
        return DecodedBatch(self.schema.empty_table(), [])

    def decode_records(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        pieces: list[pa.Table] = []
        indices: list[int] = []
        rejected: list[Rejected] = []
        run: pa.Table | None = None
        lo = hi = 0
        for i, rec in enumerate(records):
            if not isinstance(rec, RoutedRecord):
                raise TypeError(f"not a RoutedRecord: {type(rec).__name__}")
            if rec.rejected:
                rejected.append(Rejected(i, OVERSIZED, rec.rejected))
            if not rec.count:
                continue
            indices.extend([i] * rec.count)
            if rec.rows is run and rec.first == hi:  # records of one batch: one slice
                hi += rec.count
                continue
            if run is not None:
                pieces.append(run.slice(lo, hi - lo))
            run, lo, hi = rec.rows, rec.first, rec.first + rec.count
        if run is not None:
            pieces.append(run.slice(lo, hi - lo))
        if not pieces:
            return DecodedBatch(self.schema.empty_table(), [], rejected)
        return DecodedBatch(pa.concat_tables(pieces), indices, rejected)


def _rows(
    records: Sequence[Any],
    shares: Sequence[Sequence[SpanView]],
    schema: pa.Schema,
    otlp_proto: bool,
) -> pa.Table:
    spans = [span for share in shares for span in share]
    if not spans:
        return schema.empty_table()
    if otlp_proto:
        rows = native_rows(
            [
                (rec.value or b"", [s.index for s in share])
                for rec, share in zip(records, shares, strict=True)
            ],
            schema,
        )
        if rows is not None:
            return rows
    return to_arrow(spans, schema)


def routed_records(
    records: Sequence[Any],
    shares: Sequence[Sequence[SpanView]],
    schema: pa.Schema,
    otlp_proto: bool = False,
    max_record_bytes: int | None = None,
) -> list[SourceRecord]:
    """``records`` as ``RoutedRecord``s: the spans of every share become rows of ``schema``
    in one call, and each record keeps its slice. ``otlp_proto``: the values are OTLP
    protobuf messages, so the rows are built natively from their bytes (``native_rows``).
    A message with spans for the table but longer than ``max_record_bytes`` (the table's
    ``limits.max_record_bytes``) gets no rows and is dead-lettered (``oversized``) by the
    table writer, as ``sluice warehouse`` does with it; the router's own limit may be higher.

    Rows that do not fit Arrow's limits together (a string column past 2 GiB: long strings
    repeated on many rows) are built one message at a time; a message whose own rows do not
    fit gets none, and is dead-lettered by the table writer (``RoutedRecord.rejected``)
    rather than failing its batch again on every replay."""
    over = {
        i: len(rec.value)
        for i, (rec, share) in enumerate(zip(records, shares, strict=True))
        if share and max_record_bytes is not None and len(rec.value or b"") > max_record_bytes
    }
    if not over:
        return _routed(records, shares, schema, otlp_proto)
    shares = [() if i in over else share for i, share in enumerate(shares)]
    routed = _routed(records, shares, schema, otlp_proto)
    for i, size in over.items():
        detail = f"{size} bytes > {max_record_bytes} (the table's limits.max_record_bytes)"
        routed[i] = replace(cast(RoutedRecord, routed[i]), rejected=detail)
    return routed


def _routed(
    records: Sequence[Any],
    shares: Sequence[Sequence[SpanView]],
    schema: pa.Schema,
    otlp_proto: bool,
) -> list[SourceRecord]:
    try:
        rows = _rows(records, shares, schema, otlp_proto)
    except ROWS_TOO_LARGE as err:
        if len(records) > 1:
            return [
                routed
                for rec, share in zip(records, shares, strict=True)
                for routed in _routed([rec], [share], schema, otlp_proto)
            ]
        rec = records[0]
        detail = f"its {len(shares[0])} spans do not fit the table's columns: {err}"
        empty = schema.empty_table()
        value = rec.value
        key = getattr(rec, "key", None)
        return [RoutedRecord(rec.offset, key, value, empty, 0, 0, len(value or b""), detail)]
    per_row = rows.nbytes / max(1, rows.num_rows)
    routed: list[SourceRecord] = []
    first = 0
    for rec, share in zip(records, shares, strict=True):
        n, value = len(share), rec.value
        held = len(value or b"") + int(n * per_row)
        routed.append(
            RoutedRecord(rec.offset, getattr(rec, "key", None), value, rows, first, n, held)
        )
        first += n
    return routed


class TableDestination:
    """See the module docstring. ``add`` is fed every record of the span topics."""

    def __init__(
        self,
        name: str,
        spec: TableSpec,
        topics: Sequence[str],
        store: ObjectStore,
        dead_letters: DeadLetterWriter,
        policy: RotationPolicy,
        budget: MemoryBudget,
        done: Done,
        pause: Pauser,
        resume: Pauser,
        on_terminal: Callable[[BaseException], None],
        max_message_bytes: int,
        start_of: StartOf | None = None,
        rewind: Rewind | None = None,
        otlp_proto_topics: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.max_record_bytes = spec.max_record_bytes
        self.otlp_proto_topics = otlp_proto_topics
        """Topics of OTLP protobuf messages: their rows are built natively from the bytes."""
        self.schema = spec.arrow_schema
        self._done = done
        decoder = RoutedRowsDecoder(self.schema)
        sinks: dict[str, CutSink] = {
            # The router dead-letters bad messages (null, oversized, unparseable) once.
            topic: TableWriter(
                spec, decoder, store, "", dead_letters, max_message_bytes, screens_records=False
            )
            for topic in topics
        }
        self.partitions = PartitionSet(
            sinks,
            policy,
            budget,
            commit=self._committed,
            pause=pause,
            resume=resume,
            on_terminal=on_terminal,
            record_overhead=RECORD_OVERHEAD_BYTES,
            start_of=start_of,
            rewind=rewind,
        )
        self.waiting: dict[Hashable, deque[tuple[int, int]]] = {}
        self.topics = frozenset(topics)
        self.boundaries: dict[Hashable, deque[int]] = {}
        """Per partition, offsets where a cut of this owner starts: its first record's, then
        each durable cut's next offset (ascending)."""

    def commit_point(self, tp: Any, committable: int) -> int | None:
        """The highest cut boundary at or below ``committable`` (None: none yet); other
        topics' partitions (retry topics) are not this table's: ``committable`` as is."""
        if tp.topic not in self.topics:
            return committable
        marks = self.boundaries.get(tp)
        if not marks or marks[0] > committable:
            return None
        while len(marks) > 1 and marks[1] <= committable:
            marks.popleft()
        return marks[0]

    def add(
        self,
        tp: Any,
        records: Sequence[Any],
        shares: Sequence[Sequence[SpanView]],
        selected: list[tuple[int, int]],
    ) -> None:
        """Buffer ``records``; ``shares[i]`` are the spans of ``records[i]`` routed here.
        ``selected`` are the (offset, generation) of the messages that have spans routed
        here: they are done when their cut is durable."""
        if selected:
            self.waiting.setdefault(tp, deque()).extend(selected)
        if records and tp not in self.boundaries:
            self.boundaries[tp] = deque([records[0].offset])
        native = tp.topic in self.otlp_proto_topics
        routed = routed_records(records, shares, self.schema, native, self.max_record_bytes)
        self.partitions.add(tp, routed)

    async def _committed(self, tp: Any, next_offset: int) -> bool:
        marks = self.boundaries.get(tp)
        if marks is not None and next_offset > marks[-1]:
            marks.append(next_offset)
        queue = self.waiting.get(tp)
        while queue and queue[0][0] < next_offset:
            offset, generation = queue.popleft()
            self._done(tp, offset, generation)
        return True

    def tick(self) -> None:
        self.partitions.tick()

    def drop(self, tps: list[Any]) -> None:
        self.partitions.drop(tps)
        for tp in tps:
            self.waiting.pop(tp, None)
            self.boundaries.pop(tp, None)
