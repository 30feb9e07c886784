"""Span decoders: one Kafka message value → ``DecodedSpans``. Looked up by encoding name.

``get_decoder(name, limits)`` builds a decoder; its ``decode(value, now_ns)`` is pure (no
I/O, no state between calls, thread-safe) and never raises for bad input:

- ``oversized``: the value is longer than ``limits.max_message_bytes`` (checked first);
- ``unparseable``: not a message of the encoding (garbage, truncated protobuf, bad JSON);
- per span, the others surviving: ``invalid_id`` (trace id not 16 bytes or all zero, span
  id not 8 bytes or all zero, parent id neither empty nor 8 bytes) and ``bad_timestamp``
  (start before ``limits.min_time_ns``, start or end after ``now_ns + limits.max_future_ns``,
  or end before start).

An all-zero parent span id means "root" and reads as ``b""``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipelines.decoders.base import BAD_TIMESTAMP, OVERSIZED, UNPARSEABLE
from pipelines.errors import ConfigError, Problem
from pipelines.spans.model import (
    DecodedSpans,
    RejectedSpan,
    ResourceView,
    ScopeView,
    SpanBatch,
    SpanView,
)

INVALID_ID: Final = "invalid_id"
DEFAULT_ENCODING: Final = "otlp_proto"
_Z16 = bytes(16)
_Z8 = bytes(8)
# Invalid hex ids become this 1-byte id, so validation rejects that span, not the message.
_BAD_ID_B64 = base64.b64encode(b"\x00").decode()
_HEX_RE = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True)
class SpanLimits:
    """What a decoder accepts; the defaults suit the Collector's Kafka exporter output."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Larger message values are rejected whole (``oversized``) before parsing."""
    min_time_ns: int = 946_684_800 * 10**9
    """Spans starting before this (default 2000-01-01T00:00Z) are ``bad_timestamp``."""
    max_future_ns: int = 86_400 * 10**9
    """Spans starting or ending later than ``now_ns`` plus this are ``bad_timestamp``."""


DEFAULT_LIMITS = SpanLimits()


class SpanDecoder(Protocol):
    """Decodes one message value; see the module docstring for the guarantees."""

    def decode(self, value: bytes, now_ns: int) -> DecodedSpans:
        """``now_ns``: the caller's clock (epoch ns), for the future-timestamp check."""
        ...


def message_error(reason: str, detail: str) -> DecodedSpans:
    """A whole message rejected: no spans, ``reason`` for the dead-letter topic."""
    return DecodedSpans(batch=SpanBatch([]), rejected=[], message_error=reason, detail=detail)


def collect(
    request: ExportTraceServiceRequest,
    now_ns: int,
    limits: SpanLimits,
    indices: Sequence[int] | None = None,
    wire: bytes | None = None,
) -> DecodedSpans:
    """Validate every span of ``request`` (in flattened order) into views and rejects.

    ``indices[i]``, when given, is the input position of the i-th flattened span (Zipkin
    regroups spans by service); otherwise positions are the flattened order. ``wire``: the
    bytes ``request`` was parsed from (OTLP protobuf input), kept on every ``ResourceView``.
    """
    lo, hi = limits.min_time_ns, now_ns + limits.max_future_ns
    spans: list[SpanView] = []
    rejected: list[RejectedSpan] = []
    i = 0
    for rs in request.resource_spans:
        resource = ResourceView(rs, wire)
        for ss in rs.scope_spans:
            scope = ScopeView(ss)
            for span in ss.spans:
                index = i if indices is None else indices[i]
                i += 1
                tid, sid, parent = span.trace_id, span.span_id, span.parent_span_id
                if len(tid) != 16 or tid == _Z16 or len(sid) != 8 or sid == _Z8:
                    rejected.append(RejectedSpan(index, INVALID_ID, _id_detail(tid, sid)))
                    continue
                if parent:
                    if len(parent) != 8:
                        detail = f"parent span id has {len(parent)} bytes, not 8"
                        rejected.append(RejectedSpan(index, INVALID_ID, detail))
                        continue
                    if parent == _Z8:
                        parent = b""
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if start < lo or end < start or end > hi:
                    detail = f"start {start} ns, end {end} ns (accepted: {lo}..{hi}, end >= start)"
                    rejected.append(RejectedSpan(index, BAD_TIMESTAMP, detail))
                    continue
                spans.append(SpanView(span, resource, scope, index, tid, sid, parent, start, end))
    return DecodedSpans(batch=SpanBatch(spans), rejected=rejected)


