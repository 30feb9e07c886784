"""What the end-to-end benchmarks share: the stack's settings, a topic filled with a workload,
one contender process run and sampled until its consumer group has committed everything, and
the results written and printed.

Used by ``bench.warehouse_e2e``, ``bench.traces_e2e``, ``bench.backfill`` and
``bench.spans_table``. Nothing here decides what a benchmark measures: each harness keeps its
own loop body (what "done" means, which times it records) and its own result fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.sinkkit import create_topic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
POLL_SECONDS = 0.25
"""How often a running contender is sampled and its group's offsets read: times are ±this."""
STOP_GRACE_SECONDS = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- environment ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    bootstrap: str
    endpoint: str
    bucket: str
    env: dict[str, str]
    """Client environment for the contenders (AWS_* and KAFKA_BOOTSTRAP_SERVERS)."""


def load_stack() -> Stack:
    """The local stack's client settings: the environment, else .sluice/env.sh. Exits with a
    message when Kafka's or S3's settings are in neither; AWS_REGION defaults to us-east-1."""
    env = dict(os.environ)
    env_file = REPO / ".sluice" / "env.sh"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                env.setdefault(key.strip(), shlex.split(value)[0] if value else "")
    missing = [
        k
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID")
        if not env.get(k)
    ]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `sluice dev up` (writes .sluice/env.sh)")
    env.setdefault("AWS_REGION", "us-east-1")
    return Stack(
        env["KAFKA_BOOTSTRAP_SERVERS"],
        env["AWS_ENDPOINT_URL_S3"],
        env.get("SLUICE_BUCKET", "lake"),
        env,
    )


def stack_pids() -> dict[str, str]:
    """Pids of the local stack's servers: a change during a run means someone restarted them."""
    pids = {}
    with contextlib.suppress(OSError):
        for f in (REPO / ".sluice" / "pids").glob("*.pid"):
            pids[f.stem] = f.read_text().strip()
    return pids


def source_state() -> dict[str, Any]:
    """The sluice commit measured, and which files of the package differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "pipelines", "pyproject.toml")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": dirty.splitlines()}


def machine() -> dict[str, Any]:
    """CPUs, CPU model, memory, kernel and Python of this machine, for the report."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = _meminfo_total_kib()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _meminfo_total_kib() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def parse_contenders(text: str, valid: Sequence[str]) -> list[str]:
    """The names in a ``--contenders`` comma list, in order; exits naming any not in ``valid``."""
    contenders = [c.strip() for c in text.split(",") if c.strip()]
    unknown = set(contenders) - set(valid)
    if unknown:
        sys.exit(f"unknown contenders {sorted(unknown)}; valid: {', '.join(valid)}")
    return contenders


@dataclass(frozen=True)
class Session:
    """One invocation of a benchmark: its start time, a tag unique to it (for topic, group and
    prefix names) and the directory under bench/results/ that keeps its processes' logs."""

    stamp: datetime
    tag: str
    run_root: Path


def new_session(kind: str) -> Session:
    """A new tag (UTC time + 4 random hex digits) and a fresh ``bench/results/<kind>-<tag>-*``
    directory."""
    stamp = datetime.now(UTC)
    tag = f"{stamp:%Y%m%dT%H%M%S}_{random.randrange(16**4):04x}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_root = Path(tempfile.mkdtemp(prefix=f"{kind}-{tag}-", dir=RESULTS))
    return Session(stamp, tag, run_root)


# --- workload ------------------------------------------------------------------------------


@dataclass
class Filled:
    records: int
    bytes: int
    seconds: float
    end_offsets: dict[int, int]


