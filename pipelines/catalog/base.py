"""What every catalog offers, and the table facts they share (types, locations, columns).

A catalog holds external, partitioned Parquet tables whose data sluice writes. Guarantees of
every implementation: ``sync_table`` creates a missing table or adds new nullable columns,
and refuses (``TerminalError``) any other change; ``add_partitions`` is idempotent; vendor
errors surface as ``TransientError`` (retry) or ``TerminalError`` (fix and restart).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from pipelines.errors import TerminalError
from pipelines.tables import TableSpec

FINAL_PARAMETER = "sluice.final"
"""Partition parameter set to "true" when the hour is complete."""


@dataclass(frozen=True)
class PartitionInfo:
    """One registered partition: ``dt=…/hr=…``, its location and parameters."""

    path: str
    location: str
    parameters: Mapping[str, str] = field(default_factory=dict)


class Catalog(Protocol):
    """A table catalog; see the module docstring for the guarantees."""

    kind: str

    def sync_table(self, spec: TableSpec, location: str) -> list[str]:
        """Create the table or add its new columns; returns the columns added."""
        ...

    def add_partitions(self, spec: TableSpec, location: str, paths: Sequence[str]) -> None:
        """Register ``dt=…[/hr=…]`` partitions at ``location/<path>`` (existing ones kept)."""
        ...

    def partitions(self, spec: TableSpec) -> list[PartitionInfo]: ...

    def set_partition_location(self, spec: TableSpec, path: str, location: str) -> None:
        """Point one partition at another prefix (one metastore call: readers see old or new)."""
        ...

    def set_partition_parameters(
        self, spec: TableSpec, path: str, parameters: Mapping[str, str]
    ) -> None: ...


def partition_keys(spec: TableSpec) -> list[str]:
    return ["dt"] if spec.partitioning == "daily" else ["dt", "hr"]


def partition_values(spec: TableSpec, path: str) -> list[str]:
    """``dt=2026-11-25/hr=07`` → ``["2026-11-25", "07"]``, checked against the table's keys."""
    parts = [p.partition("=") for p in path.strip("/").split("/")]
    if [k for k, _, _ in parts] != partition_keys(spec):
        raise TerminalError(
            f"{spec.name}: partition {path!r} is not {'/'.join(partition_keys(spec))}"
        )
    return [v for _, _, v in parts]


def hive_type(t: pa.DataType) -> str:
    """The Hive DDL type that Spark, Trino and Athena read our Parquet column as."""
    simple = {
        pa.string(): "string",
        pa.bool_(): "boolean",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.date32(): "date",
        pa.binary(): "binary",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_decimal(t):
        return f"decimal({t.precision},{t.scale})"
    if pa.types.is_map(t):
        return f"map<{hive_type(t.key_type)},{hive_type(t.item_type)}>"
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_struct(t):
        inner = ",".join(
            f"{t.field(i).name}:{hive_type(t.field(i).type)}" for i in range(t.num_fields)
        )
        return f"struct<{inner}>"
    raise TerminalError(f"no Hive type for Arrow type {t}")


def table_columns(spec: TableSpec) -> list[tuple[str, str]]:
    """(name, Hive type) of every stored column, in file order (partition keys excluded)."""
    return [(f.name, hive_type(f.type)) for f in spec.output_schema]


@dataclass(frozen=True)
class Evolution:
    """The difference between the registered columns and the contract's."""

    added: list[tuple[str, str]]
    problems: list[str]


def compare_columns(spec: TableSpec, registered: Sequence[tuple[str, str]]) -> Evolution:
    """Allowed: new nullable columns (appended). Refused: removal, type change, new required
    column. Types compare as Hive type strings, case-insensitively."""
    wanted = table_columns(spec)
    have = {n.lower(): t.lower().replace(" ", "") for n, t in registered}
    names = {n for n, _ in wanted}
    required = {c.name for c in spec.columns if c.required}
    problems = [
        f"column {n!r} was removed (registered as {t}); removing a column is incompatible"
        for n, t in registered
        if n.lower() not in names
    ]
    added: list[tuple[str, str]] = []
    for n, t in wanted:
        if n.lower() not in have:
            if n in required:
                problems.append(f"new column {n!r} is required; new columns must be nullable")
            else:
                added.append((n, t))
        elif have[n.lower()] != t.lower():
            problems.append(f"column {n!r} changes type {have[n.lower()]} -> {t}")
    if problems:
        problems.append(
            f"an incompatible change needs a new table: copy {spec.source} under a new table "
            f"name (e.g. {spec.name}_v2) and point the topics at it"
        )
    return Evolution(added, problems)
