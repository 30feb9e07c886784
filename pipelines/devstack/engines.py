"""The catalog and query-engine tier of the local stack (opt-in: ``SLUICE_STACK=...,hms,trino``).

- Hive Metastore 3.1.3, standalone, embedded Derby under the state dir: the bin tarball from
  Maven Central (the jar alone lacks the schema scripts ``schematool`` needs) plus the Hadoop
  jars of ``infra/local/hms/pom.xml`` (hadoop-aws, so table locations on ``s3a://`` resolve).
  Thrift on loopback.
- Trino (its server tarball from Maven Central) with only the Hive connector, reading our
  metastore and S3 natively. Current Trino needs a Java 25 runtime: it is looked up in
  ``SLUICE_JAVA25_HOME`` or beside the default JDK (``/usr/lib/jvm``), with a clear error if
  absent.

Spark is not a server: tests start it in-process with pyspark (``tests/enginekit.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

from pipelines.devstack.components import (
    BUCKET,
    LOCAL_ACCESS_KEY,
    LOCAL_SECRET_KEY,
    StackConfig,
    mvn_copy_dependencies,
    require_tool,
)
from pipelines.devstack.procs import Procs, StackError, ensure_port_free, port_open, run_checked

HMS_VERSION = "3.1.3"
TRINO_VERSION = "476"  # the newest trino-server tarball Maven Central serves here; needs Java 24+
_JAVA_OPENS = [
    f"--add-opens=java.base/{p}=ALL-UNNAMED"
    for p in ("java.lang", "java.net", "java.util", "java.nio", "java.lang.reflect")
]
# The standalone 3.1.3 metastore defaults name classes that ship only in hive-exec.
_HMS_TASKS = ",".join(
    f"org.apache.hadoop.hive.metastore.{c}"
    for c in (
        "events.EventCleanerTask",
        "RuntimeStatsCleanerTask",
        "MaterializationsRebuildLockCleanerTask",
    )
)


def _mvn_copy(artifact: str, out: Path, log: Path, what: str) -> Path:
    mvn = require_tool("mvn", "Install Maven 3.8+ (Debian: apt-get install maven).")
    out.mkdir(parents=True, exist_ok=True)
    run_checked(
        [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out}"],
        what,
        "Check that Maven Central is reachable.",
        log,
    )
    found = [p for p in out.iterdir() if p.name.endswith(".tar.gz")]
    if len(found) != 1:
        raise StackError(f"{what}: expected one tarball in {out}, found {found}")
    return found[0]


def _untar(tarball: Path, into: Path) -> None:
    with tarfile.open(tarball) as tf:
        tf.extractall(into, filter="data")


def _xml(props: dict[str, str]) -> str:
    body = "".join(
        f"  <property><name>{k}</name><value>{v}</value></property>\n" for k, v in props.items()
    )
    return f"<configuration>\n{body}</configuration>\n"


class HiveMetastore:
    """Hive Metastore (Thrift) over embedded Derby; schema created once per state dir."""

    name = "hms"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs
        self.pom = cfg.infra_dir / "hms" / "pom.xml"

    def home(self) -> Path:
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        return self.cfg.cache_dir / f"hms-{HMS_VERSION}-{digest}"

    def fetch(self) -> Path:
        """Unpack the metastore and resolve the Hadoop jars into the cache, once."""
        home = self.home()
        if (home / "complete").exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        log = self.procs.log_dir / "hms-fetch.log"
        tarball = _mvn_copy(
            f"org.apache.hive:hive-standalone-metastore:{HMS_VERSION}:tar.gz:bin",
            home / "download",
            log,
            "Downloading the Hive Metastore with Maven",
        )
        _untar(tarball, home)
        shutil.rmtree(home / "download")
        dist = home / f"apache-hive-metastore-{HMS_VERSION}-bin"
        dist.rename(home / "metastore")
        # Hive 3's guava 19 breaks Hadoop 3.3 (it needs guava 27, which the pom brings).
        for jar in (home / "metastore" / "lib").glob("guava-19*.jar"):
            jar.unlink()
        mvn_copy_dependencies(
            self.pom, home / "hadoop-lib", "Resolving the metastore's Hadoop jars with Maven", log
        )
        (home / "complete").write_text("ok\n")
        return home

    def conf_dir(self) -> Path:
        return self.cfg.state_dir / "hms" / "conf"

    def _write_conf(self) -> None:
        c = self.cfg
        db = c.state_dir / "hms" / "metastore_db"
        conf = self.conf_dir()
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "metastore-site.xml").write_text(
            _xml(
                {
                    "javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={db};create=true",
                    "javax.jdo.option.ConnectionDriverName": "org.apache.derby.jdbc.EmbeddedDriver",
                    "metastore.thrift.uris": f"thrift://{c.host}:{c.hms_port}",
                    "metastore.thrift.port": str(c.hms_port),
                    "metastore.warehouse.dir": f"s3a://{BUCKET}/_hive_warehouse/",
                    "metastore.expression.proxy": (
                        "org.apache.hadoop.hive.metastore.DefaultPartitionExpressionProxy"
                    ),
                    "metastore.task.threads.always": _HMS_TASKS,
                    "fs.s3a.endpoint": c.s3_endpoint,
                    "fs.s3a.endpoint.region": "us-east-1",
                    "fs.s3a.path.style.access": "true",
                    "fs.s3a.connection.ssl.enabled": "false",
                    "fs.s3a.access.key": LOCAL_ACCESS_KEY,
                    "fs.s3a.secret.key": LOCAL_SECRET_KEY,
                    # Creating a table's directory would delete parent "directory markers"
                    # with a multi-object delete, which the local S3 server refuses (S3A then
                    # retries for minutes): keep markers, delete one key at a time.
                    "fs.s3a.directory.marker.retention": "keep",
                    "fs.s3a.multiobjectdelete.enable": "false",
                }
            )
        )

    def _java(self, main: str, *args: str) -> list[str]:
        java = require_tool("java", "Install a JDK 17+.")
        home = self.fetch()
        classpath = os.pathsep.join(
            [
                str(self.conf_dir()),
                str(home / "metastore" / "conf"),
                str(home / "metastore" / "lib" / "*"),
                str(home / "hadoop-lib" / "*"),
            ]
        )
        derby_log = self.cfg.state_dir / "hms" / "derby.log"
        return [
            java,
            *_JAVA_OPENS,
            "-Xmx512m",
            f"-Dderby.stream.error.file={derby_log}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def start(self) -> None:
        c = self.cfg
        ensure_port_free(c.host, c.hms_port, "Hive Metastore", "SLUICE_HMS_PORT")
        home = self.fetch()
        self._write_conf()
        env = {**os.environ, "METASTORE_HOME": str(home / "metastore")}
        if not (c.state_dir / "hms" / "metastore_db").exists():
            # Derby is single-process: the schema tool runs to completion before the server.
            run_checked(
                self._java(
                    "org.apache.hadoop.hive.metastore.tools.MetastoreSchemaTool",
                    "-dbType",
                    "derby",
                    "-initSchema",
                ),
                "Creating the metastore schema (schematool)",
                "Remove the state dir's hms/ folder and retry.",
                self.procs.log_dir / "hms-schematool.log",
                env=env,
            )
        self.procs.start(
            self.name,
            self._java("org.apache.hadoop.hive.metastore.HiveMetaStore", "-p", str(c.hms_port)),
            env=env,
        )

    def ready(self) -> bool:
        if not port_open(self.cfg.host, self.cfg.hms_port):
            return False
        from hive_metastore_client import HiveMetastoreClient

        try:
            with HiveMetastoreClient(self.cfg.host, self.cfg.hms_port) as client:
                return "default" in client.get_all_databases()
        except Exception:
            return False


def find_java25(env: dict[str, str] | None = None) -> Path:
    """A JDK whose major version is at least 25, for Trino."""
    e = os.environ if env is None else env
    candidates: list[Path] = []
    if e.get("SLUICE_JAVA25_HOME"):
        candidates.append(Path(e["SLUICE_JAVA25_HOME"]))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates.extend(sorted(jvm.iterdir(), reverse=True))
    for home in candidates:
        release = home / "release"
        if not (home / "bin" / "java").exists() or not release.exists():
            continue
        m = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
        if m and int(m.group(1)) >= 25:
            return home
    raise StackError(
        "Trino needs a Java 25 runtime and none was found: install a JDK 25 (e.g. Temurin 25) "
        "and set SLUICE_JAVA25_HOME to its home, or leave trino out of SLUICE_STACK."
    )


class Trino:
    """Trino, coordinator and worker in one process, with a `hive` catalog on our metastore."""

    name = "trino"

    def __init__(self, cfg: StackConfig, procs: Procs) -> None:
        self.cfg = cfg
        self.procs = procs

    def home(self) -> Path:
        return self.cfg.cache_dir / f"trino-{TRINO_VERSION}"

    def fetch(self) -> Path:
        home = self.home()
        if (home / "complete").exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        tarball = _mvn_copy(
            f"io.trino:trino-server:{TRINO_VERSION}:tar.gz",
            home / "download",
            self.procs.log_dir / "trino-fetch.log",
            "Downloading the Trino server with Maven",
        )
        _untar(tarball, home)
        shutil.rmtree(home / "download")
        (home / f"trino-server-{TRINO_VERSION}").rename(home / "server")
        # Only the Hive connector is used; the other plugins cost start-up time and memory.
        for plugin in (home / "server" / "plugin").iterdir():
            if plugin.name != "hive":
                shutil.rmtree(plugin)
        (home / "complete").write_text("ok\n")
        return home

    def etc_dir(self) -> Path:
        return self.cfg.state_dir / "trino" / "etc"

    def _write_etc(self) -> None:
        c = self.cfg
        etc = self.etc_dir()
        (etc / "catalog").mkdir(parents=True, exist_ok=True)

        def props(d: dict[str, str]) -> str:
            return "".join(f"{k}={v}\n" for k, v in d.items())

        (etc / "config.properties").write_text(
            props(
                {
                    "coordinator": "true",
                    "node-scheduler.include-coordinator": "true",
                    "http-server.http.port": str(c.trino_port),
                    "discovery.uri": f"http://{c.host}:{c.trino_port}",
                    "query.max-memory": "512MB",
                    "query.max-memory-per-node": "512MB",
                }
            )
        )
        (etc / "node.properties").write_text(
            props(
                {
                    "node.environment": "sluice",
                    "node.id": "sluice-local",
                    "node.data-dir": str(c.state_dir / "trino" / "data"),
                }
            )
        )
        (etc / "jvm.config").write_text(
            "\n".join(
                [
                    "-server",
                    "-Xmx1500m",
                    "-XX:+UseG1GC",
                    "-XX:+ExitOnOutOfMemoryError",
                    "-Djdk.attach.allowAttachSelf=true",
                    # Without it current Trino exits with code 100 at start-up.
                    "--add-modules=jdk.incubator.vector",
                    "--enable-native-access=ALL-UNNAMED",
                ]
            )
            + "\n"
        )
        (etc / "log.properties").write_text("io.trino=INFO\n")
        (etc / "catalog" / "hive.properties").write_text(
            props(
                {
                    "connector.name": "hive",
                    "hive.metastore.uri": f"thrift://{c.host}:{c.hms_port}",
                    "fs.native-s3.enabled": "true",
                    "s3.endpoint": c.s3_endpoint,
                    "s3.region": "us-east-1",
                    "s3.path-style-access": "true",
                    "s3.aws-access-key": LOCAL_ACCESS_KEY,
                    "s3.aws-secret-key": LOCAL_SECRET_KEY,
                    # Our timestamp[us] columns keep their microseconds (default: millis).
                    "hive.timestamp-precision": "MICROSECONDS",
                }
            )
        )

    def start(self) -> None:
        c = self.cfg
        ensure_port_free(c.host, c.trino_port, "Trino", "SLUICE_TRINO_PORT")
        java_home = find_java25()
        home = self.fetch()
        self._write_etc()
        env = {
            **os.environ,
            "JAVA_HOME": str(java_home),
            "PATH": f"{java_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.procs.start(
            self.name,
            [str(home / "server" / "bin" / "launcher"), "run", f"--etc-dir={self.etc_dir()}"],
            env=env,
        )

    def ready(self) -> bool:
        c = self.cfg
        if not port_open(c.host, c.trino_port):
            return False
        try:
            url = f"http://{c.host}:{c.trino_port}/v1/info"
            with urllib.request.urlopen(url, timeout=2) as resp:
                info = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return info.get("starting") is False
