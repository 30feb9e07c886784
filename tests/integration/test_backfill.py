"""`sluice backfill warehouse` against the real stack: an hour written with a bug is rebuilt
while the sink runs; readers (Trino and Spark through the metastore, in loops) see the old
hour or the new one and never a mix; a killed job resumes to the same bytes; ranges beyond
retention are refused.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.enginekit import trino_query
from tests.integration.test_catalog import produce_at
from tests.integration.test_traces import eventually
from tests.sinkkit import (
    REPO,
    app_log,
    create_topic,
    run_cli,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"
HOUR_MS = 3_600_000
PER_HOUR = 300  # records per hour and Kafka partition
LATE = 6  # records of the rebuilt hour that reached Kafka 40 min after it: carried over
pytestmark = pytest.mark.timeout(600)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def path_of(ms: int) -> tuple[str, str]:
    t = datetime.fromtimestamp(ms / 1000, UTC)
    return t.strftime("%Y-%m-%d"), t.strftime("%H")


def history(h0: int) -> list[tuple[int, dict[str, Any], int]]:
    """(partition, record, Kafka timestamp) for three hours from ``h0``, in time order, plus
    LATE records of the middle hour that arrive in the third hour (beyond the lateness)."""
    out = []
    step = HOUR_MS // PER_HOUR
    for h in range(3):
        for i in range(PER_HOUR):
            for p in (0, 1):
                n = h * 10_000 + i * 2 + p
                ts = h0 + h * HOUR_MS + i * step + p
                out.append((p, app_log(n, ts_ms=ts), ts))
    for j in range(LATE):
        ts = h0 + HOUR_MS + 7 * 60_000 + j
        out.append((j % 2, app_log(90_000 + j, ts_ms=ts), h0 + 2 * HOUR_MS + 40 * 60_000 + j))
    out.sort(key=lambda x: x[2])
    return out


async def produce_history(bootstrap: str, topic: str, rows: list[Any]) -> None:
    from aiokafka import AIOKafkaProducer

    from tests.sinkkit import encode

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futs = [
            await producer.send(topic, encode(rec), partition=p, timestamp_ms=ts)
            for p, rec, ts in rows
        ]
        for f in futs:
            await f
    finally:
        await producer.stop()


def set_contract(config: Path, fixed: bool) -> None:
    """The buggy contract lacks ``host`` (dropped as unknown); the fix appends it."""
    path = config.parent / "schemas" / "app_logs.yaml"
    doc = yaml.safe_load(path.read_text())
    cols = [c for c in doc["columns"] if c["name"] != "host"]
    if fixed:
        cols.append({"name": "host", "type": "string"})
    doc["columns"] = cols
    path.write_text(yaml.safe_dump(doc))


def deploy(tmp: Path, unique: str, topic: str, group: str, stack_env: dict[str, str]) -> Path:
    config = write_deployment(
        tmp,
        topic,
        stack_env["KAFKA_BOOTSTRAP_SERVERS"],
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
        rotation={"max_rows": 200, "max_age": "1s"},
        late_data={"max_past": "36500d", "max_future": "1h", "policy": "write"},
    )
    doc = yaml.safe_load(config.read_text())
    doc["catalog"] = {
        "type": "hive",
        "uri": stack_env["HIVE_METASTORE_URI"],
        "database": unique,
        "lateness": "10m",
        "finalize_interval": "1s",
    }
    doc["backfill"] = {"chunk_records": 100, "grace_period": "1h", "parallelism": 3}
    config.write_text(yaml.safe_dump(doc))
    set_contract(config, fixed=False)
    return config


async def written_with_bug(
    stack_env: dict[str, str], unique: str, tmp: Path, env: dict[str, str]
) -> tuple[int, list[Any], Path]:
    """Three past hours (from h0, returned) of a 2-partition topic, written and committed by
    a sink running the buggy contract."""
    topic, group = f"{unique}.logs", f"{unique}-g"
    bootstrap = stack_env["KAFKA_BOOTSTRAP_SERVERS"]
    await create_topic(bootstrap, topic, 2)
    h0 = (int(time.time() * 1000) // HOUR_MS - 6) * HOUR_MS
    rows = history(h0)
    await produce_history(bootstrap, topic, rows)
    config = deploy(tmp, unique, topic, group, stack_env)
    worker = start_worker(config, tmp / "buggy.log", env)
    try:
        half = len(rows) // 2
        await wait_committed(bootstrap, group, topic, {0: half, 1: half}, 120, [worker])
    finally:
        assert stop_worker(worker) == 0
    return h0, rows, config


def backfill(config: Path, env: dict[str, str], start: int, end: int, *extra: str) -> Any:
    return run_cli(
        *("backfill", "warehouse", "--config", str(config), "--table", "app_logs"),
        *("--from", iso(start), "--to", iso(end), *extra),
        env=env,
    )


def hour_stats(
    stack_env: dict[str, str], db: str, ms: int, host: str = "count(host)"
) -> tuple[int, int, int]:
    """Rows, distinct offsets and rows with a host of the hour at ``ms``, through Trino."""
    dt, hr = path_of(ms)
    rows = trino_query(
        stack_env,
        db,
        f"select count(*), count(distinct (_partition, _offset)), {host} "
        f"from app_logs where dt = '{dt}' and hr = '{hr}'",
    )
    return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])


def objects(s3: Any, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            if o["Key"].endswith(".parquet"):
                out[o["Key"]] = s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
    return out


def verify(config: Path, env: dict[str, str], start: int) -> Any:
    return run_cli(
        *("verify", "--config", str(config), "--table", "app_logs"),
        *("--from", iso(start - HOUR_MS), "--to", datetime.now(UTC).isoformat()),
        env=env,
    )


async def test_an_hour_written_with_a_bug_is_rebuilt_while_the_sink_runs(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env, spark
) -> None:
    topic, group, db = f"{unique}.logs", f"{unique}-g", unique
    h0, rows, config = await written_with_bug(stack_env, unique, tmp_path, subprocess_env)
    h1, h2 = h0 + HOUR_MS, h0 + 2 * HOUR_MS
    n1 = 2 * PER_HOUR + LATE
    assert hour_stats(stack_env, db, h1, host="0") == (n1, n1, 0)  # the bug: no host column
    untouched = {
        k: v
        for k, v in objects(s3, f"{unique}/app_logs/").items()
        if f"hr={path_of(h1)[1]}" not in k
    }

    fixed = (n1, n1, n1 - LATE)
    set_contract(config, fixed=True)  # the fix is deployed; the sink keeps running
    live = start_worker(config, tmp_path / "live.log", subprocess_env)
    seen: list[tuple[int, int, int]] = []
    seen_spark: list[tuple[int, int, int]] = []
    stop = threading.Event()
    dt, hr = path_of(h1)

    def reader() -> None:
        while not stop.is_set():
            seen.append(hour_stats(stack_env, db, h1))

    def spark_reader() -> None:
        sql = (
            "select count(*), count(distinct _partition, _offset), count(host) "
            f"from {db}.app_logs where dt = '{dt}' and hr = '{hr}'"
        )
        while not stop.is_set():
            row = spark.sql(sql).collect()[0]
            seen_spark.append((int(row[0]), int(row[1]), int(row[2])))

    try:
        await asyncio.sleep(3)  # the fixed worker synced the contract: host is a column
        dry = backfill(config, subprocess_env, h1, h2, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run: nothing written" in dry.stdout
        assert f"{topic}[0]: offsets" in dry.stdout
        assert not list(
            s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/app_logs/_backfill/").get(
                "Contents", []
            )
        )

        spark.catalog.refreshTable(f"{db}.app_logs")  # the host column the fix added
        readers = [threading.Thread(target=f, daemon=True) for f in (reader, spark_reader)]
        for t in readers:
            t.start()
        await eventually(lambda: _assert_true(len(seen) > 1 and len(seen_spark) > 1), 120)
        done = await asyncio.to_thread(backfill, config, subprocess_env, h1, h2)
        await eventually(lambda: _assert_true(seen[-1] == seen_spark[-1] == fixed), 60)
        stop.set()
        for t in readers:
            t.join(60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"dt={dt}/hr={hr}" in done.stdout and "rebuilt" in done.stdout
        summary = next(
            line for line in done.stdout.splitlines() if line.startswith(f"dt={dt}/hr={hr}")
        )
        assert summary.split()[1:5] == [str(n1), str(n1), str(n1 - LATE), str(LATE)], summary

        # Readers saw the old hour, then the new one; never a mix, never a doubled row.
        for got in (seen, seen_spark):
            assert set(got) <= {(n1, n1, 0), fixed}, sorted(set(got))
            assert got[0] == (n1, n1, 0) and got[-1] == fixed, (got[0], got[-1])
        # Other hours untouched, byte for byte; the rebuilt hour corrected.
        after = objects(s3, f"{unique}/app_logs/")
        assert {k: v for k, v in after.items() if k in untouched} == untouched
        assert hour_stats(stack_env, db, h0)[2] == 0 and hour_stats(stack_env, db, h2)[2] == 0

        # Records of the rebuilt hour that arrive now reach it through the live sink.
        stragglers = [(p, app_log(95_000 + p, ts_ms=h1 + 30 * 60_000 + p)) for p in (0, 1)]
        await produce_at(bootstrap, topic, stragglers)
        end = len(rows) // 2 + 1
        await wait_committed(bootstrap, group, topic, {0: end, 1: end}, 60, [live])
        assert hour_stats(stack_env, db, h1) == (n1 + 2, n1 + 2, n1 - LATE + 2)
        ok = verify(config, subprocess_env, h0)
        assert ok.returncode == 0, ok.stdout + ok.stderr

        # After the grace period the replaced objects go; readers and verify do not notice.
        gone = run_cli(
            *("backfill", "cleanup", "--config", str(config), "--table", "app_logs"),
            *("--grace", "0"),
            env=subprocess_env,
        )
        assert (
            gone.returncode == 0
            and f"deleted {unique}/app_logs/dt={dt}/hr={hr}/" not in gone.stdout
        )
        assert f"app_logs/dt={dt}/hr={hr}/" in gone.stdout, gone.stdout
        assert not objects(s3, f"{unique}/app_logs/dt={dt}/hr={hr}/")
        assert hour_stats(stack_env, db, h1) == (n1 + 2, n1 + 2, n1 - LATE + 2)
        ok = verify(config, subprocess_env, h0)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        stop.set()
        assert stop_worker(live) == 0


def _assert_true(ok: bool) -> None:
    assert ok


def _spawn(
    config: Path, env: dict[str, str], start: int, end: int, run: str, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "backfill",
            "warehouse",
            "--config",
            str(config),
            "--table",
            "app_logs",
            "--from",
            iso(start),
            "--to",
            iso(end),
            "--run-id",
            run,
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


async def test_a_killed_backfill_resumes_to_the_same_bytes_and_old_data_is_refused(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic = f"{unique}.logs"
    h0, rows, config = await written_with_bug(stack_env, unique, tmp_path, subprocess_env)
    set_contract(config, fixed=True)
    start, end = h0 + HOUR_MS, h0 + 3 * HOUR_MS

    # SIGKILLed after its third chunk, then in the middle of swapping its second hour, then
    # at random moments; finished by two processes at once.
    log = tmp_path / "killed.log"
    first = _spawn(
        config,
        {**subprocess_env, "SLUICE_FAILPOINT_KILL_AFTER_CHUNKS": "3"},
        start,
        end,
        "killed",
        log,
    )
    assert first.wait(120) == -signal.SIGKILL, log.read_text()
    assert "app_logs: columns added to the catalog: host" in log.read_text()  # the fix's column
    second = _spawn(
        config, {**subprocess_env, "SLUICE_FAILPOINT_KILL_AT_SWAP": "2"}, start, end, "killed", log
    )
    assert second.wait(120) == -signal.SIGKILL, log.read_text()
    rng = random.Random()
    for _ in range(2):
        proc = _spawn(config, subprocess_env, start, end, "killed", log)
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    pair = [
        _spawn(config, subprocess_env, start, end, "killed", tmp_path / f"p{i}.log") for i in (0, 1)
    ]
    assert [p.wait(300) for p in pair] == [0, 0], (tmp_path / "p0.log").read_text()
    said = (tmp_path / "p0.log").read_text()
    # Resumed, not planned again (a random-kill run may have finished it already).
    assert "resuming run killed" in said or "run killed is complete" in said, said

    straight = backfill(config, subprocess_env, start, end, "--run-id", "straight")
    assert straight.returncode == 0, straight.stdout + straight.stderr
    # Run again when done, it reports the run and changes nothing.
    before_rerun = objects(s3, f"{unique}/app_logs/_backfill/straight/")
    again = backfill(config, subprocess_env, start, end, "--run-id", "straight")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "run straight is complete: nothing to do" in again.stdout
    assert "rows before" in again.stdout  # the stored summary
    assert objects(s3, f"{unique}/app_logs/_backfill/straight/") == before_rerun

    def generation(run: str) -> dict[str, bytes]:
        base = f"{unique}/app_logs/_backfill/{run}/"
        return {k.removeprefix(base): v for k, v in objects(s3, base).items()}

    killed, clean = generation("killed"), generation("straight")
    assert killed and killed.keys() == clean.keys()
    assert [k for k in killed if killed[k] != clean[k]] == []
    ok = verify(config, subprocess_env, h0)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # Retention took the first hour of partition 0: that range is refused, hours named.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        first_h1 = next(
            i for i, (p, rec, ts) in enumerate(r for r in rows if r[0] == 0) if ts >= h0 + HOUR_MS
        )
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(first_h1)})
    finally:
        await admin.close()
    refused = backfill(config, subprocess_env, h0, h0 + 3 * HOUR_MS, "--run-id", "old")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    d0, r0 = path_of(h0)
    d1, r1 = path_of(h0 + HOUR_MS)
    assert (
        f"2 of the 3 partitions are no longer (fully) in Kafka: dt={d0}/hr={r0}, dt={d1}/hr={r1}"
        in refused.stdout
    )
    assert f"{topic}[0] keeps records from {iso(h0 + HOUR_MS)}" in refused.stdout
    assert f"can be rebuilt starts at {iso(h0 + 2 * HOUR_MS)}" in refused.stdout
    assert not objects(s3, f"{unique}/app_logs/_backfill/old/")

    # A config whose group never committed (not the group that writes the table): refused.
    doc = yaml.safe_load(config.read_text())
    doc["warehouse"]["group_id"] = f"{unique}-nobody"
    stranger = tmp_path / "stranger.yaml"
    stranger.write_text(yaml.safe_dump(doc))
    alien = backfill(stranger, subprocess_env, start, end, "--run-id", "alien")
    assert alien.returncode == 2, alien.stdout + alien.stderr
    assert f"group {unique}-nobody has committed nothing on {topic}" in alien.stdout
    assert not objects(s3, f"{unique}/app_logs/_backfill/alien/")
