"""``sluice dev up | down | status``: the local stack as one unit.

Guarantees: ``up`` is idempotent (a running component is left alone) and returns only when
every component answers; it writes the client environment to ``<state>/env.sh``. ``down``
stops every process ``up`` started, by pid (process group), and leaves none behind.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from pipelines.devstack.components import Component, Kafka, S3Server, StackConfig, wait_ready
from pipelines.devstack.engines import HiveMetastore, Trino
from pipelines.devstack.procs import Procs, port_open
from pipelines.devstack.tracing import Jaeger, Zipkin


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    address: str
    listening: bool

    def __str__(self) -> str:
        state = (
            "running" if self.pid and self.listening else ("starting" if self.pid else "stopped")
        )
        pid = f"pid {self.pid}" if self.pid else "no pid"
        return f"{self.name:6} {state:8} {self.address:24} {pid}"


class Stack:
    """Kafka and an S3 server on loopback, with state under ``cfg.state_dir``."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs = Procs(cfg.state_dir)
        self.kafka = Kafka(cfg, self.procs)
        self.s3 = S3Server(cfg, self.procs)
        self.zipkin = Zipkin(cfg, self.procs)
        self.jaeger = Jaeger(cfg, self.procs)
        self.hms = HiveMetastore(cfg, self.procs)
        self.trino = Trino(cfg, self.procs)

    def components(self) -> list[tuple[Component, float]]:
        """The enabled components, in start order, with their start-up timeouts."""
        every: list[tuple[Component, float]] = [
            (self.kafka, 90.0),
            (self.s3, 30.0),
            (self.zipkin, 90.0),
            (self.jaeger, 60.0),
            (self.hms, 120.0),
            (self.trino, 240.0),
        ]
        return [(c, t) for c, t in every if c.name in self.cfg.components]

    @property
    def env_file(self) -> str:
        return str(self.cfg.state_dir / "env.sh")

    def up(self, log: bool = True) -> dict[str, str]:
        """Start what is not running, wait until all answer, write and return the env."""
        t0 = time.monotonic()
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        # Fetch everything first so a download failure stops us before anything starts.
        for comp, _ in self.components():
            comp.fetch()
        for comp, timeout in self.components():
            if self.procs.pid(comp.name) is None:
                comp.start()
                took = wait_ready(comp, self.procs, timeout)
                if log:
                    print(f"started {comp.name} in {took:.1f}s (log: {self.procs.log(comp.name)})")
            elif log:
                wait_ready(comp, self.procs, timeout)
                print(f"{comp.name} already running (pid {self.procs.pid(comp.name)})")
        env = self.cfg.client_env()
        with open(self.env_file, "w") as f:
            f.write("# written by `sluice dev up`: source it to talk to the local stack\n")
            f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        if log:
            print(
                f"stack ready in {time.monotonic() - t0:.1f}s; environment "
                f"(also in {self.env_file}):"
            )
            for k, v in env.items():
                print(f"  export {k}={shlex.quote(v)}")
        return env

    def down(self, log: bool = True) -> None:
        """Stop every component by pid, enabled or not (a stack started with another
        SLUICE_STACK leaves nothing behind); Kafka last so its shutdown is not raced."""
        for comp in (self.trino, self.hms, self.jaeger, self.zipkin, self.s3, self.kafka):
            stopped = self.procs.stop(comp.name)
            if log:
                print(f"{comp.name}: {'stopped' if stopped else 'was not running'}")

    def status(self) -> list[ComponentStatus]:
        c = self.cfg
        kind_file = c.state_dir / "s3-server"
        kind = kind_file.read_text().strip() if kind_file.exists() else c.s3_server
        return [
            ComponentStatus(
                "kafka", self.procs.pid("kafka"), c.bootstrap, port_open(c.host, c.kafka_port)
            ),
            ComponentStatus(
                "s3",
                self.procs.pid("s3"),
                f"{c.s3_endpoint} ({kind})",
                port_open(c.host, c.s3_port),
            ),
            *(
                ComponentStatus(name, self.procs.pid(name), addr, port_open(c.host, port))
                for name, addr, port in (
                    ("zipkin", f"http://{c.host}:{c.zipkin_port}", c.zipkin_port),
                    ("jaeger", f"http://{c.host}:{c.jaeger_query_port}", c.jaeger_query_port),
                    ("hms", f"thrift://{c.host}:{c.hms_port}", c.hms_port),
                    ("trino", f"http://{c.host}:{c.trino_port}", c.trino_port),
                )
                if name in c.components or self.procs.pid(name)
            ),
        ]
