"""Zipkin JSON v2: decoding into OTLP-backed ``SpanBatch``es, and encoding for ``zipkin``.

Mapping (both directions, as the OpenTelemetry Collector's Zipkin translator does):

| Zipkin v2 | OTLP |
|---|---|
| ``traceId`` (16 or 32 hex) | ``trace_id``; 64-bit ids are zero-extended on the left |
| ``id`` / ``parentId`` (16 hex) | ``span_id`` / ``parent_span_id`` |
| ``kind`` SERVER/CLIENT/PRODUCER/CONSUMER; absent | 2/3/4/5; 0 (0 and 1 are written without) |
| ``timestamp`` / ``duration`` (µs) | ``start_time_unix_nano`` / ``end - start`` |
| ``localEndpoint.serviceName`` | resource ``service.name`` (spans grouped per service) |
| ``remoteEndpoint.serviceName`` | span attribute ``peer.service`` (not repeated in tags) |
| ``tags`` (strings) | span attributes (strings); on output also resource attributes |
| ``error`` tag | status ERROR, message the tag value (unless ``""``/``true``) |
| ``otel.status_code`` ``OK``, ``otel.status_description`` | status OK; status message |
| ``annotations`` ``{timestamp, value}`` | events ``{time, name}`` |

A message is a JSON list of spans (a single object is accepted too). An element that is not
an object is rejected alone (``unparseable``); ids and times are validated as for OTLP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring as _q  # the C escaper json.dumps uses
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from pipelines.decoders.base import OVERSIZED, UNPARSEABLE
from pipelines.spans.decode import DEFAULT_LIMITS, SpanLimits, collect, message_error, parse_hex
from pipelines.spans.model import SERVICE_NAME, DecodedSpans, RejectedSpan, SpanView
from pipelines.spans.native import native_zipkin

_KIND_IN = {"SERVER": 2, "CLIENT": 3, "PRODUCER": 4, "CONSUMER": 5}
_KIND_OUT = {v: k for k, v in _KIND_IN.items()}
_MAX_US = (2**64 - 1) // 1000
_BAD_ID = b"\x00"  # fails validation: the span is rejected as invalid_id
_OK = Status.StatusCode.ValueType(1)
_ERROR = Status.StatusCode.ValueType(2)
_PEER_SERVICE = "peer.service"
_STATUS_TAGS = ("error", "otel.status_code", "otel.status_description")
# Tags the encoder sets itself: an attribute of one of these names needs the dict path.
_SET_HERE = frozenset(
    [_PEER_SERVICE, "otel.scope.name", "otel.scope.version", "error", "otel.status_code"]
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ZipkinJsonDecoder:
    """Zipkin JSON v2 (a list of spans, as zipkin's Kafka collector reads it)."""

    def __init__(self, limits: SpanLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits

    def decode(self, value: bytes, now_ns: int) -> DecodedSpans:
        if len(value) > self.limits.max_message_bytes:
            return message_error(OVERSIZED, f"{len(value)} bytes > {self.limits.max_message_bytes}")
        try:
            doc = json.loads(value)
        except (ValueError, UnicodeDecodeError) as err:
            return message_error(UNPARSEABLE, f"not JSON: {err}")
        items = [doc] if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            return message_error(UNPARSEABLE, "not a JSON list of Zipkin v2 spans")
        request = ExportTraceServiceRequest()
        by_service: dict[str, tuple[ScopeSpans, list[int]]] = {}
        rejected: list[RejectedSpan] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                rejected.append(RejectedSpan(i, UNPARSEABLE, "a Zipkin span is a JSON object"))
                continue
            service = _get_str(item.get("localEndpoint"), "serviceName")
            group = by_service.get(service)
            if group is None:
                rs = request.resource_spans.add()
                if service:
                    kv = rs.resource.attributes.add(key=SERVICE_NAME)
                    kv.value.string_value = service
                group = by_service[service] = (rs.scope_spans.add(), [])
            _fill(group[0].spans.add(), item)
            group[1].append(i)
        indices = [i for _, positions in by_service.values() for i in positions]
        decoded = collect(request, now_ns, self.limits, indices)
        if rejected:
            rejected = sorted([*rejected, *decoded.rejected], key=lambda r: r.index)
            return DecodedSpans(decoded.batch, rejected)
        return decoded


def _get_str(obj: object, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


def _zipkin_id(text: object, sizes: tuple[int, ...]) -> bytes:
    raw = parse_hex(text) if isinstance(text, str) and len(text) in sizes else None
    return _BAD_ID if raw is None else raw.rjust(sizes[-1] // 2, b"\x00")


def _micros(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return None
    us = int(value)
    return us if 0 <= us <= _MAX_US else None


def _fill(span: Span, item: dict[str, Any]) -> None:
    span.trace_id = _zipkin_id(item.get("traceId"), (16, 32))
    span.span_id = _zipkin_id(item.get("id"), (16,))
    parent = item.get("parentId")
    if parent is not None:
        span.parent_span_id = _zipkin_id(parent, (16,))
    name = item.get("name")
    span.name = name if isinstance(name, str) else ""
    kind = item.get("kind")
    span.kind = Span.SpanKind.ValueType(_KIND_IN.get(kind, 0) if isinstance(kind, str) else 0)
    start = _micros(item.get("timestamp"))
    if start is not None:  # absent: 0, rejected as bad_timestamp
        span.start_time_unix_nano = start * 1000
        duration = _micros(item.get("duration", 0))
        end = None if duration is None else start + duration
        # An unusable duration makes end < start: rejected as bad_timestamp.
        span.end_time_unix_nano = end * 1000 if end is not None and end <= _MAX_US else 0
    peer = _get_str(item.get("remoteEndpoint"), "serviceName")
    if peer:
        span.attributes.add(key=_PEER_SERVICE).value.string_value = peer
    tags = item.get("tags")
    if isinstance(tags, dict):
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value)
            if key in _STATUS_TAGS:
                _status_tag(span, key, text)
            else:
                span.attributes.add(key=str(key)).value.string_value = text
    annotations = item.get("annotations")
    if isinstance(annotations, list):
        for a in annotations:
            at = _micros(a.get("timestamp")) if isinstance(a, dict) else None
            if at is not None:
                event = span.events.add(time_unix_nano=at * 1000)
                event.name = _get_str(a, "value")


def _status_tag(span: Span, key: str, text: str) -> None:
    if key == "error":
        span.status.code = _ERROR
        if text not in ("", "true"):
            span.status.message = text
    elif key == "otel.status_code":
        if text in ("OK", "ERROR") and span.status.code != 2:
            span.status.code = _OK if text == "OK" else _ERROR
    elif not span.status.message:
        span.status.message = text


def to_zipkin_json(spans: Iterable[SpanView]) -> bytes:
    """A Zipkin v2 JSON list for ``POST /api/v2/spans``, one object per span, in order.

    Equal (as JSON) to ``json.dumps([to_zipkin_dict(s) ...])``, but written directly: each
    resource's endpoint and tags are encoded once per call, strings through the C escaper;
    a span whose tags need merging (a key in both resource and span, ``peer.service``, or a
    tag this encoder sets: scope and status) takes the dict path. Spans decoded from OTLP
    protobuf are encoded natively from their messages' bytes (``native.native_zipkin``)."""
    spans = list(spans)
    body = native_zipkin(spans)
    return python_zipkin_json(spans) if body is None else body


def python_zipkin_json(spans: Iterable[SpanView]) -> bytes:
    """``to_zipkin_json`` in Python (any input encoding)."""
    parts: list[str] = []
    resources: dict[int, tuple[str, str, frozenset[str], bool]] = {}
    scopes: dict[int, str] = {}
    for span in spans:
        res = span.resource
        cached = resources.get(id(res))
        if cached is None:
            texts = res.attributes_text
            keys = frozenset(k for k in texts if k != SERVICE_NAME) | _SET_HERE
            frag = ",".join(f"{_q(k)}:{_q(texts[k])}" for k in texts if k != SERVICE_NAME)
            endpoint = '{"serviceName":' + _q(res.service_name or "unknown_service") + "}"
            cached = (endpoint, frag, keys, not _SET_HERE.isdisjoint(texts))
            resources[id(res)] = cached
        endpoint, res_tags, res_keys, merge = cached
        p = span.proto
        tags: list[str] = [res_tags] if res_tags else []
        texts = span.attributes_text()  # built once per span, shared with the spans table
        slow = merge or not res_keys.isdisjoint(texts)
        if not slow and texts:
            tags.append(_dumps(texts)[1:-1])  # one C call for every tag of the span
        if slow:
            parts.append(_dumps(to_zipkin_dict(span)))
            continue
        scope_tags = scopes.get(id(span.scope))
        if scope_tags is None:
            scope_tags = scopes[id(span.scope)] = _scope_tags(span.scope.name, span.scope.version)
        if scope_tags:
            tags.append(scope_tags)
        code = span.status_code
        if code == 2:
            tags.append('"error":' + _q(span.status_message or "true"))
        elif code == 1:
            tags.append('"otel.status_code":"OK"')
        out = ['{"traceId":"', span.trace_id.hex(), '","id":"', span.span_id.hex(), '"']
        if span.parent_span_id:
            out += [',"parentId":"', span.parent_span_id.hex(), '"']
        out += [',"name":', _q(p.name)]
        kind = _KIND_OUT.get(span.kind)
        if kind is not None:
            out += [',"kind":"', kind, '"']
        out.append(f',"timestamp":{span.start_ns // 1000}')
        duration = span.end_ns - span.start_ns
        if duration > 0:
            out.append(f',"duration":{max(1, duration // 1000)}')
        out += [',"localEndpoint":', endpoint]
        if p.events:
            notes = ",".join(
                f'{{"timestamp":{e.time_unix_nano // 1000},"value":{_q(e.name)}}}' for e in p.events
            )
            out += [',"annotations":[', notes, "]"]
        if tags:
            out += [',"tags":{', ",".join(tags), "}"]
        out.append("}")
        parts.append("".join(out))
    return ("[" + ",".join(parts) + "]").encode()


def _scope_tags(name: str, version: str) -> str:
    if not name:
        return ""
    if not version:
        return '"otel.scope.name":' + _q(name)
    return '"otel.scope.name":' + _q(name) + ',"otel.scope.version":' + _q(version)


def to_zipkin_dict(span: SpanView) -> dict[str, object]:
    """One span as a Zipkin v2 object; see the module docstring for the mapping."""
    p = span.proto
    out: dict[str, object] = {"traceId": span.trace_id.hex(), "id": span.span_id.hex()}
    if span.parent_span_id:
        out["parentId"] = span.parent_span_id.hex()
    out["name"] = p.name
    kind = _KIND_OUT.get(span.kind)
    if kind is not None:
        out["kind"] = kind
    out["timestamp"] = span.start_ns // 1000
    duration = span.end_ns - span.start_ns
    if duration > 0:
        out["duration"] = max(1, duration // 1000)  # Zipkin rounds sub-µs durations up
    out["localEndpoint"] = {"serviceName": span.resource.service_name or "unknown_service"}
    tags = _tags(span)
    peer = tags.pop(_PEER_SERVICE, "")
    if peer:
        out["remoteEndpoint"] = {"serviceName": peer}
    if p.events:
        out["annotations"] = [
            {"timestamp": e.time_unix_nano // 1000, "value": e.name} for e in p.events
        ]
    if tags:
        out["tags"] = tags
    return out


def _tags(span: SpanView) -> dict[str, str]:
    resource: Mapping[str, str] = span.resource.attributes_text
    tags = {k: v for k, v in resource.items() if k != SERVICE_NAME}
    tags.update(span.attributes_text())
    scope = span.scope
    if scope.name:
        tags["otel.scope.name"] = scope.name
        if scope.version:
            tags["otel.scope.version"] = scope.version
    code = span.status_code
    if code == 2:
        tags["error"] = span.status_message or "true"
    elif code == 1:
        tags["otel.status_code"] = "OK"
    return tags
