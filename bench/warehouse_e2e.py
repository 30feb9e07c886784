"""End-to-end warehouse-sink benchmark: Kafka → committed Parquet on S3, sluice vs Quix Streams.

    .venv/bin/python -m bench.warehouse_e2e --records 1000000 --partitions 4 --runs 1

1. Creates a fresh topic and produces N app_logs JSON records (~300 B, schemas/app_logs.yaml).
2. Runs each contender as its own process, with its own consumer group, on that topic:
   ``sluice warehouse`` and Quix Streams' ``S3FileSink`` (Parquet), one after the other.
3. Polls the group's committed offsets until they reach the end offsets; samples VmHWM/VmRSS
   of the process tree from /proc; then SIGTERMs the process (SIGKILL after a grace period).
4. Lists the objects each wrote, counts rows and distinct event_ids with DuckDB, prints a
   table and writes JSON to bench/results/ (git-ignored). What is measured: docs/benchmarks.md.

Needs the local stack (``sluice dev up``); reads its client settings from .sluice/env.sh when
they are not in the environment. Quix Streams is installed into its own venv under
``${XDG_CACHE_HOME:-~/.cache}/sluice/bench-venv`` on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.harness import POLL_SECONDS, REPO, Filled, Stack, fmt, rate

QUIX_REQUIREMENT = "quixstreams[s3,parquet]==3.28.1"
SLUICE = "sluice"
QUIX = "quix"


# --- environment ---------------------------------------------------------------------------


def quix_python() -> Path:
    """The interpreter of the Quix Streams venv, created and installed on first use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "sluice" / "bench-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text().strip() == QUIX_REQUIREMENT:
        return python
    print(f"installing {QUIX_REQUIREMENT} into {venv} ...", flush=True)
    if not python.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", QUIX_REQUIREMENT], check=True, timeout=900
    )
    stamp.write_text(QUIX_REQUIREMENT + "\n")
    return python


