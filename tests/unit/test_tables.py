from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipelines.errors import ConfigError
from pipelines.tables import load_table, load_tables, parse_duration, parse_type, table_from_dict

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_app_logs_contract_and_output_schema() -> None:
    spec = load_table(SCHEMAS / "app_logs.yaml")
    assert spec.name == "app_logs"
    assert spec.topics == ("logs.app",)
    assert (spec.event_time_field, spec.event_time_format) == ("ts", "epoch_ms")
    assert spec.unknown_fields == "drop"
    expected = pa.schema(
        [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
            ("level", pa.string()),
            ("service", pa.string()),
            ("host", pa.string()),
            ("message", pa.string()),
            ("trace_id", pa.string()),
            ("user_id", pa.int64()),
            ("duration_ms", pa.float64()),
            ("status", pa.int32()),
            ("attrs", pa.map_(pa.string(), pa.string())),
            pa.field("_partition", pa.int32(), nullable=False),
            pa.field("_offset", pa.int64(), nullable=False),
        ]
    )
    assert spec.output_schema.equals(expected)
    assert spec.arrow_schema.names == expected.names[:-2]


def test_load_tables_indexes_by_name() -> None:
    assert "app_logs" in load_tables(SCHEMAS)


def _app_logs_doc() -> dict[str, object]:
    doc = yaml.safe_load((SCHEMAS / "app_logs.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_problem_is_reported_at_once_with_key_paths(tmp_path: Path) -> None:
    doc = _app_logs_doc()
    doc.update(
        table="App-Logs",
        partitioning="weekly",
        colour="blue",
        late_data={"max_past": "7 days", "policy": "drop"},
        event_time={"field": "when", "format": "epoch_ps"},
    )
    columns = doc["columns"]
    assert isinstance(columns, list)
    columns[2] = {"name": "Level", "type": "string"}
    columns[3] = {"name": "service", "type": "varchar"}
    columns[4] = {"name": "message", "type": "string"}  # duplicate of columns[5]
    columns[6] = {"name": "_offset", "type": "int64"}
    columns[7] = {"name": "user_id", "type": "timestamp[ns]", "required": "yes"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_table(path)
    by_path = {p.path: p.reason for p in info.value.problems}
    assert info.value.source == str(path)
    assert set(by_path) == {
        "colour",
        "table",
        "event_time.format",
        "partitioning",
        "late_data.max_past",
        "late_data.policy",
        "columns[2].name",
        "columns[3].type",
        "columns[5].name",
        "columns[6].name",
        "columns[7].required",
        "columns[7].type",
        "event_time.field",
    }
    assert "valid types: string, bool, int32" in by_path["columns[3].type"]
    assert "no ns" in by_path["columns[7].type"]
    assert "hourly, daily" in by_path["partitioning"]
    assert "reserved" in by_path["columns[6].name"]
    assert "twice" in by_path["columns[5].name"]


def test_event_time_column_must_be_a_required_timestamp() -> None:
    doc = _app_logs_doc()
    doc["event_time"] = {"field": "level", "format": "epoch_ms"}
    with pytest.raises(ConfigError) as info:
        table_from_dict(doc)
    reasons = [p.reason for p in info.value.problems if p.path == "event_time.field"]
    assert any("must be a timestamp" in r for r in reasons)
    assert any("required" in r for r in reasons)


def test_duplicate_topic_across_tables(tmp_path: Path) -> None:
    doc = _app_logs_doc()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc))
    doc["table"] = "app_logs_v2"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"logs\.app"):
        load_tables(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("decimal(10, 2)", pa.decimal128(10, 2)),
        ("timestamp[us]", pa.timestamp("us", tz="UTC")),
        ("list<map<string,int32>>", pa.list_(pa.map_(pa.string(), pa.int32()))),
        (
            "struct<a:date, b:list<binary>>",
            pa.struct([("a", pa.date32()), ("b", pa.list_(pa.binary()))]),
        ),
    ],
)
def test_parse_type(text: str, expected: pa.DataType) -> None:
    assert parse_type(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("list<int32", "ends early"),
        ("map<float64,string>", "map keys"),
        ("decimal(40,2)", "1 <= p <= 38"),
        ("struct<a:int32,a:int64>", "repeated"),
        ("int32 int64", "unexpected"),
        ("uuid", "valid types"),
    ],
)
def test_parse_type_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_type(text)


def test_parse_duration() -> None:
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert parse_duration("45s").total_seconds() == 45
    with pytest.raises(ValueError, match="duration"):
        parse_duration("1w")
