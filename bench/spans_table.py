"""Spans-table throughput: span messages → `sluice warehouse` (tables: [spans]) → Parquet on S3.

    .venv/bin/python -m bench.spans_table --messages 3000 --spans-per-message 100

Produces synthetic OTLP messages to a fresh topic, runs one warehouse worker on it and
reports spans/s until every offset is committed, CPU seconds and peak RSS. Needs the local
stack (`sluice dev up`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from bench.harness import cpu_seconds, status_kib
from pipelines.devstack.components import StackConfig
from tests.sinkkit import REPO, committed, create_topic, produce
from tests.spankit import SERVICES, request


async def main_async(args: argparse.Namespace) -> None:
    stack = StackConfig.from_env()
    tag = f"{int(time.time())}-{os.getpid()}"
    topic, group = f"bench.spans.{tag}", f"bench-spans-{tag}"
    await create_topic(stack.bootstrap, topic, args.partitions)
    rng = random.Random(args.seed)
    values = [
        request(SERVICES[i % len(SERVICES)], args.spans_per_message, rng, error_every=50)[0]
        for i in range(args.messages)
    ]
    sent = await produce(
        stack.bootstrap, topic, ((i % args.partitions, v) for i, v in enumerate(values))
    )
    ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(args.partitions)}
    work = Path(tempfile.mkdtemp(prefix="bench-spans-"))
    (work / "schemas").mkdir()
    contract = yaml.safe_load((REPO / "schemas" / "spans.yaml").read_text())
    contract["topics"] = [topic]
    (work / "schemas" / "spans.yaml").write_text(yaml.safe_dump(contract))
    config = {
        "kafka": {"bootstrap_servers": stack.bootstrap},
        "s3": {"endpoint_url": stack.s3_endpoint},
        "warehouse": {
            "root": f"s3://lake/bench-spans/{tag}",
            "schemas_dir": str(work / "schemas"),
            "group_id": group,
            "tables": ["spans"],
            "rotation": {"max_age": f"{args.interval}s"},
        },
        "metrics": {"port": 0},
    }
    (work / "sluice.yaml").write_text(yaml.safe_dump(config))
    t0 = time.monotonic()
    with open(work / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "sluice"),
                "warehouse",
                "--config",
                str(work / "sluice.yaml"),
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **stack.client_env()},
        )
        try:
            while True:
                got = await committed(stack.bootstrap, group, topic, args.partitions)
                if all(got[p] >= ends[p] for p in ends):
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"the worker exited; see {work / 'worker.log'}")
                await asyncio.sleep(0.25)
            seconds = time.monotonic() - t0
            cpu = cpu_seconds([proc.pid])
            hwm_kib = status_kib(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(60)
    spans = args.messages * args.spans_per_message
    print(
        f"{spans} spans committed in {seconds:.1f} s = {spans / seconds:,.0f} spans/s; "
        f"CPU {cpu:.1f} s = {spans / cpu:,.0f} spans per CPU-second; "
        f"peak RSS {hwm_kib / 1024:.0f} MiB (log: {work / 'worker.log'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--spans-per-message", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--interval", type=float, default=5.0, help="rotation max_age, s")
    parser.add_argument("--seed", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