def wait_s3(client: Any, bucket: str, limit_s: float = 180.0) -> None:
    """Block until the bucket answers (the shared stack may be mid-restart)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# --- workload ------------------------------------------------------------------------------

LEVELS = ("DEBUG", "INFO", "INFO", "INFO", "INFO", "INFO", "WARN", "ERROR")
SERVICES = ("checkout", "search", "auth", "profile", "billing", "feed", "notify", "gateway")
MESSAGES = (
    "GET /api/v2/items/{n} completed",
    "cache miss for user:{n}:prefs, falling back to primary",
    "upstream inventory slower than expected (attempt {n})",
    "user {n} signed in with sso provider",
    "retrying publish of batch {n} after transient broker error",
    "payment authorization approved for order {n}",
)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-south-1")
STATUSES = (200, 200, 200, 200, 201, 204, 304, 400, 404, 500, 503)


class RecordMaker:
    """app_logs records, ~300 B of JSON each; ts rises with the index over ``hours``."""

    def __init__(self, total: int, hours: float, seed: int) -> None:
        self.total = total
        self.span_ms = int(hours * 3_600_000)
        self.t0 = int(time.time() * 1000) - self.span_ms
        self.seed = seed

    def make(self, index: int, rnd: random.Random) -> bytes:
        n = rnd.randrange(1_000_000)
        record = {
            "event_id": f"{self.seed:08x}-{index:012d}",
            "ts": self.t0 + self.span_ms * index // self.total + rnd.randrange(-2000, 2000),
            "level": rnd.choice(LEVELS),
            "service": rnd.choice(SERVICES),
            "host": f"ip-10-0-{index % 16}-{index % 251}",
            "message": rnd.choice(MESSAGES).format(n=n),
            "trace_id": f"{rnd.getrandbits(128):032x}",
            "user_id": rnd.randrange(1, 10**9),
            "duration_ms": round(rnd.random() * 800, 3),
            "status": rnd.choice(STATUSES),
            "attrs": {"region": rnd.choice(REGIONS), "ver": f"1.{n % 40}.{n % 7}"},
        }
        return json.dumps(record, separators=(",", ":")).encode()


async def produce(stack: Stack, topic: str, partitions: int, total: int, seed: int) -> Filled:
    """Create ``topic`` and fill it with ``total`` app_logs records."""
    maker = RecordMaker(total, hours=3.0, seed=seed)
    return await harness.fill_topic(stack, topic, partitions, total, seed, maker.make)


# --- contenders ----------------------------------------------------------------------------


@dataclass
class Contender(harness.Contender):
    prefix: str
    """Key prefix (in the stack's bucket) under which every object it writes lands."""
    parquet_glob: str


def sluice_contender(
    stack: Stack, topic: str, run_dir: Path, base: str, tag: str, interval: float
) -> Contender:
    """``sluice warehouse`` with a deployment file whose app_logs contract reads ``topic``."""
    schemas = run_dir / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    contract = yaml.safe_load((REPO / "schemas" / "app_logs.yaml").read_text())
    contract["topics"] = [topic]
    (schemas / "app_logs.yaml").write_text(yaml.safe_dump(contract, sort_keys=False))
    prefix = f"{base}/{SLUICE}"
    group = f"bench-sluice-{tag}"
    config = {
        "kafka": {"bootstrap_servers": stack.bootstrap, "client_id": "sluice-bench"},
        "s3": {"endpoint_url": stack.endpoint, "region": "us-east-1", "path_style": True},
        "warehouse": {
            "root": f"s3://{stack.bucket}/{prefix}",
            "schemas_dir": str(schemas),
            "tables": ["app_logs"],
            "group_id": group,
            "rotation": {"max_rows": 1_000_000, "max_bytes": "128MiB", "max_age": f"{interval}s"},
            # The default budget unless BENCH_SLUICE_MEMORY_BUDGET says otherwise.
            "memory_budget": os.environ.get("BENCH_SLUICE_MEMORY_BUDGET", "512MiB"),
        },
        "metrics": {"port": 0},
    }
    config_file = run_dir / "sluice.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(stack.env, SLUICE_DATADIR=str(run_dir / "sluice-datadir"))
    return Contender(
        SLUICE,
        [str(REPO / ".venv" / "bin" / "sluice"), "warehouse", "--config", str(config_file)],
        env,
        group,
        run_dir / f"{SLUICE}.log",
        prefix,
        f"s3://{stack.bucket}/{prefix}/app_logs/**/*.parquet",
    )


def quix_contender(
    stack: Stack, topic: str, run_dir: Path, base: str, tag: str, interval: float, python: Path
) -> Contender:
    prefix = f"{base}/{QUIX}"  # S3FileSink allows only [A-Za-z0-9 ._/] in its directory
    group = f"bench-quix-{tag}"
    argv = [
        str(python),
        str(REPO / "bench" / "peers" / "quix_s3_sink.py"),
        *("--bootstrap", stack.bootstrap, "--topic", topic, "--group", group),
        *("--bucket", stack.bucket, "--directory", prefix),
        *("--commit-interval", str(interval), "--state-dir", str(run_dir / "quix-state")),
    ]
    return Contender(
        QUIX,
        argv,
        dict(stack.env),
        group,
        run_dir / f"{QUIX}.log",
        prefix,
        f"s3://{stack.bucket}/{prefix}/**/*.parquet",
    )


# --- measurement ---------------------------------------------------------------------------


@dataclass
class RunResult:
    contender: str
    run: int
    records: int
    group: str
    completed: bool
    exit_code: int | None
    wall_seconds: float | None
    """Process start → every record's offset committed."""
    records_per_s: float | None
    join_seconds: float | None
    """Process start → the group is Stable with a member (startup: imports, connect, join)."""
    records_per_s_after_join: float | None
    first_commit_seconds: float | None
    committed_at_first_commit: int | None
    records_per_s_after_first_commit: float | None
    peak_rss_mib: float
    processes: int
    objects: int = 0
    parquet_objects: int = 0
    parquet_mib: float = 0.0
    rows: int | None = None
    distinct_event_ids: int | None = None
    log: str = ""
    log_problems: list[str] = field(default_factory=list)
    stack_restarted: bool = False
    """The shared stack's Kafka or S3 was restarted during the run: figures not comparable."""


async def measure(
    stack: Stack, contender: Contender, topic: str, produced: Filled, run: int, limit_s: float
) -> RunResult:
    """Run the contender's process until its group has committed every end offset."""
    total = produced.records
    ends = produced.end_offsets
    join_at = first_at = done_at = None
    first_committed = None
    committed = 0
    async with harness.running(contender, stack.bootstrap) as job:
        while (now := job.tick(limit_s)) is not None:
            if join_at is None and await harness.group_stable(job.admin, contender.group):
                join_at = now
            committed = await harness.committed_records(job.admin, contender.group, topic, ends)
            if first_at is None and committed > 0:
                first_at, first_committed = now, committed
            if committed >= total:
                done_at = job.elapsed()
                break
            await asyncio.sleep(POLL_SECONDS)
    after_first = (  # None when the first commit observed was already the last one
        (total - first_committed) / (done_at - first_at)
        if done_at
        and first_at is not None
        and first_committed is not None
        and first_committed < total
        else None
    )
    return RunResult(
        contender=contender.name,
        run=run,
        records=total,
        group=contender.group,
        completed=done_at is not None,
        exit_code=job.exit_code,
        wall_seconds=done_at,
        records_per_s=rate(total, done_at),
        join_seconds=join_at,
        records_per_s_after_join=(
            rate(total, done_at - join_at) if done_at and join_at is not None else None
        ),
        first_commit_seconds=first_at,
        committed_at_first_commit=first_committed,
        records_per_s_after_first_commit=after_first,
        peak_rss_mib=round(job.memory.peak_kib / 1024, 1),
        processes=len(job.memory.hwm_kib),
        log=str(contender.log),
    )


# --- output checks -------------------------------------------------------------------------


def s3_client(stack: Stack) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=stack.endpoint,
        region_name=stack.env["AWS_REGION"],
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
    )


