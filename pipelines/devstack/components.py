"""The servers of the local stack: Apache Kafka (KRaft) and an S3 server.

Each component knows how to fetch or build itself into the cache (outside the clone, so a
fresh clone on the same machine starts in seconds), start on loopback, and say when it is
ready. Downloads: Kafka's jars through Maven (``infra/local/kafka/pom.xml``), versitygw
through ``go install``; moto's server (the fallback) comes with the dev extra.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from pipelines.devstack.procs import Procs, StackError, ensure_port_free, port_open, run_checked

VERSITYGW_VERSION = "v1.7.0"
LOCAL_ACCESS_KEY = "sluice-local"
# A throwaway credential for a loopback-only test server, not a secret.
LOCAL_SECRET_KEY = "sluice-local-secret"  # noqa: S105
BUCKET = "lake"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and listens; every field has an environment override."""

    infra_dir: Path
    """infra/local of this checkout (pom, log4j2 config)."""
    state_dir: Path
    """Runtime state (data, logs, pids, env file): SLUICE_STATE_DIR, default <repo>/.sluice."""
    cache_dir: Path
    """Downloads and builds: SLUICE_CACHE_DIR, default ${XDG_CACHE_HOME:-~/.cache}/sluice."""
    kafka_port: int = 39092
    """SLUICE_KAFKA_PORT."""
    kafka_controller_port: int = 39093
    """SLUICE_KAFKA_CONTROLLER_PORT."""
    s3_port: int = 39000
    """SLUICE_S3_PORT."""
    s3_server: str = "versitygw"
    """SLUICE_S3_SERVER: versitygw (real S3 front end over a directory) or moto."""
    components: tuple[str, ...] = ("kafka", "s3")
    """SLUICE_STACK: which servers `up` starts; add zipkin and/or jaeger for the tracing
    stores, hms and trino for the catalog tier (kafka and s3 always run; trino needs hms)."""
    zipkin_port: int = 39411
    """SLUICE_ZIPKIN_PORT."""
    jaeger_otlp_http_port: int = 39318
    """SLUICE_JAEGER_OTLP_HTTP_PORT (OTLP/gRPC listens one below it)."""
    jaeger_query_port: int = 39686
    """SLUICE_JAEGER_QUERY_PORT (query gRPC listens one below it)."""
    hms_port: int = 39083
    """SLUICE_HMS_PORT (Hive Metastore Thrift)."""
    trino_port: int = 39080
    """SLUICE_TRINO_PORT."""
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StackConfig:
        e = dict(os.environ if env is None else env)
        repo = Path(__file__).resolve().parents[2]
        infra = Path(e.get("SLUICE_INFRA_DIR", repo / "infra" / "local"))
        xdg = Path(e.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        server = e.get("SLUICE_S3_SERVER", "versitygw")
        if server not in ("versitygw", "moto"):
            raise StackError(f"SLUICE_S3_SERVER={server!r}: choose versitygw or moto")

        def port(name: str, default: int) -> int:
            try:
                value = int(e.get(name, default))
            except ValueError as err:
                raise StackError(f"{name}={e[name]!r} is not a port number") from err
            if not 1 <= value <= 65535:
                raise StackError(f"{name}={value} is not in 1..65535")
            return value

        return cls(
            infra_dir=infra,
            state_dir=Path(e.get("SLUICE_STATE_DIR", repo / ".sluice")),
            cache_dir=Path(e.get("SLUICE_CACHE_DIR", xdg / "sluice")),
            kafka_port=port("SLUICE_KAFKA_PORT", 39092),
            kafka_controller_port=port("SLUICE_KAFKA_CONTROLLER_PORT", 39093),
            s3_port=port("SLUICE_S3_PORT", 39000),
            s3_server=server,
            components=_components(e.get("SLUICE_STACK", "kafka,s3")),
            zipkin_port=port("SLUICE_ZIPKIN_PORT", 39411),
            jaeger_otlp_http_port=port("SLUICE_JAEGER_OTLP_HTTP_PORT", 39318),
            jaeger_query_port=port("SLUICE_JAEGER_QUERY_PORT", 39686),
            hms_port=port("SLUICE_HMS_PORT", 39083),
            trino_port=port("SLUICE_TRINO_PORT", 39080),
        )

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """The environment a client of this stack needs."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "SLUICE_BUCKET": BUCKET,
        }
        if "zipkin" in self.components:
            env["ZIPKIN_URL"] = f"http://{self.host}:{self.zipkin_port}"
        if "jaeger" in self.components:
            env["JAEGER_OTLP_HTTP_ENDPOINT"] = f"http://{self.host}:{self.jaeger_otlp_http_port}"
            env["JAEGER_QUERY_URL"] = f"http://{self.host}:{self.jaeger_query_port}"
        if "hms" in self.components:
            env["HIVE_METASTORE_URI"] = f"thrift://{self.host}:{self.hms_port}"
        if "trino" in self.components:
            env["TRINO_URL"] = f"http://{self.host}:{self.trino_port}"
        return env


ALL_COMPONENTS = ("kafka", "s3", "zipkin", "jaeger", "hms", "trino")


class Component(Protocol):
    """A server of the stack. ``fetch`` downloads/builds into the cache (idempotent, no-op
    when cached); ``start`` launches it detached through ``Procs``; ``ready`` polls it."""

    name: str

    def fetch(self) -> object: ...

    def start(self) -> None: ...

    def ready(self) -> bool: ...


def _components(text: str) -> tuple[str, ...]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = names - set(ALL_COMPONENTS)
    if unknown:
        raise StackError(
            f"SLUICE_STACK names {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(ALL_COMPONENTS)}"
        )
    if "trino" in names:
        names.add("hms")  # Trino's hive catalog reads our metastore
    return tuple(n for n in ALL_COMPONENTS if n in names | {"kafka", "s3"})


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not on PATH. {hint}")
    return path


def mvn_copy_dependencies(pom: Path, out: Path, what: str, log: Path) -> None:
    """Resolve ``pom``'s runtime dependencies into ``out`` (Maven's own cache does the rest)."""
    mvn = require_tool("mvn", "Install Maven 3.8+ (Debian: apt-get install maven).")
    run_checked(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={out}",
        ],
        what,
        "Check that Maven Central is reachable (proxy settings in ~/.m2/settings.xml).",
        log,
    )


class Kafka:
    """Apache Kafka, single node, KRaft combined mode, from Maven Central's jars."""

    name = "kafka"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs
        self.pom = cfg.infra_dir / "kafka" / "pom.xml"

    def lib_dir(self) -> Path:
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        return self.cfg.cache_dir / f"kafka-{digest}" / "lib"

    def fetch(self) -> Path:
        """Resolve the broker's jars into the cache once; later calls return at once."""
        lib = self.lib_dir()
        if (lib.parent / "complete").exists():
            return lib
        tmp = lib.parent / "lib.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        mvn_copy_dependencies(
            self.pom,
            tmp,
            "Downloading Kafka's jars with Maven",
            self.procs.log_dir / "kafka-fetch.log",
        )
        shutil.rmtree(lib, ignore_errors=True)
        tmp.rename(lib)
        (lib.parent / "complete").write_text("ok\n")
        return lib

    def start(self) -> None:
        java = require_tool(
            "java",
            "Install a JDK 17+ (Debian: apt-get install "
            "openjdk-17-jdk-headless) and put java on PATH.",
        )
        cfg = self.cfg
        ensure_port_free(cfg.host, cfg.kafka_port, "Kafka", "SLUICE_KAFKA_PORT")
        ensure_port_free(
            cfg.host,
            cfg.kafka_controller_port,
            "Kafka's controller",
            "SLUICE_KAFKA_CONTROLLER_PORT",
        )
        lib = self.fetch()
        home = cfg.state_dir / "kafka"
        data = home / "data"
        home.mkdir(parents=True, exist_ok=True)
        props = home / "server.properties"
        props.write_text(self._server_properties(data))
        cp = f"{lib}/*"
        if not (data / "meta.properties").exists():
            run_checked(
                [
                    java,
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    # "=" form: a random id may start with "-" and read as a flag.
                    f"--cluster-id={_kafka_cluster_id()}",
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ],
                "Formatting Kafka's storage",
                f"Remove {data} and retry.",
                self.procs.log_dir / "kafka-format.log",
            )
        heap = os.environ.get("SLUICE_KAFKA_HEAP", "512m")
        self.procs.start(
            self.name,
            [
                java,
                f"-Xms{heap}",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={cfg.infra_dir / 'kafka' / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={home / 'logs'}",
                "-cp",
                cp,
                "kafka.Kafka",
                str(props),
            ],
        )

    def _server_properties(self, data: Path) -> str:
        c = self.cfg
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
                f"listeners=PLAINTEXT://{c.host}:{c.kafka_port},"
                f"CONTROLLER://{c.host}:{c.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=1",
                "auto.create.topics.enable=true",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "message.max.bytes=10485760",
                "",
            ]
        )

    def ready(self) -> bool:
        if not port_open(self.cfg.host, self.cfg.kafka_port):
            return False
        return asyncio.run(_kafka_answers(self.cfg.bootstrap))


