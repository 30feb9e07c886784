"""Cut manifests: keys, JSON round trip, corruption, and first-writer-wins claims."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines.errors import TerminalError
from pipelines.writers.manifest import (
    Manifest,
    ObjectEntry,
    claim,
    manifest_key,
    manifest_prefix,
    read_manifest,
)
from pipelines.writers.store import LocalStore

MINE = Manifest(
    table="app_logs",
    topic="logs.app",
    partition=3,
    start=120,
    end=199,
    objects=(
        ObjectEntry("app_logs/dt=2025-11-25/hr=04/logs.app-00003-00000000000000000120.parquet", 70),
        ObjectEntry("app_logs/dt=2025-11-25/hr=05/logs.app-00003-00000000000000000120.parquet", 8),
    ),
    dead_lettered=2,
    reason="rows",
    cut_time=1_764_043_200,
)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(f"file://{tmp_path}")


def test_keys_are_zero_padded_and_sort_by_offset() -> None:
    assert (
        manifest_prefix("app_logs", "logs.app", 3) == "_sluice/app_logs/manifests/logs.app/00003/"
    )
    assert (
        manifest_key("app_logs", "logs.app", 3, 120)
        == "_sluice/app_logs/manifests/logs.app/00003/00000000000000000120.json"
    )
    starts = [9, 10, 100, 2**40]
    keys = [manifest_key("t", "x", 0, s) for s in starts]
    assert sorted(keys) == keys


def test_json_round_trip_is_exact_and_deterministic() -> None:
    data = MINE.to_json()
    assert Manifest.from_json(data) == MINE
    assert dataclasses.replace(MINE).to_json() == data
    doc = json.loads(data)
    assert doc["objects"][1] == {"key": MINE.objects[1].key, "rows": 8}
    assert list(doc) == sorted(doc)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"[]",
        b"42",
        b'{"table": "app_logs"}',
        MINE.to_json().replace(b'"end": 199', b'"end": "soon"'),
        MINE.to_json().replace(b'"rows": 8', b'"rows": null'),
        b"\xff\xfe",
    ],
)
def test_a_corrupt_manifest_is_terminal(data: bytes) -> None:
    with pytest.raises(TerminalError, match="corrupt manifest"):
        Manifest.from_json(data)


def test_read_manifest(store: LocalStore) -> None:
    assert read_manifest(store, "app_logs", "logs.app", 3, 120) is None
    store.put(manifest_key("app_logs", "logs.app", 3, 120), MINE.to_json())
    assert read_manifest(store, "app_logs", "logs.app", 3, 120) == MINE
    assert read_manifest(store, "app_logs", "logs.app", 4, 120) is None
    store.put(manifest_key("app_logs", "logs.app", 3, 200), b"garbage")
    with pytest.raises(TerminalError):
        read_manifest(store, "app_logs", "logs.app", 3, 200)


def test_claim_first_writer_wins(store: LocalStore) -> None:
    assert claim(store, MINE) == MINE
    theirs = dataclasses.replace(MINE, end=150, cut_time=MINE.cut_time + 60, objects=())
    assert claim(store, theirs) == MINE
    assert store.get(manifest_key("app_logs", "logs.app", 3, 120)) == MINE.to_json()
    # a replay of the same cut claims nothing new but is told the same manifest
    assert claim(store, MINE) == MINE


class VanishingStore(LocalStore):
    """The manifest disappears right after a failed claim, ``times`` times."""

    def __init__(self, url: str, times: int) -> None:
        super().__init__(url)
        self.times = times

    def get(self, key: str) -> bytes | None:
        if self.times:
            self.times -= 1
            self.delete(key)
            return None
        return super().get(key)


def test_claim_retries_once_when_the_standing_manifest_vanishes(tmp_path: Path) -> None:
    store = VanishingStore(f"file://{tmp_path}", times=1)
    store.put(manifest_key("app_logs", "logs.app", 3, 120), b"someone else's")
    assert claim(store, MINE) == MINE
    assert LocalStore(store.url).get(manifest_key("app_logs", "logs.app", 3, 120)) == MINE.to_json()


def test_claim_gives_up_when_the_manifest_vanishes_twice(tmp_path: Path) -> None:
    class Flapping(VanishingStore):
        def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
            super().put(key, b"other", if_absent=False)  # someone always beats us to it
            return False

    store = Flapping(f"file://{tmp_path}", times=2)
    with pytest.raises(TerminalError, match="vanished twice"):
        claim(store, MINE)
