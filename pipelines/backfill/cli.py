"""``sluice verify --config FILE --table T --from TIME --to TIME``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

from pipelines.backfill.verify import dead_lettered, offset_ranges, verify_table
from pipelines.settings import load_settings


def parse_time(text: str) -> datetime:
    """ISO 8601 (``2026-11-25T05:00``, ``2026-11-25 05:00:00Z``); naive times are UTC."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time (example: 2026-11-25T05:00Z)"
        ) from err
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _verify(args: argparse.Namespace) -> int:
    from pipelines.warehouse import open_root, select_tables

    settings = load_settings(args.config)
    tables = select_tables(settings)
    if args.table not in tables:
        print(f"no table {args.table!r}; known: {', '.join(sorted(tables))}", file=sys.stderr)
        return 2
    if args.to <= args.since:
        print("--to must be after --from", file=sys.stderr)
        return 2
    spec = tables[args.table]
    bootstrap = settings.kafka.bootstrap_servers
    ranges = asyncio.run(
        offset_ranges(bootstrap, settings.warehouse.group_id, spec.topics, args.since, args.to)
    )
    letters = asyncio.run(
        dead_lettered(bootstrap, spec.name, spec.topics, settings.warehouse.dead_letter_suffix)
    )
    report = verify_table(spec, open_root(settings), ranges, letters)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    """Add ``verify`` to the ``sluice`` parser."""
    v = sub.add_parser(
        "verify", help="check a table against Kafka: every offset exactly once (exit 1 if not)"
    )
    v.add_argument("--config", required=True, help="deployment YAML file")
    v.add_argument("--table", required=True)
    v.add_argument("--from", dest="since", required=True, type=parse_time, help="ISO time (UTC)")
    v.add_argument("--to", required=True, type=parse_time, help="ISO time (UTC), exclusive")
    v.set_defaults(handler=_verify)
