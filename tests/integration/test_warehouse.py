"""The warehouse sink end to end: real Kafka, real S3, real worker processes."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime

import pyarrow as pa
from aiokafka import AIOKafkaConsumer

from tests.sinkkit import (
    app_log,
    create_topic,
    encode,
    free_port,
    produce,
    read_table,
    scrape,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"


async def test_table_equals_produced_records(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic, parts, n = f"{unique}.logs", 3, 6000
    await create_topic(bootstrap, topic, parts)
    records = {i: app_log(i) for i in range(n)}
    sent = await produce(bootstrap, topic, ((i % parts, encode(records[i])) for i in range(n)))
    by_offset = {k: json.loads(v) for k, v in sent.items() if v is not None}
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        f"{unique}-g",
        rotation={"max_rows": 1500, "max_age": "2s"},
    )
    port = free_port()
    config.write_text(config.read_text().replace("port: 0", f"port: {port}"))
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(parts)}
        await wait_committed(bootstrap, f"{unique}-g", topic, ends, 90, [worker])
        # The worker's Prometheus endpoint counts what it did.
        await asyncio.sleep(1.5)  # one metrics tick after the last commit
        scraped = scrape(port)
        assert scraped['sluice_records_in_total{table="app_logs"}'] == n
        assert scraped['sluice_records_written_total{table="app_logs"}'] == n
        assert scraped['sluice_objects_written_total{table="app_logs"}'] >= 4
        assert scraped["sluice_buffered_bytes"] == 0
        for p in range(parts):
            assert scraped[f'sluice_consumer_lag{{partition="{p}",topic="{topic}"}}'] == 0
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    table, keys = read_table(s3, BUCKET, f"{unique}/app_logs/")
    assert table.num_rows == n
    assert all(k.startswith(f"{unique}/app_logs/dt=") for k in keys)
    assert all(k.split("/")[-1].startswith(f"{topic}-0000") for k in keys)
    seen = set()
    for row in table.to_pylist():
        key = (row["_partition"], row["_offset"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        want = by_offset[key]
        ts = row["ts"]
        assert int(ts.timestamp() * 1000) == want["ts"]
        when = datetime.fromtimestamp(want["ts"] / 1000, UTC)
        assert (row["dt"], row["hr"]) == (f"{when:%Y-%m-%d}", f"{when:%H}")
        for field in (
            "event_id",
            "level",
            "service",
            "host",
            "message",
            "trace_id",
            "user_id",
            "duration_ms",
            "status",
        ):
            assert row[field] == want[field], (field, row[field], want[field])
        got_attrs = dict(row["attrs"]) if row["attrs"] is not None else None
        assert got_attrs == want["attrs"]
    assert seen == set(by_offset)
    # Types as declared, plus the Kafka coordinates.
    schema = table.schema
    assert str(schema.field("ts").type).startswith("timestamp[ms")
    assert str(schema.field("user_id").type) == "int64"
    assert str(schema.field("status").type) == "int32"
    attrs = schema.field("attrs").type
    assert pa.types.is_map(attrs) and attrs.key_type == attrs.item_type == pa.string()
    assert str(schema.field("_partition").type) == "int32"
    assert str(schema.field("_offset").type) == "int64"
    # A manifest per cut, tiling each partition's offsets without gaps or overlaps.
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/_sluice/app_logs/manifests/")
    cuts: dict[int, list[tuple[int, int]]] = {}
    for obj in listed["Contents"]:
        m = json.loads(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
        cuts.setdefault(m["partition"], []).append((m["start"], m["end"]))
    for p, spans in cuts.items():
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == ends[p] - 1
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))


async def test_bad_input_is_dead_lettered_with_reasons(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic = f"{unique}.logs"
    await create_topic(bootstrap, topic, 1)
    good = [encode(app_log(i)) for i in range(10)]
    bad: list[tuple[bytes | None, str]] = [
        (b"{not json", "unparseable"),
        (None, "unparseable"),
        (encode({**app_log(100), "event_id": None}), "schema_violation"),
        (encode({k: v for k, v in app_log(101).items() if k != "event_id"}), "schema_violation"),
        (encode({**app_log(102), "user_id": "abc"}), "schema_violation"),
        (encode({**app_log(103), "status": 2**40}), "schema_violation"),
        (encode({**app_log(104), "message": "m" * 5000}), "oversized"),
        (encode({**app_log(105), "ts": "yesterday"}), "bad_timestamp"),
        (encode({k: v for k, v in app_log(106).items() if k != "ts"}), "bad_timestamp"),
        (b"[1, 2, 3]", "unparseable"),
        (encode({**app_log(107), "ts": 10**15 * 1000}), "bad_timestamp"),
    ]
    values: list[bytes | None] = []
    for i, (value, _) in enumerate(bad):
        values += [good[i % len(good)], value]
    values.append(encode({**app_log(200), "ts": 1_000_000_000_000}))  # 2001: late, policy
    sent = await produce(bootstrap, topic, ((0, v) for v in values))
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        f"{unique}-g",
        max_message_size="4KiB",
        # The good records are from 2026-11-18 (BASE_TS): a window that keeps them for years;
        # the 2001 record stays late.
        late_data={"max_past": "3650d", "max_future": "1h", "policy": "dead_letter"},
    )
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        await wait_committed(bootstrap, f"{unique}-g", topic, {0: len(values)}, 90, [worker])
        assert worker.poll() is None  # bad input never crashes the worker
    finally:
        stop_worker(worker)

    consumer = AIOKafkaConsumer(
        f"{topic}.dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    letters = []
    try:
        async with asyncio.timeout(30):
            while len(letters) < len(bad) + 1:
                for recs in (await consumer.getmany(timeout_ms=1000)).values():
                    letters += recs
    finally:
        await consumer.stop()
    by_offset = {}
    for rec in letters:
        h = {k: v.decode() for k, v in rec.headers}
        assert h["sluice.table"] == "app_logs"
        assert h["sluice.source.topic"] == topic
        assert h["sluice.source.partition"] == "0"
        by_offset[int(h["sluice.source.offset"])] = (h["sluice.reason"], rec.value)
    want = {o: r for (_, o), r in zip(sorted(sent), [None] * len(values), strict=True)}
    bad_offsets = [2 * i + 1 for i in range(len(bad))]
    for offset, (value, reason) in zip(bad_offsets, bad, strict=True):
        assert by_offset[offset] == (reason, value), offset
    assert by_offset[len(values) - 1][0] == "late"
    assert len(by_offset) == len(bad) + 1 and len(want) == len(values)
    table, keys = read_table(s3, BUCKET, f"{unique}/app_logs/")
    assert sorted(table.column("_offset").to_pylist()) == [2 * i for i in range(len(bad))]
    assert all(k.startswith(f"{unique}/app_logs/dt=") for k in keys)


async def test_values_never_escape_the_table_prefix(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic = f"{unique}.logs"
    await create_topic(bootstrap, topic, 1)
    hostile = ["../../../etc/passwd", "a/b", "dt=1970-01-01/hr=00", "\x00\x1f", "%2e%2e"]
    values = [
        encode({**app_log(i), "event_id": h, "service": h, "host": h})
        for i, h in enumerate(hostile)
    ]
    values += [encode({**app_log(9), "ts": -5_000_000_000_000})]  # 1811: out of range, DLQ
    await produce(bootstrap, topic, ((0, v) for v in values))
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}/inner",
        f"{unique}-g",
        late_data={"max_past": "36500d", "max_future": "1h", "policy": "write"},
    )
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        await wait_committed(bootstrap, f"{unique}-g", topic, {0: len(values)}, 90, [worker])
    finally:
        stop_worker(worker)
    every = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/")["Contents"]
    assert every and all(o["Key"].startswith(f"{unique}/inner/") for o in every)
    table, keys = read_table(s3, BUCKET, f"{unique}/inner/app_logs/")
    assert sorted(table.column("event_id").to_pylist()) == sorted(hostile)  # kept as data
    assert all(k.count("/") == 5 for k in keys), keys  # inner/app_logs/dt/hr/file


async def _produce_in_transaction(bootstrap: str, topic: str, values: list[bytes], tid: str) -> int:
    """Produce ``values`` to partition 0 in one transaction; returns the last offset."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    await producer.start()
    try:
        async with producer.transaction():
            futures = [await producer.send(topic, v, partition=0) for v in values]
        return max([(await f).offset for f in futures])
    finally:
        await producer.stop()


