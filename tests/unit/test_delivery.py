"""The trace router's delivery core without servers: offset tracker and destination queue."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pipelines.destinations.queue import DestinationQueue, Entry
from pipelines.errors import TransientError
from pipelines.routing.tracker import OffsetTracker
from pipelines.traces_config import DestinationSpec

TP = ("spans", 0)


def test_commit_point_stops_at_the_oldest_open_message() -> None:
    t = OffsetTracker()
    g = t.open(TP, 10, 2)
    t.open(TP, 11, 1)
    t.open(TP, 12, 0)  # nothing to deliver: done at once, but behind open ones
    assert t.committable(TP) is None
    t.done(TP, 11, g)
    assert t.committable(TP) is None  # 10 still waits for two deliveries
    t.done(TP, 10, g)
    assert t.committable(TP) is None
    t.done(TP, 10, g)
    assert t.committable(TP) == 13
    assert t.open_count() == 0


def test_done_after_a_revoke_is_ignored() -> None:
    t = OffsetTracker()
    g = t.open(TP, 5, 1)
    t.drop(TP)
    g2 = t.open(TP, 5, 1)  # the partition came back: a new era
    t.done(TP, 5, g)  # a late callback of the old era
    assert t.committable(TP) is None
    t.done(TP, 5, g2)
    assert t.committable(TP) == 6


class FakeSender:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[int] = []

    async def send(self, spans: Sequence[object]) -> None:
        if self.failures:
            self.failures -= 1
            raise TransientError("store down")
        self.batches.append(len(spans))

    async def close(self) -> None:
        return None


def spec(**kw: object) -> DestinationSpec:
    base = {
        "name": "store",
        "type": "zipkin",
        "endpoint": "http://x",
        "max_batch_spans": 10,
        "max_wait_seconds": 0.01,
        "retry_initial_seconds": 0.001,
        "retry_max_seconds": 0.002,
        "retry_attempts": 3,
        "breaker_failures": 100,
        "breaker_cooldown_seconds": 60.0,
        "max_queue_spans": 1000,
    }
    return DestinationSpec(**{**base, **kw})  # type: ignore[arg-type]


async def run_queue(q: DestinationQueue, until) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.ensure_future(q.run())
    try:
        async with asyncio.timeout(5):
            while not until():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()


async def test_batches_are_delivered_and_every_entry_marked_done() -> None:
    sender, done, diverted = FakeSender(), [], []

    async def divert(name: str, spans: Sequence[object]) -> None:
        diverted.append(len(spans))

    q = DestinationQueue(spec(), sender, divert, done.append)
    for i in range(7):
        q.put(Entry(TP, i, 1, [object()] * 3))
    await run_queue(q, lambda: len(done) == 7)
    assert [e.offset for e in done] == list(range(7))
    assert sum(sender.batches) == 21 and max(sender.batches) <= 10 and diverted == []


async def test_a_failing_store_is_retried_then_diverted_never_dropped() -> None:
    sender, done, diverted = FakeSender(failures=3), [], []

    async def divert(name: str, spans: Sequence[object]) -> None:
        diverted.append(len(spans))

    q = DestinationQueue(spec(), sender, divert, done.append)
    q.put(Entry(TP, 0, 1, [object()] * 4))
    await run_queue(q, lambda: len(done) == 1)
    assert diverted == [4] and sender.batches == []  # three attempts failed: diverted
    q.put(Entry(TP, 1, 1, [object()] * 2))
    await run_queue(q, lambda: len(done) == 2)
    assert sender.batches == [2]  # the store is back: delivered


async def test_an_unexpected_sender_error_is_retried_and_never_ends_the_queue() -> None:
    class Garbled(FakeSender):
        async def send(self, spans: Sequence[object]) -> None:
            if self.failures:
                self.failures -= 1
                b"\xff\xfe".decode("utf-8")  # a store's binary error body, decoded strictly
            self.batches.append(len(spans))

    sender, done = Garbled(failures=1), []

    async def divert(name: str, spans: Sequence[object]) -> None:
        raise AssertionError("delivered on the second attempt, never diverted")

    q = DestinationQueue(spec(), sender, divert, done.append)
    q.put(Entry(TP, 0, 1, [object()] * 4))
    await run_queue(q, lambda: len(done) == 1)
    assert sender.batches == [4]


async def test_batches_are_bounded_by_bytes_too() -> None:
    sender, done = FakeSender(), []

    async def divert(name: str, spans: Sequence[object]) -> None:
        raise AssertionError("never diverted")

    q = DestinationQueue(spec(max_batch_bytes=5000), sender, divert, done.append)
    for i in range(6):
        q.put(Entry(TP, i, 1, [object()], nbytes=2000))
    await run_queue(q, lambda: len(done) == 6)
    assert sender.batches == [2, 2, 2]


async def test_an_open_breaker_diverts_without_trying_and_overflow_diverts_the_oldest() -> None:
    sender, done, diverted = FakeSender(failures=10**6), [], []

    async def divert(name: str, spans: Sequence[object]) -> None:
        diverted.append(len(spans))

    q = DestinationQueue(
        spec(breaker_failures=1, max_queue_spans=5, retry_attempts=5), sender, divert, done.append
    )
    for i in range(4):  # 12 spans > 5: the oldest are diverted at once
        q.put(Entry(TP, i, 1, [object()] * 3))
    assert q.queued_spans <= 5
    await run_queue(q, lambda: len(done) == 4)
    assert sum(diverted) == 12 and q.breaker.state == "open"
    assert sender.failures == 10**6 - 1  # one attempt opened the breaker; no more tries


@pytest.mark.parametrize("kafka_down_for", [0, 2])
async def test_a_failing_diversion_is_retried_until_kafka_takes_it(kafka_down_for: int) -> None:
    sender, done = FakeSender(failures=10**6), []
    calls = []

    async def divert(name: str, spans: Sequence[object]) -> None:
        calls.append(len(spans))
        if len(calls) <= kafka_down_for:
            raise ConnectionError("kafka unavailable")

    q = DestinationQueue(spec(breaker_failures=1), sender, divert, done.append)
    q.put(Entry(TP, 0, 1, [object()]))
    await run_queue(q, lambda: len(done) == 1)
    assert len(calls) == kafka_down_for + 1


def test_a_tombstone_is_a_bad_message_on_span_and_retry_topics_alike() -> None:
    """A null value is dead-lettered (unparseable), never read as an empty request."""
    from types import SimpleNamespace

    from pipelines.spans import get_decoder
    from pipelines.traces import _decode

    decoded = _decode(get_decoder(), SimpleNamespace(value=None), 0)
    assert (decoded.message_error, decoded.detail) == ("unparseable", "null value (tombstone)")
    assert _decode(get_decoder(), SimpleNamespace(value=b""), 0).message_error is None
