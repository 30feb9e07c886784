"""PIPELINE wiring for ``sluice traces``: span topics → decode → route → destinations → commit.

Per Kafka message: decode it (bad input → dead-letter topic), route each span, hand each
destination its share (``DestinationQueue.put`` never blocks), and record in the
``OffsetTracker`` how many deliveries are outstanding. A timer commits, per partition, up to
the oldest message not yet delivered-or-diverted everywhere. Each destination's retry topic
is consumed by the same workers and redelivered to that destination only; its partitions are
paused while the destination's breaker is open.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from pipelines import trace_metrics as tm
from pipelines.deadletter import DeadLetter, translate_produce_error
from pipelines.decoders.base import UNPARSEABLE
from pipelines.destinations.queue import DestinationQueue, Entry
from pipelines.destinations.senders import make_sender
from pipelines.destinations.table import TableDestination
from pipelines.errors import ConfigError, Problem, TransientError
from pipelines.faust_batch import BatchApp, with_failpoint
from pipelines.kafka_records import SAFE_MESSAGE_BYTES, record_time_ns
from pipelines.routing.conditions import AttrValue
from pipelines.routing.tracker import OffsetTracker
from pipelines.settings import Settings
from pipelines.spans import DecodedSpans, SpanLimits, SpanView, get_decoder, otlp_chunks
from pipelines.spans.decode import SpanDecoder, message_error
from pipelines.traces_config import TracesConfig, load_traces

log = logging.getLogger(__name__)
GC_THRESHOLDS = (50_000, 20, 20)
"""The cyclic collector's thresholds in a router process. Every span allocates a dozen
objects (views, protobuf wrappers, attribute dicts) that live until delivered: at Python's
default (700, 10, 10) collections took ~10% of the CPU (bench.router_cpu)."""
MAX_OPEN_MESSAGES = 5_000
"""Messages in flight per worker before fetching pauses (bounds memory when stores lag)."""


class _LazyAttributes:
    """A span's attributes as the router reads them: one key at a time, nothing else built."""

    __slots__ = ("_span",)

    def __init__(self, span: SpanView) -> None:
        self._span = span

    def get(self, key: str, default: object = None) -> object:
        value = self._span.attribute(key)
        return default if value is None else value


class RouteView:
    """Adapts a decoded span to what the routing table reads; every field is read from the
    span only if a rule asks for it."""

    __slots__ = ("_span",)

    def __init__(self, span: SpanView) -> None:
        self._span = span

    @property
    def trace_id(self) -> bytes:
        return self._span.trace_id

    @property
    def span_id(self) -> bytes:
        return self._span.span_id

    @property
    def name(self) -> str:
        return self._span.name

    @property
    def kind(self) -> int:
        return self._span.kind

    @property
    def status_code(self) -> int:
        return self._span.status_code

    @property
    def start_ns(self) -> int:
        return self._span.start_ns

    @property
    def end_ns(self) -> int:
        return self._span.end_ns

    @property
    def resource(self) -> Mapping[str, AttrValue]:
        return cast(Mapping[str, AttrValue], self._span.resource.attributes)

    @property
    def attributes(self) -> Mapping[str, AttrValue]:
        return cast(Mapping[str, AttrValue], _LazyAttributes(self._span))


def _decode(decoder: SpanDecoder, rec: Any, now_ns: int) -> DecodedSpans:
    """A record's spans; a null value (a tombstone) is a bad message, never dropped silently."""
    if rec.value is None:
        return message_error(UNPARSEABLE, "null value (tombstone)")
    return decoder.decode(rec.value, now_ns)


def _letter(tp: Any, rec: Any, decoded: DecodedSpans) -> DeadLetter | None:
    """The dead letter of a message that did not decode, or has invalid spans (then the
    whole message goes, and its valid spans are still routed); None when all is well."""
    if not (decoded.message_error or decoded.rejected):
        return None
    reason = decoded.message_error or decoded.rejected[0].reason
    detail = decoded.detail or "; ".join(
        f"span {r.index}: {r.reason} {r.detail}" for r in decoded.rejected[:5]
    )
    where = (tp.topic, tp.partition, rec.offset)
    return DeadLetter(*where, rec.key, rec.value, reason, detail, "traces")


