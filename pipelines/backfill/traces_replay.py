"""``sluice backfill traces``: replay spans from Kafka into one destination.

The span topics' records appended in ``[from, to)`` (Kafka record time, ``offsets_for_times``)
are read with the job's own consumer (assigned partitions, no group), decoded with each
topic's decoder, filtered (``--trace-id``, ``--where key=value``: ``service.name``, ``name``,
or any resource or span attribute, compared as text) and handed to the destination through
the router's own delivery path (``DestinationQueue``: batching, timeout, retries with backoff,
breaker, and diversion to the destination's retry topic when the store stays down). The job
ends when every matched span is delivered or durably diverted, so nothing it read is lost;
delivery is at-least-once, like the router's (a rerun sends the spans again, which the stores
accept as the same spans). Records no longer retained are refused with the earliest time
still in Kafka. The ``table`` destination is not a target: rebuild the spans table with
``sluice backfill warehouse``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipelines.backfill.progress import Progress
from pipelines.destinations.queue import DestinationQueue, Entry
from pipelines.destinations.senders import make_sender
from pipelines.errors import TerminalError, TransientError
from pipelines.kafka_records import SAFE_MESSAGE_BYTES, record_time_ns
from pipelines.settings import Settings
from pipelines.spans import SpanLimits, SpanView, get_decoder, otlp_chunks
from pipelines.traces_config import TracesConfig

Say = Callable[[str], None]


@dataclass(frozen=True)
class SpanFilter:
    """Which spans to replay: all of them when empty."""

    trace_id: bytes | None = None
    where: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, trace_id: str | None, where: Sequence[str]) -> SpanFilter:
        tid = None
        if trace_id is not None:
            try:
                tid = bytes.fromhex(trace_id)
            except ValueError:
                tid = None
            if tid is None or len(tid) != 16:
                raise TerminalError(f"--trace-id {trace_id!r}: want 32 hex digits")
        pairs = []
        for item in where:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise TerminalError(f"--where {item!r}: want key=value (e.g. service.name=api)")
            pairs.append((key.strip(), value.strip()))
        return cls(tid, tuple(pairs))

    def __call__(self, span: SpanView) -> bool:
        if self.trace_id is not None and span.trace_id != self.trace_id:
            return False
        return all(_value(span, key) == want for key, want in self.where)


def _value(span: SpanView, key: str) -> str | None:
    if key == "service.name":
        return span.resource.service_name
    if key == "name":
        return span.name
    found = span.attribute(key)
    if found is None:
        found = span.resource.attributes.get(key)
    return None if found is None else str(found)


@dataclass
class ReplayReport:
    messages: int = 0
    spans_read: int = 0
    matched: int = 0
    delivered: int = 0
    diverted: int = 0
    rejected_messages: int = 0
    partitions: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)


async def _ranges(
    bootstrap: str, topics: Sequence[str], start: datetime, end: datetime
) -> tuple[dict[TopicPartition, tuple[int, int]], list[str]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        meta = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(meta.partitions_for_topic(t) or ())
        ]
        if not tps:
            raise TerminalError(f"no partitions for {', '.join(topics)}")
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        lo = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        hi = await consumer.offsets_for_times({tp: int(end.timestamp() * 1000) for tp in tps})
        out, problems = {}, []
        for tp in tps:
            a = lo[tp].offset if lo[tp] is not None else ends[tp]
            b = hi[tp].offset if hi[tp] is not None else ends[tp]
            if begins[tp] > 0 and begins[tp] == ends[tp]:
                problems.append(
                    f"{tp.topic}[{tp.partition}] keeps no records (offsets 0-{begins[tp] - 1} "
                    "deleted): the range is gone from Kafka"
                )
            elif begins[tp] > 0 and a <= begins[tp] < ends[tp]:
                first = lo[tp]
                when = (
                    datetime.fromtimestamp(first.timestamp / 1000, UTC).isoformat()
                    if first is not None
                    else "?"
                )
                problems.append(
                    f"{tp.topic}[{tp.partition}] keeps records from offset {begins[tp]} "
                    f"({when}) only: part of the range is gone from Kafka"
                )
            out[tp] = (a, b)
        return out, problems
    finally:
        await consumer.stop()


IDLE_SECONDS = 60.0


def _alive(runner: asyncio.Future[None]) -> None:
    """Raise the delivery queue's error if it stopped: nothing would deliver what is left."""
    if runner.done():
        runner.result()
        raise TransientError("the delivery queue stopped before every span was delivered")