def _kafka_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


async def _kafka_answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except Exception:  # any failure means "not ready yet"; the caller polls
        return False
    finally:
        await admin.close()


class S3Server:
    """versitygw (posix backend: buckets are directories) or moto's server (in memory)."""

    name = "s3"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs

    def binary(self) -> Path:
        return self.cfg.cache_dir / "bin" / f"versitygw-{VERSITYGW_VERSION}"

    def fetch(self) -> None:
        """Build versitygw into the cache once (Go's module and build caches make a rebuild
        on the same machine quick); moto needs nothing."""
        if self.cfg.s3_server != "versitygw" or self.binary().exists():
            return
        go = require_tool(
            "go", "Install Go 1.25+ or use moto's server instead: SLUICE_S3_SERVER=moto."
        )
        gobin = self.binary().parent / "gobin.partial"
        shutil.rmtree(gobin, ignore_errors=True)
        env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"}
        run_checked(
            [go, "install", f"github.com/versity/versitygw/cmd/versitygw@{VERSITYGW_VERSION}"],
            "Building versitygw with go install",
            "Check that the Go module proxy is reachable (GOPROXY), or use SLUICE_S3_SERVER=moto.",
            self.procs.log_dir / "s3-fetch.log",
            env=env,
        )
        (gobin / "versitygw").rename(self.binary())
        shutil.rmtree(gobin, ignore_errors=True)

    def start(self) -> None:
        cfg = self.cfg
        ensure_port_free(cfg.host, cfg.s3_port, "The S3 server", "SLUICE_S3_PORT")
        self.fetch()
        (cfg.state_dir / "s3-server").write_text(cfg.s3_server)
        if cfg.s3_server == "moto":
            self.procs.start(
                self.name,
                [sys.executable, "-m", "moto.server", "-H", cfg.host, "-p", str(cfg.s3_port)],
            )
            return
        root = cfg.state_dir / "s3"
        data, iam, meta = root / "data", root / "iam", root / "meta"
        for d in (data, iam, meta):
            d.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary()),
            "--port",
            f"{cfg.host}:{cfg.s3_port}",
            "--iam-dir",
            str(iam),
            "posix",
        ]
        if not _xattrs_work(data):
            argv += ["--sidecar", str(meta)]
        argv.append(str(data))
        env = {
            **os.environ,
            "ROOT_ACCESS_KEY": LOCAL_ACCESS_KEY,
            "ROOT_SECRET_KEY": LOCAL_SECRET_KEY,
        }
        self.procs.start(self.name, argv, env=env)

    def ready(self) -> bool:
        if not port_open(self.cfg.host, self.cfg.s3_port):
            return False
        try:
            client = local_s3_client(self.cfg)
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if BUCKET not in names:
                client.create_bucket(Bucket=BUCKET)
            return True
        except Exception:  # not answering yet; the caller polls
            return False


def _xattrs_work(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.sluice", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def local_s3_client(cfg: StackConfig) -> S3Client:
    """A boto3 S3 client for the local stack (path-style, loopback)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=cfg.s3_endpoint,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=5,
        ),
    )


def wait_ready(component: Component, procs: Procs, timeout: float) -> float:
    """Poll until ready; raise with the component's log tail if it died or timed out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if procs.pid(component.name) is None:
            raise StackError(
                f"{component.name} exited during start-up; last lines of "
                f"{procs.log(component.name)}:\n{procs.tail(component.name)}"
            )
        if component.ready():
            return time.monotonic() - start
        time.sleep(0.5)
    raise StackError(
        f"{component.name} was not ready after {timeout:.0f}s; last lines of "
        f"{procs.log(component.name)}:\n{procs.tail(component.name)}"
    )
