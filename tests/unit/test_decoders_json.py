import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from pipelines.decoders import get_decoder
from pipelines.decoders.json import JsonDecoder
from pipelines.decoders.records import RecordConverter
from pipelines.errors import ConfigError
from pipelines.tables import TableSpec, load_table, table_from_dict

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
T0 = 1_764_043_200_000  # 2025-11-25T04:00:00Z in ms


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "app_logs.yaml")


def record(i: int, **override: Any) -> bytes:
    value: dict[str, Any] = {
        "event_id": f"e-{i}",
        "ts": T0 + i,
        "level": "INFO",
        "service": "api",
        "host": f"h{i % 3}",
        "message": f"line {i} \u00e9\u4e2d",
        "trace_id": None if i % 3 else f"{i:032x}",
        "user_id": None if i % 5 == 0 else 10**12 + i,
        "duration_ms": i / 7 if i % 4 else i,  # int for a float column on purpose
        "status": 200 + i % 3,
        "attrs": {"zone": "b", "app": str(i)} if i % 2 else ({} if i % 4 == 0 else None),
    }
    value.update(override)
    return json.dumps(value).encode()


def contract(**override: Any) -> TableSpec:
    doc = yaml.safe_load((SCHEMAS / "app_logs.yaml").read_text())
    doc.update(override)
    return table_from_dict(doc)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []
    original = RecordConverter.convert

    def convert(self: RecordConverter, value: bytes) -> Any:
        seen.append(value)
        return original(self, value)

    monkeypatch.setattr(RecordConverter, "convert", convert)
    return seen


def test_vectorized_equals_per_record_on_good_data(
    spec: TableSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = JsonDecoder(spec)
    values = [record(i) for i in range(200)]
    reference = decoder.decode_per_record(values)
    slow_calls = counting(monkeypatch)
    batch = decoder.decode(values)
    assert slow_calls == []  # all 200 took the vectorized path
    assert batch.rejected == reference.rejected == []
    assert batch.indices == reference.indices == list(range(200))
    assert batch.table.schema.equals(spec.arrow_schema)
    assert batch.table.to_pylist() == reference.table.to_pylist()
    assert batch.table.equals(reference.table)
    row = batch.table.slice(1, 1).to_pylist()[0]
    assert row["attrs"] == [("app", "1"), ("zone", "b")]  # sorted by key
    assert row["ts"] == datetime(2025, 11, 25, 4, 0, 0, 1000, tzinfo=UTC)
    assert batch.table.column("attrs")[0].as_py() == []
    assert batch.table.column("attrs")[2].as_py() is None


def test_bad_records_are_rejected_with_reasons_and_the_rest_kept_in_order(
    spec: TableSpec,
) -> None:
    values = [record(i) for i in range(300)]
    bad = {
        10: (b'{"event_id": "x", "ts": ', "unparseable"),
        50: (record(50, event_id=None), "schema_violation"),
        51: (record(51, user_id="abc"), "schema_violation"),
        120: (record(120, status=2**31), "schema_violation"),
        121: (b'{"event_id": "' + b"x" * spec.max_record_bytes + b'"}', "oversized"),
        200: (record(200, ts=None), "bad_timestamp"),
        299: (b"[1,2]", "unparseable"),
    }
    for i, (value, _) in bad.items():
        values[i] = value
    batch = get_decoder("json", spec).decode(values)
    assert [(r.index, r.reason) for r in batch.rejected] == [(i, r) for i, (_, r) in bad.items()]
    assert "user_id" in batch.rejected[2].detail
    assert "int32" in batch.rejected[3].detail
    good = [i for i in range(300) if i not in bad]
    assert batch.indices == good
    assert batch.table.column("event_id").to_pylist() == [f"e-{i}" for i in good]
    assert batch.table.equals(JsonDecoder(spec).decode([values[i] for i in good]).table)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"event_id": "a", "ts": 1}{"event_id": "b", "ts": 2}', "unparseable"),
        (b'{"event_id": "a", "event_id": "b", "ts": 1}', "unparseable"),
        (b'{"event_id": "a", "ts": NaN}', "unparseable"),
        (b'{"event_id": "\xff", "ts": 1}', "unparseable"),
        (b"", "unparseable"),
        (b'{"event_id": "\\ud800", "ts": 1}', "schema_violation"),
        (b'{"event_id": "a", "ts": 1, "user_id": 1.5}', "schema_violation"),
        (b'{"event_id": "a", "ts": 1, "user_id": true}', "schema_violation"),
        (b'{"event_id": "a", "ts": 1, "attrs": {"k": 1}}', "schema_violation"),
        (b'{"event_id": "a", "ts": "1"}', "bad_timestamp"),
        (b'{"event_id": "a", "ts": -5}', "bad_timestamp"),
        (b'{"event_id": "a", "ts": 253402300800000}', "bad_timestamp"),
    ],
)
def test_edge_values_are_rejected_the_same_on_both_paths(
    spec: TableSpec, value: bytes, reason: str
) -> None:
    decoder = JsonDecoder(spec)
    values = [record(0), value, record(2)]
    for batch in (decoder.decode(values), decoder.decode_per_record(values)):
        assert [(r.index, r.reason) for r in batch.rejected] == [(1, reason)]
        assert batch.indices == [0, 2]


