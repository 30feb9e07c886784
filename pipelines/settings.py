"""Typed, frozen deployment settings: one YAML file per deployment.

Guarantees:
- ``${VAR}`` and ``${VAR:-default}`` are interpolated from the environment in every string
  value (``$$`` is a literal ``$``); an unset ``${VAR}`` without default is a problem, not "".
- ``load_settings`` reports *every* problem at once (``ConfigError.problems``), each with the
  dotted key path where it was found and what to do about it.
- Defaults live in the dataclass fields below, each with a doc line; nothing else defines one.
- Credentials are never part of the settings: S3 credentials come from the environment or the
  AWS credential chain, read by boto3 itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipelines.errors import ConfigError, Problem

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the Kafka cluster."""

    bootstrap_servers: str = "127.0.0.1:39092"
    """Comma-separated host:port list (env: KAFKA_BOOTSTRAP_SERVERS in the example file)."""
    client_id: str = "sluice"
    """Client id sent to the brokers, visible in their logs and quotas."""
    session_timeout_seconds: float = 30.0
    """How long the group waits for a silent (crashed) member before moving its partitions."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store. Credentials come from the environment / AWS chain."""

    endpoint_url: str = ""
    """S3 endpoint; empty means AWS itself (env: AWS_ENDPOINT_URL_S3)."""
    region: str = "us-east-1"
    """Signing region (env: AWS_REGION)."""
    path_style: bool = True
    """Path-style addressing; needed by most non-AWS servers."""


@dataclass(frozen=True)
class RotationSettings:
    """When an open file is closed and uploaded; independent of the commit timer."""

    max_rows: int = 1_000_000
    """Close a file at this many rows."""
    max_bytes: int = 128 << 20
    """Close a file when its buffered input reaches this size (default 128 MiB)."""
    max_age_seconds: float = 300.0
    """Close a file this long after its first record arrived, even if idle (default 5m)."""


@dataclass(frozen=True)
class WarehouseSettings:
    """The warehouse sink: Kafka topics to Hive-partitioned Parquet."""

    root: str = "s3://lake/warehouse"
    """Where tables live: s3://bucket/prefix or file:///absolute/path."""
    schemas_dir: str = "schemas"
    """Directory of table contracts (*.yaml), relative to the config file."""
    tables: tuple[str, ...] = ()
    """Tables to run; empty means every table in schemas_dir."""
    group_id: str = "sluice-warehouse"
    """Kafka consumer group shared by every worker of this deployment."""
    dead_letter_suffix: str = ".dlq"
    """Dead-letter topic of a source topic is <topic><suffix>."""
    memory_budget_bytes: int = 512 << 20
    """One budget across every open buffer of a worker (default 512 MiB)."""
    max_message_bytes: int = 1 << 20
    """Records larger than this are dead-lettered as oversized (default 1 MiB)."""
    rotation: RotationSettings = field(default_factory=RotationSettings)
    """File rotation policy."""


@dataclass(frozen=True)
class CatalogSettings:
    """Where tables are registered for Hive, Trino/Presto, Spark and Athena, and when an hour
    is declared complete (``_SUCCESS``)."""

    type: str = "none"
    """none (objects and _SUCCESS markers only), hive (a Hive Metastore) or glue (AWS Glue)."""
    uri: str = ""
    """hive: the metastore's thrift://host:port (env: HIVE_METASTORE_URI in the example)."""
    database: str = "sluice"
    """Database (schema) the tables are created in; created if missing."""
    location_scheme: str = ""
    """URI scheme of table locations: empty means s3a for hive (Spark, Hive), s3 for glue."""
    sync_on_start: bool = True
    """Create or evolve the tables when a warehouse worker starts."""
    lateness_seconds: float = 600.0
    """An hour is final once every Kafka partition has committed past its end plus this."""
    finalize_interval_seconds: float = 30.0
    """How often a worker looks for hours to finalize."""


