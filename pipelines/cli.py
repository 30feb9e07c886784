"""The ``sluice`` command line. Each command is thin wiring over a module that does the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipelines.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]


def _dev(args: argparse.Namespace) -> int:
    from pipelines.devstack.components import StackConfig
    from pipelines.devstack.procs import StackError
    from pipelines.devstack.stack import Stack

    try:
        stack = Stack(StackConfig.from_env())
        if args.action == "up":
            stack.up()
        elif args.action == "down":
            stack.down()
        else:
            rows = stack.status()
            for row in rows:
                print(row)
            return 0 if all(r.pid and r.listening for r in rows) else 3
    except StackError as err:
        print(f"sluice dev {args.action}: {err}", file=sys.stderr)
        return 2
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from pipelines.settings import load_settings

    try:
        settings = load_settings(args.file)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    w = settings.warehouse
    print(
        f"{args.file}: OK (kafka {settings.kafka.bootstrap_servers}, warehouse {w.root}, "
        f"schemas {settings.resolve(w.schemas_dir)})"
    )
    return 0


def _warehouse(args: argparse.Namespace) -> int:
    from pipelines import warehouse
    from pipelines.settings import load_settings

    try:
        settings = load_settings(args.config)
        warehouse.select_tables(settings)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    warehouse.run(settings, loglevel=args.loglevel)
    return 0


def _traces(args: argparse.Namespace) -> int:
    from pipelines import traces
    from pipelines.settings import load_settings

    if not args.config:
        print("sluice traces: --config FILE is required", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config)
        cfg = traces.load(settings)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    if args.traces_command == "explain":
        return _explain(cfg, args.span)
    traces.run(settings, loglevel=args.loglevel)
    return 0


def _explain(cfg: object, span_json: str) -> int:
    """Which destinations a sample span would reach, and why."""
    import json
    import os

    from pipelines.routing import KINDS, STATUSES, Span
    from pipelines.traces_config import TracesConfig

    assert isinstance(cfg, TracesConfig)
    try:
        doc = json.loads(span_json)
        trace_id = bytes.fromhex(doc.get("trace_id", "")) or os.urandom(16)
        span = Span(
            trace_id=trace_id,
            span_id=os.urandom(8),
            name=str(doc.get("name", "")),
            kind=KINDS[str(doc.get("kind", "internal")).lower()],
            status_code=STATUSES[str(doc.get("status", "unset")).lower()],
            start_ns=0,
            end_ns=int(float(doc.get("duration_ms", 0)) * 1_000_000),
            resource=dict(doc.get("resource", {})),
            attributes=dict(doc.get("attributes", {})),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        print(
            f'--span: {err!r}; expected JSON like {{"name": "GET /cart", '
            f'"kind": "server", "status": "error", "duration_ms": 120, '
            f'"resource": {{"service.name": "checkout"}}, '
            f'"attributes": {{"http.route": "/cart"}}}}',
            file=sys.stderr,
        )
        return 2
    for line in cfg.routing.explain(span):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Kafka to data lake: Parquet tables on S3, traces routed."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local stack of real servers (Kafka, S3)")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.set_defaults(handler=_dev)

    wh = sub.add_parser("warehouse", help="run a warehouse sink worker (Kafka to Parquet on S3)")
    wh.add_argument("--config", required=True, help="deployment YAML file")
    wh.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    wh.set_defaults(handler=_warehouse)

    tr = sub.add_parser("traces", help="run a trace router worker (spans to stores)")
    tr.add_argument("--config", help="deployment YAML file (required)")
    tr.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    tr.set_defaults(handler=_traces, traces_command="run")
    tr_sub = tr.add_subparsers(dest="traces_command")
    explain = tr_sub.add_parser("explain", help="show which destinations a sample span reaches")
    explain.add_argument("--span", required=True, help="the span as JSON (see the README)")
    explain.add_argument("--config", required=True, help="deployment YAML file")

    config = sub.add_parser("config", help="deployment configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file, listing every problem")
    check.add_argument("file")
    check.set_defaults(handler=_config_check)

    from pipelines.catalog.cli import register as register_catalog

    register_catalog(sub)
    from pipelines.backfill.cli import register as register_backfill

    register_backfill(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