def test_pretty_printed_values_take_the_per_record_path(spec: TableSpec) -> None:
    pretty = json.dumps(json.loads(record(1)), indent=2).encode()
    batch = JsonDecoder(spec).decode([record(0), pretty, record(2)])
    assert batch.rejected == []
    assert (
        batch.table.to_pylist()
        == JsonDecoder(spec).decode([record(i) for i in range(3)]).table.to_pylist()
    )


def test_unknown_fields_drop_counts_on_both_paths(spec: TableSpec) -> None:
    values = [record(0, extra=1, more=None), record(1, extra="x"), record(2)]
    decoder = JsonDecoder(spec)
    # "extra" has mixed types: the vectorized reader fails and the block is split.
    for batch in (decoder.decode(values), decoder.decode_per_record(values)):
        assert batch.unknown_fields_dropped == 2
        assert batch.table.num_rows == 3
    assert decoder.decode([record(0, extra=1), record(1, extra=2)]).unknown_fields_dropped == 2


def test_unknown_fields_keep_json() -> None:
    spec = contract(unknown_fields="keep_json")
    assert spec.output_schema.names[-3:] == ["_extra", "_partition", "_offset"]
    decoder = JsonDecoder(spec)
    values = [record(0), record(1, extra={"a": [1, 2]}, note="hé"), record(2, gone=None)]
    batch = decoder.decode(values)
    assert batch.table.column("_extra").to_pylist() == [
        None,
        '{"extra":{"a":[1,2]},"note":"hé"}',
        None,
    ]
    assert batch.table.equals(decoder.decode_per_record(values).table)


def test_unknown_fields_reject() -> None:
    decoder = JsonDecoder(contract(unknown_fields="reject"))
    batch = decoder.decode([record(0), record(1, extra=1), record(2, nothing=None)])
    assert [(r.index, r.reason) for r in batch.rejected] == [(1, "unknown_field")]
    assert "extra" in batch.rejected[0].detail
    assert batch.indices == [0, 2]


