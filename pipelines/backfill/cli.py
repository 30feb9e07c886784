"""``sluice verify`` and ``sluice backfill warehouse | cleanup | traces``.

Exit codes, every command: 0 done (verify: every offset exactly once); 1 verify: a mismatch,
backfill warehouse: chunks left or rows that would leave the range (rerun or widen it);
2 refused before any change (bad config or arguments, range gone from Kafka, nothing
committed, unknown table or destination); 3 stopped by an error of Kafka, the store or the
catalog (said in one line; every step is idempotent: rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError

from pipelines.backfill.verify import dead_lettered, offset_ranges, verify_table
from pipelines.errors import ConfigError, SluiceError
from pipelines.settings import load_settings

Handler = Callable[[argparse.Namespace], int]


def _guarded(handler: Handler) -> Handler:
    """Errors become one line on stderr and an exit code (module docstring), not a trace."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        what = " ".join(["sluice", args.command, getattr(args, "backfill_command", "")]).strip()
        try:
            return handler(args)
        except ConfigError as err:
            print(f"{what}: {err}", file=sys.stderr)
            return 2
        except (SluiceError, KafkaError, OSError) as err:
            print(f"{what}: {type(err).__name__}: {err}; rerun to resume", file=sys.stderr)
            return 3

    return run


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
    report = verify_table(spec, open_root(settings), ranges, letters, full=args.full)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def _table(args: argparse.Namespace) -> tuple[Any, Any] | None:
    from pipelines.warehouse import select_tables

    settings = load_settings(args.config)
    tables = select_tables(settings)
    if args.table not in tables:
        print(f"no table {args.table!r}; known: {', '.join(sorted(tables))}", file=sys.stderr)
        return None
    return settings, tables[args.table]


def _backfill_warehouse(args: argparse.Namespace) -> int:
    from pipelines.backfill.warehouse_job import run_backfill
    from pipelines.warehouse import open_root

    found = _table(args)
    if found is None:
        return 2
    settings, spec = found

    def say(line: str) -> None:
        print(line, flush=True)

    return asyncio.run(
        run_backfill(
            settings,
            spec,
            open_root(settings),
            args.since,
            args.to,
            say,
            run_id=args.run_id,
            dry_run=args.dry_run,
            parallelism=args.parallelism,
        )
    )


def _backfill_cleanup(args: argparse.Namespace) -> int:
    from pipelines.catalog.locations import expire_replaced
    from pipelines.warehouse import open_root

    found = _table(args)
    if found is None:
        return 2
    settings, spec = found
    grace = settings.backfill.grace_period_seconds if args.grace is None else args.grace
    gone = expire_replaced(open_root(settings), spec.name, grace)
    for prefix in gone:
        print(f"deleted {prefix}/")
    print(f"{len(gone)} replaced directories deleted (grace {grace:.0f}s)")
    return 0


def _backfill_traces(args: argparse.Namespace) -> int:
    from pipelines.backfill.traces_replay import SpanFilter, replay_traces
    from pipelines.errors import TerminalError
    from pipelines.traces import load

    settings = load_settings(args.config)
    try:
        wanted = SpanFilter.parse(args.trace_id, args.where)
    except TerminalError as err:
        print(err, file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, flush=True)

    return asyncio.run(
        replay_traces(settings, load(settings), args.destination, args.since, args.to, wanted, say)
    )


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value

    return parse


def _range_args(p: Any) -> None:
    p.add_argument("--config", required=True, help="deployment YAML file")
    p.add_argument("--from", dest="since", required=True, type=parse_time, help="ISO time (UTC)")
    p.add_argument("--to", required=True, type=parse_time, help="ISO time (UTC), exclusive")


def register(sub: Any) -> None:
    """Add ``verify`` and ``backfill`` to the ``sluice`` parser."""
    b = sub.add_parser("backfill", help="rebuild a table's hours from Kafka; replay spans")
    b_sub = b.add_subparsers(dest="backfill_command", required=True)
    w = b_sub.add_parser(
        "warehouse",
        help="rebuild the hours [--from, --to) of a table from Kafka and swap them in",
    )
    _range_args(w)
    w.add_argument("--table", required=True)
    w.add_argument("--dry-run", action="store_true", help="show what would be rebuilt")
    w.add_argument("--run-id", help="name of the run (default: range + contract hash)")
    w.add_argument(
        "--parallelism",
        type=_bounded(int, 1, 64),
        help="chunks at once, 1-64 (backfill.parallelism); each holds up to "
        "backfill.chunk_records records in memory",
    )
    w.set_defaults(handler=_guarded(_backfill_warehouse))
    t = b_sub.add_parser(
        "traces", help="replay spans from Kafka into one destination (the router's delivery)"
    )
    _range_args(t)
    t.add_argument("--to-destination", dest="destination", required=True, help="destination name")
    t.add_argument("--trace-id", help="only this trace (32 hex digits)")
    t.add_argument(
        "--where", action="append", default=[], help="key=value (service.name, name, attribute)"
    )
    t.set_defaults(handler=_guarded(_backfill_traces))
    c = b_sub.add_parser("cleanup", help="delete objects replaced longer than the grace ago")
    c.add_argument("--config", required=True, help="deployment YAML file")
    c.add_argument("--table", required=True)
    c.add_argument(
        "--grace",
        type=_bounded(float, 0, float("inf")),
        help="seconds (default: backfill.grace_period)",
    )
    c.set_defaults(handler=_guarded(_backfill_cleanup))

    v = sub.add_parser(
        "verify", help="check a table against Kafka: every offset exactly once (exit 1 if not)"
    )
    _range_args(v)
    v.add_argument("--table", required=True)
    v.add_argument(
        "--full",
        action="store_true",
        help="read every object of the table, not only the partitions the range's cuts and "
        "backfills wrote to (also finds stray copies elsewhere; costs a read of the table)",
    )
    v.set_defaults(handler=_guarded(_verify))
