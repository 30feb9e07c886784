"""End-to-end trace-router benchmark: Kafka (OTLP protobuf) → routed to Jaeger and Zipkin.

    .venv/bin/python -m bench.traces_e2e --messages 20000 --spans-per-message 100 --partitions 4

1. Creates a fresh topic and produces N synthetic ``ExportTraceServiceRequest`` messages of
   M spans (realistic resources and attributes; ~10 spans per trace across services).
2. Runs each contender as its own process, with its own consumer group, on that topic, one
   after the other:
   - ``otelcol``: an OpenTelemetry Collector built with the Collector Builder
     (bench/otelcol.py; kafkareceiver → routingconnector → otlp_http + zipkin exporters,
     config bench/peers/otelcol/traces-routing.yaml);
   - ``sluice``: ``sluice traces --config FILE`` (see sluice_contender()).
   Both get the same routing table (ROUTES below):
     shop:    resource service.name in {checkout, payments} → jaeger
     errors:  span status ERROR                             → zipkin
     default: everything else                               → jaeger and zipkin
   first match wins, per span.
3. Polls the group's committed offsets until they reach the end offsets (the rate's end point,
   as in warehouse_e2e); for the collector also waits until its exporters' sent-span counters
   reach the spans the rules send each destination (commit ≠ delivery there, see the config).
   Samples VmHWM of the process tree; reads utime+stime from /proc/<pid>/stat when done
   (spans per CPU-second is the "per core" figure); then SIGTERMs the process.
4. Checks delivery: Zipkin's collector span counter (delta over the run), and a sample of
   trace ids (the last traces of each partition) read back from Jaeger's and Zipkin's query
   APIs, compared with the span ids the rules send each store.
5. Prints a table and writes JSON to bench/results/ (git-ignored).

Needs the local stack with Jaeger and Zipkin
(``SLUICE_STACK=kafka,s3,zipkin,jaeger sluice dev up``); reads .sluice/env.sh.
The stores are in-memory: Jaeger keeps max_traces 200k, Zipkin MEM_MAX_SPANS 500k and evicts
beyond that; delivery is counted by the exporters and committed offsets, not by the stores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import harness
from bench.harness import POLL_SECONDS, REPO, Stack, fmt, rate

OTELCOL_CONFIG = REPO / "bench" / "peers" / "otelcol" / "traces-routing.yaml"
SLUICE = "sluice"
OTELCOL = "otelcol"
CONTENDERS = (OTELCOL, SLUICE)
JAEGER, ZIPKIN = "jaeger", "zipkin"

# --- routing rules (the one table both contenders get) --------------------------------------

SHOP_SERVICES = ("checkout", "payments")
ROUTES: list[dict[str, Any]] = [
    {"name": "shop", "match": {"resource": {"service.name": list(SHOP_SERVICES)}}, "to": [JAEGER]},
    {"name": "errors", "match": {"status": ["error"]}, "to": [ZIPKIN]},
]
DEFAULT_ROUTE = [JAEGER, ZIPKIN]


def route(service: str, is_error: bool) -> tuple[str, ...]:
    """Destinations of one span under ROUTES (first match wins) — the reference semantics."""
    if service in SHOP_SERVICES:
        return (JAEGER,)
    if is_error:
        return (ZIPKIN,)
    return tuple(DEFAULT_ROUTE)


# --- workload ------------------------------------------------------------------------------

# service -> (routes it serves, downstream services it calls)
SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gateway": (
        ("/api/v1/{resource}", "/api/v1/{resource}/{id}"),
        ("web", "checkout", "search", "auth"),
    ),
    "web": (("/", "/product/{id}", "/cart"), ("catalog", "cart", "auth")),
    "checkout": (
        ("/checkout", "/checkout/{id}/confirm"),
        ("payments", "cart", "inventory", "shipping"),
    ),
    "payments": (("/payments/authorize", "/payments/{id}/capture"), ("auth",)),
    "cart": (("/cart/{id}", "/cart/{id}/items"), ("inventory",)),
    "catalog": (("/products", "/products/{id}"), ("inventory",)),
    "search": (("/search", "/search/suggest"), ("catalog",)),
    "auth": (("/oauth/token", "/session/{id}"), ()),
    "inventory": (("/stock/{sku}", "/reserve"), ()),
    "shipping": (("/quote", "/labels/{id}"), ("notify",)),
    "notify": (("/email", "/push"), ()),
}
ROOTS = (  # entry points of traces (weights by repetition): spreads spans over ~11 services
    "gateway",
    "gateway",
    "web",
    "web",
    "checkout",
    "checkout",
    "payments",
    "search",
    "cart",
    "catalog",
    "auth",
    "inventory",
    "shipping",
    "notify",
)
METHODS = ("GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE")
OK_CODES = (200, 200, 200, 200, 200, 200, 201, 204, 304, 400, 401, 404)
INTERNAL_OPS = (
    "render template",
    "serialize response",
    "cache lookup",
    "validate request",
    "db query",
)
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "okhttp/4.12.0",
    "python-requests/2.32.3",
)
STACKTRACE = (
    "java.net.SocketTimeoutException: Read timed out\n"
    "\tat java.base/sun.nio.ch.NioSocketImpl.timedRead(NioSocketImpl.java:278)\n"
    "\tat com.shop.http.Client.send(Client.java:112)"
)
ERROR_RATE = 0.02  # of HTTP spans: answered 5xx, status ERROR (semconv: server 5xx → Error)


def _ip(rnd: random.Random, sep: str = ".") -> str:
    return sep.join(str(rnd.randrange(256)) for _ in range(3))


def _status(status_type: Any, error: bool, message: str) -> Any:
    """A span's status: ERROR with ``message``, else unset."""
    return (
        status_type(code=status_type.STATUS_CODE_ERROR, message=message) if error else status_type()
    )