@dataclass(frozen=True)
class BackfillSettings:
    """``sluice backfill warehouse``: how a time range of a table is rebuilt from Kafka."""

    grace_period_seconds: float = 86_400.0
    """How long the objects a rebuilt hour replaced are kept (queries in flight) (24h)."""
    chunk_records: int = 200_000
    """Offsets per unit of work (per Kafka partition); progress is kept per chunk."""
    parallelism: int = 4
    """Chunks rebuilt at once by one process (more processes may run the same job)."""


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint of each worker."""

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = 9108
    """Port to bind; 0 disables the endpoint."""


@dataclass(frozen=True)
class Settings:
    """A whole deployment."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)
    backfill: BackfillSettings = field(default_factory=BackfillSettings)
    traces: Any = None
    """The trace router's section, validated by ``pipelines.traces_config``."""
    base_dir: str = "."
    """Directory of the config file; relative paths in it are resolved against this."""
    warehouse_configured: bool = True
    """Whether the file has a warehouse section (a traces-only file needs no schemas)."""

    def validate(self) -> list[Problem]:
        """Every semantic problem of these settings (empty when valid)."""
        problems: list[Problem] = []
        for i, server in enumerate(self.kafka.bootstrap_servers.split(",")):
            if not _HOSTPORT.match(server.strip()):
                problems.append(
                    Problem(
                        f"kafka.bootstrap_servers[{i}]",
                        f"{server.strip()!r} is not host:port (example: 127.0.0.1:9092)",
                    )
                )
        if self.s3.endpoint_url and not re.match(r"^https?://", self.s3.endpoint_url):
            problems.append(Problem("s3.endpoint_url", "must start with http:// or https://"))
        w = self.warehouse
        if not re.match(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file:///.*)$", w.root):
            problems.append(
                Problem(
                    "warehouse.root",
                    f"{w.root!r} must be s3://bucket[/prefix] or file:///absolute/path",
                )
            )
        if ".." in w.root.split("/"):
            problems.append(Problem("warehouse.root", "must not contain '..'"))
        if self.warehouse_configured and not Path(self.resolve(w.schemas_dir)).is_dir():
            problems.append(
                Problem(
                    "warehouse.schemas_dir",
                    f"{self.resolve(w.schemas_dir)} is not a directory of table contracts",
                )
            )
        if not re.match(r"^[A-Za-z0-9._-]{1,249}$", w.group_id):
            problems.append(Problem("warehouse.group_id", "must match [A-Za-z0-9._-]{1,249}"))
        if not re.match(r"^[A-Za-z0-9._-]{1,40}$", w.dead_letter_suffix):
            problems.append(
                Problem("warehouse.dead_letter_suffix", "must be 1-40 characters of [A-Za-z0-9._-]")
            )
        for path, value in (
            ("warehouse.memory_budget_bytes", w.memory_budget_bytes),
            ("warehouse.max_message_bytes", w.max_message_bytes),
            ("warehouse.rotation.max_rows", w.rotation.max_rows),
            ("warehouse.rotation.max_bytes", w.rotation.max_bytes),
        ):
            if value <= 0:
                problems.append(Problem(path, f"must be positive, got {value}"))
        if not 6 <= self.kafka.session_timeout_seconds <= 300:
            problems.append(
                Problem("kafka.session_timeout", "must be between 6s and 300s (broker limits)")
            )
        if w.rotation.max_age_seconds <= 0:
            problems.append(Problem("warehouse.rotation.max_age", "must be positive"))
        if 0 < w.memory_budget_bytes < w.rotation.max_bytes:
            problems.append(
                Problem(
                    "warehouse.rotation.max_bytes",
                    f"{w.rotation.max_bytes} exceeds warehouse.memory_budget "
                    f"({w.memory_budget_bytes}); lower it or raise the budget",
                )
            )
        if not 0 <= self.metrics.port <= 65535:
            problems.append(Problem("metrics.port", "must be 0..65535"))
        problems.extend(self._catalog_problems())
        return problems

    def _catalog_problems(self) -> list[Problem]:
        c = self.catalog
        problems: list[Problem] = []
        if c.type not in ("none", "hive", "glue"):
            problems.append(Problem("catalog.type", f"{c.type!r}: choose none, hive or glue"))
        if c.type == "hive" and not re.match(r"^thrift://[A-Za-z0-9.\-]+:\d{1,5}$", c.uri):
            problems.append(
                Problem("catalog.uri", f"{c.uri!r}: hive needs thrift://host:port (e.g. :9083)")
            )
        if not re.match(r"^[a-z_][a-z0-9_]{0,127}$", c.database):
            problems.append(Problem("catalog.database", "must match [a-z_][a-z0-9_]{0,127}"))
        if c.location_scheme not in ("", "s3", "s3a"):
            problems.append(Problem("catalog.location_scheme", "choose s3 or s3a (or leave empty)"))
        if c.lateness_seconds < 0:
            problems.append(Problem("catalog.lateness", "must not be negative"))
        if c.finalize_interval_seconds <= 0:
            problems.append(Problem("catalog.finalize_interval", "must be positive"))
        b = self.backfill
        if b.grace_period_seconds < 0:
            problems.append(Problem("backfill.grace_period", "must not be negative"))
        if not 1 <= b.chunk_records <= 100_000_000:
            problems.append(Problem("backfill.chunk_records", "must be 1..100000000"))
        if not 1 <= b.parallelism <= 64:
            problems.append(Problem("backfill.parallelism", "must be 1..64"))
        if c.type != "none" and self.warehouse.root.startswith("file://"):
            problems.append(
                Problem("catalog.type", "a catalog needs warehouse.root on s3:// (engines read S3)")
            )
        return problems

    def resolve(self, path: str) -> str:
        """A path from the config, made absolute against the config file's directory."""
        return str((Path(self.base_dir) / path).resolve())


def interpolate(text: str, env: Mapping[str, str], path: str, problems: list[Problem]) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in one string value."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                problems.append(
                    Problem(
                        path,
                        f"environment variable {name} is not set "
                        f"(set it, or write ${{{name}:-default}})",
                    )
                )
                return ""
            return default
        return value

    return _VAR.sub(repl, text)


