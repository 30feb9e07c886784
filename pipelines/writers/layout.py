"""Partition paths and object keys: where a row and a file land in the lake.

Keys are deterministic: the same (table, partition, topic, Kafka partition, first
offset) always names the same object, so a replay after a crash overwrites instead of
duplicating. Every segment is validated, never sanitized: a value that could escape its
path segment (``/``, ``..``, control characters) raises ``TerminalError``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import TerminalError
from pipelines.table_types import NAME_RE
from pipelines.tables import TableSpec

TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9._=-]+")
# [0-9], not \d: \d also matches non-ASCII digits.
_PARTITION_SEGMENT = {
    "dt": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "hr": re.compile(r"[0-9]{2}"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Hive FileUtils.escapePathName: ASCII controls and these characters become %XX.
_HIVE_ESCAPED = frozenset(chr(c) for c in range(0x20)) | frozenset("\"#%'*/:=?\\\x7f{[]^")


def partition_path(spec: TableSpec, event_time_utc: datetime) -> str:
    """``dt=YYYY-MM-DD/hr=HH`` (hourly) or ``dt=YYYY-MM-DD`` (daily), in UTC."""
    if event_time_utc.tzinfo is None:
        raise TerminalError("partition_path needs a timezone-aware datetime")
    t = event_time_utc.astimezone(UTC)
    if spec.partitioning == "daily":
        return f"dt={t:%Y-%m-%d}"
    return f"dt={t:%Y-%m-%d}/hr={t:%H}"


def partition_groups(spec: TableSpec, table: pa.Table) -> dict[str, list[int]]:
    """Row indices of ``table`` per partition path, each list ascending.

    Vectorized: the event-time column is bucketed with integer arithmetic on the epoch
    (floor division, so pre-1970 values bucket correctly), and only the distinct buckets
    are formatted. Raises ``TerminalError`` if the event time has nulls.
    """
    column = table.column(spec.event_time_field)
    if column.null_count:
        raise TerminalError(f"{spec.name}: event-time column {spec.event_time_field!r} has nulls")
    unit = str(cast("pa.TimestampType[Any, Any]", column.type).unit)
    seconds = 86_400 if spec.partitioning == "daily" else 3_600
    width = pa.scalar(seconds * _PER_SECOND[unit], pa.int64())
    epoch = pc.cast(column.combine_chunks(), pa.int64())
    bucket = pc.divide(epoch, width)  # truncates toward zero
    below = pc.and_(
        pc.less(epoch, pa.scalar(0, pa.int64())), pc.not_equal(pc.multiply(bucket, width), epoch)
    )
    bucket = pc.subtract(bucket, pc.cast(below, pa.int64()))
    rows = pa.table({"b": bucket, "i": pa.array(range(table.num_rows), pa.int64())})
    grouped = rows.group_by("b", use_threads=False).aggregate([("i", "list")])
    groups: dict[str, list[int]] = {}
    for b, indices in zip(grouped["b"].to_pylist(), grouped["i_list"].to_pylist(), strict=True):
        try:
            when = _EPOCH + timedelta(seconds=cast(int, b) * seconds)
        except OverflowError as err:
            raise TerminalError(f"{spec.name}: event time out of range") from err
        groups[partition_path(spec, when)] = cast(list[int], indices)
    return groups


def object_key(
    root_prefix: str,
    table: str,
    partition_path: str,
    topic: str,
    kafka_partition: int,
    first_offset: int,
) -> str:
    """``<prefix>/<table>/<partition>/<topic>-<partition:05d>-<first_offset:020d>.parquet``.

    Zero padding makes keys sort by offset. ``root_prefix`` may be empty or hold several
    ``/``-separated segments.
    """
    segments = [s for s in root_prefix.strip("/").split("/") if s] if root_prefix else []
    for segment in segments:
        _check(segment, PREFIX_SEGMENT_RE, "root prefix segment")
    _check(table, NAME_RE, "table name")
    _check(topic, TOPIC_RE, "Kafka topic")
    parts = partition_path.split("/")
    keys = [p.partition("=")[0] for p in parts]
    if keys not in (["dt"], ["dt", "hr"]):
        raise TerminalError(f"partition path {partition_path!r} is not dt=…[/hr=…]")
    for part, key in zip(parts, keys, strict=True):
        _check(part.partition("=")[2], _PARTITION_SEGMENT[key], f"partition value {key}")
    for name, number, limit in (
        ("Kafka partition", kafka_partition, 10**5),
        ("first offset", first_offset, 10**20),
    ):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < limit:
            raise TerminalError(f"{name} must be an integer in [0, {limit}), got {number!r}")
    name = f"{topic}-{kafka_partition:05d}-{first_offset:020d}.parquet"
    return "/".join([*segments, table, partition_path, name])


def hive_escape(value: str) -> str:
    """Escape a partition value as Hive's ``FileUtils.escapePathName`` does.

    Empty values map to ``__HIVE_DEFAULT_PARTITION__``; non-ASCII passes through.
    """
    if not value:
        return "__HIVE_DEFAULT_PARTITION__"
    return "".join(f"%{ord(c):02X}" if c in _HIVE_ESCAPED else c for c in value)


def _check(value: object, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in {".", ".."}:
        raise TerminalError(f"{what} {value!r} is not a safe path segment ({pattern.pattern})")
