"""``sluice catalog sync``, ``sluice schemas check`` and ``sluice partitions``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pipelines.catalog.base import FINAL_PARAMETER
from pipelines.catalog.finalizer import final_key, object_partition
from pipelines.catalog.registry import open_catalog, table_location
from pipelines.catalog.sync import check, sync_tables
from pipelines.errors import SluiceError
from pipelines.settings import load_settings
from pipelines.writers.manifest import Manifest


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from pipelines.warehouse import open_root, select_tables

    settings = load_settings(args.config)
    return settings, select_tables(settings), open_root(settings)


def _sync(args: argparse.Namespace) -> int:
    settings, tables, store = _load(args)
    catalog = open_catalog(settings)
    locations = {n: table_location(settings, t) for n, t in tables.items()}
    try:
        results = sync_tables(tables, store, catalog, locations)
    except SluiceError as err:
        print(f"catalog sync: {err}", file=sys.stderr)
        return 1
    for r in results:
        spec = tables[r.table]
        registered = [
            key.removeprefix(f"_sluice/{r.table}/partitions/")
            for key, _ in store.list(f"_sluice/{r.table}/partitions/")
        ]
        catalog.add_partitions(spec, locations[r.table], registered)
        added = f"columns added: {', '.join(r.added)}" if r.added else "no new columns"
        print(
            f"{catalog.kind}: {r.table} at {locations[r.table]}: {added}; "
            f"{len(registered)} partitions registered"
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    _, tables, store = _load(args)
    failed = False
    for name, spec in tables.items():
        evolution = check(store, spec)
        if evolution.problems:
            failed = True
            print(f"{name} ({spec.source}): INCOMPATIBLE", file=sys.stderr)
            for p in evolution.problems:
                print(f"  - {p}", file=sys.stderr)
        elif evolution.added:
            print(f"{name}: compatible; new columns: {', '.join(n for n, _ in evolution.added)}")
        else:
            print(f"{name}: unchanged")
    return 1 if failed else 0


def _partitions(args: argparse.Namespace) -> int:
    settings, tables, store = _load(args)
    if args.table not in tables:
        print(f"no table {args.table!r}; known: {', '.join(sorted(tables))}", file=sys.stderr)
        return 2
    rows: dict[str, int] = {}
    newest: dict[str, int] = {}
    seen: set[str] = set()
    for key, _ in store.list(f"_sluice/{args.table}/manifests/"):
        data = store.get(key)
        if data is None:
            continue
        m = Manifest.from_json(data)
        for entry in m.objects:
            if entry.key in seen:
                continue
            seen.add(entry.key)
            path = object_partition(entry.key, args.table)
            rows[path] = rows.get(path, 0) + entry.rows
            newest[path] = max(newest.get(path, 0), m.cut_time)
    catalog = {p.path: p for p in open_catalog(settings).partitions(tables[args.table])}
    now = time.time()
    out = []
    for path in sorted(set(rows) | set(catalog)):
        final = store.get(final_key(args.table, path)) is not None
        out.append(
            {
                "partition": path,
                "state": "final" if final else "open",
                "rows": rows.get(path, 0),
                "last_write_seconds_ago": round(now - newest[path]) if path in newest else None,
                "registered": path in catalog,
                "catalog_final": path in catalog
                and catalog[path].parameters.get(FINAL_PARAMETER) == "true",
            }
        )
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{'partition':24} {'state':6} {'rows':>10} {'last write':>12} registered")
    for o in out:
        ago = "-" if o["last_write_seconds_ago"] is None else f"{o['last_write_seconds_ago']}s ago"
        print(f"{o['partition']:24} {o['state']:6} {o['rows']:>10} {ago:>12} {o['registered']}")
    return 0


def register(sub: Any) -> None:
    """Add the catalog commands to the ``sluice`` parser."""
    cat = sub.add_parser("catalog", help="table catalog (Hive Metastore, Glue)")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True)
    sync = cat_sub.add_parser("sync", help="create or evolve every table, register partitions")
    sync.add_argument("--config", required=True, help="deployment YAML file")
    sync.set_defaults(handler=_sync)

    schemas = sub.add_parser("schemas", help="table contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    chk = schemas_sub.add_parser("check", help="refuse incompatible changes to a table contract")
    chk.add_argument("--config", required=True, help="deployment YAML file")
    chk.set_defaults(handler=_check)

    parts = sub.add_parser("partitions", help="a table's partitions: state, rows, freshness")
    parts.add_argument("--config", required=True, help="deployment YAML file")
    parts.add_argument("--table", required=True)
    parts.add_argument("--json", action="store_true", help="machine-readable output")
    parts.set_defaults(handler=_partitions)