async def test_a_transactional_topic_is_resumed_past_its_commit_markers(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    """A transaction's commit marker takes an offset no consumer sees: the committed offset
    (last record + 1) is the marker's, and a new owner's first record lies past it. The
    worker must carry on from there, not seek back to the marker again and again."""
    topic, group = f"{unique}.logs", f"{unique}-g"
    await create_topic(bootstrap, topic, 1)
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
        rotation={"max_rows": 10, "max_age": "1s"},
    )
    first = [encode(app_log(i)) for i in range(10)]
    last = await _produce_in_transaction(bootstrap, topic, first, f"{unique}-t")
    assert last == 9  # the marker is offset 10
    worker = start_worker(config, tmp_path / "w1.log", subprocess_env)
    try:
        await wait_committed(bootstrap, group, topic, {0: 10}, 90, [worker])
    finally:
        assert stop_worker(worker) == 0
    second = [encode(app_log(i)) for i in range(10, 20)]
    last = await _produce_in_transaction(bootstrap, topic, second, f"{unique}-t")
    assert last == 20  # records 11-20, marker 21; the group's committed offset is 10
    worker = start_worker(config, tmp_path / "w2.log", subprocess_env)
    try:
        await wait_committed(bootstrap, group, topic, {0: 21}, 60, [worker])
    finally:
        assert stop_worker(worker) == 0
    table, _ = read_table(s3, BUCKET, f"{unique}/app_logs/")
    assert sorted(table.column("_offset").to_pylist()) == [*range(10), *range(11, 21)]
    assert "seeking back" not in (tmp_path / "w2.log").read_text()
