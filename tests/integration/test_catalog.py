"""The catalog tier against the real servers: the warehouse sink registers its table and
partitions in the Hive Metastore, finalizes hours, evolves the schema; Spark and Trino (through
the metastore) and DuckDB (over S3) give the same answers."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from pipelines.catalog.base import FINAL_PARAMETER
from pipelines.catalog.hive import HiveCatalog
from pipelines.tables import load_table
from tests.enginekit import duckdb_s3, trino_query
from tests.sinkkit import (
    app_log,
    create_topic,
    encode,
    run_cli,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"
HOUR_MS = 3_600_000
pytestmark = pytest.mark.timeout(600)


async def produce_at(bootstrap: str, topic: str, records: list[tuple[int, dict[str, Any]]]) -> None:
    """Produce each record with its event time as the Kafka timestamp."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futs = [
            await producer.send(topic, encode(rec), partition=p, timestamp_ms=rec["ts"])
            for p, rec in records
        ]
        for f in futs:
            await f
    finally:
        await producer.stop()


def hour_of(ts_ms: int) -> tuple[str, str]:
    t = time.gmtime(ts_ms // 1000)
    return time.strftime("%Y-%m-%d", t), time.strftime("%H", t)


def per_hour(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(dt, hr) -> (rows, sum of user_id)."""
    rows = Counter(hour_of(r["ts"]) for r in records)
    sums: Counter[tuple[str, str]] = Counter()
    for r in records:
        sums[hour_of(r["ts"])] += r["user_id"] or 0
    return {k: (rows[k], sums[k]) for k in rows}


async def test_hive_tables_read_alike_in_spark_trino_duckdb_final_and_evolving(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env, spark
) -> None:
    topic, group, db = f"{unique}.logs", f"{unique}-g", unique
    await create_topic(bootstrap, topic, 2)
    now_h = int(time.time() * 1000) // HOUR_MS * HOUR_MS
    first = [
        (i % 2, app_log(i, ts_ms=now_h - (3 if (i // 2) % 2 else 2) * HOUR_MS + i * 1000))
        for i in range(400)
    ]
    await produce_at(bootstrap, topic, first)
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
    )
    doc = yaml.safe_load(config.read_text())
    doc["catalog"] = {
        "type": "hive",
        "uri": stack_env["HIVE_METASTORE_URI"],
        "database": db,
        "lateness": "0s",
        "finalize_interval": "1s",
    }
    config.write_text(yaml.safe_dump(doc))

    # Two workers share the partitions; each runs a finalizer.
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(config, log, subprocess_env) for log in logs]
    hours = sorted(per_hour([r for _, r in first]))
    try:
        await wait_committed(bootstrap, group, topic, {0: 200, 1: 200}, 120, workers)
        # Both hours become final: every partition is past them (and caught up).
        finals = [f"{unique}/_sluice/app_logs/final/dt={d}/hr={h}" for d, h in hours]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{unique}/_sluice/app_logs/final/")
            if {o["Key"] for o in listed.get("Contents", [])} >= set(finals):
                break
            time.sleep(1)
        time.sleep(3)  # a few more finalizer passes in both workers
    finally:
        for w, log in zip(workers, logs, strict=True):
            assert stop_worker(w) == 0, log.read_text()[-3000:]
    # Exactly one decision per hour across the two workers.
    decisions = sum(log.read_text().count(": final (every partition") for log in logs)
    assert decisions == len(hours)
    for d, h in hours:
        s3.head_object(Bucket=BUCKET, Key=f"{unique}/app_logs/dt={d}/hr={h}/_SUCCESS")

    # The metastore has the table and both partitions, marked final.
    spec = load_table(tmp_path / "schemas" / "app_logs.yaml")
    parts = HiveCatalog(stack_env["HIVE_METASTORE_URI"], db).partitions(spec)
    assert [p.path for p in parts] == [f"dt={d}/hr={h}" for d, h in hours]
    assert all(p.parameters.get(FINAL_PARAMETER) == "true" for p in parts)
    assert all(p.location.startswith(f"s3a://{BUCKET}/{unique}/app_logs/dt=") for p in parts)

    want = per_hour([r for _, r in first])
    sql = "select dt, hr, count(*), sum(user_id) from {t} group by dt, hr order by dt, hr"
    got_trino = trino_query(stack_env, db, sql.format(t="app_logs"))
    got_spark = [list(r) for r in spark.sql(sql.format(t=f"{db}.app_logs")).collect()]
    con = duckdb_s3(stack_env)
    glob = f"s3://{BUCKET}/{unique}/app_logs/*/*/*.parquet"
    got_duck = [
        list(r)
        for r in con.execute(
            sql.format(
                t=f"read_parquet('{glob}', hive_partitioning=true, hive_types_autocast=false)"
            )
        ).fetchall()
    ]
    expected = [[d, h, n, s] for (d, h), (n, s) in sorted(want.items())]
    assert got_trino == expected
    assert got_spark == expected
    assert got_duck == expected

    # One row, every type, alike in the three engines.
    rec = first[5][1]
    row_sql = (
        "select event_id, level, {k}, status, duration_ms, {ts} from {t} where event_id = 'e-5'"
    )
    t_row = trino_query(
        stack_env,
        db,
        row_sql.format(k="element_at(attrs, 'k')", ts="to_unixtime(ts)", t="app_logs"),
    )[0]
    s_row = list(
        spark.sql(
            row_sql.format(k="attrs['k']", ts="unix_millis(ts) / 1000", t=f"{db}.app_logs")
        ).collect()[0]
    )
    d_row = list(
        con.execute(
            row_sql.format(
                k="attrs['k']",
                ts="epoch_ms(ts) / 1000",
                t=f"read_parquet('{glob}', hive_partitioning=true, hive_types_autocast=false)",
            )
        ).fetchone()
        or []
    )
    expected_row = ["e-5", rec["level"], rec["attrs"]["k"], rec["status"], rec["duration_ms"]]
    for row in (t_row, s_row, d_row):
        assert row[:5] == expected_row
        assert float(row[5]) == rec["ts"] / 1000

    # `sluice partitions` reports both hours final with their rows.
    listing = run_cli(
        "partitions", "--config", str(config), "--table", "app_logs", "--json", env=subprocess_env
    )
    assert listing.returncode == 0, listing.stderr
    reported = {p["partition"]: p for p in json.loads(listing.stdout)}
    for (d, h), (n, _) in want.items():
        p = reported[f"dt={d}/hr={h}"]
        assert (p["state"], p["rows"], p["registered"], p["catalog_final"]) == (
            "final",
            n,
            True,
            True,
        )

    # Schema evolution: a nullable column added mid-stream.
    schema_file = tmp_path / "schemas" / "app_logs.yaml"
    contract = yaml.safe_load(schema_file.read_text())
    contract["columns"].append({"name": "region", "type": "string"})
    schema_file.write_text(yaml.safe_dump(contract))
    checked = run_cli("schemas", "check", "--config", str(config), env=subprocess_env)
    assert checked.returncode == 0 and "new columns: region" in checked.stdout, checked

    later = []
    for i in range(400, 500):
        rec = app_log(i, ts_ms=now_h - HOUR_MS + i * 1000)
        rec["region"] = f"eu-{i % 3}"
        later.append((i % 2, rec))
    await produce_at(bootstrap, topic, later)
    worker = start_worker(config, tmp_path / "worker2.log", subprocess_env)
    try:
        await wait_committed(bootstrap, group, topic, {0: 250, 1: 250}, 120, [worker])
    finally:
        assert stop_worker(worker) == 0
    # The restarted worker did not decide the finalized hours again.
    restarted = (tmp_path / "worker2.log").read_text()
    assert not any(f"dt={d}/hr={h}: final" in restarted for d, h in hours)
    # `sluice catalog sync` is idempotent and re-registers what the sink recorded.
    synced = run_cli("catalog", "sync", "--config", str(config), env=subprocess_env)
    assert synced.returncode == 0, synced.stderr
    assert (
        "hive: app_logs at s3a://" in synced.stdout and "3 partitions registered" in synced.stdout
    )
    mixed = "select count(*) - count(region), count(region), count(distinct region) from {t}"
    assert trino_query(stack_env, db, mixed.format(t="app_logs")) == [[400, 100, 3]]
    spark.catalog.refreshTable(f"{db}.app_logs")
    assert [list(r) for r in spark.sql(mixed.format(t=f"{db}.app_logs")).collect()] == [
        [400, 100, 3]
    ]

    # An incompatible change is refused, naming the column and the way out.
    contract["columns"] = [
        {**c, "type": "string"} if c["name"] == "user_id" else c for c in contract["columns"]
    ]
    schema_file.write_text(yaml.safe_dump(contract))
    refused = run_cli("schemas", "check", "--config", str(config), env=subprocess_env)
    assert refused.returncode == 1
    assert "user_id" in refused.stderr and "bigint -> string" in refused.stderr
    assert "new table" in refused.stderr

    # A partition's location moves in one metastore call (backfill's swap): Trino follows it.
    catalog = HiveCatalog(stack_env["HIVE_METASTORE_URI"], db)
    d0, h0 = hours[0]
    path = f"dt={d0}/hr={h0}"
    original = next(p.location for p in catalog.partitions(spec) if p.path == path)
    per_hour_sql = f"select count(*) from app_logs where dt = '{d0}' and hr = '{h0}'"
    assert trino_query(stack_env, db, per_hour_sql) == [[want[(d0, h0)][0]]]
    catalog.set_partition_location(spec, path, f"s3a://{BUCKET}/{unique}/empty/{path}")
    assert trino_query(stack_env, db, per_hour_sql) == [[0]]
    catalog.set_partition_location(spec, path, original)
    assert trino_query(stack_env, db, per_hour_sql) == [[want[(d0, h0)][0]]]


def test_workers_starting_together_all_sync_the_new_table(stack_env, unique) -> None:
    """Several workers of a new deployment create the same table at once: each looked before
    any created it (forced here: every worker's first look finds nothing), one creates it,
    the others get AlreadyExists from the metastore, evolve that table, and none fails."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tests.sinkkit import REPO

    spec = load_table(REPO / "schemas" / "app_logs.yaml")
    uri, location = stack_env["HIVE_METASTORE_URI"], f"s3a://lake/{unique}/app_logs"
    looked = threading.Barrier(4)

    class Racing(HiveCatalog):
        first = True

        def _table(self, client: Any, spec: Any) -> Any:
            if self.first:
                self.first = False
                looked.wait(30)
                return None
            return super()._table(client, spec)

    with ThreadPoolExecutor(4) as pool:
        added = list(pool.map(lambda _: Racing(uri, unique).sync_table(spec, location), range(4)))
    assert sorted(len(a) for a in added) == [0, 0, 0, len(spec.output_schema)]
    assert HiveCatalog(uri, unique).partitions(spec) == []
