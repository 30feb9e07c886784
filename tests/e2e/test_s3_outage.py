"""S3 down under load: the worker pauses, commits nothing, stays in budget, loses nothing."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request

from pipelines.devstack.components import StackConfig, wait_ready
from pipelines.devstack.stack import Stack
from tests.sinkkit import (
    app_log,
    committed,
    create_topic,
    encode,
    free_port,
    produce,
    read_table,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"
BUDGET = 16 << 20
PARTITIONS = 2


def _gauge(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return None
    m = re.search(rf"^{name} ([0-9.e+-]+)$", body.decode(), re.M)
    return float(m.group(1)) if m else None


def _rss_mib(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


async def test_s3_outage_pauses_and_recovers_without_loss(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.logs", f"{unique}-g"
    await create_topic(bootstrap, topic, PARTITIONS)
    port = free_port()
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
        memory_budget=BUDGET,
        rotation={"max_rows": 5000, "max_bytes": "2MiB", "max_age": "1s"},
    )
    config.write_text(config.read_text().replace("port: 0", f"port: {port}"))
    stack = Stack(StackConfig.from_env())
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    sent: dict[tuple[int, int], bytes | None] = {}
    try:
        sent.update(
            await produce(
                bootstrap, topic, ((i % PARTITIONS, encode(app_log(i))) for i in range(20_000))
            )
        )
        first = {p: 1 + max(o for q, o in sent if q == p) for p in range(PARTITIONS)}
        await wait_committed(bootstrap, group, topic, first, 90, [worker])

        stack.procs.stop("s3")
        before = await committed(bootstrap, group, topic, PARTITIONS)
        outage = asyncio.ensure_future(
            produce(
                bootstrap,
                topic,
                ((i % PARTITIONS, encode(app_log(i))) for i in range(20_000, 120_000)),
                pace=0.05,
            )
        )
        peak_buffered, peak_rss, paused_seen = 0.0, 0.0, False
        t_end = time.monotonic() + 20
        while time.monotonic() < t_end:
            await asyncio.sleep(0.5)
            assert worker.poll() is None, "the worker must ride out an S3 outage"
            peak_buffered = max(peak_buffered, _gauge(port, "sluice_buffered_bytes") or 0)
            paused_seen |= (_gauge(port, "sluice_paused_partitions") or 0) >= 1
            peak_rss = max(peak_rss, _rss_mib(worker.pid))
        during = await committed(bootstrap, group, topic, PARTITIONS)
        assert during == before, "nothing may be committed while S3 is down"
        assert paused_seen, "fetching should pause while writes cannot drain"
        # The budget bounds buffers; one more fetch per partition may land as it pauses.
        assert peak_buffered <= BUDGET + PARTITIONS * (4 << 20), peak_buffered

        stack.s3.start()
        wait_ready(stack.s3, stack.procs, 30)
        sent.update(await asyncio.wait_for(outage, 120))
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(PARTITIONS)}
        await wait_committed(bootstrap, group, topic, ends, 180, [worker])
    finally:
        if stack.procs.pid("s3") is None:
            stack.s3.start()
            wait_ready(stack.s3, stack.procs, 30)
        stop_worker(worker)

    table, _ = read_table(s3, BUCKET, f"{unique}/app_logs/")
    coords = list(
        zip(
            table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True
        )
    )
    assert len(coords) == len(set(coords)) == len(sent)
    assert set(coords) == set(sent)
    print(f"peak buffered {peak_buffered / 2**20:.1f} MiB, peak RSS {peak_rss:.0f} MiB")
