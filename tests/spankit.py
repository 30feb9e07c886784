"""Synthetic OTLP spans for tests: ExportTraceServiceRequest messages with realistic fields."""

from __future__ import annotations

import os
import random
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SERVICES = ["checkout", "payments", "search", "auth", "catalog"]


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def request(
    service: str,
    spans: int,
    rng: random.Random,
    error_every: int = 0,
    trace_id: bytes | None = None,
) -> tuple[bytes, list[tuple[bytes, bytes, str]]]:
    """One message of ``spans`` spans of one service; returns it and (trace, span, name)s."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        [
            _kv("service.name", service),
            _kv("deployment.environment", "prod"),
            _kv("host.name", f"{service}-{rng.randrange(3)}"),
        ]
    )
    scope = rs.scope_spans.add()
    scope.scope.name = "tests"
    now = time.time_ns()
    out = []
    for i in range(spans):
        tid = trace_id or rng.randbytes(16)
        sid = rng.randbytes(8)
        name = f"{service} op {rng.randrange(10**9)}"
        err = bool(error_every) and i % error_every == 0
        span = Span(
            trace_id=tid,
            span_id=sid,
            name=name,
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=now - 5_000_000,
            end_time_unix_nano=now,
            status=Status(code=Status.STATUS_CODE_ERROR if err else Status.STATUS_CODE_OK),
        )
        span.attributes.extend(
            [
                _kv("http.request.method", "GET"),
                _kv("http.route", f"/r/{i % 7}"),
                _kv("http.response.status_code", 500 if err else 200),
            ]
        )
        scope.spans.append(span)
        out.append((tid, sid, name))
    return req.SerializeToString(), out


def random_trace_id() -> bytes:
    return os.urandom(16)
