"""The partition finalizer's decisions, with a fake Kafka and a local store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.catalog.base import FINAL_PARAMETER, compare_columns, hive_type
from pipelines.catalog.finalizer import (
    Finalizer,
    final_key,
    object_partition,
    partition_bounds,
    registered_key,
    success_key,
)
from pipelines.catalog.registry import NoCatalog
from pipelines.table_types import parse_type
from pipelines.tables import load_table
from pipelines.writers.store import LocalStore

REPO = Path(__file__).resolve().parents[2]
SPEC = load_table(REPO / "schemas" / "app_logs.yaml")
TOPIC = SPEC.topics[0]
HOUR = "dt=2026-11-25/hr=05"
END = datetime(2026, 11, 25, 6, tzinfo=UTC).timestamp()
TPS = [(TOPIC, 0), (TOPIC, 1)]


class FakeKafka:
    def __init__(self) -> None:
        self.committed_: dict[tuple[str, int], int] = {}
        self.ends: dict[tuple[str, int], int] = {}
        self.first_at: dict[tuple[str, int], int | None] = {}
        self.records: dict[tuple[str, int], list[int]] = {}  # offsets that hold records

    async def partitions(self, topics: Sequence[str]) -> list[tuple[str, int]]:
        return list(TPS)

    async def committed(self, group: str, tps: Sequence[tuple[str, int]]) -> dict:
        return dict(self.committed_)

    async def end_offsets(self, tps: Sequence[tuple[str, int]]) -> dict:
        return dict(self.ends)

    async def offsets_for_time(self, tps: Sequence[tuple[str, int]], epoch_ms: int) -> dict:
        assert epoch_ms == int((END + 60) * 1000)  # hour end + lateness
        return dict(self.first_at)

    async def first_record_at(self, tp: tuple[str, int], offset: int) -> int | None:
        return next((o for o in self.records.get(tp, ()) if o >= offset), None)


class RecordingCatalog(NoCatalog):
    def __init__(self) -> None:
        self.params: dict[str, dict[str, str]] = {}

    def set_partition_parameters(self, spec, path, parameters) -> None:  # type: ignore[no-untyped-def]
        self.params.setdefault(path, {}).update(parameters)


def setup(tmp_path: Path, now: float) -> tuple[LocalStore, FakeKafka, RecordingCatalog, Finalizer]:
    store = LocalStore(f"file://{tmp_path}")
    store.put(registered_key(SPEC.name, HOUR), b"")
    kafka, catalog = FakeKafka(), RecordingCatalog()
    f = Finalizer(SPEC, store, catalog, kafka, "g", 60.0, clock=lambda: now)
    return store, kafka, catalog, f


def test_not_before_the_hour_end_plus_lateness(tmp_path: Path) -> None:
    store, kafka, _, f = setup(tmp_path, END + 59)
    kafka.committed_ = {tp: 100 for tp in TPS}
    kafka.ends = {tp: 100 for tp in TPS}
    kafka.first_at = {tp: None for tp in TPS}
    assert asyncio.run(f.run_once()) == []
    assert store.get(success_key(SPEC.name, HOUR)) is None


def test_one_lagging_partition_holds_the_hour_open(tmp_path: Path) -> None:
    store, kafka, catalog, f = setup(tmp_path, END + 3600)
    kafka.first_at = {TPS[0]: 40, TPS[1]: 70}
    kafka.ends = {tp: 100 for tp in TPS}
    kafka.committed_ = {TPS[0]: 50, TPS[1]: 69}  # partition 1 has not passed offset 70
    assert asyncio.run(f.run_once()) == []
    assert f.candidates() == [HOUR]
    kafka.committed_[TPS[1]] = 70
    assert asyncio.run(f.run_once()) == [HOUR]
    assert store.get(success_key(SPEC.name, HOUR)) == b""
    assert store.get(final_key(SPEC.name, HOUR)) is not None
    assert catalog.params[HOUR] == {FINAL_PARAMETER: "true"}
    assert f.candidates() == []  # a restart does not finalize it again


def test_an_idle_partition_passes_only_when_caught_up(tmp_path: Path) -> None:
    _, kafka, _, f = setup(tmp_path, END + 3600)
    kafka.first_at = {TPS[0]: 10, TPS[1]: None}  # nothing newer than the hour in partition 1
    kafka.committed_ = {TPS[0]: 10, TPS[1]: 7}
    kafka.ends = {TPS[0]: 20, TPS[1]: 8}  # one record of partition 1 not committed yet
    kafka.records = {TPS[1]: [0, 1, 2, 3, 4, 5, 6, 7]}
    assert asyncio.run(f.run_once()) == []
    kafka.committed_[TPS[1]] = 8
    assert asyncio.run(f.run_once()) == [HOUR]


def test_an_idle_transactional_partition_passes_past_its_commit_marker(tmp_path: Path) -> None:
    _, kafka, _, f = setup(tmp_path, END + 3600)
    kafka.first_at = {TPS[0]: 10, TPS[1]: None}
    kafka.committed_ = {TPS[0]: 10, TPS[1]: 7}
    kafka.ends = {TPS[0]: 20, TPS[1]: 8}  # offset 7 is a transaction's commit marker
    kafka.records = {TPS[1]: [0, 1, 2, 3, 4, 5, 6]}
    assert asyncio.run(f.run_once()) == [HOUR]


def test_never_committed_is_not_passed(tmp_path: Path) -> None:
    _, kafka, _, f = setup(tmp_path, END + 3600)
    kafka.first_at = {tp: 0 for tp in TPS}
    kafka.ends = {tp: 5 for tp in TPS}
    assert asyncio.run(f.run_once()) == []


def test_two_finalizers_one_decision(tmp_path: Path) -> None:
    store, kafka, _, a = setup(tmp_path, END + 3600)
    kafka.first_at = {tp: None for tp in TPS}
    kafka.committed_ = kafka.ends = {tp: 5 for tp in TPS}
    b = Finalizer(SPEC, store, NoCatalog(), kafka, "g", 60.0, clock=lambda: END + 3600)

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(a.run_once(), b.run_once()))

    asyncio.run(both())
    finals = [k for k, _ in store.list(f"_sluice/{SPEC.name}/final/")]
    assert finals == [final_key(SPEC.name, HOUR)]
    assert [k for k, _ in store.list(f"{SPEC.name}/")] == [success_key(SPEC.name, HOUR)]


def test_partition_helpers() -> None:
    assert object_partition("app_logs/dt=2026-11-25/hr=05/t-00001-0.parquet", "app_logs") == HOUR
    start, end = partition_bounds(SPEC, HOUR)
    assert (start.hour, end.timestamp()) == (5, END)


@pytest.mark.parametrize(
    ("contract", "hive"),
    [
        ("timestamp[ms]", "timestamp"),
        ("timestamp[us]", "timestamp"),
        ("decimal(12,3)", "decimal(12,3)"),
        ("map<string,int64>", "map<string,bigint>"),
        ("list<struct<a:int32,b:binary>>", "array<struct<a:int,b:binary>>"),
        ("binary", "binary"),
    ],
)
def test_hive_types(contract: str, hive: str) -> None:
    assert hive_type(parse_type(contract)) == hive


def test_evolution_rules() -> None:
    cols = [(f.name, hive_type(f.type)) for f in SPEC.output_schema]
    assert compare_columns(SPEC, cols).problems == []
    older = [c for c in cols if c[0] != "status"]
    assert compare_columns(SPEC, older).added == [("status", "int")]
    retyped = [(n, "string" if n == "user_id" else t) for n, t in cols]
    assert any(
        "user_id" in p and "string -> bigint" in p for p in compare_columns(SPEC, retyped).problems
    )
    removed = [*cols, ("gone", "string")]
    assert any("'gone' was removed" in p for p in compare_columns(SPEC, removed).problems)
    without_required = [c for c in cols if c[0] != "event_id"]
    assert any("required" in p for p in compare_columns(SPEC, without_required).problems)
