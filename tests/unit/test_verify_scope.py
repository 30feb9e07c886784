"""``verify_table`` reads the partitions the range's cuts wrote to, not the whole table;
``full`` reads everything. Objects and manifests are written by hand into a local store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa

from pipelines.backfill.verify import Report, verify_table
from pipelines.tables import load_table
from pipelines.writers.layout import object_key
from pipelines.writers.manifest import Manifest, ObjectEntry, claim
from pipelines.writers.parquet import encode_parquet
from pipelines.writers.store import LocalStore

REPO = Path(__file__).resolve().parents[2]
SPEC = load_table(REPO / "schemas" / "app_logs.yaml")
TOPIC = SPEC.topics[0]


def hour(h: int) -> str:
    return f"dt=2026-11-25/hr={h:02d}"


def rows(lo: int, hi: int) -> bytes:
    offsets = pa.array(range(lo, hi), pa.int64())
    parts = pa.array([0] * (hi - lo), pa.int32())
    return encode_parquet(pa.table({"_partition": parts, "_offset": offsets}))


def cut(store: LocalStore, start: int, pieces: list[tuple[int, int, int]]) -> list[str]:
    """One cut of partition 0 starting at ``start``: (hour, lo, hi) per object."""
    keys, entries = [], []
    for h, lo, hi in pieces:
        key = object_key("", SPEC.name, hour(h), TOPIC, 0, start).lstrip("/")
        store.put(key, rows(lo, hi))
        keys.append(key)
        entries.append(ObjectEntry(key, hi - lo))
    end = max(hi for _, _, hi in pieces) - 1
    claim(store, Manifest(SPEC.name, TOPIC, 0, start, end, tuple(entries), 0, "rows", 0))
    return keys


def check(store: LocalStore, lo: int, hi: int, full: bool = False) -> Report:
    return verify_table(SPEC, store, {(TOPIC, 0): (lo, hi)}, {}, full=full)


def test_verify_reads_only_the_partitions_of_the_range(tmp_path: Path) -> None:
    store = LocalStore(f"file://{tmp_path}")
    cut(store, 0, [(5, 0, 100)])
    # The range's cut left rows in two hours; hour 6 also holds a row of a later cut.
    b = cut(store, 100, [(6, 100, 190), (7, 190, 200)])
    cut(store, 200, [(6, 200, 201), (8, 201, 300)])
    cut(store, 300, [(9, 300, 400)])

    narrow = check(store, 100, 200)
    assert narrow.ok, narrow.lines()
    assert (narrow.rows, narrow.objects_read, narrow.partitions_read) == (100, 3, 2)
    whole = check(store, 100, 200, full=True)
    assert whole.ok, whole.lines()
    assert (whole.rows, whole.objects_read, whole.partitions_read) == (100, 6, 5)

    # A copy next to the range's own objects is found either way.
    copy = b[0].rsplit("/", 1)[0] + "/copy.parquet"
    shutil.copy(tmp_path / b[0], tmp_path / copy)
    doubled = check(store, 100, 200)
    assert not doubled.ok
    assert doubled.unreferenced_objects == [copy]
    assert any("offset 100 in" in d and "copy.parquet" in d for d in doubled.duplicates)
    (tmp_path / copy).unlink()

    # A stray copy in an hour no cut of the range wrote to: only --full reads it.
    stray = f"{SPEC.name}/{hour(9)}/stray.parquet"
    shutil.copy(tmp_path / b[1], tmp_path / stray)
    assert check(store, 100, 200).ok
    whole = check(store, 100, 200, full=True)
    assert whole.unreferenced_objects == [stray]
    assert len(whole.duplicates) == 10
    (tmp_path / stray).unlink()

    # A deleted object of the range: missing, and its rows a gap.
    (tmp_path / b[1]).unlink()
    gone = check(store, 100, 200)
    assert [m.split(" ", 1)[0] for m in gone.missing_objects] == [b[1]]
    assert gone.gaps == [f"{TOPIC}[0] offsets 190-199 (10) in no object"]
