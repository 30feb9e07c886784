"""The native spans-table rows (``native_rows``) equal the Python ones (``to_arrow``); the
native Zipkin JSON (``native_zipkin``) and OTLP requests (``native_otlp``) equal the Python
ones (``python_zipkin_json``, ``python_otlp_proto``) byte for byte.

Both are built from the same messages: realistic ones, the bench's, hand-made edge cases
(nested values, every double shape, repeated keys, control characters, out-of-range enums
and promoted values) and random ones; the selected spans are random subsets too.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pipelines.spans import SpanView, get_decoder
from pipelines.spans.encode import python_otlp_proto
from pipelines.spans.model import _float_text
from pipelines.spans.native import (
    AVAILABLE,
    RowsTooLargeError,
    native_otlp,
    native_rows,
    native_zipkin,
)
from pipelines.spans.table import PROMOTED, to_arrow
from pipelines.spans.zipkin import python_zipkin_json, to_zipkin_json
from pipelines.tables import TableSpec, load_table
from tests.unit.test_spans_decode import NOW, T0, build_request, kv, make_span, span_id, trace_id

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "spans.yaml")


def test_the_extension_is_installed() -> None:
    assert AVAILABLE, "sluice_native is missing: `make install` builds it from native/"


def both(messages: list[bytes], schema: pa.Schema, pick: random.Random | None = None) -> int:
    """Assert both paths build equal rows, and equal Zipkin JSON, for the messages'
    (randomly picked) valid spans."""
    views: list[SpanView] = []
    wanted: list[tuple[bytes, list[int]]] = []
    for value in messages:
        decoded = get_decoder().decode(value, NOW)
        assert decoded.message_error is None, decoded.detail
        chosen = [v for v in decoded.batch if pick is None or pick.random() < 0.7]
        views.extend(chosen)
        wanted.append((value, [v.index for v in chosen]))
    zipkin = native_zipkin(views)
    assert zipkin is not None
    assert zipkin == python_zipkin_json(views)
    # Canonically encoded input (as here): the native copy equals the re-serialization.
    assert native_otlp(views) == python_otlp_proto(views)
    if pick is not None:  # spans of several messages, out of order: the senders' batches
        shuffled = views[:]
        pick.shuffle(shuffled)
        assert native_zipkin(shuffled) == python_zipkin_json(shuffled)
        assert native_otlp(shuffled) == python_otlp_proto(shuffled)
    expected = to_arrow(views, schema)
    got = native_rows(wanted, schema)
    assert got is not None
    assert got.schema.equals(schema)
    for name in schema.names:
        assert got[name].equals(expected[name]), (name, got[name], expected[name])
    assert got.equals(expected)
    return got.num_rows


def test_realistic_messages(spec: TableSpec) -> None:
    value = build_request().SerializeToString()
    assert both([value, value], spec.arrow_schema) == 24
    assert both([value] * 5, spec.arrow_schema, random.Random(1)) > 0


def test_the_bench_messages(spec: TableSpec) -> None:
    from bench.traces_e2e import SpanCounts, TraceMaker

    maker, rnd = TraceMaker(100, seed=7), random.Random(7)
    messages = [maker.make(i, rnd, NOW, SpanCounts())[0] for i in range(5)]
    assert both(messages, spec.arrow_schema) == 500
    assert both(messages, spec.arrow_schema, random.Random(2)) > 0


DOUBLES = [
    0.0,
    -0.0,
    1.0,
    -2.5,
    0.1,
    1e16,
    1e15 + 0.5,
    123456789.125,
    1.5e-7,
    1e-5,
    0.0001,
    5e-324,
    1.7976931348623157e308,
    1e21,
    1e20,
    -1e22,
    math.inf,
    -math.inf,
    math.nan,
]


def edge_request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    nested: list[object] = [1.0, 2.5, 1e16, math.nan, -math.inf, None, b"\x00\xff", [], {}]
    nested.append({"a": [True, False, None], 'ü\n"q"': "\x01\t\\ é 🚀"})
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        [kv("service.name", "first"), kv("region", "eu"), kv("service.name", "last")]
    )
    ss = rs.scope_spans.add()  # no scope name or version: nulls
    for n, value in enumerate([*DOUBLES, nested, "", None, b"", "ctrl\x00\x1f\x7f"]):
        span = make_span(n)
        span.attributes.append(kv("value", value))
        span.attributes.append(kv("http.route", value))  # a repeated promoted key: last wins
        ss.spans.append(span)
    promoted = ["+5", "-0", "0005", "99999999999", "12345678901234567890", "1e3", " 7", "٣"]
    for n, text in enumerate(promoted, start=100):
        span = make_span(n)
        span.attributes.append(kv("http.response.status_code", text))
        ss.spans.append(span)
    for n, value in enumerate([True, 3.0, -(2**31), 2**31 - 1, 2**31, [1], {"a": 1}], start=200):
        span = make_span(n)
        span.attributes.append(kv("http.response.status_code", value))
        span.attributes.append(kv("http.request.method", value))
        ss.spans.append(span)
    span = make_span(300)
    span.kind = 17  # type: ignore[assignment]  # open enums: unknown values read as 0
    span.status.code = 9  # type: ignore[assignment]
    span.parent_span_id = bytes(8)  # all zero: a root
    del span.events[:], span.links[:]
    ss.spans.append(span)
    # A resource whose service.name is not a string, with a scope that has a name only.
    rs2 = req.resource_spans.add()
    rs2.resource.attributes.extend([kv("service.name", 42), kv("k", {"x": 1, "x2": 2})])
    ss2 = rs2.scope_spans.add()
    ss2.scope.name = "only-name"
    ss2.spans.append(make_span(301))
    # A resource with an empty service.name and an empty AnyValue inside a kvlist.
    rs3 = req.resource_spans.add()
    rs3.resource.attributes.append(kv("service.name", ""))
    any_kv = KeyValue(key="m")
    any_kv.value.kvlist_value.values.extend([KeyValue(key="unset"), kv("dup", 1), kv("dup", 2)])
    rs3.resource.attributes.append(any_kv)
    rs3.scope_spans.add().spans.append(make_span(302))
    return req


def test_edge_cases(spec: TableSpec) -> None:
    value = edge_request().SerializeToString()
    assert both([value], spec.arrow_schema) == len(DOUBLES) + 5 + 8 + 7 + 1 + 2
    rows = native_rows([(value, [len(DOUBLES) + 5])], spec.arrow_schema)
    assert rows is not None and rows["http_response_status_code"].to_pylist() == [5]


def random_value(rnd: random.Random, depth: int = 0) -> object:
    kind = rnd.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return "".join(rnd.choice('aZ09 _-"\\\n\t\x02é中🚀') for _ in range(rnd.randrange(6)))
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.randrange(-(2**63), 2**63)
    if kind == 3:
        return struct.unpack("<d", rnd.randbytes(8))[0]
    if kind == 4:
        return rnd.randbytes(rnd.randrange(5))
    if kind == 5:
        return None
    if kind == 6:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {f"k{rnd.randrange(4)}": random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def random_request(rnd: random.Random) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    keys = ["a", "b", "service.name", "peer.service", "error", "otel.scope.name"]
    keys += PROMOTED.values()
    n = 0
    for _ in range(rnd.randrange(1, 4)):
        rs = req.resource_spans.add()
        for _ in range(rnd.randrange(4)):
            rs.resource.attributes.append(kv(rnd.choice(keys), random_value(rnd)))
        for _ in range(rnd.randrange(1, 3)):
            ss = rs.scope_spans.add()
            ss.scope.name = rnd.choice(["", "lib"])
            for _ in range(rnd.randrange(1, 6)):
                span = Span(
                    trace_id=trace_id(n + 1),
                    span_id=span_id(n),
                    name=rnd.choice(["", "op", "ö"]),
                    kind=rnd.randrange(7),  # type: ignore[arg-type]
                    start_time_unix_nano=T0 + n,
                    end_time_unix_nano=T0 + n + rnd.randrange(10**9),
                    flags=rnd.randrange(2**32),
                )
                for _ in range(rnd.randrange(6)):
                    span.attributes.append(kv(rnd.choice(keys), random_value(rnd)))
                for _ in range(rnd.randrange(3)):
                    e = span.events.add(time_unix_nano=T0 + rnd.randrange(10**12), name="e")
                    e.attributes.append(kv(rnd.choice(keys), random_value(rnd)))
                if rnd.random() < 0.3:
                    link = span.links.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
                    link.attributes.append(kv("l", random_value(rnd)))
                ss.spans.append(span)
                n += 1
    return req


@pytest.mark.parametrize("seed", range(40))
def test_random_messages(spec: TableSpec, seed: int) -> None:
    rnd = random.Random(seed)
    messages = [random_request(rnd).SerializeToString() for _ in range(3)]
    assert both(messages, spec.arrow_schema, rnd) >= 0


def test_float_texts_match_python() -> None:
    from sluice_native import float_texts  # type: ignore[import-not-found]

    rnd = random.Random(5)
    values = DOUBLES + [struct.unpack("<d", rnd.randbytes(8))[0] for _ in range(20_000)]
    values += [rnd.uniform(-1e6, 1e6) for _ in range(5_000)] + [float(i) for i in range(-50, 50)]
    values += [10.0**e for e in range(-30, 30)] + [1.5 * 10.0**e for e in range(-30, 30)]
    for f in values:
        assert float_texts(f) == (repr(f), _float_text(f)), f


def test_messages_it_cannot_walk_fall_back(spec: TableSpec) -> None:
    """A message the Python decoder accepted always walks; anything else (a wrong position,
    bytes that are not OTLP) makes ``native_rows`` answer None, never raise."""
    value = build_request().SerializeToString()
    assert native_rows([(value, [999])], spec.arrow_schema) is None
    assert native_rows([(value[:-3], [0])], spec.arrow_schema) is None
    bad = AnyValue(string_value="x").SerializeToString()[:-1]
    assert native_rows([(bad, [0])], spec.arrow_schema) is None
    floats = spec.arrow_schema.append(pa.field("ratio", pa.float64()))
    assert native_rows([(value, [0])], floats, {**PROMOTED, "ratio": "ratio"}) is None
    assert native_rows([(value, [])], spec.arrow_schema) == spec.arrow_schema.empty_table()


def test_zipkin_merges_tags_as_the_dict_path_does() -> None:
    """Tags the encoder sets (scope, status, peer.service) or a key in both the resource and
    the span: one tag each, the span's value in the resource's place."""
    import json

    req = build_request(spans_per_scope=1)
    rs = req.resource_spans[0]
    rs.resource.attributes.append(kv("region", "eu"))
    span = rs.scope_spans[0].spans[0]
    span.attributes.extend([kv("region", "us"), kv("peer.service", "db"), kv("error", "x")])
    value = req.SerializeToString()
    views = list(get_decoder().decode(value, NOW).batch)
    body = native_zipkin(views)
    assert body == python_zipkin_json(views) == to_zipkin_json(views)
    first = json.loads(body)[0]
    assert first["remoteEndpoint"] == {"serviceName": "db"}
    assert first["tags"]["region"] == "us" and "peer.service" not in first["tags"]
    assert first["tags"]["error"] == "deadline exceeded"  # status ERROR sets it last
    assert list(first["tags"]).index("region") < list(first["tags"]).index("http.route")


def test_zipkin_of_other_encodings_is_built_in_python() -> None:
    from tests.unit.test_spans_decode import otlp_json

    views = list(get_decoder("otlp_json").decode(otlp_json(build_request()), NOW).batch)
    assert native_zipkin(views) is None
    assert to_zipkin_json(views) == python_zipkin_json(views)


def test_otlp_copies_spans_as_they_came() -> None:
    """A span encoded unusually (its fields out of order) is copied as it came: the request
    parses to the same spans, under the same groups, as the Python re-encoding."""
    from pipelines.spans.encode import _field

    span = make_span(1)
    raw = span.SerializeToString()
    cut = raw.index(b"\x2a")  # the name (field 5): it and later fields first
    odd = raw[cut:] + raw[:cut]
    assert Span.FromString(odd) == span and odd != raw
    rs = build_request(spans_per_scope=1).resource_spans[0]
    scope = _field(b"\x0a", rs.scope_spans[0].scope.SerializeToString()) + _field(b"\x12", odd)
    body = _field(b"\x0a", rs.resource.SerializeToString()) + _field(b"\x12", scope)
    views = list(get_decoder().decode(_field(b"\x0a", body), NOW).batch)
    assert len(views) == 1
    native, python = native_otlp(views), python_otlp_proto(views)
    assert native is not None and odd in native and odd not in python
    parsed = ExportTraceServiceRequest.FromString(native)
    assert parsed == ExportTraceServiceRequest.FromString(python)


def test_otlp_of_other_encodings_is_built_in_python() -> None:
    from pipelines.spans.encode import to_otlp_proto
    from tests.unit.test_spans_decode import otlp_json

    views = list(get_decoder("otlp_json").decode(otlp_json(build_request()), NOW).batch)
    assert native_otlp(views) is None
    assert to_otlp_proto(views) == python_otlp_proto(views)


def test_review_cases_agree_with_python(spec: TableSpec) -> None:
    """Inputs a review found the native path got wrong: a value's oneof ending on
    string_value_strindex (Python reads no value: text "null"), dropped counts over 2**31 - 1
    (saturated), and two promoted columns fed by one attribute."""
    req = build_request(spans_per_scope=1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.dropped_attributes_count = 2**31
    span.events[0].dropped_attributes_count = 2**32 - 1
    span.attributes.add(key="b").value.string_value_strindex = 5
    service = req.resource_spans[0].resource.attributes[0]
    assert service.key == "service.name"
    service.value.string_value_strindex = 1  # not a string: no service name
    tweaked = req.SerializeToString()
    both([tweaked], spec.arrow_schema)
    rows = native_rows([(tweaked, [0])], spec.arrow_schema)
    assert rows is not None
    assert dict(rows["span_attributes"][0].as_py())["b"] == "null"
    assert rows["service_name"][0].as_py() is None
    assert rows["dropped_attributes_count"][0].as_py() == 2**31 - 1
    twice = spec.arrow_schema.append(pa.field("route_again", pa.string()))
    promoted = {**PROMOTED, "route_again": "http.route"}
    value = build_request().SerializeToString()
    views = list(get_decoder().decode(value, NOW).batch)
    got = native_rows([(value, [v.index for v in views])], twice, promoted)
    assert got is not None and got.equals(to_arrow(views, twice, promoted))
    assert got["route_again"].to_pylist() == got["http_route"].to_pylist() != [None] * len(views)


def test_a_column_over_its_limit_falls_back_instead_of_wrapping(spec: TableSpec) -> None:
    """A scope name repeats on every row: a 2 MB message could ask for a column over Arrow's
    2 GiB (i32 offsets). The native path stops (RowsTooLargeError) rather than hand out wrapped
    offsets; shown with a lower limit, the same check."""
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    ss.scope.name = "s" * 1_000
    for n in range(2_000):
        ss.spans.add(
            trace_id=trace_id(1), span_id=span_id(n), start_time_unix_nano=T0, end_time_unix_nano=T0
        )
    value, spans = req.SerializeToString(), list(range(2_000))
    schema = pa.schema([spec.arrow_schema.field("scope_name")])
    with pytest.raises(RowsTooLargeError, match="a column over 1000000 bytes"):
        native_rows([(value, spans)], schema, max_column_bytes=1_000_000)
    rows = native_rows([(value, spans)], schema, max_column_bytes=2_000_000)
    assert rows is not None and rows.num_rows == 2_000
    assert rows["scope_name"].combine_chunks().validate(full=True) is None


def test_a_span_with_many_attributes() -> None:
    """20k attributes on one span (and so many keys to look up for repeats): the same rows
    and Zipkin JSON as Python. (A scan per key made this minutes long at 100k.)"""
    req = build_request(spans_per_scope=1)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend(kv(f"k{i}", i) for i in range(20_000))
    span.attributes.extend(kv(f"k{i}", -i) for i in range(0, 20_000, 7))  # repeated keys
    value = req.SerializeToString()
    views = list(get_decoder().decode(value, NOW).batch)[:1]
    assert native_zipkin(views) == python_zipkin_json(views)
    schema = pa.schema([pa.field("span_attributes", pa.map_(pa.string(), pa.string()))])
    rows = native_rows([(value, [0])], schema)
    assert rows is not None and rows.equals(to_arrow(views, schema))
    assert dict(rows["span_attributes"][0].as_py())["k7"] == "-7"
