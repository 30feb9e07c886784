"""Faust, with whole fetched batches delivered below its per-event stream path.

Faust keeps what it does well: the worker and service lifecycle, the consumer thread, group
membership and rebalances (stop flow, recovery, seek to committed, resume flow), timers,
signals, the web server. We replace one method, ``Consumer._drain_messages`` (the Fetcher's
loop body): for the topics a ``BatchHandler`` claims, each partition's list of fetched
records goes to it whole, instead of being turned into one Message/Event per record (the
per-event path measured at 10-17k records/s per process; this one drains ~400k/s).

Commit safety: sink topics are subscribed with ``acks=False`` and nothing is ever acked, so
Faust's own commit timer finds nothing to commit for them (and faust-streaming#606, a commit
past an in-flight head, cannot happen). Offsets are committed only through
``BatchApp.commit_offset`` by the handler, after its writes are durable.

These are private Faust APIs: faust-streaming is pinned below 0.16 and
``tests/integration/test_warehouse.py`` exercises them against a real broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

import faust
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from pipelines.kafka_records import first_record_at

log = logging.getLogger(__name__)


class BatchHandler(Protocol):
    """Receives fetched records, per partition, in offset order."""

    topics: frozenset[str]

    def on_batch(self, tp: TP, records: list[Any]) -> None:
        """Called on the app's event loop; must not block (buffer and return)."""
        ...

    def reset(self, reason: str) -> None:
        """Forget every partition: a rebalance happened under a fetch; the consumer
        seeks back to the committed offsets right after."""
        ...


class BatchConsumer(faust_aiokafka.Consumer):
    """aiokafka-based Faust consumer whose Fetcher hands whole batches to the handler."""

    async def _drain_messages(self, fetcher: Any) -> None:
        handler: BatchHandler = cast(BatchApp, self.app).batch_handler
        consumer_stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                if not self.flow_active:  # a rebalance is in progress
                    await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
                    continue
                generation = self.app.consumer_generation_id
                records, _active = await self._wait_next_records(timeout=1.0)
                if not records or self.should_stop or not self.flow_active:
                    continue  # recovery seeks to the committed offsets before resuming
                for atp, recs in records.items():
                    # aiokafka's TopicPartition is not Faust's TP (pause/resume assert on it).
                    tp = ensure_TP(atp)
                    if not self.flow_active:
                        break
                    if self.app.consumer_generation_id != generation:
                        # A whole rebalance happened during this fetch: re-read from committed.
                        handler.reset("generation changed during fetch")
                        await self.perform_seek()
                        break
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in handler.topics:
                        handler.on_batch(tp, recs)
                    else:  # Faust's own topics and ordinary agents: the per-event path
                        for rec in recs:
                            await self.callback(self._to_message(tp, rec))
                            self._read_offset[tp] = rec.offset
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer delivers batches to ``batch_handler``."""

    batch_handler: BatchHandler

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def subscribe_batches(self, handler: BatchHandler) -> None:
        """Subscribe the handler's topics (no agent, no stream, never acked)."""
        self.batch_handler = handler
        for name in sorted(handler.topics):
            self.topics.add(
                self.topic(name, value_serializer="raw", key_serializer="raw", acks=False)
            )

    async def commit_offset(self, tp: Any, offset: int) -> bool:
        """Commit ``offset`` (the next offset to read) for ``tp``; False if the broker
        refused it (for example after we lost the partition)."""
        consumer = cast(faust_aiokafka.Consumer, self.consumer)
        return bool(await consumer._commit_offsets({ensure_TP(tp): offset}))

    async def start_of(self, tp: Any, first: int) -> int | None:
        """The offset a newly owned partition must be read from (``partitions.StartOf``):
        the group's committed offset, else the log start (``auto_offset_reset=earliest``);
        when ``first`` lies past it, the first record at or after it, read by a probe
        consumer of its own (offsets in between may hold no record: transaction markers,
        compaction, retention). A probe that reads nothing says the committed offset."""
        from aiokafka import TopicPartition

        thread = cast(Any, self.consumer)._thread
        consumer = thread._ensure_consumer()
        atp = TopicPartition(tp.topic, tp.partition)
        committed = await thread.call_thread(consumer.committed, atp)
        if committed is None:
            begins = await thread.call_thread(consumer.beginning_offsets, [atp])
            committed = begins[atp]
        must = int(committed)
        if first <= must:
            return must
        servers = ",".join(str(url).split("://", 1)[-1] for url in self.conf.broker)
        try:
            found = await first_record_at(
                servers, self.conf.broker_client_id, tp.topic, tp.partition, must
            )
        except Exception as err:  # unknown: keep the committed offset (seek back to it)
            log.warning("%s[%d]: probe at %d failed: %r", tp.topic, tp.partition, must, err)
            return must
        return must if found is None else found

    async def rewind(self, tp: Any, offset: int) -> None:
        """Seek ``tp``'s fetch position back to ``offset``, in the consumer's own thread
        (aiokafka's fetcher is not thread-safe: a seek from this loop raced a fetch)."""
        from aiokafka import TopicPartition

        thread = cast(Any, self.consumer)._thread
        consumer = thread._ensure_consumer()
        try:
            await thread.call_thread(consumer.seek, TopicPartition(tp.topic, tp.partition), offset)
        except Exception as err:  # no longer assigned: the rebalance seeks to committed
            log.warning(
                "%s[%d]: could not seek back to %d: %r", tp.topic, tp.partition, offset, err
            )

    def add_metrics_page(self) -> None:
        """Serve the Prometheus registry at ``/metrics`` on Faust's web server."""
        from prometheus_client import generate_latest

        from pipelines.metrics import REGISTRY

        @self.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type; the exposition format is ASCII.
            return web.bytes(generate_latest(REGISTRY), content_type="text/plain; version=0.0.4")

    async def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> object:
        """Produce one record with the app's producer and wait for the broker's ack."""
        producer = await self.maybe_start_producer()
        fut = await producer.send(topic, key, value, None, None, headers)
        return await fut

    def dead_letter_producer(self) -> FaustProducer:
        """This app's producer, as a ``DeadLetterWriter`` wants it (pipelined sends)."""
        return FaustProducer(self)

    def crash_soon(self, err: BaseException) -> None:
        """Stop the worker for a terminal error (from synchronous code): nothing is
        committed past it; Kubernetes restarts the process."""
        crashing: set[asyncio.Future[None]] = getattr(self, "_crashing", set())
        crashing.add(asyncio.ensure_future(self.crash(err)))  # held until it has run
        self._crashing = crashing

    def pause(self, tps: Iterable[Any]) -> None:
        self.consumer.pause_partitions({ensure_TP(tp) for tp in tps})

    def resume(self, tps: Iterable[Any]) -> None:
        # Faust's resume_partitions adds its raw argument to a set of TP: convert first.
        self.consumer.resume_partitions({ensure_TP(tp) for tp in tps})


