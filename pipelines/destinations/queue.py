"""One destination's delivery: a bounded queue, batching, retries, a breaker, diversion.

Guarantees, per destination and independent of every other destination:
1. Every entry put in the queue ends *done* exactly when its spans were accepted by the
   store or durably written to the destination's retry topic (acknowledged by Kafka).
2. A slow or dead store never blocks the caller: ``put`` never waits. Past
   ``max_queue_spans`` the oldest entries are diverted at once; while the breaker is open,
   batches are diverted without trying the store. Memory stays bounded.
3. Retries use exponential backoff with jitter (``retry_initial`` … ``retry_max``),
   ``retry_attempts`` per batch, then the batch is diverted.
4. The breaker opens after ``breaker_failures`` consecutive failed attempts and lets one trial
   batch through after ``breaker_cooldown``; a success closes it.
5. A diversion that fails (Kafka unreachable) is retried forever: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

from pipelines import trace_metrics as tm
from pipelines.destinations.senders import Sender
from pipelines.errors import TerminalError, TransientError
from pipelines.spans import SpanView
from pipelines.traces_config import DestinationSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """The spans of one Kafka message that go to this destination."""

    tp: Hashable
    offset: int
    generation: int
    spans: Sequence[SpanView]
    nbytes: int = 0
    """Estimated encoded size (the message's share of its bytes), for ``max_batch_size``."""


Done = Callable[[Entry], None]
Divert = Callable[[str, Sequence[SpanView]], Awaitable[None]]


class Breaker:
    """closed → open after N consecutive failures → half-open after the cooldown."""

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self.clock()


class DestinationQueue:
    """See the module docstring. ``run()`` is the destination's delivery task."""

    def __init__(
        self,
        spec: DestinationSpec,
        sender: Sender,
        divert: Divert,
        done: Done,
        on_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.sender = sender
        self._divert = divert
        self._done = done
        self._on_state = on_state
        self.entries: deque[Entry] = deque()
        self.queued_spans = 0
        self.breaker = Breaker(spec.breaker_failures, spec.breaker_cooldown_seconds)
        self._wake = asyncio.Event()
        self._side: set[asyncio.Task[None]] = set()
        self._last_state = "closed"

    # --- fed by the router -----------------------------------------------------------
    def put(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.queued_spans += len(entry.spans)
        self._wake.set()
        if self.queued_spans > self.spec.max_queue_spans:
            overflow: list[Entry] = []
            while self.entries and self.queued_spans > self.spec.max_queue_spans:
                e = self.entries.popleft()
                self.queued_spans -= len(e.spans)
                overflow.append(e)
            task = asyncio.ensure_future(self._divert_entries(overflow, "overflow"))
            self._side.add(task)
            task.add_done_callback(self._side.discard)
        tm.QUEUE_SPANS.labels(self.name).set(self.queued_spans)

    # --- the delivery task -----------------------------------------------------------
    async def run(self) -> None:
        spec = self.spec
        while True:
            if not self.entries:
                self._wake.clear()
                await self._wake.wait()
            if self.queued_spans < spec.max_batch_spans:
                await asyncio.sleep(spec.max_wait_seconds)  # let a batch fill
            batch = self._take()
            if batch:
                await self._deliver(batch)

    def _take(self) -> list[Entry]:
        batch: list[Entry] = []
        spans = nbytes = 0
        limit = self.spec
        while self.entries and (
            not batch
            or (
                spans + len(self.entries[0].spans) <= limit.max_batch_spans
                and nbytes + self.entries[0].nbytes <= limit.max_batch_bytes
            )
        ):
            e = self.entries.popleft()
            spans += len(e.spans)
            nbytes += e.nbytes
            batch.append(e)
        self.queued_spans -= spans
        tm.QUEUE_SPANS.labels(self.name).set(self.queued_spans)
        return batch

    async def _deliver(self, batch: list[Entry]) -> None:
        spec = self.spec
        spans = [s for e in batch for s in e.spans]
        delay = spec.retry_initial_seconds
        for attempt in range(spec.retry_attempts):
            if not self.breaker.allow():
                break
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(spec.timeout_seconds + 1):
                    await self.sender.send(spans)
            except TerminalError as err:
                log.error("%s: the store refused %d spans: %s", self.name, len(spans), err)
                break  # retrying cannot help; keep them in the retry topic for inspection
            except Exception as err:  # transient, or a sender's untranslated error: retry
                self.breaker.failure()
                self._state_changed()
                tm.RETRIED.labels(self.name).inc(len(spans))
                log.warning(
                    "%s: %d spans not delivered (attempt %d): %s",
                    self.name,
                    len(spans),
                    attempt + 1,
                    err if isinstance(err, TimeoutError | TransientError) else repr(err),
                )
                if attempt + 1 < spec.retry_attempts and self.breaker.allow():
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311
                    delay = min(delay * 2, spec.retry_max_seconds)
                continue
            self.breaker.success()
            self._state_changed()
            tm.DELIVERED.labels(self.name).inc(len(spans))
            tm.LATENCY.labels(self.name).observe(time.monotonic() - t0)
            for e in batch:
                self._done(e)
            return
        await self._divert_entries(batch, f"breaker {self.breaker.state}")

    async def _divert_entries(self, entries: list[Entry], why: str) -> None:
        spans = [s for e in entries for s in e.spans]
        delay = 0.5
        while True:
            try:
                await self._divert(self.name, spans)
                break
            except Exception as err:  # Kafka itself unavailable: keep trying, never drop
                log.error("%s: diverting %d spans failed, retrying: %r", self.name, len(spans), err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        tm.DIVERTED.labels(self.name).inc(len(spans))
        log.info("%s: diverted %d spans to the retry topic (%s)", self.name, len(spans), why)
        for e in entries:
            self._done(e)

    def observe_breaker(self) -> None:
        """Timer hook: report a breaker that turned half-open while no batch was tried."""
        self._state_changed()

    def _state_changed(self) -> None:
        state = self.breaker.state
        if state != self._last_state:
            self._last_state = state
            log.warning("%s: breaker %s", self.name, state)
            if self._on_state is not None:
                self._on_state(self.name, state)
        tm.BREAKER_OPEN.labels(self.name).set(0 if state == "closed" else 1)

    async def close(self) -> None:
        for task in list(self._side):
            await task
        await self.sender.close()
