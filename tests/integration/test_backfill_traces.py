"""`sluice backfill traces` replays spans from Kafka into one real store: the chosen trace
becomes readable through Jaeger's API (Zipkin's for a service filter), the others do not."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from tests.integration.test_traces import (
    eventually,
    jaeger_span_names,
    sdk_trace,
    write_config,
    zipkin_span_names,
)
from tests.sinkkit import create_topic, produce, run_cli
from tests.spankit import request

pytestmark = pytest.mark.timeout(300)


async def test_replaying_a_trace_id_into_jaeger_makes_it_readable(
    bootstrap, stack_env, unique, tmp_path, subprocess_env
) -> None:
    topic = f"{unique}.spans"
    await create_topic(bootstrap, topic, 2)
    wanted, wanted_id = sdk_trace("auth", children=3)  # the router's rules drop auth
    other, other_id = sdk_trace("auth", children=2)
    rng = random.Random(7)
    search, search_spans = request("search", 5, rng)
    await produce(bootstrap, topic, [(0, wanted), (1, other), (0, search), (1, b"\x00garbage")])
    config = write_config(tmp_path, topic, f"{unique}-g", stack_env)
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    until = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()

    def replay(*args: str) -> str:
        out = run_cli(
            *("backfill", "traces", "--config", str(config), "--from", since, "--to", until),
            *args,
            env=subprocess_env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    said = replay("--to-destination", "jaeger", "--trace-id", wanted_id)
    assert "read 4 messages" in said and "matched 4 spans: 4 delivered to jaeger" in said, said
    assert "1 messages did not decode" in said
    expected = {"auth request", "auth step 0", "auth step 1", "auth step 2"}
    await eventually(lambda: _assert_equal(jaeger_span_names(stack_env, wanted_id), expected))
    assert jaeger_span_names(stack_env, other_id) == set()
    assert jaeger_span_names(stack_env, search_spans[0][0].hex()) == set()

    said = replay("--to-destination", "zipkin", "--where", "service.name=search")
    assert "matched 5 spans: 5 delivered to zipkin" in said, said
    await eventually(
        lambda: _assert_equal(
            zipkin_span_names(stack_env, search_spans[2][0].hex()), {search_spans[2][2]}
        )
    )
    assert zipkin_span_names(stack_env, wanted_id) == set()

    bad = run_cli(
        *("backfill", "traces", "--config", str(config), "--from", since, "--to", until),
        *("--to-destination", "tempo"),
        env=subprocess_env,
    )
    assert (
        bad.returncode == 2 and "no destination 'tempo'; configured: jaeger, zipkin" in bad.stdout
    )

    # Retention took partition 0's first record: a range starting before it is refused.
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(1)})
    finally:
        await admin.close()
    gone = run_cli(
        *("backfill", "traces", "--config", str(config), "--from", since, "--to", until),
        *("--to-destination", "jaeger"),
        env=subprocess_env,
    )
    assert gone.returncode == 2, gone.stdout + gone.stderr
    assert f"{topic}[0] keeps records from offset 1" in gone.stdout
    assert "part of the range is gone from Kafka" in gone.stdout


def _assert_equal(got: object, want: object) -> None:
    assert got == want
