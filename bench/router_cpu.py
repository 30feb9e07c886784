"""CPU per span of the trace router's work, in process (no Kafka, no stores, no network).

    .venv/bin/python -m bench.router_cpu --messages 600 --table routed

The messages and rules of ``bench.traces_e2e`` (Jaeger and Zipkin, plus the spans table on
every route), fed in fetch-sized batches through the router's own functions: decode and
route every span, OTLP protobuf for Jaeger and Zipkin JSON in batches of 2,000 spans, the
table's cuts encoded by its ``TableWriter`` (``encode``: rows, dt/hr groups, Parquet).
``--table routed`` builds the table's rows natively from the message bytes
(``spans.native``), ``--table routed-python`` in Python (``to_arrow``); ``--table
decode-again`` is the table path before the router shared its decode (the table's decoder
parses every message again and re-routes every span). Reports µs per input
span per stage, the best of ``--runs`` (process CPU time, so another process on the same
cores matters less than to wall-clock figures). The garbage collector is set as in a
``sluice traces`` process (``pipelines.traces.GC_THRESHOLDS``); ``--default-gc`` keeps
Python's defaults.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.traces_e2e import JAEGER, ZIPKIN, SpanCounts, TraceMaker, sluice_config
from pipelines.batching.partitions import Cut
from pipelines.decoders.base import Decoder
from pipelines.spans import SpanLimits, SpanView, get_decoder, to_otlp_proto, to_zipkin_json
from pipelines.tables import load_tables
from pipelines.traces import GC_THRESHOLDS, RouteView
from pipelines.traces_config import load_traces
from pipelines.writers.table_writer import TableWriter
from tests.sinkkit import REPO

LAKE = "lake"
BATCH_SPANS = 2000  # the HTTP destinations' max_batch_spans default


@dataclass(frozen=True)
class Record:
    offset: int
    value: bytes
    key: bytes | None = None


class _Stack:
    bootstrap = "127.0.0.1:9092"
    env: ClassVar[dict[str, str]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--spans-per-message", type=int, default=100)
    parser.add_argument("--fetch", type=int, default=90, help="messages per fetched batch")
    parser.add_argument(
        "--table", choices=("routed", "routed-python", "decode-again", "none"), default="routed"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--default-gc", action="store_true", help="Python's GC thresholds")
    args = parser.parse_args()
    if not args.default_gc:
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    os.environ["BENCH_SLUICE_TABLE"] = "1"  # sluice_config adds the table to every route
    cfg = load_traces(sluice_config(_Stack(), "spans", "bench")["traces"])
    spec = load_tables(REPO / "schemas")["spans"]
    schema = spec.arrow_schema
    maker = TraceMaker(args.spans_per_message, args.seed)
    rnd, now_ns, counts = random.Random(args.seed), time.time_ns(), SpanCounts()
    values = [maker.make(i, rnd, now_ns, counts)[0] for i in range(args.messages)]
    records = [Record(i, v) for i, v in enumerate(values)]
    spans_in = args.messages * args.spans_per_message
    decoder = get_decoder("otlp_proto", SpanLimits())
    routing = cfg.routing
    totals: dict[str, list[float]] = {}

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.process_time()
        out = fn(*args)
        totals.setdefault(stage, []).append(time.process_time() - t0)
        return out

    def route(batch: Sequence[Record]) -> dict[str, list[list[SpanView]]]:
        shares: dict[str, list[list[SpanView]]] = {JAEGER: [], ZIPKIN: [], LAKE: []}
        for rec in batch:
            decoded = decoder.decode(rec.value, now_ns)
            mine: dict[str, list[SpanView]] = {JAEGER: [], ZIPKIN: [], LAKE: []}
            for span in decoded.batch.spans:
                for dest in routing.route(RouteView(span)).destinations:
                    mine[dest].append(span)
            for dest, spans in mine.items():
                shares[dest].append(spans)
        return shares

    def send(encode: Callable[[Sequence[SpanView]], bytes], spans: list[SpanView]) -> None:
        for i in range(0, len(spans), BATCH_SPANS):
            encode(spans[i : i + BATCH_SPANS])

    writer = _writer(args.table, spec, routing)
    for _ in range(args.runs):
        cut_records: list[Any] = []
        for lo in range(0, len(records), args.fetch):
            batch = records[lo : lo + args.fetch]
            shares = timed("decode + route", route, batch)
            if args.table.startswith("routed"):
                from pipelines.destinations.table import routed_records

                native = args.table == "routed"
                stage = f"table rows ({'native' if native else 'Python'})"
                cut_records += timed(stage, routed_records, batch, shares[LAKE], schema, native)
            else:
                cut_records += batch
            for dest, encode in ((JAEGER, to_otlp_proto), (ZIPKIN, to_zipkin_json)):
                flat = [s for share in shares[dest] for s in share]
                timed(f"{dest} encode", send, encode, flat)
        if writer is not None:
            cut = Cut("spans", 0, 0, cut_records, "age", 0, 0.0)
            timed("table cut encode", writer.encode, cut, int(time.time()))
    print(f"{spans_in:,} spans, {args.messages} messages, table: {args.table}; µs per input span:")
    total = 0.0
    for stage, seconds in totals.items():
        best = min(_per_run(seconds, args.runs)) / spans_in * 1e6
        total += best
        print(f"  {stage:24s} {best:7.2f}")
    print(f"  {'total':24s} {total:7.2f}  = {1e6 / total:,.0f} spans per CPU-second")


def _per_run(seconds: list[float], runs: int) -> list[float]:
    n = len(seconds) // runs
    return [sum(seconds[i * n : (i + 1) * n]) for i in range(runs)]


def _writer(mode: str, spec: Any, routing: Any) -> TableWriter | None:
    if mode == "none":
        return None
    decoder: Decoder
    if mode.startswith("routed"):
        from pipelines.destinations.table import RoutedRowsDecoder

        decoder = RoutedRowsDecoder(spec.arrow_schema)
    else:
        from pipelines.decoders.spans import SpansDecoder

        def keep(span: SpanView) -> bool:
            return LAKE in routing.route(RouteView(span)).destinations

        decoder = SpansDecoder(spec, "otlp_proto", keep=keep, report_rejects=False)
    return TableWriter(spec, decoder, None, "", None, 64 << 20)  # type: ignore[arg-type]  # encode only


if __name__ == "__main__":
    main()
