"""Span decoders (OTLP protobuf/JSON, Zipkin JSON), validation and re-encoding."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from pipelines.errors import ConfigError
from pipelines.spans import (
    DECODERS,
    DecodedSpans,
    SpanLimits,
    SpanView,
    get_decoder,
    to_otlp_proto,
    to_zipkin_json,
)

NOW = 1_767_225_600 * 10**9  # 2026-01-01T00:00Z
T0 = NOW - 3_600 * 10**9


def any_value(v: object) -> AnyValue:
    out = AnyValue()
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bytes):
        out.bytes_value = v
    elif isinstance(v, list):
        out.array_value.values.extend(any_value(x) for x in v)
    elif isinstance(v, dict):
        out.kvlist_value.values.extend(kv(k, x) for k, x in v.items())
    return out


def kv(key: str, v: object) -> KeyValue:
    return KeyValue(key=key, value=any_value(v))


def trace_id(n: int) -> bytes:
    return n.to_bytes(8, "big") + b"\xab" * 8


def span_id(n: int) -> bytes:
    return (0x1000 + n).to_bytes(8, "big")


def make_span(n: int, parent: int | None = None) -> Span:
    """A realistic span: attributes of every AnyValue type, events, links, status."""
    span = Span(
        trace_id=trace_id(n % 3 + 1),
        span_id=span_id(n),
        parent_span_id=span_id(parent) if parent is not None else b"",
        trace_state="ot=th:8" if n % 2 else "",
        flags=0x301,
        name=f"GET /api/items/{n}",
        kind=Span.SpanKind.ValueType(n % 6),
        start_time_unix_nano=T0 + n * 1_000_123,
        end_time_unix_nano=T0 + n * 1_000_123 + 250_000 + n,
        dropped_attributes_count=n % 2,
        dropped_events_count=1,
        dropped_links_count=0,
    )
    span.attributes.extend(
        [
            kv("http.request.method", "GET"),
            kv("http.route", "/api/items/{id}"),
            kv("http.response.status_code", 200 + n),
            kv("rpc.method", "Get"),
            kv("db.system", "postgresql"),
            kv("error.type", "timeout" if n % 4 == 0 else "none"),
            kv("sampled", n % 2 == 0),
            kv("ratio", 0.25 + n),
            kv("payload", b"\x00\x01\xff"),
            kv("tags", ["a", 1, True]),
            kv("meta", {"k": "v", "n": 2}),
            kv("empty", None),
        ]
    )
    event = span.events.add(time_unix_nano=T0 + n * 1_000_123 + 1_500, name="retry")
    event.attributes.extend([kv("attempt", n), kv("why", "429")])
    span.events.add(time_unix_nano=T0 + n * 1_000_123 + 2_000, name="done")
    link = span.links.add(trace_id=trace_id(9), span_id=span_id(99), trace_state="x=1")
    link.attributes.append(kv("link.kind", "follows"))
    link.dropped_attributes_count = 2
    span.status.code = Status.StatusCode.ValueType(2 if n % 4 == 0 else n % 2)
    span.status.message = "deadline exceeded" if n % 4 == 0 else ""
    return span


def build_request(spans_per_scope: int = 3) -> ExportTraceServiceRequest:
    """2 resources x 2 scopes x ``spans_per_scope`` spans."""
    req = ExportTraceServiceRequest()
    n = 0
    for service, env in (("checkout", "prod"), ("payments", "staging")):
        rs: ResourceSpans = req.resource_spans.add(schema_url="https://opentelemetry.io/s/1.26.0")
        rs.resource.attributes.extend(
            [
                kv("service.name", service),
                kv("deployment.environment", env),
                kv("host.cpus", 8),
                kv("k8s.ready", True),
                kv("load", 0.5),
                kv("zones", ["a", "b"]),
                kv("labels", {"team": "core"}),
                kv("fingerprint", b"\xde\xad"),
            ]
        )
        for scope in ("io.opentelemetry.http", "io.opentelemetry.db"):
            ss = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = scope, "1.2.3"
            ss.scope.attributes.append(kv("lib", scope))
            for i in range(spans_per_scope):
                ss.spans.append(make_span(n, parent=n - 1 if i else None))
                n += 1
    return req


def flat_spans(req: ExportTraceServiceRequest) -> list[tuple[ResourceSpans, Any, Span]]:
    return [(rs, ss, sp) for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def decode(name: str, value: bytes, limits: SpanLimits | None = None) -> DecodedSpans:
    decoder = get_decoder(name, limits) if limits else get_decoder(name)
    return decoder.decode(value, NOW)


def test_unknown_encoding_lists_the_valid_ones() -> None:
    assert set(DECODERS) == {"otlp_proto", "otlp_json", "zipkin_json"}
    with pytest.raises(ConfigError) as err:
        get_decoder("otlp_xml", path="traces.topics[0].encoding")
    text = str(err.value)
    assert "traces.topics[0].encoding" in text
    assert "otlp_json, otlp_proto, zipkin_json" in text


def test_otlp_proto_gives_route_fields_of_every_span() -> None:
    req = build_request()
    out = decode("otlp_proto", req.SerializeToString())
    assert out.message_error is None and out.rejected == []
    flat = flat_spans(req)
    assert len(out.batch) == len(flat) == 12
    for i, (view, (rs, ss, sp)) in enumerate(zip(out.batch, flat, strict=True)):
        assert view.index == i
        assert (view.trace_id, view.span_id) == (sp.trace_id, sp.span_id)
        assert view.parent_span_id == sp.parent_span_id
        assert (view.name, view.kind, view.status_code) == (sp.name, sp.kind, sp.status.code)
        assert (view.start_ns, view.end_ns) == (sp.start_time_unix_nano, sp.end_time_unix_nano)
        assert view.duration_ns == sp.end_time_unix_nano - sp.start_time_unix_nano
        assert view.resource.proto == rs and view.scope.proto == ss
        assert view.resource.service_name == rs.resource.attributes[0].value.string_value


def test_attributes_are_read_on_demand_and_shared_per_resource() -> None:
    out = decode("otlp_proto", build_request().SerializeToString())
    first, second = out.batch[0], out.batch[1]
    assert first._attrs is None and first.resource._attrs is None
    assert first.attribute("http.response.status_code") == 200
    assert first.attribute("missing") is None
    assert first._attrs is None  # one key was converted, not the whole set
    assert dict(first.attributes) == {
        "http.request.method": "GET",
        "http.route": "/api/items/{id}",
        "http.response.status_code": 200,
        "rpc.method": "Get",
        "db.system": "postgresql",
        "error.type": "timeout",
        "sampled": True,
        "ratio": 0.25,
        "payload": b"\x00\x01\xff",
        "tags": ["a", 1, True],
        "meta": {"k": "v", "n": 2},
        "empty": None,
    }
    assert first.resource is second.resource
    assert first.resource.attributes is second.resource.attributes  # converted once
    assert first.resource.attributes["labels"] == {"team": "core"}
    assert first.attributes_text()["tags"] == '["a",1,true]'
    assert first.attributes_text()["payload"] == "AAH/"
    assert first.attributes_text()["ratio"] == "0.25"


def test_full_re_encode_equals_the_original_request() -> None:
    req = build_request()
    out = decode("otlp_proto", req.SerializeToString())
    again = ExportTraceServiceRequest.FromString(to_otlp_proto(out.batch))
    assert again == req


@pytest.mark.parametrize("seed", range(8))
def test_any_subset_re_encodes_under_its_own_resource_and_scope(seed: int) -> None:
    req = build_request(spans_per_scope=4)
    views = list(decode("otlp_proto", req.SerializeToString()).batch)
    rng = random.Random(seed)
    subset = [v for v in views if rng.random() < 0.5] or views[:1]
    rng.shuffle(subset)
    got = flat_spans(ExportTraceServiceRequest.FromString(to_otlp_proto(subset)))
    assert sorted(sp.SerializeToString() for _, _, sp in got) == sorted(
        v.proto.SerializeToString() for v in subset
    )
    by_id = {v.span_id: v for v in subset}
    for rs, ss, sp in got:
        view = by_id[sp.span_id]
        assert sp == view.proto
        assert rs.resource == view.resource.proto.resource
        assert rs.schema_url == view.resource.proto.schema_url
        assert ss.scope == view.scope.proto.scope


def test_equal_resources_from_different_messages_merge() -> None:
    value = build_request().SerializeToString()
    a, b = decode("otlp_proto", value).batch, decode("otlp_proto", value).batch
    req = ExportTraceServiceRequest.FromString(to_otlp_proto([*a, *b]))
    assert len(req.resource_spans) == 2
    assert [len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans] == [6] * 4
    assert to_otlp_proto([]) == b""


def otlp_json(req: ExportTraceServiceRequest) -> bytes:
    """OTLP JSON as the spec writes it: lowerCamelCase, enums as ints, ids in hex."""
    doc = json_format.MessageToDict(req, use_integers_for_enums=True)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        link[key] = base64.b64decode(link[key]).hex()
    return json.dumps(doc).encode()


def test_otlp_json_decodes_to_the_same_spans_as_protobuf() -> None:
    req = build_request()
    value = otlp_json(req)
    assert b'"traceId": "0000000000000001abab' in value
    from_json = decode("otlp_json", value)
    from_proto = decode("otlp_proto", req.SerializeToString())
    assert from_json.message_error is None and from_json.rejected == []
    assert [v.proto for v in from_json.batch] == [v.proto for v in from_proto.batch]
    assert ExportTraceServiceRequest.FromString(to_otlp_proto(from_json.batch)) == req


ZIPKIN = [
    {
        "traceId": "463ac35c9f6413ad",
        "id": "a2fb4a1d1a96d312",
        "parentId": "0020000000000001",
        "name": "get /api",
        "kind": "SERVER",
        "timestamp": T0 // 1000,
        "duration": 207000,
        "localEndpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1"},
        "remoteEndpoint": {"serviceName": "browser"},
        "annotations": [{"timestamp": T0 // 1000 + 5, "value": "ws"}],
        "tags": {"http.method": "GET", "error": "boom"},
    },
    {
        "traceId": "463ac35c9f6413ad48485a3953bb6124",
        "id": "0000000000000002",
        "name": "query",
        "kind": "CLIENT",
        "timestamp": T0 // 1000 + 10,
        "duration": 3,
        "localEndpoint": {"serviceName": "backend"},
        "tags": {"db.system": "mysql"},
    },
    {
        "traceId": "463ac35c9f6413ad",
        "id": "0000000000000003",
        "name": "local",
        "timestamp": T0 // 1000 + 20,
        "localEndpoint": {"serviceName": "frontend"},
    },
]


def test_zipkin_json_decodes_as_documented() -> None:
    out = decode("zipkin_json", json.dumps(ZIPKIN).encode())
    assert out.message_error is None and out.rejected == []
    assert [v.index for v in out.batch] == [0, 2, 1]  # grouped per service
    first, local, query = out.batch
    assert first.trace_id == bytes(8) + bytes.fromhex("463ac35c9f6413ad")
    assert first.span_id.hex() == "a2fb4a1d1a96d312"
    assert first.parent_span_id.hex() == "0020000000000001"
    assert (first.kind, first.status_code, first.status_message) == (2, 2, "boom")
    assert (first.start_ns, first.end_ns) == (T0, T0 + 207_000_000)
    assert first.resource.service_name == "frontend" and local.resource is first.resource
    assert dict(first.attributes) == {"peer.service": "browser", "http.method": "GET"}
    assert [(e.time_unix_nano, e.name) for e in first.proto.events] == [(T0 + 5000, "ws")]
    assert query.trace_id.hex() == "463ac35c9f6413ad48485a3953bb6124"
    assert (query.kind, query.resource.service_name) == (3, "backend")
    assert (local.kind, local.parent_span_id, local.duration_ns) == (0, b"", 0)


def test_zipkin_round_trip_and_output_fields() -> None:
    out = decode("zipkin_json", json.dumps(ZIPKIN).encode())
    back = json.loads(to_zipkin_json(sorted(out.batch, key=lambda v: v.index)))
    wide = "0000000000000000463ac35c9f6413ad"  # 64-bit ids come back zero-extended
    first = dict(ZIPKIN[0], traceId=wide, localEndpoint={"serviceName": "frontend"})
    assert back == [first, ZIPKIN[1], dict(ZIPKIN[2], traceId=wide)]


def test_zipkin_output_of_otlp_spans_is_valid_v2() -> None:
    views = list(decode("otlp_proto", build_request().SerializeToString()).batch)
    spans = json.loads(to_zipkin_json(views))
    assert isinstance(spans, list) and len(spans) == len(views)
    for z, v in zip(spans, views, strict=True):
        assert z["traceId"] == v.trace_id.hex() and len(z["traceId"]) == 32
        assert z["id"] == v.span_id.hex() and len(z["id"]) == 16
        assert z.get("parentId") == (v.parent_span_id.hex() or None)
        assert z["timestamp"] == v.start_ns // 1000 and z["duration"] == v.duration_ns // 1000
        kind = {2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}.get(v.kind)
        assert z.get("kind") == kind
        assert z["localEndpoint"] == {"serviceName": v.resource.service_name}
        assert all(isinstance(t, str) for t in z["tags"].values())
        assert z["tags"]["http.response.status_code"] == str(
            v.attribute("http.response.status_code")
        )
        assert z["tags"]["deployment.environment"] in ("prod", "staging")
        assert z["tags"]["otel.scope.name"] == v.scope.name
        assert "service.name" not in z["tags"]
        if v.status_code == 2:
            assert z["tags"]["error"] == "deadline exceeded"
        else:
            assert "error" not in z["tags"]
        assert [a["value"] for a in z["annotations"]] == ["retry", "done"]


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_garbage_is_unparseable(name: str) -> None:
    for value in (b"\xff" * 40, b"{not json", b"\x00\x01\x02\x03garbage", b"[1, 2"):
        out = decode(name, value)
        assert out.message_error == "unparseable", (name, value)
        assert len(out.batch) == 0 and out.rejected == [] and out.detail


def test_truncated_protobuf_is_unparseable() -> None:
    value = build_request().SerializeToString()
    for cut in (len(value) // 3, len(value) // 2, len(value) - 1):
        assert decode("otlp_proto", value[:cut]).message_error == "unparseable"


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_oversized_messages_are_rejected_before_parsing(name: str) -> None:
    out = decode(name, b"x" * 101, SpanLimits(max_message_bytes=100))
    assert out.message_error == "oversized" and len(out.batch) == 0


def bad_request() -> tuple[ExportTraceServiceRequest, dict[int, str]]:
    """Good spans with bad ones in between; returns the expected rejects by index."""
    req = build_request(spans_per_scope=2)
    spans = [sp for _, _, sp in flat_spans(req)]
    bad: dict[int, str] = {}
    edits: list[tuple[str, object, str]] = [
        ("trace_id", bytes(16), "invalid_id"),
        ("trace_id", b"\x01" * 15, "invalid_id"),
        ("span_id", bytes(8), "invalid_id"),
        ("parent_span_id", b"\x01\x02\x03", "invalid_id"),
        ("end_time_unix_nano", T0 - 1, "bad_timestamp"),
        ("start_time_unix_nano", 900_000_000 * 10**9, "bad_timestamp"),  # 1998
    ]
    for i, (attr, value, reason) in enumerate(edits):
        setattr(spans[i], attr, value)
        bad[i] = reason
    spans[6].start_time_unix_nano = NOW + 2 * 86_400 * 10**9
    spans[6].end_time_unix_nano = NOW + 2 * 86_400 * 10**9
    bad[6] = "bad_timestamp"
    spans[7].parent_span_id = bytes(8)  # all-zero parent: a root, accepted
    return req, bad


def test_bad_spans_are_rejected_alone_with_their_reason() -> None:
    req, bad = bad_request()
    out = decode("otlp_proto", req.SerializeToString())
    assert out.message_error is None
    assert {r.index: r.reason for r in out.rejected} == bad
    assert [v.index for v in out.batch] == [7]
    assert out.batch[0].parent_span_id == b""
    assert all(r.detail for r in out.rejected)


def test_bad_spans_in_otlp_json_including_bad_hex() -> None:
    req, bad = bad_request()
    doc = json.loads(otlp_json(req))
    doc["resourceSpans"][1]["scopeSpans"][1]["spans"][1]["spanId"] = "zz" * 8
    out = decode("otlp_json", json.dumps(doc).encode())
    assert {r.index: r.reason for r in out.rejected} == {**bad, 7: "invalid_id"}
    assert len(out.batch) == 0


def test_bad_zipkin_spans_are_rejected_alone() -> None:
    spans: list[Any] = [dict(s) for s in ZIPKIN]
    spans[0]["traceId"] = "0" * 16
    spans[1]["id"] = "12345"
    spans.append({"traceId": "1" * 32, "id": "2" * 16, "name": "no timestamp"})
    spans.append({**ZIPKIN[2], "duration": -5})
    spans.append("not a span")
    out = decode("zipkin_json", json.dumps(spans).encode())
    assert [(r.index, r.reason) for r in out.rejected] == [
        (0, "invalid_id"),
        (1, "invalid_id"),
        (3, "bad_timestamp"),
        (4, "bad_timestamp"),
        (5, "unparseable"),
    ]
    assert [v.index for v in out.batch] == [2]


def test_mutated_messages_never_raise() -> None:
    value = bytearray(build_request(spans_per_scope=2).SerializeToString())
    rng = random.Random(7)
    for _ in range(300):
        mutated = bytearray(value)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        for name in DECODERS:
            out = decode(name, bytes(mutated))
            if out.message_error:
                assert len(out.batch) == 0 and out.rejected == []
            for view in out.batch:
                assert isinstance(view, SpanView) and len(view.trace_id) == 16
                assert 0 <= view.kind <= 5 and 0 <= view.status_code <= 2


def test_fast_zipkin_writer_equals_the_reference_mapping() -> None:
    import json as _json

    from pipelines.spans.zipkin import to_zipkin_dict

    req = build_request(spans_per_scope=4)
    # A key in both resource and span, and a peer.service: those spans take the dict path.
    first = req.resource_spans[0].scope_spans[0].spans
    first[0].attributes.append(kv(req.resource_spans[0].resource.attributes[0].key, "dup"))
    first[1].attributes.append(kv("peer.service", "db"))
    first[2].attributes.append(kv("quote", 'a "b"\n\u00e9'))
    spans = decode("otlp_proto", req.SerializeToString()).batch.spans
    fast = _json.loads(to_zipkin_json(spans))
    reference = [_json.loads(_json.dumps(to_zipkin_dict(s))) for s in spans]
    assert fast == reference
    assert any("remoteEndpoint" in s for s in fast)


def test_resource_attributes_are_converted_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.spans import model

    value = build_request().SerializeToString()
    one, two = (list(get_decoder().decode(value, NOW).batch) for _ in range(2))
    assert one[0].resource is not two[0].resource  # one view per message...
    assert one[0].resource.attributes is two[0].resource.attributes  # ...one conversion
    assert one[0].resource.attributes_text is two[0].resource.attributes_text
    assert one[0].resource.attributes_text != one[-1].resource.attributes_text
    cache = model._ResourceAttributes()
    monkeypatch.setattr(model, "_RESOURCES", cache)
    monkeypatch.setattr(cache, "MAX_ENTRIES", 1)
    first, last = (list(get_decoder().decode(value, NOW).batch)[i].resource for i in (0, -1))
    assert first.service_name == "checkout" and last.service_name == "payments"
    assert len(cache.values) == 1  # bounded: full, it starts over


def test_otlp_chunks_fit_the_limit_and_keep_every_span_in_order() -> None:
    from pipelines.spans import get_decoder, otlp_chunks, to_otlp_proto

    decoder = get_decoder()
    spans = decoder.decode(build_request(spans_per_scope=40).SerializeToString(), NOW).batch.spans
    whole = len(to_otlp_proto(spans))
    limit = whole // 5
    chunks = list(otlp_chunks(spans, limit))
    assert len(chunks) >= 5 and all(len(c) <= limit for c in chunks)
    back = [s.span_id for c in chunks for s in decoder.decode(c, NOW).batch.spans]
    assert back == [s.span_id for s in spans]
    assert list(otlp_chunks(spans, 10)) and all(  # a span over the limit goes alone
        len(decoder.decode(c, NOW).batch.spans) == 1 for c in otlp_chunks(spans, 10)
    )
