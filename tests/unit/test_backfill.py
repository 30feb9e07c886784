"""Backfill parts without servers: plans, retention, partition locations, carry-over, filters."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.backfill.plan import (
    PartitionState,
    Plan,
    hours_between,
    retention_problems,
)
from pipelines.backfill.progress import Progress
from pipelines.backfill.rebuild import ChunkResult
from pipelines.backfill.swap import _carry_over, check_moves
from pipelines.backfill.traces_replay import SpanFilter
from pipelines.catalog.locations import (
    Location,
    check_run_id,
    current_prefix,
    expire_replaced,
    follow_location,
    generation_prefix,
    record_replaced,
    record_swap,
)
from pipelines.errors import TerminalError
from pipelines.tables import load_table
from pipelines.writers.parquet import encode_parquet
from pipelines.writers.store import LocalStore

REPO = Path(__file__).resolve().parents[2]
SPEC = load_table(REPO / "schemas" / "app_logs.yaml")
T = SPEC.name
HOUR = "dt=2026-11-25/hr=05"


def at(h: int, m: int = 0) -> datetime:
    return datetime(2026, 11, 25, h, m, tzinfo=UTC)


def test_hours_between_whole_hours_only() -> None:
    assert hours_between(SPEC, at(4), at(6)) == ["dt=2026-11-25/hr=04", HOUR]
    with pytest.raises(TerminalError, match=r"--from .* is not on an hour boundary"):
        hours_between(SPEC, at(4, 30), at(6))
    with pytest.raises(TerminalError, match="--to must be after --from"):
        hours_between(SPEC, at(6), at(6))


def test_plan_chunks_cover_each_range_once_and_round_trip() -> None:
    plan = Plan(
        "r",
        T,
        at(4).isoformat(),
        at(6).isoformat(),
        (HOUR,),
        {("t", 0): (10, 35), ("t", 1): (5, 5)},
        10,
    )
    assert plan.chunks() == [("t", 0, 10, 20), ("t", 0, 20, 30), ("t", 0, 30, 35)]
    assert plan.records == 25
    assert Plan.from_json(plan.to_json()) == plan


def state(earliest: int, when: datetime | None) -> PartitionState:
    return PartitionState(earliest, when, 1000, 1000, 0, 1000)


def test_retention_names_the_hours_gone_and_the_first_that_can_be_rebuilt() -> None:
    hours = hours_between(SPEC, at(3), at(6))
    states = {("t", 0): state(120, at(4, 5)), ("t", 1): state(0, at(2))}
    lines = retention_problems(SPEC, hours, states, timedelta(minutes=10))
    assert lines[0].startswith("2 of the 3 partitions are no longer (fully) in Kafka: ")
    assert "dt=2026-11-25/hr=03, dt=2026-11-25/hr=04" in lines[0]
    assert "t[0] keeps records from 2026-11-25T04:05:00+00:00 (offset 120)" in lines[1]
    assert lines[-1].split("starts at ")[1].startswith("2026-11-25T05:00:00+00:00")
    # Nothing deleted (log start 0): nothing refused, however old the hours.
    assert retention_problems(SPEC, hours, {("t", 0): state(0, at(4, 5))}, timedelta(0)) == []
    # The whole log deleted (start == end): every hour before now is gone.
    emptied = {("t", 0): PartitionState(1000, None, 1000, 1000, 1000, 1000)}
    lines = retention_problems(SPEC, hours, emptied, timedelta(0), now=at(7))
    assert lines[0].startswith("3 of the 3 partitions are no longer (fully) in Kafka")
    assert "t[0] keeps no records (offsets 0-999 deleted)" in lines[1]
    assert lines[-1].split("starts at ")[1].startswith("2026-11-25T07:00:00+00:00")


def test_run_ids_cannot_escape_or_look_like_partitions() -> None:
    assert check_run_id("20261125t0400-x") == "20261125t0400-x"
    for bad in ("", "a/b", "dt=1", "..", "-x", "A"):
        with pytest.raises(TerminalError):
            check_run_id(bad)


def test_a_live_write_follows_a_swapped_partition_and_expiry_keeps_current(tmp_path: Path) -> None:
    store = LocalStore(tmp_path.as_uri())
    live = f"{T}/{HOUR}/logs-00000-00000000000000000100.parquet"
    store.put(live, b"late rows")
    assert follow_location(store, T, HOUR, live) == []  # not swapped: stays where it is
    new = generation_prefix(T, "r1", HOUR)
    loc = Location(new, "r1", f"{T}/{HOUR}", 1000.0)
    record_swap(store, T, HOUR, loc)
    assert current_prefix(store, T, HOUR) == new
    # Killed before the catalog swap: the old directory is not replaced yet, however late.
    assert expire_replaced(store, T, 60, clock=lambda: 10**10) == []
    assert store.get(live) == b"late rows"
    record_replaced(store, T, HOUR, loc, clock=lambda: 1000.0)
    assert follow_location(store, T, HOUR, live) == [
        f"{new}/logs-00000-00000000000000000100.parquet"
    ]
    assert store.get(f"{new}/logs-00000-00000000000000000100.parquet") == b"late rows"
    # Within the grace period nothing goes; after it, the old directory does, the new stays.
    assert expire_replaced(store, T, 60, clock=lambda: 1030.0) == []
    assert expire_replaced(store, T, 60, clock=lambda: 1061.0) == [f"{T}/{HOUR}"]
    assert store.get(live) is None
    assert store.get(f"{new}/logs-00000-00000000000000000100.parquet") == b"late rows"
    assert list(store.list(f"_sluice/{T}/replaced/")) == []


def test_expiry_deletes_only_a_directory_of_the_partition(tmp_path: Path) -> None:
    store = LocalStore(tmp_path.as_uri())
    other = f"{T}/dt=2026-11-25/hr=06"
    store.put(f"{other}/a.parquet", b"rows of another hour")
    gen = generation_prefix(T, "r2", HOUR)
    # A corrupt (or hand-edited) record naming another partition's directory.
    record_replaced(store, T, HOUR, Location(gen, "r2", other, 0.0), clock=lambda: 0.0)
    assert expire_replaced(store, T, 60, clock=lambda: 100.0) == []
    assert store.get(f"{other}/a.parquet") == b"rows of another hour"
    assert list(store.list(f"_sluice/{T}/replaced/")) == []


def rows(offsets: list[int]) -> bytes:
    return encode_parquet(
        pa.table(
            {
                "_partition": pa.array([0] * len(offsets), pa.int32()),
                "_offset": pa.array(offsets, pa.int64()),
            }
        )
    )


def offsets(store: LocalStore, key: str) -> list[int]:
    data = store.get(key)
    assert data is not None
    return pq.read_table(io.BytesIO(data)).column("_offset").to_pylist()


def test_carry_over_keeps_rows_outside_the_reread_range_under_stable_names(tmp_path: Path) -> None:
    store = LocalStore(tmp_path.as_uri())
    old = f"{T}/{HOUR}"
    name = "logs-{:05d}-{:020d}.parquet".format
    store.put(f"{old}/{name(0, 0)}", rows([0, 5, 12, 30]))  # straddles both ends
    store.put(f"{old}/{name(0, 40)}", rows([40, 41]))  # all after: copied as is
    store.put(f"{old}/{name(0, 12)}", rows([12, 13]))  # all re-read: dropped
    store.put(f"{old}/{name(1, 3)}", rows([3]))  # a partition the run did not read
    # A cut that began at 10 (a chunk's start) but left this hour only rows after the range:
    # named by its first row, so it cannot overwrite the rebuilt chunk object named 10.
    store.put(f"{old}/{name(0, 10)}", rows([25, 26]))
    plan = Plan("r", T, "", "", (HOUR,), {("logs", 0): (10, 20)}, 100)
    new = generation_prefix(T, "r", HOUR)
    chunk = f"{new}/{name(0, 10)}"
    store.put(chunk, rows([10, 11]))
    carried, written = _carry_over(store, plan, old, new)
    assert carried == 8
    assert {k.rsplit("/", 1)[1]: n for k, n in written} == {
        name(0, 0): 2,
        name(0, 25): 2,
        name(0, 30): 1,
        name(0, 40): 2,
        name(1, 3): 1,
    }
    assert offsets(store, chunk) == [10, 11]
    assert offsets(store, f"{new}/{name(0, 0)}") == [0, 5]
    assert offsets(store, f"{new}/{name(0, 30)}") == [30]
    assert store.get(f"{new}/{name(0, 40)}") == store.get(f"{old}/{name(0, 40)}")
    assert store.get(f"{new}/{name(0, 12)}") is None


def test_span_filter_parses_and_matches() -> None:
    with pytest.raises(TerminalError, match="32 hex digits"):
        SpanFilter.parse("abc", [])
    with pytest.raises(TerminalError, match="key=value"):
        SpanFilter.parse(None, ["service.name"])
    f = SpanFilter.parse("00" * 15 + "01", ["service.name=api"])
    assert f.trace_id == bytes(15) + b"\x01" and f.where == (("service.name", "api"),)


def test_progress_rate_counts_only_this_process() -> None:
    now = [0.0]
    out = io.StringIO()
    p = Progress(1000, out=out, every=0.0, clock=lambda: now[0])
    p.skip(500)
    now[0] = 10.0
    p.advance(100)
    assert "600/1,000 records (60%) 10 records/s, ETA 0:00:40" in out.getvalue()
    assert json.dumps(p.done) == "600"


def test_rows_that_would_leave_the_rebuilt_hours_stop_the_swap(tmp_path: Path) -> None:
    store = LocalStore(tmp_path.as_uri())
    name = "logs-{:05d}-{:020d}.parquet".format
    store.put(f"{T}/{HOUR}/{name(0, 0)}", rows([8, 10, 11, 12, 13]))
    plan = Plan("r", T, "", "", (HOUR,), {("logs", 0): (10, 20)}, 100)
    rebuilt = f"{generation_prefix(T, 'r', HOUR)}/{name(0, 10)}"
    store.put(rebuilt, rows([10, 12]))
    chunk = ("logs", 0, 10, 20)
    result = ChunkResult({HOUR: [(rebuilt, 2)]}, 10, [11], 0)
    before, problems = check_moves(store, SPEC, plan, {chunk: result})
    assert before == {HOUR: 5}
    assert len(problems) == 1 and "logs[0]@13 (now in dt=2026-11-25/hr=05)" in problems[0]
    assert "@11" not in problems[0] and "@8" not in problems[0]  # dead-lettered; not re-read
    store.put(rebuilt, rows([10, 12, 13]))
    assert check_moves(store, SPEC, plan, {chunk: result})[1] == []