@dataclass
class SpanCounts:
    spans: int = 0
    errors: int = 0
    by_service: Counter[str] = field(default_factory=Counter)
    to: Counter[str] = field(default_factory=Counter)
    """Spans the rules send each destination."""


class TraceMaker:
    """ExportTraceServiceRequest messages: ~10-span traces crossing services, grouped into one
    ResourceSpans per (service, pod) as an SDK batch or a collector's Kafka exporter would."""

    def __init__(self, spans_per_message: int, seed: int, salt: int = 0) -> None:
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2

        self.n = spans_per_message
        self.c = common_pb2
        self.seed = seed
        self.salt = salt
        """XORed into every trace id: the same seed gives the same workload, but each run's
        trace ids are new, so reading the stores back is not confused by earlier runs."""
        rnd = random.Random(seed)
        self.resources: dict[str, list[Any]] = {}
        for service in SERVICES:
            pods = []
            for i in range(3):
                env = "prod" if i < 2 else "staging"
                pod = f"{service}-{rnd.getrandbits(32):08x}-{rnd.getrandbits(20):05x}"
                attrs = {
                    "service.name": service,
                    "service.namespace": "shop",
                    "service.version": f"2.{rnd.randrange(40)}.{rnd.randrange(9)}",
                    "service.instance.id": f"{rnd.getrandbits(128):032x}",
                    "deployment.environment": env,
                    "host.name": f"ip-10-{_ip(rnd, '-')}.ec2.internal",
                    "host.arch": "amd64",
                    "cloud.provider": "aws",
                    "cloud.region": REGIONS[i % len(REGIONS)],
                    "k8s.cluster.name": f"{env}-main",
                    "k8s.namespace.name": f"shop-{env}",
                    "k8s.deployment.name": service,
                    "k8s.pod.name": pod,
                    "k8s.node.name": f"node-{rnd.randrange(64):02d}",
                    "telemetry.sdk.name": "opentelemetry",
                    "telemetry.sdk.language": "java"
                    if service in ("checkout", "payments", "cart")
                    else "go",
                    "telemetry.sdk.version": "1.44.1",
                }
                pods.append(resource_pb2.Resource(attributes=self._kvs(attrs)))
            self.resources[service] = pods

    def _kv(self, key: str, value: Any) -> Any:
        c = self.c
        if isinstance(value, bool):
            return c.KeyValue(key=key, value=c.AnyValue(bool_value=value))
        if isinstance(value, int):
            return c.KeyValue(key=key, value=c.AnyValue(int_value=value))
        if isinstance(value, float):
            return c.KeyValue(key=key, value=c.AnyValue(double_value=value))
        return c.KeyValue(key=key, value=c.AnyValue(string_value=value))

    def _kvs(self, attrs: dict[str, Any]) -> list[Any]:
        return [self._kv(k, v) for k, v in attrs.items()]

    def make(
        self, index: int, rnd: random.Random, now_ns: int, counts: SpanCounts
    ) -> tuple[bytes, list[tuple[str, dict[str, list[str]]]]]:
        """One message; also the trace ids in it with the span ids each destination should get."""
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        from opentelemetry.proto.trace.v1 import trace_pb2

        Span = trace_pb2.Span  # noqa: N806
        Status = trace_pb2.Status  # noqa: N806
        groups: dict[tuple[str, int], list[Any]] = {}
        pods = {service: rnd.randrange(3) for service in SERVICES}  # one pod per service
        traces: list[tuple[str, dict[str, list[str]]]] = []
        remaining = self.n
        while remaining > 0:
            size = min(remaining, rnd.randint(6, 14))
            if 0 < remaining - size < 6:
                size = remaining
            remaining -= size
            trace_id = (rnd.getrandbits(128) ^ self.salt).to_bytes(16, "big")
            expect: dict[str, list[str]] = {JAEGER: [], ZIPKIN: []}
            start = now_ns - rnd.randrange(60_000_000_000)
            # (service, parent span id, start ns, depth) frontier
            root = rnd.choice(ROOTS)
            todo: deque[tuple[str, bytes, int, int]] = deque([(root, b"", start, 0)])
            made = 0
            while made < size:
                if not todo:
                    todo.append((root, b"", start, 0))
                service, parent, t0, depth = todo.popleft()
                routes, calls = SERVICES[service]
                method = rnd.choice(METHODS)
                http_route = rnd.choice(routes)
                error = rnd.random() < ERROR_RATE
                code = rnd.choice((500, 502, 503, 504)) if error else rnd.choice(OK_CODES)
                dur = int(rnd.lognormvariate(16.0, 1.2))  # median ~9 ms
                pod = pods[service]
                span_id = rnd.getrandbits(64).to_bytes(8, "big")
                attrs = {
                    "http.request.method": method,
                    "http.route": http_route,
                    "http.response.status_code": code,
                    "url.scheme": "https",
                    "url.path": http_route.replace("{id}", str(rnd.randrange(10**6))),
                    "server.address": f"{service}.shop.svc.cluster.local",
                    "server.port": 8080,
                    "network.protocol.version": "1.1",
                    "client.address": f"10.{_ip(rnd)}",
                    "user_agent.original": rnd.choice(USER_AGENTS),
                }
                if rnd.random() < 0.3:
                    attrs["enduser.id"] = f"u{rnd.randrange(10**7)}"
                events = []
                if error:
                    events.append(
                        Span.Event(
                            time_unix_nano=t0 + dur // 2,
                            name="exception",
                            attributes=self._kvs(
                                {
                                    "exception.type": "java.net.SocketTimeoutException",
                                    "exception.message": f"timed out after {dur // 1_000_000} ms",
                                    "exception.stacktrace": STACKTRACE,
                                }
                            ),
                        )
                    )
                elif rnd.random() < 0.1:
                    events.append(
                        Span.Event(
                            time_unix_nano=t0 + dur // 3,
                            name="cache.miss",
                            attributes=self._kvs({"cache.key": f"item:{rnd.randrange(10**6)}"}),
                        )
                    )
                span = Span(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_span_id=parent,
                    name=f"{method} {http_route}",
                    kind=Span.SPAN_KIND_SERVER,
                    start_time_unix_nano=t0,
                    end_time_unix_nano=t0 + dur,
                    attributes=self._kvs(attrs),
                    events=events,
                    status=_status(Status, error, f"HTTP {code}"),
                )
                self._record(groups, service, pod, span, error, counts, expect)
                made += 1
                # an internal span, and client spans towards the services it calls
                if made < size and rnd.random() < 0.35:
                    ierr = rnd.random() < ERROR_RATE / 2
                    op = rnd.choice(INTERNAL_OPS)
                    internal = Span(
                        trace_id=trace_id,
                        span_id=rnd.getrandbits(64).to_bytes(8, "big"),
                        parent_span_id=span_id,
                        name=op,
                        kind=Span.SPAN_KIND_INTERNAL,
                        start_time_unix_nano=t0 + dur // 10,
                        end_time_unix_nano=t0 + dur // 5,
                        attributes=self._kvs(
                            {
                                "code.function.name": op.replace(" ", "_"),
                                "code.namespace": f"com.shop.{service}",
                                "thread.name": f"worker-{rnd.randrange(32)}",
                                "db.system.name": "postgresql" if op == "db query" else "none",
                            }
                        ),
                        status=_status(Status, ierr, "internal failure"),
                    )
                    self._record(groups, service, pod, internal, ierr, counts, expect)
                    made += 1
                for callee in calls:
                    if made >= size or depth >= 4 or rnd.random() < 0.4:
                        continue
                    c_start = t0 + dur // 8
                    c_dur = max(dur // 2, 100_000)
                    c_err = rnd.random() < ERROR_RATE
                    c_code = rnd.choice((500, 502, 503)) if c_err else rnd.choice(OK_CODES)
                    c_route = rnd.choice(SERVICES[callee][0])
                    c_id = rnd.getrandbits(64).to_bytes(8, "big")
                    client = Span(
                        trace_id=trace_id,
                        span_id=c_id,
                        parent_span_id=span_id,
                        name=f"{method} {c_route}",
                        kind=Span.SPAN_KIND_CLIENT,
                        start_time_unix_nano=c_start,
                        end_time_unix_nano=c_start + c_dur,
                        attributes=self._kvs(
                            {
                                "http.request.method": method,
                                "http.route": c_route,
                                "http.response.status_code": c_code,
                                "url.full": f"http://{callee}.shop.svc.cluster.local:8080{c_route}",
                                "server.address": f"{callee}.shop.svc.cluster.local",
                                "server.port": 8080,
                                "network.peer.address": f"10.{_ip(rnd)}",
                                "http.request.resend_count": 0,
                            }
                        ),
                        status=_status(Status, c_err, f"HTTP {c_code}"),
                    )
                    self._record(groups, service, pod, client, c_err, counts, expect)
                    made += 1
                    todo.append((callee, c_id, c_start + c_dur // 10, depth + 1))
            traces.append((trace_id.hex(), expect))

        request = trace_service_pb2.ExportTraceServiceRequest()
        scope = self.c.InstrumentationScope(name="io.opentelemetry.http", version="2.10.0")
        for (service, pod), spans in groups.items():
            rs = request.resource_spans.add()
            rs.resource.CopyFrom(self.resources[service][pod])
            rs.schema_url = "https://opentelemetry.io/schemas/1.27.0"
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(scope)
            ss.spans.extend(spans)
        return request.SerializeToString(), traces

    @staticmethod
    def _record(
        groups: dict[tuple[str, int], list[Any]],
        service: str,
        pod: int,
        span: Any,
        error: bool,
        counts: SpanCounts,
        expect: dict[str, list[str]],
    ) -> None:
        groups.setdefault((service, pod), []).append(span)
        counts.spans += 1
        counts.errors += error
        counts.by_service[service] += 1
        for dest in route(service, error):
            counts.to[dest] += 1
            expect[dest].append(span.span_id.hex())


@dataclass
class Produced:
    messages: int
    spans: int
    bytes: int
    seconds: float
    end_offsets: dict[int, int]
    errors: int
    spans_by_service: dict[str, int]
    expected: dict[str, int]
    """Spans the routing rules send each destination."""
    sample_traces: dict[str, dict[str, list[str]]] = field(repr=False, default_factory=dict)
    """trace id → destination → span ids: the last traces of each partition."""


async def produce(
    stack: Stack, topic: str, partitions: int, messages: int, spans: int, seed: int, sample: int
) -> Produced:
    """Create ``topic`` and fill it with ``messages`` OTLP requests of ``spans`` spans."""
    maker = TraceMaker(spans, seed, salt=random.SystemRandom().getrandbits(128))
    counts = SpanCounts()
    tails: list[deque[tuple[str, dict[str, list[str]]]]] = [
        deque(maxlen=max(1, sample)) for _ in range(partitions)
    ]
    now_ns = time.time_ns()

    def make(index: int, rnd: random.Random) -> bytes:
        value, traces = maker.make(index, rnd, now_ns, counts)
        tails[index % partitions].extend(traces)
        return value

    filled = await harness.fill_topic(
        stack, topic, partitions, messages, seed, make, max_in_flight=4
    )
    seconds, end_offsets = filled.seconds, filled.end_offsets
    samples = {tid: expect for tail in tails for tid, expect in tail}
    return Produced(
        messages,
        counts.spans,
        filled.bytes,
        seconds,
        end_offsets,
        counts.errors,
        dict(counts.by_service.most_common()),
        {JAEGER: counts.to[JAEGER], ZIPKIN: counts.to[ZIPKIN]},
        samples,
    )


# --- contenders ----------------------------------------------------------------------------


@dataclass
class Contender(harness.Contender):
    metrics_url: str | None = None
    """Prometheus endpoint with per-destination sent counters (the collector's)."""
    sent_metrics: dict[str, str] = field(default_factory=dict)
    """destination → metric line prefix whose value is the spans it delivered there."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def otelcol_contender(stack: Stack, topic: str, run_dir: Path, tag: str) -> Contender:
    """The OpenTelemetry Collector (separate process), config traces-routing.yaml."""
    from bench.otelcol import ensure_built

    binary = ensure_built()
    group = f"bench-otelcol-{tag}"
    port = _free_port()
    config = run_dir / "otelcol.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(OTELCOL_CONFIG.read_text())
    env = dict(
        stack.env,
        BENCH_KAFKA_BROKERS=stack.bootstrap,
        BENCH_GROUP=group,
        BENCH_TOPIC=topic,
        BENCH_MAX_FETCH_SIZE=str(50 << 20),
        BENCH_MAX_PARTITION_FETCH_SIZE=str(4 << 20),
        BENCH_JAEGER_OTLP_HTTP=stack.env.get("JAEGER_OTLP_HTTP_ENDPOINT", "http://127.0.0.1:39318"),
        BENCH_ZIPKIN=stack.env.get("ZIPKIN_URL", "http://127.0.0.1:39411"),
        BENCH_METRICS_PORT=str(port),
    )
    env.setdefault("GOMAXPROCS", str(os.cpu_count() or 1))
    return Contender(
        OTELCOL,
        [str(binary), "--config", str(config)],
        env,
        group,
        run_dir / f"{OTELCOL}.log",
        metrics_url=f"http://127.0.0.1:{port}/metrics",
        sent_metrics={
            JAEGER: 'otelcol_exporter_sent_spans_total{exporter="otlp_http/jaeger"',
            ZIPKIN: 'otelcol_exporter_sent_spans_total{exporter="zipkin"',
        },
    )


def sluice_config(stack: Stack, topic: str, group: str) -> dict[str, Any]:
    """The ``sluice traces`` deployment file: the same rules as the collector's. With
    ``BENCH_SLUICE_TABLE=1`` every route also sends its spans to the Parquet spans table
    (bar (b) of the issue: the same plus the table, in one process)."""
    config = _sluice_config(stack, topic, group)
    if os.environ.get("BENCH_SLUICE_TABLE") == "1":
        traces = config["traces"]
        traces["destinations"]["lake"] = {"type": "table", "table": "spans"}
        traces["routes"] = [{**r, "to": [*r["to"], "lake"]} for r in traces["routes"]]
        traces["default"] = [*traces["default"], "lake"]
        config["s3"] = {"endpoint_url": stack.env.get("AWS_ENDPOINT_URL_S3", "")}
        config["warehouse"] = {
            "root": f"s3://lake/bench-traces/{group}",
            "schemas_dir": str(REPO / "schemas"),
            "rotation": {"max_age": "5s"},
        }
    return config


def _sluice_config(stack: Stack, topic: str, group: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": stack.bootstrap},
        "traces": {
            "group_id": group,
            "topics": [{"name": topic, "encoding": "otlp_proto"}],
            "destinations": {
                JAEGER: {
                    "type": "otlp_http",
                    "endpoints": [
                        stack.env.get("JAEGER_OTLP_HTTP_ENDPOINT", "http://127.0.0.1:39318")
                    ],
                },
                ZIPKIN: {
                    "type": "zipkin",
                    "endpoint": stack.env.get("ZIPKIN_URL", "http://127.0.0.1:39411"),
                },
            },
            "routes": ROUTES,
            "default": DEFAULT_ROUTE,
        },
        "metrics": {"port": 0},
    }


def sluice_available() -> str | None:
    """None when ``sluice traces`` can run, else why not."""
    exe = REPO / ".venv" / "bin" / "sluice"
    if not exe.exists():
        return f"{exe} is missing"
    done = subprocess.run(
        [str(exe), "traces", "--help"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return (
            "`sluice traces` is not implemented yet: " + (done.stderr or done.stdout).strip()[-300:]
        )
    return None


def sluice_contender(stack: Stack, topic: str, run_dir: Path, tag: str) -> Contender:
    """>>> CONTENDER B: ``.venv/bin/sluice traces --config <file>`` <<<

    The config carries the same routing table as the collector's (ROUTES / DEFAULT_ROUTE).
    Completion is measured by the group's committed offsets only: sluice commits after every
    selected destination delivered (or durably diverted) the spans, so commit == delivery.
    """
    group = f"bench-sluice-traces-{tag}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "sluice-traces.yaml"
    config_file.write_text(yaml.safe_dump(sluice_config(stack, topic, group), sort_keys=False))
    env = dict(stack.env, SLUICE_DATADIR=str(run_dir / "sluice-datadir"))
    return Contender(
        SLUICE,
        [str(REPO / ".venv" / "bin" / "sluice"), "traces", "--config", str(config_file)],
        env,
        group,
        run_dir / f"{SLUICE}.log",
    )


# --- measurement ---------------------------------------------------------------------------


def other_cpu_load(seconds: float = 2.0) -> float:
    """CPUs' worth of busy time on the machine over ``seconds`` (before a run: others' load)."""

    def snap() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = snap()
    time.sleep(seconds)
    total1, idle1 = snap()
    spent = max(total1 - total0, 1)
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / spent)


def http_text(url: str, timeout: float = 10.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body.decode()
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def http_json(url: str, timeout: float = 30.0, missing: Any = None) -> Any:
    """The JSON at ``url``; ``missing`` on a 404; None when the server does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return missing if e.code == 404 else None
    except (urllib.error.URLError, OSError, TimeoutError, ValueError):
        return None


def prom_sum(text: str | None, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (metric name + leading labels)."""
    if not text:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def prom_lines(text: str | None, pattern: str) -> list[str]:
    return [ln for ln in (text or "").splitlines() if re.match(pattern, ln)]


@dataclass
class RunResult:
    contender: str
    messages: int
    spans: int
    group: str
    completed: bool
    exit_code: int | None
    committed_seconds: float | None
    """Process start → every message's offset committed."""
    spans_per_s: float | None
    """spans / committed_seconds: the per-process rate."""
    delivered_seconds: float | None
    """Process start → the exporters' sent counters reach what the rules send (collector)."""
    spans_per_s_delivered: float | None
    join_seconds: float | None
    spans_per_s_after_join: float | None
    cpu_seconds: float | None
    """utime+stime of the process tree when done (before SIGTERM)."""
    spans_per_cpu_second: float | None
    """The per-core figure: spans / CPU seconds."""
    peak_rss_mib: float
    processes: int
    cpu_seconds_at_commit: float | None = None
    spans_per_cpu_second_at_commit: float | None = None
    delivered_seconds_by_destination: dict[str, float] = field(default_factory=dict)
    """Process start → that destination's sent counter reached what the rules send it."""
    stalled: bool = False
    """Delivery stopped progressing for --stall seconds after the commit: a store fell over."""
    sent: dict[str, float] = field(default_factory=dict)
    send_failed: dict[str, float] = field(default_factory=dict)
    exporter_metrics: list[str] = field(default_factory=list)
    zipkin_received: float | None = None
    """Zipkin's zipkin_collector_spans_total{transport=http} delta over the run."""
    sample_check: dict[str, Any] = field(default_factory=dict)
    log: str = ""
    log_problems: list[str] = field(default_factory=list)
    stack_restarted: bool = False


async def measure(
    stack: Stack, c: Contender, topic: str, produced: Produced, limit_s: float, stall_s: float
) -> RunResult:
    """Run the contender's process until its group has committed every end offset (and, for
    the collector, its exporters have sent every span the rules route)."""
    ends = produced.end_offsets
    join_at = committed_at = delivered_at = None
    cpu = cpu_at_commit = None
    sent: dict[str, float] = {}
    delivered_by: dict[str, float] = {}
    progress_at, progress = 0.0, -1.0
    stalled = False
    metrics_text: str | None = None
    async with harness.running(c, stack.bootstrap) as job:
        memory = job.memory
        try:
            while (now := job.tick(limit_s)) is not None:
                if join_at is None and await harness.group_stable(job.admin, c.group):
                    join_at = now
                if committed_at is None:
                    done = await harness.committed_records(job.admin, c.group, topic, ends)
                    if done >= produced.messages:
                        committed_at = now
                        cpu_at_commit = harness.cpu_seconds(memory.pids)
                if c.metrics_url and delivered_at is None:
                    metrics_text = await asyncio.to_thread(http_text, c.metrics_url, 5.0)
                    sent = {d: prom_sum(metrics_text, p) for d, p in c.sent_metrics.items()}
                    for d, n in produced.expected.items():
                        if d not in delivered_by and sent.get(d, 0) >= n:
                            delivered_by[d] = round(now, 2)
                    if len(delivered_by) == len(produced.expected):
                        delivered_at = now
                    if sum(sent.values()) > progress:
                        progress, progress_at = sum(sent.values()), now
                    elif committed_at is not None and now - progress_at > stall_s:
                        stalled = True  # a store stopped taking spans: give up waiting
                        break
                if committed_at is not None and (delivered_at is not None or not c.metrics_url):
                    memory.sample()
                    cpu = harness.cpu_seconds(memory.pids)
                    break
                await asyncio.sleep(POLL_SECONDS)
        finally:
            memory.sample()
            if cpu is None:
                cpu = harness.cpu_seconds(memory.pids)
            if c.metrics_url:
                metrics_text = (
                    await asyncio.to_thread(http_text, c.metrics_url, 5.0) or metrics_text
                )
                sent = {d: prom_sum(metrics_text, p) for d, p in c.sent_metrics.items()}
    failed = {
        d: prom_sum(metrics_text, p.replace("sent_spans", "send_failed_spans"))
        for d, p in c.sent_metrics.items()
    }
    completed = committed_at is not None and (delivered_at is not None or not c.metrics_url)
    end = max(committed_at or 0, delivered_at or 0) if completed else None
    return RunResult(
        contender=c.name,
        messages=produced.messages,
        spans=produced.spans,
        group=c.group,
        completed=completed,
        exit_code=job.exit_code,
        committed_seconds=committed_at,
        spans_per_s=rate(produced.spans, committed_at),
        delivered_seconds=delivered_at,
        spans_per_s_delivered=rate(produced.spans, delivered_at),
        join_seconds=join_at,
        spans_per_s_after_join=(
            rate(produced.spans, end - join_at) if end and join_at is not None else None
        ),
        cpu_seconds=round(cpu, 2) if cpu is not None else None,
        spans_per_cpu_second=rate(produced.spans, cpu) if completed else None,
        cpu_seconds_at_commit=cpu_at_commit,
        spans_per_cpu_second_at_commit=rate(produced.spans, cpu_at_commit),
        delivered_seconds_by_destination=delivered_by,
        stalled=stalled,
        peak_rss_mib=round(memory.peak_kib / 1024, 1),
        processes=len(memory.hwm_kib),
        sent=sent,
        send_failed=failed,
        exporter_metrics=prom_lines(
            metrics_text,
            r"otelcol_(exporter_(sent|send_failed|enqueue_failed)_spans|receiver_(accepted|refused|failed)_spans|kafka_receiver_(unmarshal_failed|records))",
        ),
        log=str(c.log),
    )


# --- delivery checks -----------------------------------------------------------------------


def zipkin_received(stack: Stack) -> float | None:
    base = stack.env.get("ZIPKIN_URL", "http://127.0.0.1:39411")
    text = http_text(f"{base}/prometheus")
    if text is None:
        return None
    return prom_sum(text, 'zipkin_collector_spans_total{transport="http"')


def store_spans(stack: Stack, trace_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """trace id → store → span ids (hex) the store returns for it (empty when not found)."""
    jaeger = stack.env.get("JAEGER_QUERY_URL", "http://127.0.0.1:39686")
    zipkin = stack.env.get("ZIPKIN_URL", "http://127.0.0.1:39411")
    out: dict[str, dict[str, list[str]]] = {}
    down: set[str] = set()  # a store that timed out once is not asked again
    for tid in trace_ids:
        found: dict[str, list[str]] = {JAEGER: [], ZIPKIN: []}
        if JAEGER not in down:
            doc = http_json(f"{jaeger}/api/traces/{tid}", timeout=10.0, missing={})
            if doc is None:
                down.add(JAEGER)
            for trace in (doc or {}).get("data") or []:
                found[JAEGER].extend(s["spanID"].rjust(16, "0") for s in trace.get("spans", []))
        if ZIPKIN not in down:
            spans = http_json(f"{zipkin}/api/v2/trace/{tid}", timeout=10.0, missing=[])
            if spans is None:
                down.add(ZIPKIN)
            found[ZIPKIN].extend(s["id"].rjust(16, "0") for s in spans or [])
        out[tid] = found
    out["_unavailable"] = {store: [] for store in sorted(down)}
    return out


def compare_samples(
    produced: Produced,
    before: dict[str, dict[str, list[str]]],
    after: dict[str, dict[str, list[str]]],
) -> dict[str, Any]:
    """Per store: expected span ids of the sampled traces vs what the store holds after the run.

    ``missing``: span ids routed there but absent; ``unexpected``: span ids present that the
    rules exclude from that store (another contender's run cannot add those either);
    ``returned_now_minus_before``: spans the store returns now minus before. Both stores
    return a re-delivered identical span once, so on the same topic only the FIRST
    contender's check is exact; later contenders show presence, not their own delivery
    (their delivery is counted by commits, their own counters and Zipkin's span counter)."""
    report: dict[str, Any] = {
        "traces": len(produced.sample_traces),
        "unavailable": sorted(
            set(before.get("_unavailable", {})) | set(after.get("_unavailable", {}))
        ),
    }
    for store in (JAEGER, ZIPKIN):
        expected = missing = unexpected = added = 0
        for tid, expect in produced.sample_traces.items():
            want = set(expect[store])
            have_after = after.get(tid, {}).get(store, [])
            have_before = before.get(tid, {}).get(store, [])
            got = set(have_after)
            expected += len(want)
            missing += len(want - got)
            unexpected += len(got - want)
            added += len(have_after) - len(have_before)
        report[store] = {
            "expected_spans": expected,
            "missing": missing,
            "unexpected": unexpected,
            "returned_now_minus_before": added,
        }
    return report


def jaeger_service_check(stack: Stack, service: str) -> dict[str, Any]:
    """GET /api/traces?service=…: traces and spans Jaeger returns for one service (capped)."""
    jaeger = stack.env.get("JAEGER_QUERY_URL", "http://127.0.0.1:39686")
    doc = http_json(f"{jaeger}/api/traces?service={service}&limit=200&lookback=2h", timeout=60)
    data = (doc or {}).get("data") or []
    spans = 0
    for trace in data:
        procs = trace.get("processes", {})
        spans += sum(
            1
            for s in trace.get("spans", [])
            if procs.get(s.get("processID"), {}).get("serviceName") == service
        )
    return {"service": service, "traces_returned": len(data), "spans_of_service": spans}


# --- driver --------------------------------------------------------------------------------


def print_results(results: list[RunResult]) -> None:
    columns = [
        *(("contender", "<9"), ("done", ">5"), ("commit s", ">8"), ("spans/s", ">9")),
        *(("deliv s", ">8"), ("spans/s dl", ">10"), ("CPU s", ">7"), ("spans/CPU-s", ">11")),
        ("RSS MiB", ">8"),
    ]
    harness.print_table(
        columns,
        (
            [
                r.contender,
                ("yes" if r.completed else "NO") + ("*" if r.stack_restarted else ""),
                fmt(r.committed_seconds, ".1f"),
                fmt(r.spans_per_s, ",.0f"),
                fmt(r.delivered_seconds, ".1f"),
                fmt(r.spans_per_s_delivered, ",.0f"),
                fmt(r.cpu_seconds, ".1f"),
                fmt(r.spans_per_cpu_second, ",.0f"),
                format(r.peak_rss_mib, ".0f"),
            ]
            for r in results
        ),
    )


async def run_one(
    stack: Stack, name: str, topic: str, produced: Produced, run_dir: Path, tag: str, args: Any
) -> RunResult:
    c = (
        otelcol_contender(stack, topic, run_dir, tag)
        if name == OTELCOL
        else sluice_contender(stack, topic, run_dir, tag)
    )
    pids = harness.stack_pids()
    samples = list(produced.sample_traces)
    before = await asyncio.to_thread(store_spans, stack, samples)
    zipkin_before = await asyncio.to_thread(zipkin_received, stack)
    print(f"{name} ({c.group}): {' '.join(c.argv)}", flush=True)
    result = await measure(stack, c, topic, produced, args.timeout, args.stall)
    result.stack_restarted = harness.stack_pids() != pids
    await asyncio.sleep(args.settle)  # the stores' own batching (Jaeger's batch processor)
    zipkin_after = await asyncio.to_thread(zipkin_received, stack)
    if zipkin_before is not None and zipkin_after is not None:
        result.zipkin_received = zipkin_after - zipkin_before
    after = await asyncio.to_thread(store_spans, stack, samples)
    result.sample_check = compare_samples(produced, before, after)
    result.sample_check["jaeger_service_query"] = await asyncio.to_thread(
        jaeger_service_check, stack, "checkout"
    )
    result.log_problems = harness.log_problems(c.log)
    print(
        f"  completed={result.completed} committed={fmt(result.committed_seconds, '.1f')}s "
        f"delivered={fmt(result.delivered_seconds, '.1f')}s "
        f"spans/s={fmt(result.spans_per_s, ',.0f')} cpu={fmt(result.cpu_seconds, '.1f')}s "
        f"spans/cpu-s={fmt(result.spans_per_cpu_second, ',.0f')} rss={result.peak_rss_mib}MiB "
        f"sent={result.sent} failed={result.send_failed} zipkin_received={result.zipkin_received}"
        + (" STACK RESTARTED" if result.stack_restarted else ""),
        flush=True,
    )
    print(
        f"  delivered per destination at {result.delivered_seconds_by_destination} s; "
        f"CPU at commit {result.cpu_seconds_at_commit} s"
        + (" — DELIVERY STALLED (a store stopped taking spans)" if result.stalled else ""),
        flush=True,
    )
    print(f"  sample check: {json.dumps(result.sample_check)}", flush=True)
    return result


async def main_async(args: argparse.Namespace) -> int:
    stack = harness.load_stack()
    contenders = harness.parse_contenders(args.contenders, CONTENDERS)
    skipped: dict[str, str] = {}
    if SLUICE in contenders and (why := sluice_available()):
        print(f"SKIPPING sluice: {why}", flush=True)
        skipped[SLUICE] = why
        contenders.remove(SLUICE)
    if OTELCOL in contenders:
        from bench.otelcol import ensure_built

        ensure_built()  # build (once) before anything is timed
    for url in (
        stack.env.get("ZIPKIN_URL", "http://127.0.0.1:39411") + "/health",
        stack.env.get("JAEGER_QUERY_URL", "http://127.0.0.1:39686") + "/api/services",
    ):
        if http_text(url) is None:
            sys.exit(
                f"{url} does not answer: start the stack "
                "(SLUICE_STACK=kafka,s3,zipkin,jaeger sluice dev up)"
            )
    busy = other_cpu_load()
    if busy > 0.5:
        print(
            f"WARNING: other processes keep {busy:.1f} of {os.cpu_count()} CPUs busy: "
            "the figures will be low and noisy",
            flush=True,
        )

    source_at_start = harness.source_state()
    session = harness.new_session("traces")
    stamp, tag, run_root = session.stamp, session.tag, session.run_root
    topic = f"bench.spans.{tag}"

    print(
        f"producing {args.messages:,} messages x {args.spans_per_message} spans to {topic} "
        f"({args.partitions} partitions) ...",
        flush=True,
    )
    produced = await produce(
        stack, topic, args.partitions, args.messages, args.spans_per_message, args.seed, args.sample
    )
    print(
        f"  {produced.spans:,} spans, {produced.bytes / produced.messages / 1024:.1f} KiB/message, "
        f"{produced.spans / produced.seconds:,.0f} spans/s produced; errors {produced.errors:,}; "
        f"rules send jaeger {produced.expected[JAEGER]:,}, zipkin {produced.expected[ZIPKIN]:,}",
        flush=True,
    )

    results: list[RunResult] = []
    try:
        for name in contenders:
            results.append(
                await run_one(stack, name, topic, produced, run_root / name, f"{tag}", args)
            )
    finally:
        if not args.keep:
            await harness.delete_topics(stack, topic)

    print()
    print_results(results)
    summary: dict[str, Any] = {
        r.contender: {
            "spans_per_s": r.spans_per_s,
            "spans_per_s_delivered": r.spans_per_s_delivered,
            "spans_per_cpu_second": r.spans_per_cpu_second,
            "spans_per_cpu_second_at_commit": r.spans_per_cpu_second_at_commit,
            "delivered_seconds_by_destination": r.delivered_seconds_by_destination,
            "stalled": r.stalled,
            "peak_rss_mib": r.peak_rss_mib,
        }
        for r in results
    }
    by = {r.contender: r for r in results}
    if SLUICE in by and OTELCOL in by:
        a, b = by[SLUICE], by[OTELCOL]
        summary["ratio_sluice_over_otelcol"] = {
            "spans_per_s": harness.ratio(a.spans_per_s, b.spans_per_s),
            "spans_per_cpu_second": harness.ratio(a.spans_per_cpu_second, b.spans_per_cpu_second),
            "spans_per_cpu_second_at_commit": harness.ratio(
                a.spans_per_cpu_second_at_commit, b.spans_per_cpu_second_at_commit
            ),
        }
    print(json.dumps(summary, indent=2))
    from bench.otelcol import built_info

    report = {
        "benchmark": "traces_e2e",
        "started_utc": stamp.isoformat(),
        "command": ".venv/bin/python -m bench.traces_e2e " + " ".join(sys.argv[1:]),
        "machine": harness.machine(),
        "other_cpu_load_at_start": round(busy, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "sluice_source": {"at_start": source_at_start, "at_end": harness.source_state()},
        "skipped": skipped,
        "topic": topic,
        "partitions": args.partitions,
        "produced": {k: v for k, v in asdict(produced).items() if k != "sample_traces"},
        "routes": {"routes": ROUTES, "default": DEFAULT_ROUTE},
        "otelcol": built_info() if OTELCOL in by else None,
        "results": [asdict(r) for r in results],
        "summary": summary,
        "logs": str(run_root),
    }
    harness.write_results("traces", stamp, report, logs=run_root)
    ok = all(
        r.completed and not any(r.send_failed.values()) for r in results if not r.stack_restarted
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.traces_e2e", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--spans-per-message", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--contenders", default=f"{OTELCOL},{SLUICE}", help=f"comma list of {', '.join(CONTENDERS)}"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per contender run, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=int, default=25, help="traces per partition read back")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="s to wait before reading the stores back"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="s without delivery progress after the commit before giving up (a store is down)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the topic")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
