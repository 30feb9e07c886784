"""Chaos: workers SIGKILLed again and again under load; every record lands exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

from tests.sinkkit import (
    app_log,
    create_topic,
    encode,
    produce,
    read_table,
    run_verify,
    start_worker,
    stop_worker,
    wait_committed,
    write_deployment,
)

BUCKET = "lake"
RECORDS = 200_000
PARTITIONS = 4
CHAOS_SECONDS = 45


async def test_sigkill_storm_loses_nothing_and_duplicates_nothing(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.logs", f"{unique}-g"
    await create_topic(bootstrap, topic, PARTITIONS)
    config = write_deployment(
        tmp_path,
        topic,
        bootstrap,
        stack_env["AWS_ENDPOINT_URL_S3"],
        f"s3://{BUCKET}/{unique}",
        group,
        rotation={"max_rows": 3000, "max_bytes": "8MiB", "max_age": "1s"},
        memory_budget="64MiB",
    )
    config.write_text(config.read_text().replace("kafka:\n", "kafka:\n  session_timeout: 6s\n"))
    rng = random.Random(7)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    # Widen the window between upload and commit so kills land there too.
    env = {**subprocess_env, "SLUICE_FAILPOINT_COMMIT_DELAY": "0.3"}
    # And make sure at least one crash lands there: the first worker kills itself just before
    # its third commit, after that cut's objects and manifest are durable.
    first = {**env, "SLUICE_FAILPOINT_KILL_AT_COMMIT": "3"}
    workers = [start_worker(config, logs[0], first), start_worker(config, logs[1], env)]
    # Produce while the chaos runs, so kills land mid-fetch, mid-cut, mid-upload and between
    # upload and commit (cuts are small and frequent: 3000 rows or 1 s).
    producing = asyncio.ensure_future(
        produce(
            bootstrap,
            topic,
            ((i % PARTITIONS, encode(app_log(i))) for i in range(RECORDS)),
            pace=0.15,
        )
    )
    kills = 0
    try:
        # Before the chaos: wait for the failpoint kill, then bring the worker back.
        for _ in range(600):
            if workers[0].poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert workers[0].returncode == -signal.SIGKILL, "the kill-at-commit failpoint never fired"
        workers[0] = start_worker(config, logs[0], env)
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            victim = rng.randrange(len(workers))
            stop_worker(workers[victim], signal.SIGKILL)
            kills += 1
            workers[victim] = start_worker(config, logs[victim], env)
        sent = await asyncio.wait_for(producing, 120)
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(PARTITIONS)}
        await wait_committed(bootstrap, group, topic, ends, 240, workers)
    finally:
        producing.cancel()
        for w in workers:
            stop_worker(w)

    assert kills >= 8
    # The dangerous window was hit: some cut was uploaded but not committed before a kill,
    # and its replay rewrote exactly the recorded objects.
    replays = sum(log.read_text().count("rewriting the recorded cut") for log in logs)
    assert replays >= 1
    table, _ = read_table(s3, BUCKET, f"{unique}/app_logs/")
    coords = list(
        zip(
            table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True
        )
    )
    assert len(coords) == len(set(coords)), "a record was written twice"
    assert set(coords) == set(sent), (
        f"missing {len(set(sent) - set(coords))}, unexpected {len(set(coords) - set(sent))}"
    )
    ids = dict(zip(coords, table.column("event_id").to_pylist(), strict=True))
    for key, value in sent.items():
        assert value is not None and ids[key] == json.loads(value)["event_id"]
    assert table.num_rows == RECORDS
    # And the operators' check agrees: `sluice verify` finds every offset exactly once.
    verified = run_verify(config, subprocess_env)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    assert f"rows {RECORDS}, dead-lettered 0" in verified.stdout
