"""The spans table: its contract, and spans → Arrow rows (to_arrow)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.spans import SpanView, get_decoder
from pipelines.spans.table import PROMOTED, to_arrow
from pipelines.tables import TableSpec, load_table
from pipelines.writers.layout import partition_groups
from pipelines.writers.parquet import encode_parquet
from tests.unit.test_spans_decode import NOW, T0, build_request

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "spans.yaml")


@pytest.fixture(scope="module")
def views() -> list[SpanView]:
    value = build_request().SerializeToString()
    return list(get_decoder().decode(value, NOW).batch)


def test_contract_loads_and_matches_to_arrow(spec: TableSpec, views: list[SpanView]) -> None:
    assert (spec.name, spec.event_time_field, spec.partitioning) == (
        "spans",
        "start_time",
        "hourly",
    )
    table = to_arrow(views, spec.arrow_schema)
    assert table.schema.equals(spec.arrow_schema, check_metadata=True)
    assert table.num_rows == len(views)
    promoted = [c.name for c in spec.columns if c.name in PROMOTED]
    assert promoted == list(PROMOTED)
    assert spec.columns[-len(promoted) :] == tuple(c for c in spec.columns if c.name in PROMOTED)


def test_row_values(spec: TableSpec, views: list[SpanView]) -> None:
    rows = to_arrow(views, spec.arrow_schema).to_pylist()
    first, second = rows[0], rows[1]
    v = views[0]
    assert first["trace_id"] == v.trace_id and len(first["trace_id"]) == 16
    assert first["span_id"] == v.span_id
    assert first["parent_span_id"] is None and second["parent_span_id"] == v.span_id
    assert (first["trace_state"], second["trace_state"]) == (None, "ot=th:8")
    assert (first["flags"], first["name"], first["kind"]) == (0x301, "GET /api/items/0", 0)
    assert first["start_time"] == datetime.fromtimestamp(T0 // 10**9, UTC)
    assert second["start_time"] == datetime.fromtimestamp((T0 + 1_000_123) // 10**9, UTC).replace(
        microsecond=1_000
    )
    assert second["end_time"] == second["start_time"].replace(microsecond=1_250)
    assert second["duration_ns"] == 250_001
    assert (first["status_code"], first["status_message"]) == (2, "deadline exceeded")
    assert (second["status_code"], second["status_message"]) == (1, None)
    assert first["service_name"] == "checkout" and rows[-1]["service_name"] == "payments"
    assert (first["scope_name"], first["scope_version"]) == ("io.opentelemetry.http", "1.2.3")
    assert first["resource_attributes"] == [
        ("service.name", "checkout"),
        ("deployment.environment", "prod"),
        ("host.cpus", "8"),
        ("k8s.ready", "true"),
        ("load", "0.5"),
        ("zones", '["a","b"]'),
        ("labels", '{"team":"core"}'),
        ("fingerprint", "3q0="),
    ]
    assert dict(first["span_attributes"]) == {
        "http.request.method": "GET",
        "http.route": "/api/items/{id}",
        "http.response.status_code": "200",
        "rpc.method": "Get",
        "db.system": "postgresql",
        "error.type": "timeout",
        "sampled": "true",
        "ratio": "0.25",
        "payload": "AAH/",
        "tags": '["a",1,true]',
        "meta": '{"k":"v","n":2}',
        "empty": "",
    }
    keys = [k for k, _ in first["span_attributes"]]
    assert keys == [kv.key for kv in v.proto.attributes]  # input order
    assert [(e["name"], dict(e["attributes"])) for e in second["events"]] == [
        ("retry", {"attempt": "1", "why": "429"}),
        ("done", {}),
    ]
    assert second["events"][0]["time"] == second["start_time"].replace(microsecond=1_001)
    assert first["links"] == [
        {
            "trace_id": (9).to_bytes(8, "big") + b"\xab" * 8,
            "span_id": (0x1000 + 99).to_bytes(8, "big"),
            "trace_state": "x=1",
            "attributes": [("link.kind", "follows")],
            "dropped_attributes_count": 2,
        }
    ]
    assert (first["dropped_attributes_count"], first["dropped_events_count"]) == (0, 1)
    assert (second["dropped_attributes_count"], second["dropped_links_count"]) == (1, 0)
    assert [r["http_response_status_code"] for r in rows[:3]] == [200, 201, 202]
    assert (first["http_request_method"], first["http_route"]) == ("GET", "/api/items/{id}")
    assert (first["rpc_method"], first["db_system"], first["error_type"]) == (
        "Get",
        "postgresql",
        "timeout",
    )


def test_promoted_values_that_do_not_fit_are_null(spec: TableSpec) -> None:
    req = build_request(spans_per_scope=1)
    spans = [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    spans[0].attributes[2].value.string_value = "204"  # numeric string: converted
    spans[1].attributes[2].value.string_value = "OK"  # not a number: null
    spans[2].attributes[2].value.int_value = 2**40  # does not fit int32: null
    del spans[3].attributes[:]
    spans[3].kind = 9  # type: ignore[assignment]  # an open enum: unknown values read as 0
    views = list(get_decoder().decode(req.SerializeToString(), NOW).batch)
    table = to_arrow(views, spec.arrow_schema)
    assert table["http_response_status_code"].to_pylist() == [204, None, None, None]
    assert dict(table["span_attributes"][1].as_py())["http.response.status_code"] == "OK"
    assert table["http_route"].to_pylist() == ["/api/items/{id}"] * 3 + [None]
    assert table["span_attributes"][3].as_py() == []
    assert table["kind"].to_pylist() == [0, 1, 2, 0] == [v.kind for v in views]


def test_column_subsets_and_unknown_columns(spec: TableSpec, views: list[SpanView]) -> None:
    schema = pa.schema([spec.arrow_schema.field(n) for n in ("name", "trace_id", "events")])
    assert to_arrow(views, schema).schema.equals(schema)
    custom = spec.arrow_schema.append(pa.field("peer_service", pa.string()))
    with pytest.raises(ValueError, match="peer_service"):
        to_arrow(views, custom)
    table = to_arrow(views, custom, {**PROMOTED, "peer_service": "rpc.method"})
    assert table["peer_service"].to_pylist() == ["Get"] * len(views)
    empty = to_arrow([], spec.arrow_schema)
    assert empty.num_rows == 0 and empty.schema.equals(spec.arrow_schema)


def test_rows_partition_and_survive_parquet(spec: TableSpec, views: list[SpanView]) -> None:
    table = to_arrow(views, spec.arrow_schema)
    hour = datetime.fromtimestamp(T0 // 10**9, UTC)
    assert partition_groups(spec, table) == {
        f"dt={hour:%Y-%m-%d}/hr={hour:%H}": list(range(len(views)))
    }
    back = pq.read_table(io.BytesIO(encode_parquet(table)))
    assert back.equals(table)


def test_the_warehouse_decoder_judges_spans_against_their_records_time(spec: TableSpec) -> None:
    """A replay, however much later, must accept and reject what the first attempt did: spans
    two days ahead of their record's time are absurd, whatever the clock says now."""
    from dataclasses import dataclass

    from pipelines.decoders.spans import SpansDecoder

    @dataclass(frozen=True)
    class Rec:
        offset: int
        value: bytes
        timestamp: int  # epoch ms, as Kafka stamps it

    value = build_request().SerializeToString()
    decoder = SpansDecoder(spec, "otlp_proto")
    on_time = decoder.decode_records([Rec(0, value, NOW // 10**6)])
    early = decoder.decode_records([Rec(1, value, NOW // 10**6 - 2 * 86_400_000)])
    assert on_time.table.num_rows == 12 and on_time.rejected == []
    assert early.table.num_rows == 0
    assert [r.reason for r in early.rejected] == ["bad_timestamp"]
    assert decoder.decode([value]).table.num_rows == 12  # values alone: the wall clock