async def replay_traces(
    settings: Settings,
    cfg: TracesConfig,
    destination: str,
    start: datetime,
    end: datetime,
    wanted: SpanFilter,
    say: Say,
) -> int:
    spec = cfg.destinations.get(destination)
    if spec is None:
        say(f"no destination {destination!r}; configured: {', '.join(sorted(cfg.destinations))}")
        return 2
    if spec.type == "table":
        say(f"{destination} is a table: rebuild it with `sluice backfill warehouse`")
        return 2
    if end <= start:
        say("--to must be after --from")
        return 2
    bootstrap = settings.kafka.bootstrap_servers
    ranges, problems = await _ranges(bootstrap, [t.name for t in cfg.topics], start, end)
    if problems:
        for line in problems:
            say(line)
        return 2
    limits = SpanLimits(max_message_bytes=cfg.max_message_bytes)
    decoders = {t.name: get_decoder(t.encoding, limits) for t in cfg.topics}
    report = ReplayReport(partitions={(tp.topic, tp.partition): r for tp, r in ranges.items()})
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        max_request_size=max(cfg.max_message_bytes, 1 << 20) + (1 << 20),
    )
    await producer.start()
    open_entries: set[int] = set()
    all_done = asyncio.Event()
    all_done.set()

    async def produce(topic: str, value: bytes) -> object:
        return await (await producer.send(topic, value))

    async def divert(dest: str, spans: Sequence[SpanView]) -> None:
        for body in otlp_chunks(spans, min(SAFE_MESSAGE_BYTES, cfg.max_message_bytes)):
            await produce(cfg.retry_topic(dest), body)
        report.diverted += len(spans)

    def done(entry: Entry) -> None:
        open_entries.discard(entry.generation)
        report.delivered += len(entry.spans)
        if not open_entries:
            all_done.set()

    queue = DestinationQueue(spec, make_sender(spec, produce), divert, done)
    runner = asyncio.ensure_future(queue.run())
    progress = Progress(sum(b - a for a, b in ranges.values()), unit="messages")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    serial = 0
    try:
        for tp, (a, b) in sorted(ranges.items()):
            if b <= a:
                continue
            consumer.assign([tp])
            consumer.seek(tp, a)
            idle_since = time.monotonic()
            while await consumer.position(tp) < b:
                _alive(runner)
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=2000)
                records = [r for r in batch.get(tp, []) if r.offset < b]
                if records:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_SECONDS:
                    raise TransientError(
                        f"{tp.topic}[{tp.partition}]: nothing read for {IDLE_SECONDS:.0f}s "
                        f"at offset {await consumer.position(tp)} of {b}"
                    )
                now_ns = time.time_ns()
                for rec in records:
                    at = record_time_ns(rec, now_ns)  # as the router judged it
                    decoded = decoders[tp.topic].decode(rec.value or b"", at)
                    report.messages += 1
                    report.spans_read += len(decoded.batch.spans)
                    if decoded.message_error:
                        report.rejected_messages += 1
                    spans = [s for s in decoded.batch.spans if wanted(s)]
                    if spans:
                        serial += 1
                        report.matched += len(spans)
                        open_entries.add(serial)
                        all_done.clear()
                        queue.put(Entry(tp, rec.offset, serial, spans))
                progress.advance(len(records))
                while queue.queued_spans > spec.max_queue_spans // 2:
                    _alive(runner)
                    await asyncio.sleep(0.05)  # keep the replay inside the queue's bound
        waiter = asyncio.ensure_future(all_done.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            _alive(runner)
    finally:
        progress.close()
        await consumer.stop()
        runner.cancel()
        await queue.close()
        await producer.stop()
    say(
        f"read {report.messages} messages ({report.spans_read} spans), matched "
        f"{report.matched} spans: {report.delivered - report.diverted} delivered to "
        f"{destination}, {report.diverted} diverted to {cfg.retry_topic(destination)}"
    )
    if report.rejected_messages:
        say(f"{report.rejected_messages} messages did not decode (the router dead-lettered them)")
    return 0
