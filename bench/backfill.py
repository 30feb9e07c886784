"""Backfill throughput, against the live sink on the same records in the same run.

    .venv/bin/python -m bench.backfill --records 400000 --partitions 4

Needs the local stack with the metastore (``SLUICE_STACK=kafka,s3,hms make stack-up``): a
backfill swaps hours through the catalog. Produces ``--records`` app_logs records whose event
and Kafka times fall in one past hour, then

1. the peer: one ``sluice warehouse`` process writes them (time from start to every offset
   committed);
2. one ``sluice backfill warehouse`` process rebuilds that hour from Kafka and swaps it in
   (time from start to exit; its own "rebuilt ... records/s" line is the rebuild phase).

Prints both rates and their ratio, and writes ``bench/results/backfill-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer

from bench.harness import REPO, write_results
from tests.sinkkit import committed, create_topic

HOUR_MS = 3_600_000


def record(i: int, ts: int, rng: random.Random) -> bytes:
    return json.dumps(
        {
            "event_id": f"e-{i}",
            "ts": ts,
            "level": rng.choice(["DEBUG", "INFO", "INFO", "WARN", "ERROR"]),
            "service": f"svc-{i % 40}",
            "host": f"host-{i % 300}",
            "message": f"request {i} served in {rng.randrange(1, 900)} ms "
            + "x" * rng.randrange(80),
            "trace_id": f"{rng.getrandbits(128):032x}",
            "user_id": rng.randrange(10**9),
            "duration_ms": rng.random() * 900,
            "status": rng.choice([200, 200, 200, 404, 500]),
            "attrs": {"region": f"r{i % 4}", "route": f"/api/{i % 17}"},
        }
    ).encode()


async def fill(bootstrap: str, topic: str, partitions: int, total: int, hour: int) -> None:
    await create_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 << 10, compression_type="lz4"
    )
    await producer.start()
    rng = random.Random(1)
    try:
        futs = []
        for i in range(total):
            ts = hour + (i * HOUR_MS) // total
            futs.append(
                await producer.send(
                    topic, record(i, ts, rng), partition=i % partitions, timestamp_ms=ts
                )
            )
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ}
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    run = f"bf{uuid.uuid4().hex[:8]}"
    topic, group = f"{run}.logs", f"{run}-g"
    hour = (int(time.time() * 1000) // HOUR_MS - 5) * HOUR_MS
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    schemas = tmp / "schemas"
    schemas.mkdir()
    doc = yaml.safe_load((REPO / "schemas" / "app_logs.yaml").read_text())
    doc["topics"] = [topic]
    doc["late_data"] = {"max_past": "36500d", "max_future": "1h", "policy": "write"}
    (schemas / "app_logs.yaml").write_text(yaml.safe_dump(doc))
    config = tmp / "sluice.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": bootstrap},
                "s3": {"endpoint_url": env["AWS_ENDPOINT_URL_S3"]},
                "warehouse": {
                    "root": f"s3://{env.get('SLUICE_BUCKET', 'lake')}/{run}",
                    "schemas_dir": str(schemas),
                    "group_id": group,
                    "rotation": {"max_age": "2s"},
                },
                "catalog": {"type": "hive", "uri": env["HIVE_METASTORE_URI"], "database": run},
                "metrics": {"port": 0},
            }
        )
    )
    t0 = time.monotonic()
    await fill(bootstrap, topic, args.partitions, args.records, hour)
    print(f"produced {args.records} records in {time.monotonic() - t0:.1f} s", flush=True)

    cmd = [sys.executable, "-m", "pipelines.cli"]
    t0 = time.monotonic()
    worker = subprocess.Popen(
        [*cmd, "warehouse", "--config", str(config)],
        env=env,
        cwd=REPO,
        stdout=open(tmp / "worker.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    try:
        while (
            sum((await committed(bootstrap, group, topic, args.partitions)).values()) < args.records
        ):
            if worker.poll() is not None or time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"the sink did not commit everything; see {tmp}/worker.log")
            await asyncio.sleep(0.25)
        sink_s = time.monotonic() - t0
    finally:
        worker.terminate()
        worker.wait(60)
    print(f"live sink: {args.records} records committed in {sink_s:.1f} s", flush=True)

    start = datetime.fromtimestamp(hour / 1000, UTC).isoformat()
    end = datetime.fromtimestamp((hour + HOUR_MS) / 1000, UTC).isoformat()
    t0 = time.monotonic()
    out = subprocess.run(
        [
            *cmd,
            "backfill",
            "warehouse",
            "--config",
            str(config),
            "--table",
            "app_logs",
            "--from",
            start,
            "--to",
            end,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    backfill_s = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    rebuilt = re.search(r"rebuilt \d+ chunks, (\d+) records in ([\d.]+) s", out.stdout)
    print(out.stdout, flush=True)
    result = {
        "records": args.records,
        "partitions": args.partitions,
        "sink_seconds": round(sink_s, 2),
        "sink_records_per_s": round(args.records / sink_s),
        "backfill_seconds": round(backfill_s, 2),
        "backfill_records_per_s": round(args.records / backfill_s),
        "rebuild_phase_records_per_s": round(int(rebuilt[1]) / float(rebuilt[2]))
        if rebuilt
        else None,
        "ratio_backfill_to_sink": round(sink_s / backfill_s, 2),
        "cores": os.cpu_count(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))
    write_results("backfill", datetime.now(UTC), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
