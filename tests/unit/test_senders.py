import os
import random
import time

import pytest
from aiohttp import web

from pipelines.destinations.queue import Breaker
from pipelines.destinations.senders import OtlpHttpSender, ZipkinSender, shard
from pipelines.errors import ConfigError
from pipelines.spans import get_decoder
from pipelines.traces_config import DestinationSpec, load_traces
from tests.spankit import request

SECRET_URL = "http://admin:s3cr3t@127.0.0.1:9411"


def test_sharding_is_stable_balanced_and_moves_little_when_an_endpoint_joins() -> None:
    ids = [os.urandom(16) for _ in range(6000)]
    three = ["http://a:4318", "http://b:4318", "http://c:4318"]
    first = [shard(t, three) for t in ids]
    assert first == [shard(t, list(three)) for t in ids]  # any worker, same answer
    counts = [first.count(i) for i in range(3)]
    assert all(1700 < c < 2300 for c in counts), counts
    four = [*three, "http://d:4318"]
    after = [shard(t, four) for t in ids]
    moved = sum(1 for a, b in zip(first, after, strict=True) if a != b)
    assert all(b == 3 for a, b in zip(first, after, strict=True) if a != b)  # only to the new one
    assert 1200 < moved < 1800  # ~1/4 of the traces


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown() -> None:
    now = [0.0]
    b = Breaker(failures=3, cooldown=10.0, clock=lambda: now[0])
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open" and not b.allow()
    now[0] = 10.0
    assert b.state == "half_open" and b.allow()
    b.failure()  # the trial failed: open again for a whole cooldown
    assert b.state == "open"
    now[0] = 20.0
    b.success()
    assert b.state == "closed" and b.failures == 0


def test_credentials_come_from_the_environment_never_from_urls(monkeypatch) -> None:
    base = {"topics": ["spans"], "default": ["z"]}
    with pytest.raises(ConfigError) as err:
        load_traces({**base, "destinations": {"z": {"type": "zipkin", "endpoint": SECRET_URL}}})
    assert "traces.destinations.z.endpoint: credentials in a URL" in str(err.value)
    assert "s3cr3t" not in str(err.value)
    monkeypatch.delenv("SLUICE_TEST_TOKEN", raising=False)
    z = {"type": "zipkin", "endpoint": "http://127.0.0.1:9411"}
    z["headers_from_env"] = {"Authorization": "SLUICE_TEST_TOKEN"}
    with pytest.raises(ConfigError, match="environment variable SLUICE_TEST_TOKEN is not set"):
        load_traces({**base, "destinations": {"z": z}})
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "Bearer t0ken")
    loaded = load_traces({**base, "destinations": {"z": z}})
    assert loaded.destinations["z"].headers_from_env == {"Authorization": "SLUICE_TEST_TOKEN"}


async def test_senders_send_the_headers_named_in_the_environment(monkeypatch) -> None:
    """A real HTTP server on loopback sees the header on both HTTP senders."""
    monkeypatch.setenv("SLUICE_TEST_TOKEN", "Bearer t0ken")
    seen: list[tuple[str, str | None, str | None]] = []

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.path, request.headers.get("Authorization"), request.content_type))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    app.router.add_post("/api/v2/spans", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "SLUICE_TEST_TOKEN"}
    message, _ = request("checkout", 3, random.Random(1))
    spans = get_decoder().decode(message, time.time_ns()).batch.spans
    jaeger = DestinationSpec("j", "otlp_http", endpoints=(url,), headers_from_env=headers)
    zipkin = DestinationSpec("z", "zipkin", endpoint=url, headers_from_env=headers)
    senders = [OtlpHttpSender(jaeger), ZipkinSender(zipkin)]
    try:
        for sender in senders:
            await sender.send(spans)
    finally:
        for sender in senders:
            await sender.close()
        await runner.cleanup()
    assert seen == [
        ("/v1/traces", "Bearer t0ken", "application/x-protobuf"),
        ("/api/v2/spans", "Bearer t0ken", "application/json"),
    ]


def test_durations_and_batch_sizes_must_make_sense() -> None:
    z = {"type": "zipkin", "endpoint": "http://127.0.0.1:9411", "retry_initial": "1s"}
    bad = {**z, "timeout": -3, "retry_max": "500ms", "breaker_cooldown": -10}
    with pytest.raises(ConfigError) as err:
        load_traces({"topics": ["spans"], "default": ["z"], "destinations": {"z": bad}})
    said = str(err.value)
    for key in ("timeout", "retry_max", "breaker_cooldown"):
        assert f"traces.destinations.z.{key}: must be at least" in said
