from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipelines.errors import TerminalError
from pipelines.tables import TableSpec, load_table, table_from_dict
from pipelines.writers.layout import hive_escape, object_key, partition_groups, partition_path

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "app_logs.yaml")


def daily() -> TableSpec:
    doc = yaml.safe_load((SCHEMAS / "app_logs.yaml").read_text())
    doc["partitioning"] = "daily"
    return table_from_dict(doc)


def test_partition_path_is_utc(spec: TableSpec) -> None:
    t = datetime(2026, 11, 25, 6, 30, tzinfo=timezone(timedelta(hours=2)))
    assert partition_path(spec, t) == "dt=2026-11-25/hr=04"
    assert partition_path(daily(), t) == "dt=2026-11-25"
    with pytest.raises(TerminalError):
        partition_path(spec, datetime(2026, 11, 25, 4))


def ts_table(times: list[datetime], unit: str = "ms") -> pa.Table:
    return pa.table({"ts": pa.array(times, pa.timestamp(unit, tz="UTC"))})


def test_groups_split_at_the_hour_boundary(spec: TableSpec) -> None:
    hour = datetime(2026, 11, 25, 4, tzinfo=UTC)
    ms = timedelta(milliseconds=1)
    times = [
        hour - ms,
        hour,
        hour + timedelta(minutes=59, seconds=59),
        hour - 2 * ms,
        hour + 3600 * 1000 * ms,
    ]
    groups = partition_groups(spec, ts_table(times))
    assert groups == {
        "dt=2026-11-25/hr=03": [0, 3],
        "dt=2026-11-25/hr=04": [1, 2],
        "dt=2026-11-25/hr=05": [4],
    }


def test_groups_daily_across_midnight_and_before_1970() -> None:
    midnight = datetime(2026, 1, 1, tzinfo=UTC)
    times = [midnight - timedelta(microseconds=1), midnight, datetime(1969, 12, 31, 23, tzinfo=UTC)]
    groups = partition_groups(daily(), ts_table(times, "us"))
    assert groups == {"dt=2025-12-31": [0], "dt=2026-01-01": [1], "dt=1969-12-31": [2]}


def test_groups_reject_null_event_times(spec: TableSpec) -> None:
    with pytest.raises(TerminalError):
        partition_groups(spec, pa.table({"ts": pa.array([None], pa.timestamp("ms", tz="UTC"))}))


def test_object_key_is_zero_padded_and_deterministic() -> None:
    args = ("lake/prod", "app_logs", "dt=2026-11-25/hr=04", "logs.app", 3, 42)
    key = object_key(*args)
    assert (
        key == "lake/prod/app_logs/dt=2026-11-25/hr=04/logs.app-00003-00000000000000000042.parquet"
    )
    assert object_key(*args) == key
    assert (
        object_key("", "t", "dt=2026-11-25", "x", 0, 0)
        == "t/dt=2026-11-25/x-00000-00000000000000000000.parquet"
    )
    late = object_key("lake", "t", "dt=2026-11-25", "x", 0, 9_223_372_036_854_775_807)
    assert late.endswith("x-00000-09223372036854775807.parquet")
    assert sorted([object_key("p", "t", "dt=2026-11-25", "x", 0, o) for o in (10, 9, 100)]) == [
        object_key("p", "t", "dt=2026-11-25", "x", 0, o) for o in (9, 10, 100)
    ]


@pytest.mark.parametrize(
    "args",
    [
        ("../x", "t", "dt=2026-11-25", "x", 0, 0),
        ("a/../b", "t", "dt=2026-11-25", "x", 0, 0),
        ("p", "../x", "dt=2026-11-25", "x", 0, 0),
        ("p", "a/b", "dt=2026-11-25", "x", 0, 0),
        ("p", "t\x00", "dt=2026-11-25", "x", 0, 0),
        ("p", "t", "dt=2026-11-25/hr=04/../../x", "x", 0, 0),
        ("p", "t", "dt=../../etc", "x", 0, 0),
        ("p", "t", "dt=2026-11-25/hr=4", "x", 0, 0),
        ("p", "t", "dt=\uff12\uff10\uff12\uff16-11-25", "x", 0, 0),  # full-width digits
        ("p", "t", "hr=04", "x", 0, 0),
        ("p", "t", "dt=2026-11-25", "..", 0, 0),
        ("p", "t", "dt=2026-11-25", ".", 0, 0),
        ("p", "t", "dt=2026-11-25", "a/b", 0, 0),
        ("p", "t", "dt=2026-11-25", "a\nb", 0, 0),
        ("p", "t", "dt=2026-11-25", "x" * 250, 0, 0),
        ("p", "t", "dt=2026-11-25", "x", -1, 0),
        ("p", "t", "dt=2026-11-25", "x", 100_000, 0),
        ("p", "t", "dt=2026-11-25", "x", 0, -1),
        ("p", "t", "dt=2026-11-25", "x", True, 0),
    ],
)
def test_object_key_rejects_injection(args: tuple[str, str, str, str, int, int]) -> None:
    with pytest.raises(TerminalError):
        object_key(*args)


def test_hive_escape() -> None:
    assert hive_escape("a/b=c:d") == "a%2Fb%3Dc%3Ad"
    assert hive_escape("50%#'*?\\{[]^\"") == "50%25%23%27%2A%3F%5C%7B%5B%5D%5E%22"
    assert hive_escape("\x00\x01\n\x7f") == "%00%01%0A%7F"
    assert hive_escape("héllo world-._~") == "héllo world-._~"
    assert hive_escape("") == "__HIVE_DEFAULT_PARTITION__"
