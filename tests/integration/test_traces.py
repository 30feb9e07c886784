"""The trace router end to end: spans from the real OpenTelemetry SDK through Kafka to the real
Jaeger and Zipkin servers, read back through their own query APIs."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.sinkkit import create_topic, produce, start_worker, stop_worker, wait_committed
from tests.spankit import request

ROUTES = {
    "routes": [
        {"name": "no-auth", "match": {"resource": {"service.name": "auth"}}, "drop": True},
        {
            "name": "shop",
            "match": {"resource": {"service.name": ["checkout", "payments"]}},
            "to": ["jaeger"],
        },
        {"name": "errors", "match": {"status": ["error"]}, "to": ["zipkin"]},
    ],
    "default": ["jaeger", "zipkin"],
}


def sdk_trace(service: str, children: int, error_child: int | None = None) -> tuple[bytes, str]:
    """One trace made by the OpenTelemetry SDK, encoded as the Collector's Kafka exporter
    would (an OTLP ExportTraceServiceRequest)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("sluice-tests")
    with tracer.start_as_current_span(f"{service} request", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/things/{id}")
        for i in range(children):
            with tracer.start_as_current_span(f"{service} step {i}") as child:
                child.set_attribute("step", i)
                if i == error_child:
                    child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    return encode_spans(exporter.get_finished_spans()).SerializeToString(), trace_id


def write_config(tmp: Path, topic: str, group: str, env: dict[str, str], **extra: object) -> Path:
    config = {
        "kafka": {"bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"], "session_timeout": "6s"},
        "traces": {
            "group_id": group,
            "topics": [{"name": topic, "encoding": "otlp_proto"}],
            "destinations": {
                "jaeger": {
                    "type": "otlp_http",
                    "endpoints": [env["JAEGER_OTLP_HTTP_ENDPOINT"]],
                    "max_wait": "50ms",
                },
                "zipkin": {
                    "type": "zipkin",
                    "endpoint": env["ZIPKIN_URL"],
                    "max_wait": "50ms",
                    "breaker_cooldown": "2s",
                    "retry_attempts": 2,
                },
            },
            **ROUTES,
            **extra,
        },
        "metrics": {"port": 0},
    }
    path = tmp / "traces.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def jaeger_span_names(env: dict[str, str], trace_id: str) -> set[str]:
    try:
        with urllib.request.urlopen(
            f"{env['JAEGER_QUERY_URL']}/api/traces/{trace_id}", timeout=5
        ) as resp:
            data = json.loads(resp.read())["data"]
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return set()
        raise
    return {s["operationName"] for t in data for s in t["spans"]}


def zipkin_span_names(env: dict[str, str], trace_id: str) -> set[str]:
    try:
        with urllib.request.urlopen(
            f"{env['ZIPKIN_URL']}/api/v2/trace/{trace_id}", timeout=5
        ) as resp:
            return {s["name"] for s in json.loads(resp.read())}
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return set()
        raise


