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

    config = sub.add_parser("config", help="deployment configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file, listing every problem")
    check.add_argument("file")
    check.set_defaults(handler=_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
