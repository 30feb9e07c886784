"""Spans for the trace router: decode a Kafka message, route each span, re-encode per destination.

- ``decode``: ``get_decoder(encoding, limits).decode(value, now_ns) -> DecodedSpans``
  (``otlp_proto`` default, ``otlp_json``, ``zipkin_json``); bad input becomes rejects.
- ``model``: ``SpanView`` (cheap ids/times/name/kind/status, attributes on demand),
  ``SpanBatch``, ``RejectedSpan``, ``DecodedSpans``.
- ``encode.to_otlp_proto``, ``zipkin.to_zipkin_json``: any subset of spans → destination bytes.
- ``table.to_arrow``: spans → rows of the spans table (``schemas/spans.yaml``).
"""

from pipelines.spans.decode import (
    DECODERS,
    DEFAULT_ENCODING,
    INVALID_ID,
    SpanDecoder,
    SpanLimits,
    get_decoder,
)
from pipelines.spans.encode import otlp_chunks, to_otlp_proto
from pipelines.spans.model import (
    AttrValue,
    DecodedSpans,
    RejectedSpan,
    ResourceView,
    ScopeView,
    SpanBatch,
    SpanView,
)
from pipelines.spans.zipkin import to_zipkin_json

__all__ = [
    "DECODERS",
    "DEFAULT_ENCODING",
    "INVALID_ID",
    "AttrValue",
    "DecodedSpans",
    "RejectedSpan",
    "ResourceView",
    "ScopeView",
    "SpanBatch",
    "SpanDecoder",
    "SpanLimits",
    "SpanView",
    "get_decoder",
    "otlp_chunks",
    "to_otlp_proto",
    "to_zipkin_json",
]