async def eventually(check, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Stores index asynchronously: poll ``check`` until it passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def test_sdk_spans_reach_the_stores_their_rules_select(
    stack_env, bootstrap, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    checkout, checkout_id = sdk_trace("checkout", 3)
    auth, auth_id = sdk_trace("auth", 2)
    search, search_id = sdk_trace("search", 3, error_child=1)
    sent = await produce(bootstrap, topic, [(0, checkout), (1, auth), (0, search)])
    config = write_config(tmp_path, topic, group, stack_env)
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env, "traces")
    try:
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        await wait_committed(bootstrap, group, topic, ends, 60, [worker])
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    def check() -> None:
        # shop → Jaeger only
        assert jaeger_span_names(stack_env, checkout_id) == {
            "checkout request",
            "checkout step 0",
            "checkout step 1",
            "checkout step 2",
        }
        assert zipkin_span_names(stack_env, checkout_id) == set()
        # errors → Zipkin only; the rest of the trace by default → both
        assert jaeger_span_names(stack_env, search_id) == {
            "search request",
            "search step 0",
            "search step 2",
        }
        assert zipkin_span_names(stack_env, search_id) == {
            "search request",
            "search step 0",
            "search step 1",
            "search step 2",
        }

    await eventually(check)
    # Dropped by rule: in neither store, even after everything else arrived.
    assert jaeger_span_names(stack_env, auth_id) == set()
    assert zipkin_span_names(stack_env, auth_id) == set()


async def test_bad_span_input_is_dead_lettered_with_reasons(
    stack_env, bootstrap, unique, tmp_path, subprocess_env
) -> None:
    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 1)
    rng = random.Random(3)
    good, spans = request("catalog", 4, rng)
    invalid = ExportTraceServiceRequest.FromString(request("catalog", 3, rng)[0])
    invalid.resource_spans[0].scope_spans[0].spans[1].trace_id = bytes(16)  # all-zero id
    ancient = ExportTraceServiceRequest.FromString(request("catalog", 2, rng)[0])
    for span in ancient.resource_spans[0].scope_spans[0].spans:
        span.start_time_unix_nano = 10**9  # 1970
    huge = ExportTraceServiceRequest.FromString(request("catalog", 1, rng)[0])
    huge.resource_spans[0].scope_spans[0].spans[0].name = "x" * 70_000
    values = [
        b"\x00\xffnot protobuf at all",
        good[: len(good) // 2],
        invalid.SerializeToString(),
        ancient.SerializeToString(),
        huge.SerializeToString(),
        good,
    ]
    await produce(bootstrap, topic, ((0, v) for v in values))
    config = write_config(tmp_path, topic, group, stack_env, max_message_size="64KiB")
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env, "traces")
    try:
        await wait_committed(bootstrap, group, topic, {0: len(values)}, 60, [worker])
        assert worker.poll() is None  # bad input never crashes the worker
    finally:
        stop_worker(worker)

    consumer = AIOKafkaConsumer(
        f"{topic}.dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    letters = {}
    try:
        async with asyncio.timeout(30):
            while len(letters) < 5:
                for recs in (await consumer.getmany(timeout_ms=1000)).values():
                    for rec in recs:
                        h = {k: v.decode() for k, v in rec.headers}
                        letters[int(h["sluice.source.offset"])] = h["sluice.reason"]
    finally:
        await consumer.stop()
    assert letters == {
        0: "unparseable",
        1: "unparseable",
        2: "invalid_id",
        3: "bad_timestamp",
        4: "oversized",
    }
    # The valid spans of the message with one bad id were still delivered.
    kept = ExportTraceServiceRequest.FromString(values[2]).resource_spans[0].scope_spans[0]
    kept_ids = [s.trace_id.hex() for i, s in enumerate(kept.spans) if i != 1]
    # The good message (offset 5) was routed as usual.
    await eventually(lambda: _all_in_jaeger(stack_env, kept_ids + [t.hex() for t, _, _ in spans]))


def _all_in_jaeger(env: dict[str, str], trace_ids: list[str]) -> None:
    for tid in trace_ids:
        assert jaeger_span_names(env, tid), tid


async def test_zipkin_json_input_republished_to_a_kafka_topic(
    stack_env, bootstrap, unique, tmp_path, subprocess_env
) -> None:
    topic, group, out = f"{unique}.zipkin", f"{unique}-g", f"{unique}.team"
    await create_topic(bootstrap, topic, 1)
    await create_topic(bootstrap, out, 1)
    trace = f"{random.getrandbits(128):032x}"
    zipkin_spans = [
        {
            "traceId": trace,
            "id": f"{i + 1:016x}",
            "name": f"op-{i}",
            "timestamp": 1_795_000_000_000_000 + i,
            "duration": 10,
            "kind": "CLIENT",
            "localEndpoint": {"serviceName": "legacy"},
        }
        for i in range(3)
    ]
    await produce(bootstrap, topic, [(0, json.dumps(zipkin_spans).encode())])
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout": "6s"},
        "traces": {
            "group_id": group,
            "topics": [{"name": topic, "encoding": "zipkin_json"}],
            "destinations": {"team": {"type": "kafka", "topic": out}},
            "default": ["team"],
        },
        "metrics": {"port": 0},
    }
    path = tmp_path / "traces.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = start_worker(path, tmp_path / "worker.log", subprocess_env, "traces")
    try:
        await wait_committed(bootstrap, group, topic, {0: 1}, 60, [worker])
    finally:
        stop_worker(worker)
    consumer = AIOKafkaConsumer(out, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            rec = await consumer.getone()
    finally:
        await consumer.stop()
    req = ExportTraceServiceRequest.FromString(rec.value)
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert sorted(s.name for s in spans) == ["op-0", "op-1", "op-2"]
    assert {s.trace_id.hex() for s in spans} == {trace}
    service = req.resource_spans[0].resource.attributes[0]
    assert (service.key, service.value.string_value) == ("service.name", "legacy")


async def test_table_destination_writes_the_routed_spans_exactly_once(
    stack_env, bootstrap, s3, unique, tmp_path, subprocess_env
) -> None:
    from tests.sinkkit import REPO, read_table

    topic, group = f"{unique}.spans", f"{unique}-g"
    await create_topic(bootstrap, topic, 2)
    rng = random.Random(21)
    values: list[bytes | None] = [
        request(["checkout", "search"][i % 2], 10, rng)[0] for i in range(40)
    ]
    # Bad messages amid them: dead-lettered once each, by the router, table or not.
    huge = ExportTraceServiceRequest.FromString(request("checkout", 1, rng)[0])
    huge.resource_spans[0].scope_spans[0].spans[0].name = "x" * 70_000
    values[10], values[12] = None, huge.SerializeToString()  # both on partition 0
    sent = await produce(bootstrap, topic, ((i % 2, v) for i, v in enumerate(values)))
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "spans.yaml").write_text((REPO / "schemas" / "spans.yaml").read_text())
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout": "6s"},
        "s3": {"endpoint_url": stack_env["AWS_ENDPOINT_URL_S3"]},
        "warehouse": {
            "root": f"s3://lake/{unique}",
            "schemas_dir": str(schemas),
            "rotation": {"max_age": "1s"},
        },
        "traces": {
            "group_id": group,
            "topics": [{"name": topic}],
            "max_message_size": "64KiB",
            "destinations": {
                "jaeger": {
                    "type": "otlp_http",
                    "endpoints": [stack_env["JAEGER_OTLP_HTTP_ENDPOINT"]],
                },
                "lake": {"type": "table", "table": "spans"},
            },
            "routes": [
                {
                    "name": "shop",
                    "match": {"resource": {"service.name": "checkout"}},
                    "to": ["jaeger", "lake"],
                }
            ],
            "default": ["jaeger"],
        },
        "metrics": {"port": 0},
    }
    path = tmp_path / "traces.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = start_worker(path, tmp_path / "worker.log", subprocess_env, "traces")
    try:
        ends = {p: 1 + max(o for q, o in sent if q == p) for p in range(2)}
        await wait_committed(bootstrap, group, topic, ends, 60, [worker])
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    table, _ = read_table(s3, "lake", f"{unique}/spans/")
    want = set()
    for (p, o), value in sent.items():
        if value is None or len(value) > 64 * 1024:
            continue
        req = ExportTraceServiceRequest.FromString(value)
        service = req.resource_spans[0].resource.attributes[0].value.string_value
        if service == "checkout":
            want |= {(p, o, s.span_id) for s in req.resource_spans[0].scope_spans[0].spans}
    rows = list(
        zip(
            table.column("_partition").to_pylist(),
            table.column("_offset").to_pylist(),
            table.column("span_id").to_pylist(),
            strict=True,
        )
    )
    assert len(rows) == len(set(rows)) == len(want) == 18 * 10
    assert set(rows) == want
    assert set(table.column("service_name").to_pylist()) == {"checkout"}
    letters = await read_all(bootstrap, f"{topic}.dlq")
    assert sorted((h["sluice.source.offset"], h["sluice.reason"]) for h in letters) == [
        ("5", "unparseable"),
        ("6", "oversized"),
    ]


async def read_all(bootstrap: str, topic: str) -> list[dict[str, str]]:
    """The headers of every record of ``topic`` (one partition), read to its end."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[dict[str, str]] = []
    try:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        async with asyncio.timeout(30):
            while len(out) < end:
                for recs in (await consumer.getmany(timeout_ms=1000)).values():
                    out += [{k: v.decode() for k, v in rec.headers} for rec in recs]
    finally:
        await consumer.stop()
    return out
