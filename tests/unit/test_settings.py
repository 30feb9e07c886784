from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.settings import (
    interpolate,
    load_settings,
    parse_duration,
    parse_settings,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]


def _problems(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, env or {}, base_dir=str(REPO))
    return {p.path: p.reason for p in info.value.problems}


def test_example_config_loads_with_defaults_and_env() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093", "SLUICE_BUCKET": "bucket-a"}
    s = load_settings(REPO / "examples" / "local.yaml", env)
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9093"
    assert s.s3.endpoint_url == ""  # ${AWS_ENDPOINT_URL_S3:-} -> AWS itself
    assert s.warehouse.root == "s3://bucket-a/warehouse"
    assert s.warehouse.memory_budget_bytes == 512 * 1024 * 1024
    assert s.warehouse.rotation.max_age_seconds == 300.0
    assert s.warehouse.tables == ("app_logs",)
    assert s.metrics.port == 9108
    assert Path(s.resolve(s.warehouse.schemas_dir)) == REPO / "schemas"


def test_settings_are_frozen() -> None:
    s = parse_settings("{}", {}, base_dir=str(REPO))
    with pytest.raises(AttributeError):
        s.kafka.bootstrap_servers = "x:1"  # type: ignore[misc]


def test_every_problem_is_reported_at_once_with_key_paths() -> None:
    problems = _problems(
        """
kafka:
  bootstrap_servers: "localhost,${NOPE}"
  colour: blue
s3: {endpoint_url: "ftp://x"}
warehouse:
  root: s3://Bad_Bucket/x
  schemas_dir: /nonexistent
  memory_budget: 64MiB
  rotation: {max_rows: -1, max_bytes: lots, max_age: 5 minutes}
metrics: {port: 70000}
extra_section: 1
"""
    )
    assert "NOPE is not set" in problems["kafka.bootstrap_servers"]
    assert "unknown key" in problems["kafka.colour"]
    assert "bootstrap_servers" in problems["kafka.colour"]  # lists the valid keys
    assert "not host:port" in problems["kafka.bootstrap_servers[0]"]
    assert "http://" in problems["s3.endpoint_url"]
    assert "s3://bucket" in problems["warehouse.root"]
    assert "not a directory" in problems["warehouse.schemas_dir"]
    assert "positive" in problems["warehouse.rotation.max_rows"]
    assert "not a size" in problems["warehouse.rotation.max_bytes"]
    assert "not a duration" in problems["warehouse.rotation.max_age"]
    assert "0..65535" in problems["metrics.port"]
    assert "unknown key" in problems["extra_section"]
    assert len(problems) == 12


def test_rotation_larger_than_budget_is_refused() -> None:
    problems = _problems("warehouse: {memory_budget: 64MiB, rotation: {max_bytes: 128MiB}}")
    assert "exceeds warehouse.memory_budget" in problems["warehouse.rotation.max_bytes"]


def test_invalid_yaml_names_line() -> None:
    problems = _problems("kafka: [unclosed")
    (path,) = problems
    assert path.startswith("line ")


def test_section_must_be_mapping() -> None:
    assert "mapping" in _problems("kafka: 3")["kafka"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml", {})


@pytest.mark.parametrize(
    ("text", "env", "want"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("pre-${A}-post", {"A": "1"}, "pre-1-post"),
        ("$${A}", {"A": "1"}, "${A}"),
        ("${A:-}", {}, ""),
    ],
)
def test_interpolation(text: str, env: dict[str, str], want: str) -> None:
    problems: list = []
    assert interpolate(text, env, "k", problems) == want
    assert problems == []


def test_sizes_and_durations() -> None:
    assert parse_size("128MiB") == 128 << 20
    assert parse_size("1GB") == 10**9
    assert parse_size(42) == 42
    assert parse_duration("250ms") == 0.25
    assert parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_size("-3MiB")
    with pytest.raises(ValueError):
        parse_duration(True)