@pytest.mark.parametrize(
    ("fmt", "unit", "raw", "expected"),
    [
        ("epoch_s", "s", 1_764_043_200, datetime(2025, 11, 25, 4, tzinfo=UTC)),
        ("epoch_ms", "ms", 1_764_043_200_123, datetime(2025, 11, 25, 4, 0, 0, 123000, tzinfo=UTC)),
        (
            "epoch_us",
            "us",
            1_764_043_200_123_456,
            datetime(2025, 11, 25, 4, 0, 0, 123456, tzinfo=UTC),
        ),
        (
            "epoch_ns",
            "us",
            1_764_043_200_123_456_789,
            datetime(2025, 11, 25, 4, 0, 0, 123456, tzinfo=UTC),
        ),
        ("epoch_s", "ms", 1_764_043_200, datetime(2025, 11, 25, 4, tzinfo=UTC)),
        (
            "iso8601",
            "ms",
            "2025-11-25T05:00:00.5+01:00",
            datetime(2025, 11, 25, 4, 0, 0, 500000, tzinfo=UTC),
        ),
        ("iso8601", "ms", "2025-11-25T04:00:00Z", datetime(2025, 11, 25, 4, tzinfo=UTC)),
        (
            "iso8601",
            "us",
            "2025-11-25 04:00:00.000001",
            datetime(2025, 11, 25, 4, 0, 0, 1, tzinfo=UTC),
        ),
    ],
)
def test_event_time_formats(fmt: str, unit: str, raw: object, expected: datetime) -> None:
    doc = yaml.safe_load((SCHEMAS / "app_logs.yaml").read_text())
    doc["event_time"] = {"field": "ts", "format": fmt}
    doc["columns"][1]["type"] = f"timestamp[{unit}]"
    decoder = JsonDecoder(table_from_dict(doc))
    values = [record(0, ts=raw), record(1, ts=raw)]
    for batch in (decoder.decode(values), decoder.decode_per_record(values)):
        assert batch.rejected == []
        assert batch.table.column("ts").type == pa.timestamp(unit, tz="UTC")
        assert batch.table.column("ts").to_pylist() == [expected, expected]


def test_iso8601_garbage_is_a_bad_timestamp() -> None:
    doc = yaml.safe_load((SCHEMAS / "app_logs.yaml").read_text())
    doc["event_time"] = {"field": "ts", "format": "iso8601"}
    batch = JsonDecoder(table_from_dict(doc)).decode(
        [record(0, ts="2025-11-25T04:00:00Z"), record(1, ts="yesterday"), record(2, ts=5)]
    )
    assert [(r.index, r.reason) for r in batch.rejected] == [
        (1, "bad_timestamp"),
        (2, "bad_timestamp"),
    ]


def test_nested_and_special_types_match_on_both_paths() -> None:
    doc = {
        "table": "nested",
        "topics": ["t"],
        "encoding": "json",
        "event_time": {"field": "ts", "format": "epoch_s"},
        "columns": [
            {"name": "ts", "type": "timestamp[s]", "required": True},
            {"name": "s", "type": "struct<a:int32,b:list<string>,m:map<string,float32>>"},
            {"name": "l", "type": "list<int32>"},
            {"name": "d", "type": "date"},
            {"name": "p", "type": "decimal(10,2)"},
            {"name": "b", "type": "binary"},
            {"name": "w", "type": "timestamp[us]"},
            {"name": "f", "type": "bool"},
        ],
    }
    decoder = JsonDecoder(table_from_dict(doc))
    values = [
        b'{"ts": 1700000000, "s": {"a": 1, "b": ["x", null], "m": {"k": 1.5}, "zz": 0},'
        b' "l": [1, null, 3], "d": "2026-01-02", "p": "12.30", "b": "raw", "w":'
        b' "2026-01-02T03:04:05.000006Z", "f": true}',
        b'{"ts": 1700000001, "s": null, "l": [], "p": 7, "f": false}',
        b'{"ts": 1700000002, "s": {"m": {}}, "l": null}',
    ]
    fast, slow = decoder.decode(values), decoder.decode_per_record(values)
    assert fast.rejected == slow.rejected == []
    assert fast.table.equals(slow.table)
    row = fast.table.to_pylist()[0]
    assert row["s"] == {"a": 1, "b": ["x", None], "m": [("k", 1.5)]}
    assert row["p"] == Decimal("12.30")
    assert row["b"] == b"raw"
    bad = decoder.decode(
        [values[0], b'{"ts": 1700000000, "l": [2147483648]}', b'{"ts": 1, "p": "1.234"}']
    )
    assert [(r.index, r.reason) for r in bad.rejected] == [
        (1, "schema_violation"),
        (2, "schema_violation"),
    ]


def test_unknown_encoding_lists_valid_ones(spec: TableSpec) -> None:
    with pytest.raises(ConfigError, match="valid encodings: json"):
        get_decoder("avro", spec)


def test_empty_batch(spec: TableSpec) -> None:
    batch = JsonDecoder(spec).decode([])
    assert batch.table.num_rows == 0 and batch.table.schema.equals(spec.arrow_schema)
    assert batch.indices == [] and batch.rejected == []
