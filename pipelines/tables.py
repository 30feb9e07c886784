"""Table contracts: ``schemas/*.yaml`` loaded into typed, frozen ``TableSpec`` objects.

A contract is data, not code: ``schemas/README.md`` documents the format and the
evolution rules. ``load_table`` guarantees that a returned spec is internally
consistent (names are safe path segments, every type parses, the event-time column
exists and is a required timestamp); otherwise it raises ``ConfigError`` listing every
problem at once, each with its key path (``columns[3].type``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from pipelines.errors import ConfigError, Problem
from pipelines.table_types import NAME_RE, VALID_TYPES, parse_type

__all__ = ["Column", "TableSpec", "load_table", "load_tables", "parse_duration", "parse_type"]

EVENT_TIME_FORMATS = ("epoch_s", "epoch_ms", "epoch_us", "epoch_ns", "iso8601")
PARTITIONINGS = ("hourly", "daily")
UNKNOWN_FIELD_POLICIES = ("drop", "keep_json", "reject")
LATE_POLICIES = ("write", "dead_letter")
# Appended by the writer/decoder; `dt`/`hr` are the Hive partition keys and would clash.
RESERVED_COLUMNS = ("_partition", "_offset", "_extra", "dt", "hr")
_DURATION_RE = re.compile(r"([0-9]+)([smhd])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TOP_KEYS = {
    "table",
    "topics",
    "encoding",
    "event_time",
    "partitioning",
    "unknown_fields",
    "limits",
    "late_data",
    "columns",
    "description",
}


def parse_duration(text: object) -> timedelta:
    """``7d``, ``1h``, ``30m``, ``45s`` → ``timedelta``; raises ``ValueError``."""
    m = _DURATION_RE.fullmatch(str(text).strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 7d, 1h, 30m or 45s")
    return timedelta(**{_DURATION_UNITS[m.group(2)]: int(m.group(1))})


# The record encodings a table's topics may carry (pipelines/decoders has one decoder each).
ENCODINGS = ("json", "otlp_proto", "otlp_json", "zipkin_json")


@dataclass(frozen=True)
class Column:
    """One declared column. ``required`` columns reject records where they are null."""

    name: str
    type: pa.DataType
    type_text: str
    required: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A validated table contract. See ``schemas/README.md`` for every field."""

    name: str
    topics: tuple[str, ...]
    encoding: str
    event_time_field: str
    event_time_format: str
    partitioning: str
    unknown_fields: str
    max_record_bytes: int
    max_past: timedelta
    max_future: timedelta
    late_policy: str
    columns: tuple[Column, ...]
    source: str = "<memory>"

    @property
    def arrow_schema(self) -> pa.Schema:
        """The declared columns, in declaration order."""
        return pa.schema([pa.field(c.name, c.type, nullable=not c.required) for c in self.columns])

    @property
    def output_schema(self) -> pa.Schema:
        """What the writer stores: declared columns, ``_extra`` if kept, then Kafka coordinates."""
        schema = self.arrow_schema
        if self.unknown_fields == "keep_json":
            schema = schema.append(pa.field("_extra", pa.string()))
        return schema.append(pa.field("_partition", pa.int32(), nullable=False)).append(
            pa.field("_offset", pa.int64(), nullable=False)
        )

    @property
    def event_time_column(self) -> Column:
        return next(c for c in self.columns if c.name == self.event_time_field)


def load_table(path: str | Path) -> TableSpec:
    """Load and validate one contract file; raises ``ConfigError`` with every problem."""
    source = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError([Problem("(file)", f"cannot read YAML: {err}")], source=source) from err
    return table_from_dict(doc, source=source)


def load_tables(directory: str | Path) -> dict[str, TableSpec]:
    """Load every ``*.yaml`` in ``directory``; table names and topics must be unique."""
    specs: dict[str, TableSpec] = {}
    problems: list[Problem] = []
    for file in sorted(Path(directory).glob("*.yaml")):
        spec = load_table(file)
        if spec.name in specs:
            problems.append(
                Problem(
                    f"{file.name}.table",
                    f"{spec.name!r} is also declared "
                    f"in {specs[spec.name].source}; table names are unique",
                )
            )
        for other in specs.values():
            for topic in sorted(set(spec.topics) & set(other.topics)):
                problems.append(
                    Problem(
                        f"{file.name}.topics", f"topic {topic!r} already feeds table {other.name!r}"
                    )
                )
        specs[spec.name] = spec
    if problems:
        raise ConfigError(problems, source=str(directory))
    return specs


def _choice(
    doc: dict[str, Any],
    key: str,
    valid: tuple[str, ...],
    default: str | None,
    problems: list[Problem],
    path: str | None = None,
) -> str:
    value = doc.get(key, default)
    if value not in valid:
        problems.append(Problem(path or key, f"{value!r} is not one of: {', '.join(valid)}"))
        return valid[0]
    return str(value)


