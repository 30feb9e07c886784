"""The tracing stores of the local stack (Zipkin, Jaeger) accept spans and serve them back.

These are the real servers the trace router delivers to; this checks the stack itself.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def _post(url: str, body: bytes, content_type: str) -> int:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def _get_json(url: str, timeout: float = 20) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def test_zipkin_stores_and_returns_a_trace(stack_env: dict[str, str]) -> None:
    base = stack_env["ZIPKIN_URL"]
    trace_id = os.urandom(16).hex()
    spans = [
        {
            "traceId": trace_id,
            "id": f"{i + 1:016x}",
            "name": f"op-{i}",
            "timestamp": int(time.time() * 1e6),
            "duration": 1000 + i,
            "localEndpoint": {"serviceName": "checkout"},
            "kind": "SERVER",
        }
        for i in range(3)
    ]
    assert _post(f"{base}/api/v2/spans", json.dumps(spans).encode(), "application/json") == 202
    got = _get_json(f"{base}/api/v2/trace/{trace_id}")
    assert isinstance(got, list)
    assert sorted(s["name"] for s in got) == ["op-0", "op-1", "op-2"]
    assert {s["localEndpoint"]["serviceName"] for s in got} == {"checkout"}


def test_jaeger_accepts_otlp_protobuf_and_serves_the_trace(stack_env: dict[str, str]) -> None:
    trace_id = os.urandom(16)
    now = time.time_ns()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="payments"))
    )
    scope = rs.scope_spans.add()
    for i in range(2):
        scope.spans.append(
            Span(
                trace_id=trace_id,
                span_id=os.urandom(8),
                name=f"charge-{i}",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=now,
                end_time_unix_nano=now + 5_000_000,
            )
        )
    status = _post(
        f"{stack_env['JAEGER_OTLP_HTTP_ENDPOINT']}/v1/traces",
        req.SerializeToString(),
        "application/x-protobuf",
    )
    assert status == 200
    got = _get_json(f"{stack_env['JAEGER_QUERY_URL']}/api/traces/{trace_id.hex()}")
    assert isinstance(got, dict)
    (trace,) = got["data"]
    assert sorted(s["operationName"] for s in trace["spans"]) == ["charge-0", "charge-1"]
    assert {p["serviceName"] for p in trace["processes"].values()} == {"payments"}
