"""Helpers for tests that run real warehouse workers against the real stack."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

REPO = Path(__file__).resolve().parents[1]
BASE_TS = 1_795_000_000_000  # 2026-11-18T08:53:20Z, epoch ms


def app_log(i: int, ts_ms: int | None = None) -> dict[str, Any]:
    """A deterministic app_logs record; every nullable field is sometimes null."""
    rec: dict[str, Any] = {
        "event_id": f"e-{i}",
        "ts": BASE_TS + i * 997 if ts_ms is None else ts_ms,
        "level": ["DEBUG", "INFO", "WARN", "ERROR"][i % 4],
        "service": f"svc-{i % 5}",
        "host": f"host-{i % 3}",
        "message": f"request {i} done " + "x" * (i % 50),
        "trace_id": None if i % 3 == 0 else f"{i:032x}",
        "user_id": None if i % 4 == 0 else i * 7,
        "duration_ms": None if i % 5 == 0 else i / 8,
        "status": None if i % 6 == 0 else 200 + i % 5,
        "attrs": None if i % 7 == 0 else {"region": f"r{i % 2}", "k": str(i)},
    }
    return rec


def write_deployment(
    tmp: Path, topic: str, bootstrap: str, endpoint: str, root: str, group: str, **warehouse: Any
) -> Path:
    """A schemas dir whose app_logs reads ``topic``, and a config file using it."""
    schemas = tmp / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((REPO / "schemas" / "app_logs.yaml").read_text())
    doc["topics"] = [topic]
    for key in ("late_data",):
        if key in warehouse:
            doc[key] = warehouse.pop(key)
    (schemas / "app_logs.yaml").write_text(yaml.safe_dump(doc))
    config = {
        "kafka": {"bootstrap_servers": bootstrap},
        "s3": {"endpoint_url": endpoint},
        "warehouse": {
            "root": root,
            "schemas_dir": str(schemas),
            "group_id": group,
            "rotation": {"max_age": "2s"},
            **warehouse,
        },
        "metrics": {"port": 0},
    }
    path = tmp / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, values: Iterable[tuple[int, bytes | None]], pace: float = 0.0
) -> dict[tuple[int, int], bytes | None]:
    """Produce (partition, value) pairs; returns {(partition, offset): value}."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=8 << 20,
    )
    await producer.start()
    sent: dict[tuple[int, int], bytes | None] = {}
    try:
        pending = []
        for partition, value in values:
            key = None if value is not None else b"tombstone"
            pending.append((value, await producer.send(topic, value, key=key, partition=partition)))
            if len(pending) >= 2000:
                for v, fut in pending:
                    md = await fut
                    sent[(md.partition, md.offset)] = v
                pending = []
                if pace:
                    await asyncio.sleep(pace)
        for v, fut in pending:
            md = await fut
            sent[(md.partition, md.offset)] = v
    finally:
        await producer.stop()
    return sent


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(partitions):
            out[p] = await consumer.committed(TopicPartition(topic, p)) or 0
        return out
    finally:
        await consumer.stop()


async def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    timeout: float,
    workers: Iterable[subprocess.Popen[bytes]] = (),
) -> None:
    deadline = time.monotonic() + timeout
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = await committed(bootstrap, group, topic, len(ends))
        if all(got[p] >= ends[p] for p in ends):
            return
        for w in workers:
            assert w.poll() is None, f"worker exited with {w.returncode}"
        await asyncio.sleep(0.5)
    raise AssertionError(f"committed {got}, want {ends}")


def start_worker(
    config: Path, log: Path, env: dict[str, str], command: str = "warehouse"
) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # the child owns it
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", command, "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


def stop_worker(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 40
) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def read_table(s3: Any, bucket: str, prefix: str) -> tuple[pa.Table, list[str]]:
    """Every Parquet object under prefix (with dt/hr from its key), and the keys."""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
    tables = []
    for key in sorted(keys):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        t = pq.read_table(io.BytesIO(body))
        parts = dict(seg.split("=", 1) for seg in key.split("/") if "=" in seg)
        t = t.append_column("dt", pa.array([parts["dt"]] * t.num_rows))
        t = t.append_column("hr", pa.array([parts.get("hr")] * t.num_rows))
        t = t.append_column("_key", pa.array([key] * t.num_rows))
        tables.append(t)
    if not tables:
        return pa.table({}), keys
    return pa.concat_tables(tables), keys


def encode(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as {'name{labels}': value}."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``sluice ARGS`` in a subprocess from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_verify(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``sluice verify`` of app_logs over the last hour and the next (all a test produced)."""
    now = datetime.now(UTC)
    return run_cli(
        *("verify", "--config", str(config), "--table", "app_logs"),
        *("--from", (now - timedelta(hours=1)).isoformat()),
        *("--to", (now + timedelta(hours=1)).isoformat()),
        env=env,
    )
