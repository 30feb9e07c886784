"""PIPELINE wiring for ``sluice warehouse``: topics → decode → cuts → Parquet → S3 → commit.

Only wiring lives here; each part is a module of its own (see docs/design.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from pipelines import metrics
from pipelines.batching.buffer import MemoryBudget, RotationPolicy
from pipelines.batching.partitions import CutSink, PartitionSet
from pipelines.catalog.finalizer import Finalizer, RegisteringSink, run_forever
from pipelines.catalog.progress import AioKafkaProgress
from pipelines.catalog.registry import open_catalog, table_location
from pipelines.catalog.sync import sync_tables
from pipelines.deadletter import DeadLetterWriter
from pipelines.decoders import get_decoder
from pipelines.errors import ConfigError, Problem, TransientError
from pipelines.faust_batch import BatchApp, with_failpoint
from pipelines.settings import Settings
from pipelines.tables import TableSpec, load_tables
from pipelines.writers.store import ObjectStore, open_store
from pipelines.writers.table_writer import TableWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 20.0
# What one buffered record costs beyond its value: the ConsumerRecord, its key, timestamp and
# headers, and aiokafka's fetch buffers (tracemalloc over 65k fetched records: ~845 B).
RECORD_OVERHEAD_BYTES = 800


def select_tables(settings: Settings) -> dict[str, TableSpec]:
    """The tables this deployment runs, checked together: every problem in one error."""
    tables = load_tables(settings.resolve(settings.warehouse.schemas_dir))
    problems: list[Problem] = []
    wanted = settings.warehouse.tables or tuple(sorted(tables))
    for i, name in enumerate(wanted):
        if name not in tables:
            problems.append(
                Problem(
                    f"warehouse.tables[{i}]",
                    f"no table {name!r} in schemas_dir; known: "
                    f"{', '.join(sorted(tables)) or '(none)'}",
                )
            )
    chosen = {n: tables[n] for n in wanted if n in tables}
    owner: dict[str, str] = {}
    for name, spec in chosen.items():
        for topic in spec.topics:
            if topic in owner:
                problems.append(
                    Problem(
                        f"{spec.source}: topics",
                        f"topic {topic!r} is also read by table {owner[topic]!r}"
                        f"; a topic feeds one table",
                    )
                )
            owner[topic] = name
            if topic.endswith(settings.warehouse.dead_letter_suffix):
                problems.append(
                    Problem(f"{spec.source}: topics", f"{topic!r} looks like a dead-letter topic")
                )
    if not chosen and not problems:
        problems.append(Problem("warehouse.tables", "no tables to run"))
    if problems:
        raise ConfigError(problems, "warehouse configuration")
    return chosen


def s3_client(settings: Settings) -> S3Client:
    """boto3 client; credentials from the environment or the AWS chain, never the config."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3.endpoint_url or None,
        region_name=settings.s3.region,
        config=Config(
            s3={"addressing_style": "path" if settings.s3.path_style else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=16,
        ),
    )


def open_root(settings: Settings, client: S3Client | None = None) -> ObjectStore:
    """The store rooted at ``warehouse.root``: tables and their manifests live below it."""
    root = settings.warehouse.root
    if urlparse(root).scheme == "s3":
        return open_store(root, client or s3_client(settings))
    return open_store(root)


@dataclass
class WarehouseHandler:
    """The ``BatchHandler`` of the sink: fetched batches into the partition set."""

    topics: frozenset[str]
    partitions: PartitionSet

    def on_batch(self, tp: Any, records: list[Any]) -> None:
        self.partitions.add(tp, records)

    def reset(self, reason: str) -> None:
        log.info("resetting every partition: %s", reason)
        self.partitions.drop(list(self.partitions.parts))


