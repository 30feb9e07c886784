"""TableWriter.write(cut) against a real local store and the app_logs contract; the DLQ
producer is a fake that records what it was sent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipelines import metrics
from pipelines.batching.buffer import SourceRecord
from pipelines.batching.partitions import Cut, CutConflictError
from pipelines.deadletter import DeadLetterWriter
from pipelines.decoders import get_decoder
from pipelines.tables import TableSpec, load_table
from pipelines.writers import table_writer
from pipelines.writers.manifest import Manifest, claim, manifest_key, read_manifest
from pipelines.writers.store import LocalStore
from pipelines.writers.table_writer import TableWriter

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TOPIC, PARTITION = "logs.app", 3
NOW = 1_764_043_200  # 2025-11-25T04:00:00Z, the injected wall clock (epoch s)
NOW_MS = NOW * 1000
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Rec:
    offset: int
    value: bytes | None
    key: bytes | None = None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "app_logs.yaml")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(f"file://{tmp_path}")


def make_writer(
    spec: TableSpec,
    store: LocalStore,
    clock: Clock | None = None,
    max_message_bytes: int = 1 << 20,
) -> tuple[TableWriter, FakeProducer]:
    producer = FakeProducer()
    writer = TableWriter(
        spec,
        get_decoder(spec.encoding, spec),
        store,
        "",
        DeadLetterWriter(producer, ".dlq"),
        max_message_bytes,
        wall_clock=clock or Clock(),
    )
    return writer, producer


def event(i: int, ts: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "ts": ts, "level": "INFO", "message": f"line {i}", **extra}


def as_rec(offset: int, obj: dict[str, Any] | bytes | None, key: bytes | None = None) -> Rec:
    value = obj if isinstance(obj, bytes | None) else json.dumps(obj).encode()
    return Rec(offset, value, key)


def make_cut(records: Sequence[SourceRecord], reason: str = "rows") -> Cut:
    return Cut(
        TOPIC,
        PARTITION,
        records[0].offset,
        list(records),
        reason,
        sum(len(r.value or b"") for r in records),
        0.0,
    )


def object_path(store: LocalStore, start: int, dt: str, hr: str) -> Path:
    return store.root / f"app_logs/dt={dt}/hr={hr}/{TOPIC}-{PARTITION:05d}-{start:020d}.parquet"


def parquet_keys(store: LocalStore) -> list[str]:
    return [k for k, _ in store.list("app_logs/")]


def rows_of(store: LocalStore) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key in parquet_keys(store):
        rows.extend(pq.read_table(store.root / key).to_pylist())
    return sorted(rows, key=lambda r: r["_offset"])


def sample_value(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def headers_of(sent: dict[str, Any]) -> dict[str, bytes]:
    return dict(sent["headers"])


# --- good records ---------------------------------------------------------------------------


async def test_good_records_land_in_one_object_per_hour_with_deterministic_keys(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(spec, store)
    events = [
        event(0, NOW_MS + 1, user_id=10**12, status=200, duration_ms=1.5, attrs={"a": "b"}),
        event(1, NOW_MS + HOUR_MS + 5, host="h1", trace_id="t" * 32),
        event(2, NOW_MS + 2, service="api", status=503),
    ]
    start = 1000
    cut = make_cut([as_rec(start + i, e) for i, e in enumerate(events)])
    await writer.write(cut)

    assert producer.sent == []
    assert parquet_keys(store) == [
        f"app_logs/dt=2025-11-25/hr=04/logs.app-00003-{start:020d}.parquet",
        f"app_logs/dt=2025-11-25/hr=05/logs.app-00003-{start:020d}.parquet",
    ]
    hr04 = pq.read_table(object_path(store, start, "2025-11-25", "04"))
    assert hr04.schema.equals(spec.output_schema)
    assert hr04.column("_offset").to_pylist() == [1000, 1002]
    assert pq.read_table(object_path(store, start, "2025-11-25", "05")).num_rows == 1

    rows = rows_of(store)
    assert len(rows) == len(events)
    for i, (row, ev) in enumerate(zip(rows, events, strict=True)):
        assert row["_partition"] == PARTITION
        assert row["_offset"] == start + i
        expected_ts = datetime.fromtimestamp(ev["ts"] / 1000, UTC)
        assert row["ts"] == expected_ts
        for name in spec.arrow_schema.names:
            if name == "ts":
                continue
            want = ev.get(name)
            if name == "attrs" and want is not None:
                want = list(want.items())
            assert row[name] == want, (i, name)


async def test_manifest_records_the_cut(spec: TableSpec, store: LocalStore) -> None:
    writer, _ = make_writer(spec, store)
    records = [as_rec(40, event(0, NOW_MS)), as_rec(41, b"not json"), as_rec(42, event(2, NOW_MS))]
    await writer.write(make_cut(records, reason="age"))

    path = store.root / f"_sluice/app_logs/manifests/logs.app/00003/{40:020d}.json"
    assert path.exists()
    manifest = read_manifest(store, "app_logs", TOPIC, PARTITION, 40)
    assert manifest is not None
    assert (manifest.start, manifest.end, manifest.reason) == (40, 42, "age")
    assert manifest.cut_time == NOW
    assert manifest.dead_lettered == 1
    assert [(o.key, o.rows) for o in manifest.objects] == [
        (f"app_logs/dt=2025-11-25/hr=04/logs.app-00003-{40:020d}.parquet", 2)
    ]


async def test_a_cut_of_only_bad_records_writes_no_object_but_a_manifest(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(spec, store)
    await writer.write(make_cut([as_rec(7, b"{"), as_rec(8, None)]))
    assert parquet_keys(store) == []
    assert len(producer.sent) == 2
    manifest = read_manifest(store, "app_logs", TOPIC, PARTITION, 7)
    assert manifest is not None
    assert (manifest.end, manifest.objects, manifest.dead_lettered) == (8, (), 2)


# --- dead letters ---------------------------------------------------------------------------


async def test_bad_records_go_to_the_dead_letter_topic_with_reason_and_source(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(spec, store, max_message_bytes=300)
    missing_id = event(3, NOW_MS)
    del missing_id["event_id"]
    records = [
        as_rec(10, event(0, NOW_MS)),
        as_rec(11, b'{"event_id": "e-1", "ts": ', key=b"k11"),
        as_rec(12, missing_id),
        as_rec(13, event(4, NOW_MS, status="two hundred")),
        as_rec(14, None, key=b"k14"),
        as_rec(15, event(6, NOW_MS, message="x" * 400)),
        as_rec(16, event(7, NOW_MS)),
    ]
    cut = make_cut(records)
    await writer.write(cut)

    expected = {
        11: "unparseable",
        12: "schema_violation",
        13: "schema_violation",
        14: "unparseable",
        15: "oversized",
    }
    assert [int(headers_of(s)["sluice.source.offset"]) for s in producer.sent] == list(expected)
    for sent in producer.sent:
        h = headers_of(sent)
        offset = int(h["sluice.source.offset"])
        assert sent["topic"] == "logs.app.dlq"
        assert h["sluice.reason"] == expected[offset].encode()
        assert h["sluice.table"] == b"app_logs"
        assert h["sluice.source.topic"] == TOPIC.encode()
        assert h["sluice.source.partition"] == b"3"
        assert h["sluice.detail"]
        original = records[offset - 10]
        assert (sent["value"], sent["key"]) == (original.value, original.key)
    assert b"event_id" in headers_of(producer.sent[1])["sluice.detail"]
    assert [r["_offset"] for r in rows_of(store)] == [10, 16]


# --- replays and conflicts ------------------------------------------------------------------


async def test_writing_the_same_cut_twice_yields_identical_objects(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(spec, store)
    cut = make_cut(
        [as_rec(5, event(0, NOW_MS)), as_rec(6, b"[]"), as_rec(7, event(2, NOW_MS + HOUR_MS))]
    )
    await writer.write(cut)
    first = {k: (store.root / k).read_bytes() for k in parquet_keys(store)}
    manifest_before = store.get(manifest_key("app_logs", TOPIC, PARTITION, 5))

    await writer.write(cut)
    second = {k: (store.root / k).read_bytes() for k in parquet_keys(store)}
    assert len(first) == 2
    assert second == first
    assert store.get(manifest_key("app_logs", TOPIC, PARTITION, 5)) == manifest_before
    assert len(producer.sent) == 2  # dead letters are at least once: sent again


async def test_a_recorded_cut_with_another_end_raises_cut_conflict(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(spec, store)
    await writer.write(make_cut([as_rec(i, event(i, NOW_MS)) for i in range(20, 25)]))
    producer.sent.clear()
    keys_before = parquet_keys(store)

    longer = make_cut([as_rec(i, b"{") for i in range(20, 30)])
    with pytest.raises(CutConflictError) as info:
        await writer.write(longer)
    assert info.value.standing_end == 24
    assert producer.sent == []
    assert parquet_keys(store) == keys_before

    shorter = make_cut([as_rec(i, event(i, NOW_MS)) for i in range(20, 22)])
    with pytest.raises(CutConflictError) as info:
        await writer.write(shorter)
    assert info.value.standing_end == 24


class RacingStore(LocalStore):
    """Another owner claims the manifest between our read and our claim."""

    def __init__(self, url: str, theirs: Manifest) -> None:
        super().__init__(url)
        self.theirs: Manifest | None = theirs

    def get(self, key: str) -> bytes | None:
        data = super().get(key)
        if self.theirs is not None and key.endswith(".json"):
            claim(LocalStore(self.url), self.theirs)
            self.theirs = None
        return data


@pytest.mark.parametrize(("their_end", "their_time"), [(12, NOW), (11, NOW - 5)])
async def test_losing_the_manifest_race_raises_cut_conflict(
    spec: TableSpec, tmp_path: Path, their_end: int, their_time: int
) -> None:
    theirs = Manifest("app_logs", TOPIC, PARTITION, 10, their_end, (), 0, "rows", their_time)
    store = RacingStore(f"file://{tmp_path}", theirs)
    writer, producer = make_writer(spec, store)
    with pytest.raises(CutConflictError) as info:
        await writer.write(make_cut([as_rec(i, event(i, NOW_MS)) for i in range(10, 12)]))
    assert info.value.standing_end == their_end
    assert producer.sent == []
    assert parquet_keys(store) == []


# --- the late/early window ------------------------------------------------------------------


def windowed(spec: TableSpec, policy: str) -> TableSpec:
    return dataclasses.replace(
        spec, max_past=timedelta(hours=2), max_future=timedelta(minutes=10), late_policy=policy
    )


def window_records() -> list[Rec]:
    return [
        as_rec(0, event(0, NOW_MS)),
        as_rec(1, event(1, NOW_MS - 2 * HOUR_MS - 1000)),  # late by one second
        as_rec(2, event(2, NOW_MS - 2 * HOUR_MS)),  # exactly on the edge: kept
        as_rec(3, event(3, NOW_MS + 10 * 60_000 + 1000)),  # early by one second
        as_rec(4, event(4, NOW_MS + 10 * 60_000)),  # edge: kept
    ]


async def test_late_and_early_records_are_dead_lettered_under_that_policy(
    spec: TableSpec, store: LocalStore
) -> None:
    writer, producer = make_writer(windowed(spec, "dead_letter"), store)
    await writer.write(make_cut(window_records()))
    reasons = {
        int(headers_of(s)["sluice.source.offset"]): headers_of(s)["sluice.reason"]
        for s in producer.sent
    }
    assert reasons == {1: b"late", 3: b"early"}
    assert [r["_offset"] for r in rows_of(store)] == [0, 2, 4]


async def test_late_and_early_records_are_written_and_counted_under_write(
    spec: TableSpec, store: LocalStore
) -> None:
    labels = {"table": "app_logs", "policy": "write"}
    late0 = sample_value("sluice_late_records_total", {**labels, "kind": "late"})
    early0 = sample_value("sluice_late_records_total", {**labels, "kind": "early"})
    writer, producer = make_writer(windowed(spec, "write"), store)
    await writer.write(make_cut(window_records()))
    assert producer.sent == []
    assert [r["_offset"] for r in rows_of(store)] == [0, 1, 2, 3, 4]
    assert sample_value("sluice_late_records_total", {**labels, "kind": "late"}) == late0 + 1
    assert sample_value("sluice_late_records_total", {**labels, "kind": "early"}) == early0 + 1


async def test_replays_judge_the_window_against_the_recorded_cut_time(
    spec: TableSpec, store: LocalStore
) -> None:
    clock = Clock()
    writer, producer = make_writer(windowed(spec, "dead_letter"), store, clock)
    cut = make_cut(window_records())
    await writer.write(cut)
    rows_first = rows_of(store)
    letters_first = [headers_of(s)["sluice.source.offset"] for s in producer.sent]
    producer.sent.clear()

    clock.now = NOW + 3 * 3600  # now every record but offset 3 would be late
    await writer.write(cut)
    assert rows_of(store) == rows_first
    assert [r["_offset"] for r in rows_first] == [0, 2, 4]
    assert [headers_of(s)["sluice.source.offset"] for s in producer.sent] == letters_first
    manifest = read_manifest(store, "app_logs", TOPIC, PARTITION, 0)
    assert manifest is not None
    assert manifest.cut_time == NOW


async def test_a_cut_decoded_in_chunks_equals_one_decoded_whole(
    spec: TableSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [as_rec(100 + i, event(i, NOW_MS + i)) for i in range(40)]
    records[7] = as_rec(107, b"{broken")  # a reject inside a later chunk keeps its offset
    records[23] = as_rec(123, None)
    whole_store = LocalStore(f"file://{tmp_path / 'whole'}")
    writer, whole_letters = make_writer(spec, whole_store)
    await writer.write(make_cut(records))

    monkeypatch.setattr(table_writer, "DECODE_CHUNK_BYTES", 200)  # a few records per chunk
    chunked_store = LocalStore(f"file://{tmp_path / 'chunked'}")
    writer, chunked_letters = make_writer(spec, chunked_store)
    await writer.write(make_cut(records))

    assert rows_of(chunked_store) == rows_of(whole_store)
    assert [r["_offset"] for r in rows_of(chunked_store)] == [
        r.offset for r in records if r.offset not in (107, 123)
    ]
    offsets = [int(headers_of(s)["sluice.source.offset"]) for s in chunked_letters.sent]
    assert (
        offsets
        == [107, 123]
        == [int(headers_of(s)["sluice.source.offset"]) for s in whole_letters.sent]
    )