async def fill_topic(
    stack: Stack,
    topic: str,
    partitions: int,
    total: int,
    seed: int,
    make: Callable[[int, random.Random], bytes],
    max_in_flight: int = 8,
) -> Filled:
    """Create ``topic`` and fill it with ``make(index, rnd)`` for every index: one task per
    partition (index ``i`` goes to partition ``i % partitions``, so partitions are equal and
    ordered), whole batches, several in flight. Checks the end offsets add up to ``total``.
    ``seconds`` covers producing only (not creating the topic nor reading the end offsets)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    await create_topic(stack.bootstrap, topic, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
        max_request_size=4 << 20,
    )
    await producer.start()
    sizes = [0] * partitions

    async def fill(p: int) -> None:
        rnd = random.Random(seed * 1009 + p)
        in_flight: deque[asyncio.Future[Any]] = deque()
        batch = producer.create_batch()
        for index in range(p, total, partitions):
            value = make(index, rnd)
            sizes[p] += len(value)
            if batch.append(key=None, value=value, timestamp=None) is None:
                in_flight.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                batch.append(key=None, value=value, timestamp=None)
                while len(in_flight) > max_in_flight:
                    await in_flight.popleft()
        if batch.record_count():
            in_flight.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*in_flight)

    started = time.monotonic()
    try:
        await asyncio.gather(*(fill(p) for p in range(partitions)))
        await producer.flush()
    finally:
        await producer.stop()
    seconds = time.monotonic() - started

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    end_offsets = {tp.partition: int(o) for tp, o in ends.items()}
    if sum(end_offsets.values()) != total:
        raise RuntimeError(f"topic holds {sum(end_offsets.values())} records, wanted {total}")
    return Filled(total, sum(sizes), seconds, end_offsets)


async def delete_topics(stack: Stack, topic: str, prefixes: Iterable[str] = ()) -> None:
    """Delete ``topic``, the topics named ``<topic>.…`` (a contender's retry topics) and any
    topic whose name starts with one of ``prefixes`` (e.g. a consumer group's own topics)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        owned = tuple(prefixes)
        doomed = [
            t
            for t in await admin.list_topics()
            if t == topic or t.startswith(topic + ".") or t.startswith(owned)
        ]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


# --- a consumer group's progress -----------------------------------------------------------


async def group_stable(admin: Any, group: str) -> bool:
    """Whether ``group`` is Stable with at least one member (False while the coordinator does
    not know it yet)."""
    try:
        responses = await admin.describe_consumer_groups([group])
    except Exception:  # the coordinator may not know the group yet
        return False
    for response in responses:
        for g in response.groups:  # (error, group_id, state, protocol_type, protocol, members…)
            if g[1] == group and g[2] == "Stable" and len(g[5]) > 0:
                return True
    return False


async def committed_offsets(admin: Any, group: str, topic: str) -> dict[int, int]:
    """partition → the group's committed offset on ``topic``; {} when it cannot be read."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:
        return {}
    return {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic}


async def committed_records(admin: Any, group: str, topic: str, ends: dict[int, int]) -> int:
    """Records of ``topic`` the group has committed, counting no partition past ``ends``."""
    offsets = await committed_offsets(admin, group, topic)
    return sum(min(offsets.get(p, 0), end) for p, end in ends.items())


# --- a contender's process -----------------------------------------------------------------


def status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM, VmRSS); 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, as /proc shows them now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (their own, not reaped children's), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


@dataclass
class MemorySampler:
    """Peak RSS of a process tree: per-process VmHWM (kernel-kept peak), summed."""

    root: int
    hwm_kib: dict[int, int] = field(default_factory=dict)
    peak_tree_rss_kib: int = 0
    _pids: list[int] = field(default_factory=list)
    _last_scan: float = 0.0

    def sample(self) -> None:
        """Read every process of the tree (rescanned at most once a second)."""
        now = time.monotonic()
        if now - self._last_scan > 1.0 or not self._pids:
            self._pids = process_tree(self.root)
            self._last_scan = now
        rss = 0
        for pid in self._pids:
            hwm = status_kib(pid, "VmHWM")
            if hwm:
                self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), hwm)
            rss += status_kib(pid, "VmRSS")
        self.peak_tree_rss_kib = max(self.peak_tree_rss_kib, rss)

    @property
    def peak_kib(self) -> int:
        return sum(self.hwm_kib.values())

    @property
    def pids(self) -> list[int]:
        """The tree as last scanned; just the root before the first sample."""
        return self._pids or [self.root]


async def stop(proc: asyncio.subprocess.Process, memory: MemorySampler) -> int | None:
    """SIGTERM (every contender drains and commits on it), sampling memory until it exits,
    then SIGKILL its process group after STOP_GRACE_SECONDS (stragglers and a hung leader).
    Its exit status, or None when it did not exit even then."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while proc.returncode is None and time.monotonic() < deadline:
        memory.sample()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), POLL_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, and a hung leader
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(proc.wait(), 10)
    return None


@dataclass
class Contender:
    """One contender's process as ``running()`` starts it: its command line and environment,
    the consumer group it commits with, and the log that takes its stdout and stderr (the
    log's directory is its working directory). Harnesses subclass it to add their own."""

    name: str
    argv: list[str]
    env: dict[str, str]
    group: str
    log: Path


@dataclass
class Running:
    """A contender's process started by ``running()``, with what a measuring loop reads."""

    proc: asyncio.subprocess.Process
    memory: MemorySampler
    admin: Any
    """An aiokafka admin client, started before the process (``group_stable``, offsets)."""
    started: float
    """time.monotonic() just before the exec: every time a harness reports counts from it."""
    exit_code: int | None = None
    """Set once ``running()`` has stopped the process."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self, limit_s: float) -> float | None:
        """For a polling loop: None once the process has exited or ``limit_s`` has passed since
        its start; else samples its memory and returns the seconds since its start."""
        if self.proc.returncode is not None or self.elapsed() >= limit_s:
            return None
        self.memory.sample()
        return self.elapsed()


@contextlib.asynccontextmanager
async def running(contender: Contender, bootstrap: str) -> AsyncIterator[Running]:
    """Start the contender's process in its own session (process group), stdout and stderr
    to its log, in the log's directory. On leaving, however that happens: a last memory sample, then
    ``stop()`` (SIGTERM, SIGKILL of the group after the grace period), ``exit_code`` set, and
    the admin client closed."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        log = contender.log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *contender.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=contender.env,
                cwd=log.parent,
                start_new_session=True,  # its own process group: killed whole if it hangs
            )
            run = Running(proc, MemorySampler(proc.pid), admin, started)
            try:
                yield run
            finally:
                run.memory.sample()
                run.exit_code = await stop(proc, run.memory)
    finally:
        await admin.close()


