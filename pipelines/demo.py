"""``make demo``: the warehouse sink end to end on the local stack.

1. Produces a sample stream of app logs (with a few bad records) to ``logs.app``.
2. Runs a real ``sluice warehouse`` worker with ``examples/local.yaml`` until every record
   is committed, then stops it (SIGTERM: drain and commit).
3. Queries the resulting table over S3 with DuckDB and, when the stack runs a Hive
   Metastore and Trino (``make demo`` starts both), through the metastore with Trino; lists
   the table's partitions (``sluice partitions``) and what went to the dead-letter topic.
4. With the metastore: rebuilds the current hour from Kafka (``sluice backfill warehouse``,
   swapped in through the catalog) and checks the table against Kafka (``sluice verify``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines.devstack.components import StackConfig

TOPIC = "logs.app"
PARTITIONS = 3
RECORDS = 30_000
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "local.yaml"
GROUP = "sluice-warehouse"


def _sample(i: int, now_ms: int, rng: random.Random) -> bytes:
    if i % 5000 == 4999:  # a few bad records, to show the dead-letter topic
        return [b"{truncated", b'{"event_id": null, "ts": 1}', b"[]"][(i // 5000) % 3]
    level = rng.choices(["DEBUG", "INFO", "WARN", "ERROR"], [20, 70, 8, 2])[0]
    service = rng.choice(["api", "billing", "search", "auth"])
    return json.dumps(
        {
            "event_id": f"evt-{i:08d}",
            "ts": now_ms - rng.randrange(3 * 3600 * 1000),  # the last three hours
            "level": level,
            "service": service,
            "host": f"{service}-{rng.randrange(4)}",
            "message": f"{service} handled request {i} in {rng.randrange(900)} ms",
            "trace_id": f"{rng.getrandbits(128):032x}" if rng.random() < 0.6 else None,
            "user_id": rng.randrange(10**6) if rng.random() < 0.8 else None,
            "duration_ms": round(rng.expovariate(1 / 40), 3),
            "status": rng.choice([200, 200, 200, 201, 404, 500]),
            "attrs": {"region": rng.choice(["eu-west-1", "us-east-1"]), "build": "1.4.2"},
        }
    ).encode()


async def _produce(bootstrap: str) -> dict[int, int]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    rng, now_ms = random.Random(), int(time.time() * 1000)  # noqa: S311 - sample data
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        futures = [
            await producer.send(TOPIC, _sample(i, now_ms, rng), key=str(i).encode())
            for i in range(RECORDS)
        ]
        for fut in futures:
            md = await fut
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    finally:
        await producer.stop()
    return ends


async def _wait_committed(
    bootstrap: str, ends: dict[int, int], worker: subprocess.Popen[bytes], limit: float = 120
) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done = {p: await consumer.committed(TopicPartition(TOPIC, p)) or 0 for p in ends}
            if all(done[p] >= ends[p] for p in ends):
                return
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with {worker.returncode}")
            await asyncio.sleep(0.5)
        raise SystemExit(f"not every record was committed within {limit:.0f}s")
    finally:
        await consumer.stop()


async def _dead_letters(bootstrap: str) -> list[tuple[str, str]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        f"{TOPIC}.dlq",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out = []
    try:
        for records in (await consumer.getmany(timeout_ms=3000)).values():
            for rec in records:
                h = {k: v.decode() for k, v in rec.headers}
                out.append((h["sluice.reason"], h["sluice.detail"][:60]))
    finally:
        await consumer.stop()
    return out


def _query(cfg: StackConfig) -> None:
    from pipelines.devstack.duckdb_s3 import duckdb_over_s3

    con = duckdb_over_s3(f"{cfg.host}:{cfg.s3_port}")
    con.execute(
        "create view app_logs as select * from read_parquet("
        "'s3://lake/warehouse/app_logs/*/*/*.parquet', hive_partitioning=true)"
    )
    print("\nThe app_logs table, per hour (DuckDB over S3):")
    con.sql("""select dt, hr, count(*) as rows, count(distinct _partition) as kafka_partitions,
                       sum((level = 'ERROR')::int) as errors,
                       round(avg(duration_ms), 1) as avg_ms, max(ts) as latest
                from app_logs group by dt, hr order by dt, hr""").show()
    print("A few rows:")
    con.sql("""select ts, level, service, message, status, _partition, _offset
                from app_logs order by ts desc limit 5""").show(max_width=160)
    print("Its objects:")
    con.sql("""select count(*) as objects, min(file) as first, max(file) as last
               from glob('s3://lake/warehouse/app_logs/*/*/*.parquet')""").show(max_width=200)


def _query_trino(cfg: StackConfig) -> None:
    import trino

    conn = trino.dbapi.connect(  # type: ignore[no-untyped-call]
        host=cfg.host, port=cfg.trino_port, user="demo", catalog="hive", schema="sluice"
    )
    cur = conn.cursor()
    cur.execute(
        "select dt, hr, count(*), count_if(level = 'ERROR') from app_logs "
        "group by dt, hr order by dt, hr"
    )
    print("\nThe same table through the Hive Metastore, with Trino (hive.sluice.app_logs):")
    print(f"  {'dt':10} {'hr':2} {'rows':>7} {'errors':>6}")
    for dt, hr, rows, errors in cur.fetchall():
        print(f"  {dt:10} {hr:2} {rows:>7} {errors:>6}")
    conn.close()


def main() -> int:
    cfg = StackConfig.from_env()
    env = {**os.environ, **cfg.client_env()}
    os.environ.update(cfg.client_env())
    with_hms = "hms" in cfg.components
    catalog = {"SLUICE_CATALOG": "hive"} if with_hms else {}
    print(f"1. producing {RECORDS} app log records to {TOPIC} on {cfg.bootstrap} ...")
    ends = asyncio.run(_produce(cfg.bootstrap))
    print(
        f"2. running `sluice warehouse --config {CONFIG.relative_to(REPO)}` "
        f"until offsets {ends} are committed ..."
    )
    log = cfg.state_dir / "logs" / "demo-worker.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "warehouse", "--config", str(CONFIG)],
            env={**env, "SLUICE_METRICS_PORT": "0", "SLUICE_MAX_AGE": "5s", **catalog},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            asyncio.run(_wait_committed(cfg.bootstrap, ends, worker))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    print(f"   committed in {time.monotonic() - t0:.1f}s (worker log: {log})")
    _query(cfg)
    if "trino" in cfg.components:
        _query_trino(cfg)
    if with_hms:
        print("\n`sluice partitions --table app_logs`:", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "partitions",
                "--config",
                str(CONFIG),
                "--table",
                "app_logs",
            ],
            env={**env, **catalog},
            check=False,
        )
    letters = asyncio.run(_dead_letters(cfg.bootstrap))
    print(f"3. {len(letters)} record(s) in the dead-letter topic {TOPIC}.dlq, e.g.:")
    for reason, detail in letters[:3]:
        print(f"   {reason}: {detail}")
    if with_hms:
        return _backfill_and_verify({**env, **catalog})
    return 0


def _backfill_and_verify(env: dict[str, str]) -> int:
    """Step 4: rebuild the current hour (its records are the ones in Kafka's recent time
    window), then check every committed offset is in the table or the DLQ exactly once."""
    from datetime import UTC, datetime, timedelta

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    cli = [sys.executable, "-m", "pipelines.cli"]
    table = ["--config", str(CONFIG), "--table", "app_logs"]
    print(f"4. `sluice backfill warehouse --from {hour:%H:%M} --to +1h` (the current hour):")
    rebuilt = subprocess.run(
        [
            *cli,
            "backfill",
            "warehouse",
            *table,
            "--from",
            hour.isoformat(),
            "--to",
            (hour + timedelta(hours=1)).isoformat(),
        ],
        env=env,
        check=False,
    )
    print("   `sluice verify` over the last four hours:", flush=True)
    verified = subprocess.run(
        [
            *cli,
            "verify",
            *table,
            "--from",
            (hour - timedelta(hours=3)).isoformat(),
            "--to",
            (hour + timedelta(hours=1)).isoformat(),
        ],
        env=env,
        check=False,
    )
    return rebuilt.returncode or verified.returncode


if __name__ == "__main__":
    sys.exit(main())