def _mapping(
    doc: dict[str, Any],
    key: str,
    shape: str,
    problems: list[Problem],
    default: dict[str, Any] | None = None,
) -> dict[str, Any]:
    value = doc.get(key, default)
    if isinstance(value, dict):
        return value
    problems.append(Problem(key, f"give a mapping {shape}"))
    return {}


def table_from_dict(doc: object, source: str = "<memory>") -> TableSpec:
    """Validate a parsed contract document; see ``load_table``."""
    if not isinstance(doc, dict):
        raise ConfigError([Problem("(root)", "a contract is a YAML mapping")], source=source)
    problems: list[Problem] = []
    for key in sorted(set(doc) - _TOP_KEYS):
        problems.append(
            Problem(str(key), f"unknown key; valid keys: {', '.join(sorted(_TOP_KEYS))}")
        )
    name = doc.get("table")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.append(Problem("table", f"{name!r} must match ^[a-z_][a-z0-9_]*$"))
    topics = doc.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        problems.append(Problem("topics", "give a non-empty list of Kafka topic names"))
        topics = []
    encoding = _choice(doc, "encoding", ENCODINGS, None, problems)
    et = _mapping(doc, "event_time", "{field: <column>, format: <format>}", problems)
    et_format = "epoch_ms"
    if et:
        et_format = _choice(et, "format", EVENT_TIME_FORMATS, None, problems, "event_time.format")
    partitioning = _choice(doc, "partitioning", PARTITIONINGS, "hourly", problems)
    unknown = _choice(doc, "unknown_fields", UNKNOWN_FIELD_POLICIES, "drop", problems)
    limits = _mapping(doc, "limits", "{max_record_bytes: <bytes>}", problems, {})
    max_bytes = limits.get("max_record_bytes", 1_048_576)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        problems.append(Problem("limits.max_record_bytes", "must be a positive integer (bytes)"))
        max_bytes = 1
    late = _mapping(doc, "late_data", "{max_past, max_future, policy}", problems, {})
    windows: dict[str, timedelta] = {}
    for key, default in (("max_past", "7d"), ("max_future", "1h")):
        try:
            windows[key] = parse_duration(late.get(key, default))
        except ValueError as err:
            problems.append(Problem(f"late_data.{key}", str(err)))
            windows[key] = timedelta(0)
    late_policy = _choice(late, "policy", LATE_POLICIES, "write", problems, "late_data.policy")
    columns = _columns(doc.get("columns"), problems)
    et_field = et.get("field")
    by_name = {c.name: c for c in columns}
    if et_field not in by_name:
        problems.append(Problem("event_time.field", f"{et_field!r} is not a declared column"))
    else:
        col = by_name[et_field]
        if not pa.types.is_timestamp(col.type):
            problems.append(Problem("event_time.field", f"column {et_field!r} must be a timestamp"))
        if not col.required:
            problems.append(
                Problem(
                    "event_time.field",
                    f"mark column {et_field!r} required: true; partitioning needs it",
                )
            )
    if problems:
        raise ConfigError(problems, source=source)
    return TableSpec(
        name=str(name),
        topics=tuple(topics),
        encoding=encoding,
        event_time_field=str(et_field),
        event_time_format=et_format,
        partitioning=partitioning,
        unknown_fields=unknown,
        max_record_bytes=max_bytes,
        max_past=windows["max_past"],
        max_future=windows["max_future"],
        late_policy=late_policy,
        columns=tuple(columns),
        source=source,
    )


def _columns(raw: object, problems: list[Problem]) -> list[Column]:
    if not isinstance(raw, list) or not raw:
        problems.append(Problem("columns", "give a non-empty list of {name, type, required}"))
        return []
    columns: list[Column] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"columns[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(where, "each column is a mapping {name, type, required}"))
            continue
        for key in sorted(set(item) - {"name", "type", "required", "description"}):
            problems.append(
                Problem(f"{where}.{key}", "unknown key; valid: name, type, required, description")
            )
        name = item.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            problems.append(Problem(f"{where}.name", f"{name!r} must match ^[a-z_][a-z0-9_]*$"))
            name = None
        elif name in RESERVED_COLUMNS:
            problems.append(
                Problem(
                    f"{where}.name",
                    f"{name!r} is reserved ({', '.join(RESERVED_COLUMNS)}); rename it",
                )
            )
        elif name in seen:
            problems.append(Problem(f"{where}.name", f"{name!r} is declared twice"))
        required = item.get("required", False)
        if not isinstance(required, bool):
            problems.append(Problem(f"{where}.required", "must be true or false"))
        text = item.get("type")
        try:
            arrow_type = parse_type(text) if isinstance(text, str) else None
            if arrow_type is None:
                problems.append(Problem(f"{where}.type", f"missing; valid types: {VALID_TYPES}"))
        except ValueError as err:
            problems.append(Problem(f"{where}.type", str(err)))
            arrow_type = None
        if name is not None and arrow_type is not None and isinstance(text, str):
            seen.add(name)
            columns.append(Column(name, arrow_type, text, required is True))
    return columns
