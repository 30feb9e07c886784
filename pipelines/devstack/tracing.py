"""Tracing stores of the local stack (opt-in: ``SLUICE_STACK=kafka,s3,zipkin,jaeger``).

- Zipkin server, the exec jar from Maven Central, in-memory storage, on loopback only.
- Jaeger v2 (all-in-one, memory storage), built from its Go module: ``go install`` refuses
  it (its go.mod has a replace directive), so it is built as a tool of a scratch module in
  the cache. Only the OTLP receivers and the query API listen, on ports of our choosing.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

from pipelines.devstack.components import StackConfig, require_tool
from pipelines.devstack.procs import Procs, ensure_port_free, port_open, run_checked

ZIPKIN_VERSION = "3.6.1"
JAEGER_VERSION = "v1.76.0"  # = Jaeger v2.13.0; later v2 tags are not Go-module versions


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL
            return bool(200 <= resp.status < 300)
    except OSError:
        return False


class Zipkin:
    """Zipkin server: POST /api/v2/spans, GET /api/v2/trace/{id}."""

    name = "zipkin"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs

    def jar(self) -> Path:
        return self.cfg.cache_dir / "zipkin" / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"

    def fetch(self) -> None:
        if self.jar().exists():
            return
        mvn = require_tool("mvn", "Install Maven 3.8+ (Debian: apt-get install maven).")
        tmp = self.jar().parent / "partial"
        shutil.rmtree(tmp, ignore_errors=True)
        run_checked(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy",
                f"-Dartifact=io.zipkin:zipkin-server:{ZIPKIN_VERSION}:jar:exec",
                f"-DoutputDirectory={tmp}",
            ],
            "Downloading the Zipkin server with Maven",
            "Check that Maven Central is reachable.",
            self.procs.log_dir / "zipkin-fetch.log",
        )
        (tmp / self.jar().name).rename(self.jar())
        shutil.rmtree(tmp, ignore_errors=True)

    def start(self) -> None:
        java = require_tool("java", "Install a JDK 17+.")
        c = self.cfg
        ensure_port_free(c.host, c.zipkin_port, "Zipkin", "SLUICE_ZIPKIN_PORT")
        self.fetch()
        env = {
            **os.environ,
            "STORAGE_TYPE": "mem",
            "MEM_MAX_SPANS": "50000",
            "QUERY_PORT": str(c.zipkin_port),
        }
        self.procs.start(
            self.name,
            [
                java,
                "-Xms256m",
                "-Xmx1g",
                "-jar",
                str(self.jar()),
                # Armeria binds every interface unless told otherwise.
                f"--armeria.ports[0].port={c.zipkin_port}",
                f"--armeria.ports[0].ip={c.host}",
                "--armeria.ports[0].protocols=http",
            ],
            env=env,
        )

    def ready(self) -> bool:
        return port_open(self.cfg.host, self.cfg.zipkin_port) and _http_ok(
            f"http://{self.cfg.host}:{self.cfg.zipkin_port}/health"
        )


class Jaeger:
    """Jaeger v2 all-in-one: OTLP/HTTP and OTLP/gRPC in, query API out, memory storage."""

    name = "jaeger"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs

    def binary(self) -> Path:
        return self.cfg.cache_dir / "bin" / f"jaeger-{JAEGER_VERSION}"

    def fetch(self) -> None:
        """Build once into the cache (5-10 min cold on 2 cores; seconds with Go's caches)."""
        if self.binary().exists():
            return
        go = require_tool("go", "Install Go 1.25+ to build Jaeger.")
        module = self.cfg.cache_dir / "jaeger-build"
        shutil.rmtree(module, ignore_errors=True)
        module.mkdir(parents=True)
        (module / "go.mod").write_text("module local/jaegerbuild\n\ngo 1.25\n")
        hint = "Check that the Go module proxy is reachable (GOPROXY)."
        log = self.procs.log_dir / "jaeger-fetch.log"
        run_checked(
            [go, "get", "-tool", f"github.com/jaegertracing/jaeger/cmd/jaeger@{JAEGER_VERSION}"],
            "Resolving Jaeger's Go module",
            hint,
            log,
            cwd=module,
        )
        out = self.binary().with_suffix(".partial")
        run_checked(
            [go, "build", "-o", str(out), "github.com/jaegertracing/jaeger/cmd/jaeger"],
            "Building Jaeger",
            hint,
            log,
            cwd=module,
            env={**os.environ, "CGO_ENABLED": "0"},
        )
        out.rename(self.binary())

    def start(self) -> None:
        c = self.cfg
        for port, var in (
            (c.jaeger_otlp_http_port, "SLUICE_JAEGER_OTLP_HTTP_PORT"),
            (c.jaeger_otlp_http_port - 1, "SLUICE_JAEGER_OTLP_HTTP_PORT"),
            (c.jaeger_query_port, "SLUICE_JAEGER_QUERY_PORT"),
            (c.jaeger_query_port - 1, "SLUICE_JAEGER_QUERY_PORT"),
        ):
            ensure_port_free(c.host, port, "Jaeger", var)
        self.fetch()
        home = c.state_dir / "jaeger"
        home.mkdir(parents=True, exist_ok=True)
        config = home / "config.json"  # JSON is YAML: no YAML writer needed
        config.write_text(json.dumps(self._config(), indent=1))
        self.procs.start(self.name, [str(self.binary()), "--config", str(config)])

    def _config(self) -> dict[str, object]:
        c = self.cfg
        h = c.host
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
            },
            "extensions": {
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"{h}:{c.jaeger_query_port}"},
                    "grpc": {"endpoint": f"{h}:{c.jaeger_query_port - 1}"},
                },
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 200000}}}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"{h}:{c.jaeger_otlp_http_port - 1}"},
                        "http": {"endpoint": f"{h}:{c.jaeger_otlp_http_port}"},
                    }
                }
            },
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def ready(self) -> bool:
        c = self.cfg
        return port_open(c.host, c.jaeger_otlp_http_port) and _http_ok(
            f"http://{c.host}:{c.jaeger_query_port}/api/services"
        )