class FaustProducer:
    """Adapts a Faust app's producer to the ``deadletter.Producer`` protocol."""

    def __init__(self, app: BatchApp) -> None:
        self.app = app

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        producer = await self.app.maybe_start_producer()
        fut: Awaitable[object] = await producer.send(topic, key, value, partition, None, headers)
        return fut


Committer = Callable[[Any, int], Awaitable[bool]]


def with_failpoint(commit: Committer) -> Committer:
    """Fault injection for the crash tests, unset (always, in production) commit is returned as is.

    ``SLUICE_FAILPOINT_COMMIT_DELAY=<seconds>`` widens the window between "objects durable" and
    "offset committed", where a crash must lead to an identical rewrite on replay.
    ``SLUICE_FAILPOINT_KILL_AT_COMMIT=<n>`` SIGKILLs the process just before its n-th commit (or
    the first after it, when a rebalance cancelled the n-th during the delay), so a test can
    land a crash in that window deterministically.
    """
    delay = float(os.environ.get("SLUICE_FAILPOINT_COMMIT_DELAY", "0") or 0)
    kill_at = int(os.environ.get("SLUICE_FAILPOINT_KILL_AT_COMMIT", "0") or 0)
    if delay <= 0 and kill_at <= 0:
        return commit
    commits = 0

    async def faulty(tp: Any, offset: int) -> bool:
        nonlocal commits
        commits += 1
        nth = commits  # commits of several partitions overlap during the delay
        if delay > 0:
            await asyncio.sleep(delay)
        if kill_at > 0 and nth >= kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return await commit(tp, offset)

    return faulty
