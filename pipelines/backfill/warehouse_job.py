"""``sluice backfill warehouse``: rebuild hours of a table from Kafka, swap them in.

Wiring only: the plan (``plan.py``), the chunks (``rebuild.py``) and the swap (``swap.py``)
each say what they guarantee. Exit codes: 0 done (or dry run), 1 refused after the rebuild
(rows would vanish), 2 refused before any work (bad range, data beyond retention, no
catalog).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from pipelines.backfill.plan import (
    Plan,
    default_run_id,
    done_key,
    hours_between,
    partition_states,
    plan_key,
    retention_problems,
)
from pipelines.backfill.progress import Progress
from pipelines.backfill.rebuild import ChunkBuilder, Fetcher, done_chunks
from pipelines.backfill.swap import HourSummary, check_moves, finish_hour, previous_prefix
from pipelines.catalog.base import Catalog
from pipelines.catalog.locations import check_run_id, expire_replaced
from pipelines.catalog.registry import open_catalog, table_location
from pipelines.catalog.sync import sync_tables
from pipelines.deadletter import DeadLetterWriter
from pipelines.decoders import get_decoder
from pipelines.errors import TerminalError
from pipelines.settings import Settings
from pipelines.tables import TableSpec
from pipelines.writers.store import ObjectStore
from pipelines.writers.table_writer import TableWriter

log = logging.getLogger(__name__)
Say = Callable[[str], None]


async def make_plan(
    settings: Settings, spec: TableSpec, start: datetime, end: datetime, run: str, say: Say
) -> Plan | None:
    """A new plan, or None (after saying why) when part of the range is gone from Kafka."""
    hours = hours_between(spec, start, end)
    lateness = timedelta(seconds=settings.catalog.lateness_seconds)
    states = await partition_states(
        settings.kafka.bootstrap_servers,
        settings.warehouse.group_id,
        spec.topics,
        start - lateness,
        end + lateness,
    )
    problems = retention_problems(spec, hours, states, lateness)
    if states and all(s.committed is None for s in states.values()):
        problems = [
            f"the live sink's group {settings.warehouse.group_id} has committed nothing on "
            f"{', '.join(spec.topics)}: a backfill re-reads only what the live sink has "
            "committed (check warehouse.group_id in the config; is the sink running?)"
        ]
    if problems:
        for line in problems:
            say(line)
        return None
    ranges = {}
    for (topic, p), s in sorted(states.items()):
        done = s.committed if s.committed is not None else s.earliest
        hi = max(s.lo, min(s.hi_wanted, done))
        if hi < s.hi_wanted:
            say(
                f"note: {topic}[{p}]: the live sink ({settings.warehouse.group_id}) has "
                f"committed up to {done} of {s.hi_wanted}; later records reach these hours "
                "through the live sink"
            )
        ranges[(topic, p)] = (s.lo, hi)
    return Plan(
        run=run,
        table=spec.name,
        start=start.isoformat(),
        end=end.isoformat(),
        hours=tuple(hours),
        ranges=ranges,
        chunk_records=settings.backfill.chunk_records,
        created_at=time.time(),
    )


def describe(store: ObjectStore, spec: TableSpec, plan: Plan, say: Say) -> None:
    say(f"run {plan.run}: {len(plan.hours)} partitions of {spec.name}, {plan.start} to {plan.end}")
    for (topic, p), (lo, hi) in sorted(plan.ranges.items()):
        say(
            f"  {topic}[{p}]: offsets {lo}-{hi - 1} ({hi - lo} records)"
            if hi > lo
            else f"  {topic}[{p}]: nothing to read"
        )
    done = done_chunks(store, plan)
    say(f"  {plan.records} records in {len(plan.chunks())} chunks, {len(done)} done")
    for path in plan.hours:
        where = previous_prefix(store, spec.name, plan.run, path)
        n = sum(1 for k, _ in store.list(where + "/") if k.endswith(".parquet"))
        say(f"  {path}: now {n} objects at {where}/")


async def run_backfill(
    settings: Settings,
    spec: TableSpec,
    store: ObjectStore,
    start: datetime,
    end: datetime,
    say: Say,
    run_id: str | None = None,
    dry_run: bool = False,
    parallelism: int | None = None,
) -> int:
    if settings.catalog.type == "none":
        say(
            "backfill swaps each rebuilt hour in through the catalog's partition location; "
            "set catalog.type to hive or glue (readers of bare S3 paths cannot see a swap)"
        )
        return 2
    try:
        hours_between(spec, start, end)
        run = check_run_id(run_id) if run_id else default_run_id(spec, start, end)
    except TerminalError as err:
        say(str(err))
        return 2
    stored = await asyncio.to_thread(store.get, plan_key(spec.name, run))
    if stored is not None:
        plan = Plan.from_json(stored)
        planned = (datetime.fromisoformat(plan.start), datetime.fromisoformat(plan.end))
        if planned != (start, end):  # instants: 06:00+02:00 is 04:00Z
            say(f"run id {run} belongs to {plan.start} - {plan.end}; choose another --run-id")
            return 2
        finished = await asyncio.to_thread(store.get, done_key(spec.name, run))
        if finished is not None:
            for line in json.loads(finished)["summary"]:
                say(line)
            say(
                f"run {run} is complete: nothing to do. To rebuild these hours again (after "
                "another fix, say), give a new --run-id"
            )
            return 0
        say(f"resuming run {run} (planned {time.ctime(plan.created_at)})")
    else:
        made = await make_plan(settings, spec, start, end, run, say)
        if made is None:
            return 2
        plan = made
    if dry_run:
        describe(store, spec, plan, say)
        say("dry run: nothing written")
        return 0
    grace = settings.backfill.grace_period_seconds
    expired = await asyncio.to_thread(expire_replaced, store, spec.name, grace)
    for prefix in expired:
        say(f"deleted {prefix}/ (replaced more than {grace:.0f}s ago)")
    # The fixed contract may add columns: the catalog gets them before any hour is swapped,
    # and an incompatible contract is refused before any work.
    catalog = open_catalog(settings)
    location = table_location(settings, spec)
    try:
        for result in await asyncio.to_thread(
            sync_tables, {spec.name: spec}, store, catalog, {spec.name: location}
        ):
            if result.added:
                say(f"{spec.name}: columns added to the catalog: {', '.join(result.added)}")
    except TerminalError as err:
        say(str(err))
        return 2
    if stored is None:
        await asyncio.to_thread(store.put, plan_key(spec.name, run), plan.to_json(), True)
        standing = await asyncio.to_thread(store.get, plan_key(spec.name, run))
        plan = Plan.from_json(standing or b"")
    return await _execute(settings, spec, store, catalog, location, plan, say, parallelism)


async def _execute(
    settings: Settings,
    spec: TableSpec,
    store: ObjectStore,
    catalog: Catalog,
    location: str,
    plan: Plan,
    say: Say,
    parallelism: int | None,
) -> int:
    from aiokafka import AIOKafkaProducer

    done = await asyncio.to_thread(done_chunks, store, plan)
    pending = [c for c in plan.chunks() if c not in done]
    progress = Progress(plan.records)
    progress.skip(sum(c[3] - c[2] for c in done))
    t0 = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        max_request_size=max(settings.warehouse.max_message_bytes + (64 << 10), 1 << 20),
    )
    await producer.start()
    try:
        letters = DeadLetterWriter(producer, settings.warehouse.dead_letter_suffix)
        writer = TableWriter(
            spec,
            get_decoder(spec.encoding, spec),
            store,
            "",
            letters,
            settings.warehouse.max_message_bytes,
        )
        builder = ChunkBuilder(
            plan,
            writer,
            Fetcher(
                settings.kafka.bootstrap_servers,
                settings.kafka.client_id,
                settings.warehouse.max_message_bytes,
            ),
            letters,
            parallelism or settings.backfill.parallelism,
            progress.advance,
            progress.skip,
        )
        built = await builder.run(pending)
    finally:
        await producer.stop()
        progress.close()
    seconds = time.monotonic() - t0
    records = sum(c[3] - c[2] for c in pending)
    if built:
        say(
            f"rebuilt {built} chunks, {records} records in {seconds:.1f} s "
            f"({records / max(seconds, 1e-9):,.0f} records/s)"
        )
    results = await asyncio.to_thread(done_chunks, store, plan)
    if len(results) < len(plan.chunks()):
        say(f"{len(plan.chunks()) - len(results)} chunks are not done; rerun to resume")
        return 1
    before, problems = await asyncio.to_thread(check_moves, store, spec, plan, results)
    if problems:
        for line in problems:
            say(line)
        return 1
    summaries: list[HourSummary] = []
    for path in plan.hours:
        rebuilt = [o for r in results.values() for o in r.objects.get(path, [])]
        summaries.append(
            await asyncio.to_thread(
                finish_hour, store, catalog, spec, plan, path, rebuilt, before[path], location
            )
        )
    lines = [
        f"{'partition':<24} {'rows before':>12} {'rows after':>12} {'rebuilt':>10} {'carried':>8}"
    ]
    for s in summaries:
        lines.append(
            f"{s.path:<24} {s.rows_before:>12} {s.rows_after:>12} {s.rebuilt:>10} {s.carried:>8}"
        )
    rejected = sum(len(r.rejected) for r in results.values())
    if rejected:
        lines.append(
            f"{rejected} records do not decode: sent to the dead-letter topic with their reason"
        )
    grace = settings.backfill.grace_period_seconds
    swapped = sum(1 for s in summaries if s.rows_before or s.rows_after)
    lines.append(f"swapped in {swapped} partitions; replaced objects kept for {grace:.0f}s")
    for line in lines:
        say(line)
    record = json.dumps({"summary": lines, "at": time.time()}).encode()
    await asyncio.to_thread(store.put, done_key(spec.name, plan.run), record)
    return 0