def parse_size(value: object) -> int:
    """``512MiB`` / ``128MB`` / ``1024`` → bytes. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512MiB")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (examples: 1048576, 512KiB, 128MiB, 1GiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_duration(value: object) -> float:
    """``5m`` / ``30s`` / ``250ms`` / ``2h`` / ``7d`` / ``12`` (seconds) → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (examples: 250ms, 30s, 5m, 2h, 7d)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def _parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return int(str(value).replace("_", "")) if not isinstance(value, int) else value


def _parse_str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise ValueError("expected a list of names")


T = TypeVar("T")
Parser = Callable[[object], Any]

# Friendlier YAML names for some fields, and the fields that are sizes or durations.
_ALIASES = {
    "memory_budget": "memory_budget_bytes",
    "max_message_size": "max_message_bytes",
    "max_age": "max_age_seconds",
    "session_timeout": "session_timeout_seconds",
    "lateness": "lateness_seconds",
    "finalize_interval": "finalize_interval_seconds",
    "grace_period": "grace_period_seconds",
}
_FIELD_PARSERS: dict[str, Parser] = {
    "memory_budget_bytes": parse_size,
    "max_message_bytes": parse_size,
    "max_bytes": parse_size,
    "max_age_seconds": parse_duration,
}
_TYPE_PARSERS: dict[str, Parser] = {
    "int": _parse_int,
    "float": parse_duration,
    "bool": _parse_bool,
    "str": str,
    "tuple[str, ...]": _parse_str_tuple,
    "Any": lambda v: v,
}


def _section(cls: type[T], raw: object, path: str, problems: list[Problem]) -> T:
    """Build one frozen section from a mapping, collecting every problem."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        problems.append(Problem(path or "<top>", "must be a mapping of keys to values"))
        return cls()
    by_field = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    yaml_keys = {
        **{k: v for k, v in _ALIASES.items() if v in by_field},
        **{name: name for name in by_field if name not in ("base_dir", "warehouse_configured")},
    }
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        target = yaml_keys.get(str(key))
        if target is None:
            valid = ", ".join(sorted(k for k in yaml_keys if k not in _ALIASES.values()))
            problems.append(Problem(key_path, f"unknown key; valid keys here: {valid}"))
            continue
        f = by_field[target]
        ftype = str(f.type)
        sub = _SECTIONS.get(ftype)
        if sub is not None:
            kwargs[target] = _section(sub, value, key_path, problems)
            continue
        parser = _FIELD_PARSERS.get(target) or _TYPE_PARSERS[ftype]
        try:
            kwargs[target] = parser(value)
        except (TypeError, ValueError) as err:
            problems.append(Problem(key_path, str(err)))
    return cls(**kwargs)


_SECTIONS: dict[str, type[Any]] = {
    "KafkaSettings": KafkaSettings,
    "S3Settings": S3Settings,
    "WarehouseSettings": WarehouseSettings,
    "RotationSettings": RotationSettings,
    "MetricsSettings": MetricsSettings,
    "CatalogSettings": CatalogSettings,
    "BackfillSettings": BackfillSettings,
}


def _interpolate_tree(
    node: object, env: Mapping[str, str], path: str, problems: list[Problem]
) -> object:
    if isinstance(node, str):
        return interpolate(node, env, path, problems)
    if isinstance(node, list):
        return [_interpolate_tree(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: _interpolate_tree(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in node.items()
        }
    return node


def parse_settings(
    text: str, env: Mapping[str, str], base_dir: str = ".", source: str = "configuration"
) -> Settings:
    """Parse YAML text into validated settings; raises ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise ConfigError([Problem(where, f"not valid YAML: {err}")], source) from err
    problems: list[Problem] = []
    tree = _interpolate_tree(raw, env, "", problems)
    settings = _section(Settings, tree, "", problems)
    settings = Settings(
        kafka=settings.kafka,
        s3=settings.s3,
        warehouse=settings.warehouse,
        metrics=settings.metrics,
        catalog=settings.catalog,
        backfill=settings.backfill,
        traces=settings.traces,
        base_dir=base_dir,
        warehouse_configured=not isinstance(tree, dict) or "warehouse" in tree,
    )
    # A key that failed to parse was replaced by its default: don't also judge the default.
    reported = {p.path for p in problems}
    problems.extend(p for p in settings.validate() if p.path not in reported)
    if problems:
        raise ConfigError(problems, source)
    return settings


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate one deployment file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([Problem(str(p), f"cannot read: {err.strerror}")], str(p)) from err
    return parse_settings(
        text, os.environ if env is None else env, base_dir=str(p.resolve().parent), source=str(p)
    )