def build_app(
    settings: Settings, tables: Mapping[str, TableSpec], store: ObjectStore
) -> tuple[BatchApp, WarehouseHandler]:
    """A Faust app consuming every table's topics, writing through ``store``."""
    w = settings.warehouse
    datadir = os.environ.get("SLUICE_DATADIR") or str(
        Path(tempfile.gettempdir()) / f"sluice-{w.group_id}-{os.getpid()}"
    )
    app = BatchApp(
        w.group_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka.bootstrap_servers.split(",")],
        broker_client_id=settings.kafka.client_id,
        datadir=datadir,
        stream_wait_empty=False,
        broker_session_timeout=settings.kafka.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.kafka.session_timeout_seconds / 10),
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 << 20,
        producer_max_request_size=1 << 20,  # dead letters: values over 900 KiB are left out
        broker_max_poll_interval=max(300.0, 2 * w.rotation.max_age_seconds + 60),
        web_enabled=settings.metrics.port != 0,
        web_port=settings.metrics.port or 6066,
        web_bind=settings.metrics.host,
        web_host=settings.metrics.host,
    )
    dead_letters = DeadLetterWriter(app.dead_letter_producer(), w.dead_letter_suffix)
    encode_slots = asyncio.Semaphore(1)  # shared by every table of this worker
    sinks: dict[str, CutSink] = {}
    catalog = open_catalog(settings)
    if settings.catalog.sync_on_start:
        locations = {n: table_location(settings, t) for n, t in tables.items()}
        for attempt in range(1, 7):
            try:
                results = sync_tables(tables, store, catalog, locations)
                break
            except TransientError as err:  # the metastore restarting: wait, then fail loudly
                if attempt == 6:
                    raise
                log.warning("catalog sync failed (attempt %d), retrying: %s", attempt, err)
                time.sleep(min(2**attempt, 20))
        for result in results:
            if result.added:
                log.info("%s: columns added: %s", result.table, ", ".join(result.added))
    finalizers: list[Finalizer] = []
    progress = AioKafkaProgress(settings.kafka.bootstrap_servers, settings.kafka.client_id)
    for spec in tables.values():
        location = table_location(settings, spec)
        writer: CutSink = RegisteringSink(
            TableWriter(
                spec,
                get_decoder(spec.encoding, spec),
                store,
                "",
                dead_letters,
                w.max_message_bytes,
                encode_slots=encode_slots,
            ),
            store,
            catalog,
            spec,
            location,
        )
        finalizers.append(
            Finalizer(
                spec,
                store,
                catalog,
                progress,
                w.group_id,
                settings.catalog.lateness_seconds,
                grace_seconds=settings.backfill.grace_period_seconds,
            )
        )
        for topic in spec.topics:
            sinks[topic] = writer

    partitions = PartitionSet(
        sinks,
        RotationPolicy(w.rotation.max_rows, w.rotation.max_bytes, w.rotation.max_age_seconds),
        MemoryBudget(w.memory_budget_bytes),
        commit=with_failpoint(app.commit_offset),
        pause=app.pause,
        resume=app.resume,
        on_terminal=app.crash_soon,
        record_overhead=RECORD_OVERHEAD_BYTES,
        start_of=app.start_of,
        rewind=app.rewind,
    )
    handler = WarehouseHandler(frozenset(sinks), partitions)
    app.subscribe_batches(handler)

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def tick() -> None:
        partitions.tick()
        metrics.BUFFERED_BYTES.set(partitions.budget.used)
        metrics.OLDEST_UNFLUSHED_SECONDS.set(partitions.oldest_age())
        metrics.PAUSED.set(partitions.paused_count())
        for tp in app.consumer.assignment():
            if tp.topic in handler.topics:
                high = app.consumer.highwater(tp)
                done = partitions.committed(tp)
                if high is not None and done is not None:
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(high - done)

    app.add_metrics_page()

    @app.task  # type: ignore[untyped-decorator]
    async def finalize() -> None:
        await run_forever(finalizers, settings.catalog.finalize_interval_seconds)

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        partitions.drop(args[0])  # args: (revoked partitions,)

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        partitions.drop([tp for tp in list(partitions.parts) if tp not in args[0]])

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        await partitions.drain(SHUTDOWN_GRACE_SECONDS)

    # mode's signal receiver type is narrower than what it calls receivers with.
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_before_shutdown.connect(cast(Any, on_shutdown))
    return app, handler


def run(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker until SIGTERM/SIGINT (then drain, commit, and exit)."""
    import faust

    tables = select_tables(settings)
    app, _ = build_app(settings, tables, open_root(settings))
    log.info("warehouse worker: tables %s → %s", ", ".join(tables), settings.warehouse.root)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
