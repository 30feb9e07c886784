"""Trace router under faults: a store dies mid-run; a worker is SIGKILLed mid-delivery."""

from __future__ import annotations

import asyncio
import random
import signal

import yaml

from pipelines.devstack.components import StackConfig, wait_ready
from pipelines.devstack.stack import Stack
from tests.integration.test_traces import (
    eventually,
    jaeger_span_names,
    write_config,
    zipkin_span_names,
)
from tests.sinkkit import (
    REPO,
    create_topic,
    free_port,
    produce,
    read_table,
    scrape,
    start_worker,
    stop_worker,
    wait_committed,
)
from tests.spankit import request

EVERYWHERE = {"routes": [], "default": ["jaeger", "zipkin"]}


def _messages(n: int, seed: int, spans: int = 5) -> tuple[list[bytes], list[str]]:
    """n messages, each one whole trace of ``spans`` spans; returns them and the trace ids."""
    rng = random.Random(seed)
    values, ids = [], []
    for i in range(n):
        tid = rng.randbytes(16)
        value, _ = request(["search", "catalog"][i % 2], spans, rng, trace_id=tid)
        values.append(value)
        ids.append(tid.hex())
    return values, ids


def _all_present(lookup, env: dict[str, str], ids: list[str], spans: int) -> None:  # type: ignore[no-untyped-def]
    missing = [t for t in ids if len(lookup(env, t)) < spans]
    assert not missing, f"{len(missing)} of {len(ids)} traces incomplete, e.g. {missing[:3]}"


async def test_a_dead_store_neither_blocks_the_other_nor_loses_spans(
    stack_env, bootstrap, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    port = free_port()
    config = write_config(tmp_path, topic, group, stack_env, **EVERYWHERE)
    config.write_text(config.read_text().replace("port: 0", f"port: {port}"))
    stack = Stack(StackConfig.from_env())
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env, "traces")
    try:
        before, before_ids = _messages(50, seed=1)
        sent = await produce(bootstrap, topic, ((i % 2, v) for i, v in enumerate(before)))
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        await wait_committed(bootstrap, group, topic, ends, 60, [worker])

        stack.procs.stop("zipkin")
        during, during_ids = _messages(300, seed=2)
        sent = await produce(
            bootstrap, topic, ((i % 2, v) for i, v in enumerate(during)), pace=0.05
        )
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        # No head-of-line blocking: with Zipkin down, every message is still finished
        # (delivered to Jaeger, diverted for Zipkin) and committed.
        await wait_committed(bootstrap, group, topic, ends, 60, [worker])
        assert stack.procs.pid("zipkin") is None
        await eventually(lambda: _all_present(jaeger_span_names, stack_env, during_ids, 5))
        metrics = scrape(port)
        assert metrics['sluice_spans_diverted_total{destination="zipkin"}'] >= 300 * 5
        assert metrics['sluice_destination_breaker_open{destination="zipkin"}'] == 1
        assert metrics.get('sluice_spans_diverted_total{destination="jaeger"}', 0) == 0

        stack.zipkin.start()
        wait_ready(stack.zipkin, stack.procs, 90)
        # The retry topic is redelivered once the breaker lets a trial batch through.
        await eventually(
            lambda: _all_present(zipkin_span_names, stack_env, during_ids, 5), timeout=90
        )
        assert scrape(port)['sluice_destination_breaker_open{destination="zipkin"}'] == 0
    finally:
        if stack.procs.pid("zipkin") is None:
            stack.zipkin.start()
            wait_ready(stack.zipkin, stack.procs, 90)
        stop_worker(worker)
    # Jaeger was never down: what came before the outage is there too (Zipkin, restarted,
    # kept its spans only in memory).
    await eventually(lambda: _all_present(jaeger_span_names, stack_env, before_ids, 5))


async def test_sigkilled_workers_lose_no_span(
    stack_env, bootstrap, s3, unique, tmp_path, subprocess_env
) -> None:
    """Router workers (Jaeger, Zipkin and the spans table) SIGKILLed repeatedly while spans
    flow: no span is lost for any destination, and the table holds each span exactly once."""
    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    config = write_config(
        tmp_path, topic, group, stack_env, routes=[], default=["jaeger", "zipkin", "lake"]
    )
    doc = yaml.safe_load(config.read_text())
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "spans.yaml").write_text((REPO / "schemas" / "spans.yaml").read_text())
    doc["s3"] = {"endpoint_url": stack_env["AWS_ENDPOINT_URL_S3"]}
    doc["warehouse"] = {
        "root": f"s3://lake/{unique}",
        "schemas_dir": str(schemas),
        "rotation": {"max_age": "1s", "max_rows": 2000},
    }
    doc["traces"]["destinations"]["lake"] = {"type": "table", "table": "spans"}
    config.write_text(yaml.safe_dump(doc))
    values, ids = _messages(1000, seed=3)
    rng = random.Random(11)
    log = tmp_path / "worker.log"
    # Widen the window between "objects durable" and "offset committed".
    env = {**subprocess_env, "SLUICE_FAILPOINT_COMMIT_DELAY": "0.2"}
    workers = [start_worker(config, log, env, "traces") for _ in range(2)]

    async def trickle() -> dict[tuple[int, int], bytes | None]:
        sent: dict[tuple[int, int], bytes | None] = {}
        for lo in range(0, len(values), 50):  # ~14 s of traffic
            chunk = enumerate(values[lo : lo + 50], start=lo)
            sent.update(await produce(bootstrap, topic, ((i % 2, v) for i, v in chunk)))
            await asyncio.sleep(0.7)
        return sent

    producing = asyncio.ensure_future(trickle())
    kills = 0
    try:
        for _ in range(6):
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            victim = rng.randrange(2)
            stop_worker(workers[victim], signal.SIGKILL)
            kills += 1
            workers[victim] = start_worker(config, log, env, "traces")
        sent = await asyncio.wait_for(producing, 60)
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        await wait_committed(bootstrap, group, topic, ends, 120, workers)
    finally:
        producing.cancel()
        for w in workers:
            stop_worker(w)
    assert kills == 6
    await eventually(lambda: _all_present(jaeger_span_names, stack_env, ids, 5), timeout=30)
    await eventually(lambda: _all_present(zipkin_span_names, stack_env, ids, 5), timeout=30)
    table, _ = read_table(s3, "lake", f"{unique}/spans/")
    rows = list(
        zip(
            table.column("_partition").to_pylist(),
            table.column("_offset").to_pylist(),
            table.column("span_id").to_pylist(),
            strict=True,
        )
    )
    assert len(rows) == len(set(rows)) == 1000 * 5  # every span, exactly once
    assert {t.hex() for t in table.column("trace_id").to_pylist()} == set(ids)