def list_objects(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


def count_rows(stack: Stack, glob: str) -> tuple[int, int]:
    """Rows and distinct event_ids of every Parquet object under ``glob``, read by DuckDB."""
    import duckdb
    import duckdb_extension_httpfs

    ext = (
        Path(duckdb_extension_httpfs.__file__).parent
        / "extensions"
        / f"v{duckdb.__version__}"
        / "httpfs.duckdb_extension"
    )
    host = stack.endpoint.split("://", 1)[1].rstrip("/")
    con = duckdb.connect()
    try:
        con.execute(f"LOAD '{ext}'")
        con.execute(
            "CREATE SECRET bench (TYPE S3, KEY_ID ?, SECRET ?, REGION ?, ENDPOINT ?, "
            "URL_STYLE 'path', USE_SSL ?)".replace("?", "{}").format(
                *(
                    _sql_str(v)
                    for v in (
                        stack.env["AWS_ACCESS_KEY_ID"],
                        stack.env["AWS_SECRET_ACCESS_KEY"],
                        stack.env["AWS_REGION"],
                        host,
                    )
                ),
                "true" if stack.endpoint.startswith("https") else "false",
            )
        )
        row = con.execute(
            f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet({_sql_str(glob)})"
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1])


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def cleanup(
    stack: Stack, topic: str, groups: Iterable[str], client: Any, prefix: str
) -> None:
    """Delete the benchmark topic, topics the contenders created, and the objects."""
    await harness.delete_topics(stack, topic, groups)
    keys = [o["Key"] for o in list_objects(client, stack.bucket, prefix)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(
            Bucket=stack.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
        )


# --- driver --------------------------------------------------------------------------------


def print_results(results: list[RunResult]) -> None:
    columns = [
        *(("contender", "<9"), ("run", ">3"), ("done", ">5"), ("wall s", ">7")),
        *(("rec/s", ">8"), ("rec/s>join", ">10"), ("RSS MiB", ">8"), ("objects", ">7")),
        *(("parquet", ">7"), ("MiB", ">6"), ("rows", ">8")),
    ]
    harness.print_table(
        columns,
        (
            [
                r.contender,
                str(r.run),
                ("yes" if r.completed else "NO") + ("*" if r.stack_restarted else ""),
                fmt(r.wall_seconds, ".1f"),
                fmt(r.records_per_s, ",.0f"),
                fmt(r.records_per_s_after_join, ",.0f"),
                format(r.peak_rss_mib, ".0f"),
                str(r.objects),
                str(r.parquet_objects),
                format(r.parquet_mib, ".1f"),
                fmt(r.rows, ",d"),
            ]
            for r in results
        ),
    )


def print_footnote(results: list[RunResult]) -> None:
    if any(r.stack_restarted for r in results):
        print("* the shared stack was restarted during that run: left out of the summary")


def summarize(results: list[RunResult]) -> dict[str, Any]:
    def median(name: str, key: Callable[[RunResult], float | None]) -> float | None:
        values = [
            v
            for r in results
            if r.contender == name and r.completed and not r.stack_restarted
            if (v := key(r)) is not None
        ]
        return statistics.median(values) if values else None

    summary: dict[str, Any] = {}
    for name in sorted({r.contender for r in results}):
        summary[name] = {
            "records_per_s": median(name, lambda r: r.records_per_s),
            "records_per_s_after_join": median(name, lambda r: r.records_per_s_after_join),
            "records_per_s_after_first_commit": median(
                name, lambda r: r.records_per_s_after_first_commit
            ),
            "peak_rss_mib": median(name, lambda r: r.peak_rss_mib),
            "objects": median(name, lambda r: r.objects),
            "parquet_objects": median(name, lambda r: r.parquet_objects),
        }
    if SLUICE in summary and QUIX in summary:
        summary["ratio_sluice_over_quix"] = {
            key: harness.ratio(summary[SLUICE][key], summary[QUIX][key])
            for key in ("records_per_s", "records_per_s_after_join")
        }
    return summary


async def run_one(
    stack: Stack,
    client: Any,
    name: str,
    topic: str,
    produced: Filled,
    run: int,
    run_dir: Path,
    base: str,
    tag: str,
    args: argparse.Namespace,
    python: Path | None,
) -> tuple[RunResult, str]:
    """One contender, one run: measure, then list and count what it wrote."""
    if name == SLUICE:
        c = sluice_contender(stack, topic, run_dir, base, tag, args.interval)
    else:
        assert python is not None
        c = quix_contender(stack, topic, run_dir, base, tag, args.interval, python)
    wait_s3(client, stack.bucket)
    pids = harness.stack_pids()
    print(f"run {run}: {name} ({c.group}) ...", flush=True)
    result = await measure(stack, c, topic, produced, run, args.timeout)
    result.stack_restarted = harness.stack_pids() != pids
    wait_s3(client, stack.bucket)
    objects = list_objects(client, stack.bucket, c.prefix + "/")
    parquet = [o for o in objects if o["Key"].endswith(".parquet")]
    result.objects = len(objects)
    result.parquet_objects = len(parquet)
    result.parquet_mib = round(sum(o["Size"] for o in parquet) / 2**20, 1)
    if parquet:
        result.rows, result.distinct_event_ids = count_rows(stack, c.parquet_glob)
    result.log_problems = harness.log_problems(c.log)
    print(
        f"  completed={result.completed} wall={fmt(result.wall_seconds, '.1f')}s "
        f"rec/s={fmt(result.records_per_s, ',.0f')} rss={result.peak_rss_mib}MiB "
        f"objects={result.objects} rows={result.rows} distinct={result.distinct_event_ids}"
        + (" STACK RESTARTED" if result.stack_restarted else ""),
        flush=True,
    )
    return result, c.group


async def main_async(args: argparse.Namespace) -> int:
    stack = harness.load_stack()
    contenders = harness.parse_contenders(args.contenders, (SLUICE, QUIX))
    python = quix_python() if QUIX in contenders else None

    source_at_start = harness.source_state()
    session = harness.new_session("warehouse")
    stamp, tag, run_root = session.stamp, session.tag, session.run_root
    topic = f"bench.app_logs.{tag}"
    client = s3_client(stack)
    wait_s3(client, stack.bucket)

    print(f"producing {args.records:,} records to {topic} ({args.partitions} partitions) ...")
    produced = await produce(stack, topic, args.partitions, args.records, seed=args.seed)
    print(
        f"  {produced.records:,} records, {produced.bytes / produced.records:.0f} B mean, "
        f"{produced.records / produced.seconds:,.0f} records/s"
    )

    results: list[RunResult] = []
    groups: list[str] = []
    try:
        for run in range(1, args.runs + 1):
            for name in contenders if run % 2 else reversed(contenders):  # alternate order
                for attempt in range(1 + args.retries):
                    suffix = f"r{run}" + (f"a{attempt}" if attempt else "")
                    result, group = await run_one(
                        stack,
                        client,
                        name,
                        topic,
                        produced,
                        run,
                        run_root / suffix,
                        f"bench/{tag}/{suffix}",
                        f"{tag}-{suffix}",
                        args,
                        python,
                    )
                    groups.append(group)
                    results.append(result)
                    if not result.stack_restarted:
                        break
                    print("  the shared stack was restarted during this run: repeating it")
    finally:
        if not args.keep:
            wait_s3(client, stack.bucket)
            await cleanup(stack, topic, groups, client, f"bench/{tag}/")

    print()
    print_results(results)
    print_footnote(results)
    summary = summarize(results)
    print()
    print(json.dumps(summary, indent=2))
    report = {
        "benchmark": "warehouse_e2e",
        "started_utc": stamp.isoformat(),
        "command": "python -m bench.warehouse_e2e " + " ".join(sys.argv[1:]),
        "machine": harness.machine(),
        "sluice_source": {"at_start": source_at_start, "at_end": harness.source_state()},
        "topic": topic,
        "partitions": args.partitions,
        "produced": asdict(produced),
        "flush_interval_s": args.interval,
        "quix_requirement": QUIX_REQUIREMENT if python else None,
        "results": [asdict(r) for r in results],
        "summary": summary,
        "logs": str(run_root),
    }
    harness.write_results("warehouse", stamp, report, logs=run_root)
    ok = all(r.completed and r.rows == r.records for r in results if not r.stack_restarted)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.warehouse_e2e", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1, help="rounds; the order alternates")
    parser.add_argument(
        "--contenders", default=f"{SLUICE},{QUIX}", help=f"comma list of {SLUICE}, {QUIX}"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        help="seconds: sluice's rotation max_age and Quix's commit interval (its default)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per contender run, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--retries", type=int, default=2, help="repeats of a run the shared stack restarted under"
    )
    parser.add_argument("--keep", action="store_true", help="keep the topic and the objects")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