def log_problems(path: Path, limit: int = 20) -> list[str]:
    """Lines of a contender's log that look like trouble (errors, warnings, tracebacks)."""
    markers = ("ERROR", "CRITICAL", "Traceback", "WARNING", "Exception")
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if any(m in line for m in markers):
                found.append(line.strip()[:400])
    return found[:limit]


# --- figures and output --------------------------------------------------------------------


def rate(count: int, seconds: float | None) -> float | None:
    """count / seconds; None when there is no time (not done, or zero)."""
    return count / seconds if seconds else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to two decimals; None unless both are there and non-zero."""
    return round(a / b, 2) if a and b else None


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``; "-" for None."""
    return "-" if value is None else format(value, spec)


def print_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[str]]) -> None:
    """A header of the columns' titles, a rule as wide as it, then one line per row: cell ``i``
    of every line is aligned by ``columns[i]``'s format spec (e.g. ``"<9"``, ``">8"``), cells
    one space apart."""
    header = " ".join(format(title, spec) for title, spec in columns)
    print(header)
    print("-" * len(header))
    for row in rows:
        print(" ".join(format(cell, spec) for cell, (_, spec) in zip(row, columns, strict=True)))


def write_results(
    kind: str, stamp: datetime, report: dict[str, Any], logs: Path | None = None
) -> Path:
    """Write ``report`` as indented JSON to ``bench/results/<kind>-<stamp, UTC>.json``; with
    ``logs``, print where the results and the logs are."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{kind}-{stamp:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    if logs is not None:
        print(f"\nresults: {out}\nlogs:    {logs}")
    return out