def _id_detail(tid: bytes, sid: bytes) -> str:
    if len(tid) != 16 or tid == _Z16:
        return f"trace id {tid.hex() or '(empty)'} is not 16 bytes, not all zero"
    return f"span id {sid.hex() or '(empty)'} is not 8 bytes, not all zero"


class OtlpProtoDecoder:
    """``ExportTraceServiceRequest`` protobuf, as the Collector's Kafka exporter writes it."""

    def __init__(self, limits: SpanLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def decode(self, value: bytes, now_ns: int) -> DecodedSpans:
        if len(value) > self.limits.max_message_bytes:
            return message_error(OVERSIZED, f"{len(value)} bytes > {self.limits.max_message_bytes}")
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(value)
        except (DecodeError, ValueError) as err:
            return message_error(UNPARSEABLE, f"not an OTLP ExportTraceServiceRequest: {err}")
        if value and not request.resource_spans:
            # Random bytes sometimes parse as unknown fields only.
            return message_error(UNPARSEABLE, "no resource_spans: not an OTLP trace request")
        return collect(request, now_ns, self.limits, wire=value)


class OtlpJsonDecoder:
    """OTLP JSON (``ExportTraceServiceRequest``): ids are hex strings, enums integers."""

    def __init__(self, limits: SpanLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def decode(self, value: bytes, now_ns: int) -> DecodedSpans:
        if len(value) > self.limits.max_message_bytes:
            return message_error(OVERSIZED, f"{len(value)} bytes > {self.limits.max_message_bytes}")
        request = ExportTraceServiceRequest()
        try:
            doc = json.loads(value)
            if not isinstance(doc, dict):
                raise ValueError("the top level is not a JSON object")
            _hex_ids_to_base64(doc)
            json_format.ParseDict(doc, request, ignore_unknown_fields=True)
        except (ValueError, TypeError, AttributeError, json_format.ParseError) as err:
            return message_error(UNPARSEABLE, f"not OTLP JSON: {err}")
        return collect(request, now_ns, self.limits)


def _hex_ids_to_base64(doc: dict[str, object]) -> None:
    """OTLP JSON spells ids in hex; ``json_format`` wants base64. Rewrites ``doc`` in place."""
    for rs in _objects(doc, "resourceSpans", "resource_spans"):
        for ss in _objects(rs, "scopeSpans", "scope_spans"):
            for span in _objects(ss, "spans"):
                _rewrite_ids(span, ("traceId", "trace_id", "spanId", "span_id"))
                _rewrite_ids(span, ("parentSpanId", "parent_span_id"))
                for link in _objects(span, "links"):
                    _rewrite_ids(link, ("traceId", "trace_id", "spanId", "span_id"))


def _objects(doc: dict[str, object], *keys: str) -> list[dict[str, object]]:
    for key in keys:
        items = doc.get(key)
        if isinstance(items, list):
            return [x for x in items if isinstance(x, dict)]
    return []


def _rewrite_ids(obj: dict[str, object], keys: Sequence[str]) -> None:
    for key in keys:
        text = obj.get(key)
        if isinstance(text, str):
            raw = parse_hex(text)
            obj[key] = _BAD_ID_B64 if raw is None else base64.b64encode(raw).decode()


def parse_hex(text: str) -> bytes | None:
    """Strict hex (no spaces, even length) → bytes; ``None`` when not hex."""
    if len(text) % 2 or not _HEX_RE.fullmatch(text):
        return None
    return bytes.fromhex(text)


def _zipkin_factory(limits: SpanLimits) -> SpanDecoder:
    from pipelines.spans.zipkin import ZipkinJsonDecoder  # zipkin imports this module

    return ZipkinJsonDecoder(limits)


DECODERS: dict[str, Callable[[SpanLimits], SpanDecoder]] = {
    "otlp_proto": OtlpProtoDecoder,
    "otlp_json": OtlpJsonDecoder,
    "zipkin_json": _zipkin_factory,
}


def get_decoder(
    name: str = DEFAULT_ENCODING, limits: SpanLimits = DEFAULT_LIMITS, path: str = "encoding"
) -> SpanDecoder:
    """The decoder for encoding ``name``; an unknown name raises ``ConfigError`` at ``path``
    listing the valid ones."""
    factory = DECODERS.get(name)
    if factory is None:
        valid = ", ".join(sorted(DECODERS))
        raise ConfigError([Problem(path, f"unknown encoding {name!r}; valid encodings: {valid}")])
    return factory(limits)
