"""Table creation and evolution, shared by worker start and ``sluice catalog sync``.

The columns last synced are kept beside the data (``_sluice/<table>/schema.json``), so an
incompatible contract change is refused even with ``catalog.type: none`` and before any
engine sees it; ``sluice schemas check`` reads the same record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.catalog.base import Catalog, Evolution, compare_columns, table_columns
from pipelines.errors import TerminalError
from pipelines.tables import TableSpec
from pipelines.writers.store import ObjectStore


def schema_key(table: str) -> str:
    return f"_sluice/{table}/schema.json"


def recorded_columns(store: ObjectStore, table: str) -> list[tuple[str, str]] | None:
    data = store.get(schema_key(table))
    if data is None:
        return None
    try:
        return [(str(n), str(t)) for n, t in json.loads(data)["columns"]]
    except (ValueError, KeyError, TypeError) as err:
        raise TerminalError(f"{schema_key(table)} is corrupt: {err}") from err


def check(store: ObjectStore, spec: TableSpec) -> Evolution:
    """The contract against the columns last synced (all new when never synced)."""
    recorded = recorded_columns(store, spec.name)
    if recorded is None:
        return Evolution(table_columns(spec), [])
    return compare_columns(spec, recorded)


@dataclass(frozen=True)
class SyncResult:
    table: str
    added: list[str]


def sync_tables(
    tables: Mapping[str, TableSpec],
    store: ObjectStore,
    catalog: Catalog,
    locations: Mapping[str, str],
) -> list[SyncResult]:
    """Refuse incompatible changes (every table checked first), then create/evolve each table
    in the catalog and record its columns."""
    problems = [
        f"{spec.name} ({spec.source}): {p}"
        for spec in tables.values()
        for p in check(store, spec).problems
    ]
    if problems:
        raise TerminalError("incompatible schema change:\n  " + "\n  ".join(problems))
    results = []
    for name, spec in tables.items():
        added = check(store, spec).added
        catalog.sync_table(spec, locations[name])
        body = {"columns": [list(c) for c in table_columns(spec)], "source": spec.source}
        store.put(schema_key(name), json.dumps(body).encode())
        results.append(SyncResult(name, [n for n, _ in added]))
    return results
