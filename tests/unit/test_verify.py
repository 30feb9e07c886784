"""verify's helpers: offset runs and time parsing."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from pipelines.backfill.cli import parse_time
from pipelines.backfill.verify import Report, _ranges


def test_runs_of_offsets() -> None:
    assert _ranges([7, 3, 4, 5, 9]) == [(3, 5), (7, 7), (9, 9)]
    assert _ranges([]) == []


def test_times_are_utc_and_bad_ones_explained() -> None:
    assert parse_time("2026-11-25T05:00") == datetime(2026, 11, 25, 5, tzinfo=UTC)
    assert parse_time("2026-11-25T05:00Z") == datetime(2026, 11, 25, 5, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO time"):
        parse_time("yesterday")


def test_report_is_ok_only_without_findings() -> None:
    r = Report(checked={("t", 0): (0, 10)}, rows=10)
    assert r.ok and r.lines()[-1] == "OK: every offset exactly once"
    r.gaps.append("t[0] offsets 3-4 (2) in no object")
    assert not r.ok and r.lines()[-1] == "MISMATCH"