class TraceRouter:
    """The ``BatchHandler`` of the router (see the module docstring)."""

    def __init__(
        self,
        app: BatchApp,
        cfg: TracesConfig,
        tables: Mapping[str, Callable[[TraceRouter], TableDestination]] | None = None,
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.span_topics = {t.name: t for t in cfg.topics}
        self.tracker = OffsetTracker()
        self.tables = {name: make(self) for name, make in (tables or {}).items()}
        self.retry_topics = {
            cfg.retry_topic(d): d for d in cfg.destinations if d not in self.tables
        }
        self.topics = frozenset(self.span_topics) | frozenset(self.retry_topics)
        limits = SpanLimits(max_message_bytes=cfg.max_message_bytes)
        self.decoders = {t.name: get_decoder(t.encoding, limits) for t in cfg.topics}
        self.retry_decoder = get_decoder("otlp_proto", limits)
        self.queues = {
            name: DestinationQueue(
                spec,
                make_sender(spec, self._produce),
                self._divert,
                self._delivered,
                self._breaker_changed,
            )
            for name, spec in cfg.destinations.items()
            if name not in self.tables
        }
        self.committed: dict[Any, int] = {}
        self.retry_paused: set[str] = set()
        self._commit_offset = with_failpoint(app.commit_offset)
        self.paused = False
        self._tasks: set[asyncio.Future[None]] = set()

    # --- BatchHandler ----------------------------------------------------------------
    def on_batch(self, tp: Any, records: list[Any]) -> None:
        retry_dest = self.retry_topics.get(tp.topic)
        now_ns = time.time_ns()
        selected: dict[str, list[tuple[int, int]]] = {name: [] for name in self.tables}
        routed: dict[str, list[Sequence[SpanView]]] = {name: [] for name in self.tables}
        for rec in records:
            at = record_time_ns(rec, now_ns)  # a replayed table cut must judge the same
            if retry_dest is not None:
                self._redeliver(tp, rec, retry_dest, at)
            else:
                self._route(tp, rec, at, selected, routed)
        if retry_dest is None:
            for name, table in self.tables.items():
                table.add(tp, records, routed[name], selected[name])
        if not self.paused and self._saturated():
            self.paused = True
            log.info(
                "every destination is busy (%d messages in flight): pausing fetches",
                self.tracker.open_count(),
            )
            self.app.pause(self._assigned(self.span_topics))

    def reset(self, reason: str) -> None:
        log.info("resetting every partition: %s", reason)
        for tp in list(self.tracker.parts):
            self.tracker.drop(tp)
        self.committed.clear()

    # --- per message -----------------------------------------------------------------
    def _route(
        self,
        tp: Any,
        rec: Any,
        now_ns: int,
        selected: dict[str, list[tuple[int, int]]],
        routed: dict[str, list[Sequence[SpanView]]],
    ) -> None:
        decoded = _decode(self.decoders[tp.topic], rec, now_ns)
        letter = _letter(tp, rec, decoded)
        shares: dict[str, list[SpanView]] = {}
        routing = self.cfg.routing
        for span in decoded.batch.spans:
            decision = routing.route(RouteView(span))
            for dest in decision.destinations:
                shares.setdefault(dest, []).append(span)
            for dest in decision.sampled_out:
                tm.SAMPLED_OUT.labels(dest).inc()
            if decision.dropped and decision.dropped != "sampling":
                tm.DROPPED.labels(decision.dropped).inc()
        tm.SPANS_IN.labels(tp.topic).inc(len(decoded.batch.spans))
        gen = self.tracker.open(tp, rec.offset, len(shares) + (letter is not None))
        per_span = len(rec.value or b"") // max(len(decoded.batch.spans), 1)
        for dest, spans in shares.items():
            if dest in self.tables:
                selected[dest].append((rec.offset, gen))
            else:
                self.queues[dest].put(Entry(tp, rec.offset, gen, spans, per_span * len(spans)))
        for name, table_shares in routed.items():  # every record, for contiguous cuts
            table_shares.append(shares.get(name, ()))
        if letter is not None:
            self._spawn(self._dead_letter(tp, letter, gen))

    def _redeliver(self, tp: Any, rec: Any, dest: str, now_ns: int) -> None:
        decoded = _decode(self.retry_decoder, rec, now_ns)
        spans = decoded.batch.spans
        letter = _letter(tp, rec, decoded)  # a retry record is input too: never dropped
        gen = self.tracker.open(tp, rec.offset, (1 if spans else 0) + (letter is not None))
        if spans:
            self.queues[dest].put(Entry(tp, rec.offset, gen, spans, len(rec.value or b"")))
        if letter is not None:
            self._spawn(self._dead_letter(tp, letter, gen))

    async def _dead_letter(self, tp: Any, letter: DeadLetter, gen: int) -> None:
        """Send the letter, retrying transient errors; a terminal one stops the worker
        (the offset must not stay open silently, nor be committed without its letter)."""
        topic = f"{letter.topic}{self.cfg.dead_letter_suffix}"
        value, headers = letter.payload()
        delay = 0.2
        while True:
            try:
                await self.app.produce(topic, value or b"", letter.key, headers)
                break
            except Exception as err:
                problem = translate_produce_error(err, f"dead letter to {topic}")
                if not isinstance(problem, TransientError):
                    log.error("%s; stopping the worker", problem)
                    self.app.crash_soon(problem)
                    return
                log.warning("%s; retrying in %.1fs", problem, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        tm.DEAD_LETTERED.labels(letter.topic, letter.reason).inc()
        self.tracker.done(tp, letter.offset, gen)

    # --- callbacks from the destinations --------------------------------------------
    def _delivered(self, entry: Entry) -> None:
        self.tracker.done(entry.tp, entry.offset, entry.generation)

    async def _produce(self, topic: str, value: bytes) -> object:
        return await self.app.produce(topic, value)

    async def _divert(self, dest: str, spans: Sequence[SpanView]) -> None:
        topic = self.cfg.retry_topic(dest)
        for body in otlp_chunks(spans, min(SAFE_MESSAGE_BYTES, self.cfg.max_message_bytes)):
            await self.app.produce(topic, body)

    def _breaker_changed(self, dest: str, state: str) -> None:
        self._pace_retry(dest)

    def _pace_retry(self, dest: str) -> None:
        """Read a destination's retry topic only while it can take the spans: not while its
        breaker is open (half-open: the next batch is the trial), nor while its queue is over
        half full (resumed under a quarter), so a slow store is not fed its own overflow."""
        queue = self.queues[dest]
        bound = queue.spec.max_queue_spans
        if queue.breaker.state == "open" or queue.queued_spans >= bound // 2:
            wanted = True
        elif queue.queued_spans <= bound // 4:
            wanted = False
        else:
            return
        if wanted != (dest in self.retry_paused):
            tps = self._assigned({self.cfg.retry_topic(dest)})
            if wanted:
                self.retry_paused.add(dest)
                self.app.pause(tps)
            else:
                self.retry_paused.discard(dest)
                self.app.resume(tps)

    # --- timers ----------------------------------------------------------------------
    async def commit(self) -> None:
        for dest, queue in self.queues.items():
            queue.observe_breaker()  # open → half-open happens with time, not with traffic
            self._pace_retry(dest)
        for table in self.tables.values():
            table.tick()
        for tp, first in self.tracker.unchecked():
            await self._check_start(tp, first)
        tps: list[Any] = [tp for tp, p in self.tracker.parts.items() if p.checked]
        for tp in tps:
            offset = self.tracker.committable(tp)
            for table in self.tables.values():  # only where every table's cut begins
                offset = None if offset is None else table.commit_point(tp, offset)
            ahead = offset is not None and offset > self.committed.get(tp, -1)
            if ahead and offset is not None and await self._commit_offset(tp, offset):
                self.committed[tp] = offset
            high, done = self.app.consumer.highwater(tp), self.committed.get(tp)
            if high is not None and done is not None:  # every tick: it must grow when stuck
                tm.LAG.labels(tp.topic, str(tp.partition)).set(high - done)
        if self.paused and not self._saturated(resume=True):
            self.paused = False
            self.app.resume(self._unheld(self._assigned(self.span_topics)))
        else:
            self.repause()  # idempotent: covers partitions a rebalance assigned meanwhile

    async def _check_start(self, tp: Any, first: int) -> None:
        """A newly owned partition must be read from the committed offset: a fetch position
        that survived a rebalance would otherwise make its commits skip records."""
        must = await self.app.start_of(tp, first)
        if must is None or first <= must:
            self.tracker.mark_checked(tp)
            return
        log.warning(
            "%s[%d]: fetched from %d, but the partition must be read from %d (the group's "
            "committed offset, or the log start): seeking back to %d",
            tp.topic,
            tp.partition,
            first,
            must,
            must,
        )
        self.tracker.drop(tp)
        for table in self.tables.values():
            table.drop([tp])
        await self.app.rewind(tp, must)

    def _saturated(self, resume: bool = False) -> bool:
        """Fetching outpaces delivery: *every* destination holds half its queue bound (a
        quarter, to resume), or too many messages are open. One lagging destination alone
        never pauses fetching: its overflow is diverted to its retry topic instead."""
        share = 0.25 if resume else 0.5
        busy = bool(self.queues) and all(
            q.queued_spans >= share * q.spec.max_queue_spans for q in self.queues.values()
        )
        limit = MAX_OPEN_MESSAGES // 2 if resume else MAX_OPEN_MESSAGES
        return busy or self.tracker.open_count() > limit

    def repause(self) -> None:
        """Apply the router's pauses to the current assignment (after a rebalance)."""
        if self.paused:
            self.app.pause(self._assigned(self.span_topics))
        for dest in self.retry_paused:
            self.app.pause(self._assigned({self.cfg.retry_topic(dest)}))

    def _unheld(self, tps: set[Any]) -> set[Any]:
        """``tps`` but those a table keeps paused (its backlog or memory budget)."""
        return {tp for tp in tps if not any(t.partitions.holds(tp) for t in self.tables.values())}

    def resume_for_table(self, tps: set[Any]) -> None:
        """A table's resume: not while the router itself holds fetching back, and not what
        another table still holds."""
        if not self.paused:
            self.app.resume(self._unheld(set(tps)))

    def _assigned(self, topics: Mapping[str, Any] | set[str]) -> set[Any]:
        return {tp for tp in self.app.consumer.assignment() if tp.topic in topics}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Future[Any]) -> None:
        """A task that ends with an error would leave offsets open forever: stop loudly."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            log.error("a router task failed: %r; stopping the worker", err)
            self.app.crash_soon(cast(BaseException, err))

    def start(self) -> None:
        for queue in self.queues.values():
            self._spawn(queue.run())

    async def drain(self, grace: float) -> None:
        """Shutdown: give queued spans up to ``grace`` seconds, then commit what is done."""
        for table in self.tables.values():
            await table.partitions.drain(grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.tracker.open_count():
            await asyncio.sleep(0.1)
        await self.commit()


async def ensure_topics(bootstrap: str, names: Sequence[str], partitions: int = 4) -> None:
    """Create the retry topics if they are missing (a consumer cannot subscribe to nothing)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # A diverted span is only as durable as the topic holding it: three replicas, or as
        # many as there are brokers.
        brokers = (await admin.describe_cluster()).get("brokers", [])
        replicas = max(1, min(3, len(brokers)))
        missing = [NewTopic(n, partitions, replicas) for n in names if n not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


def _table_factories(
    settings: Settings, cfg: TracesConfig, app: BatchApp
) -> dict[str, Callable[[TraceRouter], TableDestination]]:
    """A factory per ``table`` destination; every problem is reported at once."""
    wanted = {n: d for n, d in cfg.destinations.items() if d.type == "table"}
    if not wanted:
        return {}
    from pipelines import warehouse
    from pipelines.batching.buffer import MemoryBudget, RotationPolicy
    from pipelines.deadletter import DeadLetterWriter
    from pipelines.tables import load_tables

    contracts = load_tables(settings.resolve(settings.warehouse.schemas_dir))
    problems = [
        Problem(
            f"traces.destinations.{n}.table",
            f"no table {d.table!r} in {settings.warehouse.schemas_dir}; known: "
            f"{', '.join(sorted(contracts)) or '(none)'}",
        )
        for n, d in wanted.items()
        if d.table not in contracts
    ]
    if problems:
        raise ConfigError(problems, "traces configuration")
    w = settings.warehouse
    store = warehouse.open_root(settings)
    budget = MemoryBudget(w.memory_budget_bytes)
    policy = RotationPolicy(w.rotation.max_rows, w.rotation.max_bytes, w.rotation.max_age_seconds)
    letters = DeadLetterWriter(app.dead_letter_producer(), cfg.dead_letter_suffix)
    topics = [t.name for t in cfg.topics]

    def factory(name: str) -> Callable[[TraceRouter], TableDestination]:
        def make(router: TraceRouter) -> TableDestination:
            return TableDestination(
                name,
                contracts[wanted[name].table],
                topics,
                store,
                letters,
                policy,
                budget,
                router.tracker.done,
                app.pause,
                router.resume_for_table,
                app.crash_soon,
                cfg.max_message_bytes,
                app.start_of,
                app.rewind,
                frozenset(t.name for t in cfg.topics if t.encoding == "otlp_proto"),
            )

        return make

    return {name: factory(name) for name in wanted}


def build_app(settings: Settings, cfg: TracesConfig) -> tuple[BatchApp, TraceRouter]:
    from pipelines.spans import native

    if not native.AVAILABLE:
        log.warning(
            "native span encoders off (sluice_native not installed, or SLUICE_NATIVE=0): "
            "every span is encoded in Python, several times slower; `make install` builds them"
        )
    datadir = os.environ.get("SLUICE_DATADIR") or str(
        Path(tempfile.gettempdir()) / f"sluice-{cfg.group_id}-{os.getpid()}"
    )
    app = BatchApp(
        cfg.group_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka.bootstrap_servers.split(",")],
        broker_client_id=settings.kafka.client_id,
        datadir=datadir,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 << 20,
        broker_session_timeout=settings.kafka.session_timeout_seconds,
        broker_heartbeat_interval=max(1.0, settings.kafka.session_timeout_seconds / 10),
        producer_max_request_size=max(cfg.max_message_bytes, 1 << 20) + (1 << 20),
        web_enabled=settings.metrics.port != 0,
        web_port=settings.metrics.port or 6066,
        web_bind=settings.metrics.host,
        web_host=settings.metrics.host,
    )
    router = TraceRouter(app, cfg, _table_factories(settings, cfg, app))
    app.subscribe_batches(router)
    app.add_metrics_page()

    @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
    async def commit() -> None:
        await router.commit()

    @app.task  # type: ignore[untyped-decorator]
    async def start_destinations() -> None:
        router.start()

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        await router.commit()  # commit what is done before the partitions move
        for tp in args[0]:
            router.tracker.drop(tp)
            router.committed.pop(tp, None)
        for table in router.tables.values():
            table.drop(list(args[0]))

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        router.repause()  # a partition assigned during a pause would otherwise be fetched

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **kw: Any) -> None:
        await router.drain(10.0)

    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_before_shutdown.connect(cast(Any, on_shutdown))
    return app, router


def load(settings: Settings) -> TracesConfig:
    return load_traces(settings.traces)


def run(settings: Settings, loglevel: str = "info") -> None:
    import faust

    cfg = load(settings)
    asyncio.run(
        ensure_topics(
            settings.kafka.bootstrap_servers.split(",")[0],
            [cfg.retry_topic(d) for d, spec in cfg.destinations.items() if spec.type != "table"],
        )
    )
    app, _ = build_app(settings, cfg)
    gc.freeze()  # what start-up built lives as long as the process: never scan it again
    gc.set_threshold(*GC_THRESHOLDS)
    log.info(
        "trace router: topics %s → %s",
        ", ".join(t.name for t in cfg.topics),
        ", ".join(cfg.destinations),
    )
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
