"""Span messages → rows of a spans table (``schemas/spans.yaml``), for the warehouse sink.

One Kafka message (an OTLP ExportTraceServiceRequest, OTLP JSON or a Zipkin JSON list)
becomes one row per valid span: ``DecodedBatch.indices`` repeats the message's position for
each of its spans, so every row carries the ``_partition``/``_offset`` of its message and
``(_partition, _offset, span_id)`` identifies a row. A message that cannot be parsed is
rejected whole; a message with some invalid spans is rejected too (so it reaches the
dead-letter topic) *and* its valid spans become rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pyarrow as pa

from pipelines.batching.buffer import SourceRecord
from pipelines.decoders.base import OVERSIZED, DecodedBatch, Rejected
from pipelines.kafka_records import record_time_ns
from pipelines.spans import SpanLimits, SpanView, get_decoder
from pipelines.spans.native import ROWS_TOO_LARGE, native_rows
from pipelines.spans.table import to_arrow
from pipelines.tables import TableSpec


class SpansDecoder:
    """The ``Decoder`` of a spans table whose topics carry ``encoding`` messages."""

    def __init__(
        self,
        spec: TableSpec,
        encoding: str,
        keep: Callable[[SpanView], bool] | None = None,
        report_rejects: bool = True,
    ) -> None:
        self.spec = spec
        self.schema = spec.arrow_schema
        self.decoder = get_decoder(encoding, SpanLimits(max_message_bytes=spec.max_record_bytes))
        self.otlp_proto = encoding == "otlp_proto"
        """Rows are built natively from the message bytes (``spans.native``)."""
        self.keep = keep
        """Only spans it accepts become rows (the trace router's routing to this table)."""
        self.report_rejects = report_rejects
        """False when another component (the router) already dead-letters bad messages."""

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        now_ns = time.time_ns()
        return self._decode([(value, now_ns) for value in values])

    def decode_records(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        """As ``decode``, each message judged against its record's own time, so a replayed
        cut accepts and rejects exactly the spans the first attempt did."""
        now_ns = time.time_ns()
        return self._decode([(r.value or b"", record_time_ns(r, now_ns)) for r in records])

    def _decode(self, messages: Sequence[tuple[bytes, int]]) -> DecodedBatch:
        spans: list[SpanView] = []
        indices: list[int] = []
        rejected: list[Rejected] = []
        wanted: list[tuple[bytes, list[int]]] = []
        for i, (value, now_ns) in enumerate(messages):
            decoded = self.decoder.decode(value, now_ns)
            if decoded.message_error:
                if self.report_rejects:
                    rejected.append(Rejected(i, decoded.message_error, decoded.detail))
                continue
            if decoded.rejected and self.report_rejects:
                first = decoded.rejected[0]
                rejected.append(Rejected(i, first.reason, f"span {first.index}: {first.detail}"))
            kept = decoded.batch.spans
            if self.keep is not None:
                kept = [s for s in kept if self.keep(s)]
            spans.extend(kept)
            indices.extend([i] * len(kept))
            wanted.append((value, [s.index for s in kept]))
        try:
            rows = native_rows(wanted, self.schema) if self.otlp_proto and spans else None
            if rows is None:
                rows = to_arrow(spans, self.schema)
        except ROWS_TOO_LARGE as err:
            # Past Arrow's 2 GiB per column together: one message at a time; a message that
            # does not fit alone is rejected (oversized) instead of failing every replay.
            if len(messages) == 1:
                detail = f"its {len(spans)} spans do not fit the table's columns: {err}"
                return DecodedBatch(self.schema.empty_table(), [], [Rejected(0, OVERSIZED, detail)])
            parts = [self._decode([m]) for m in messages]
            return DecodedBatch(
                pa.concat_tables([p.table for p in parts]),
                [i for i, p in enumerate(parts) for _ in p.indices],
                [Rejected(i, r.reason, r.detail) for i, p in enumerate(parts) for r in p.rejected],
            )
        return DecodedBatch(rows, indices, rejected)
