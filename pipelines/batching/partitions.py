"""Per-partition buffering, ordered cut workers and commit-after-write for one worker.

Framework-free: the Faust wiring feeds ``add`` with fetched batches and hands in callbacks
to commit offsets and pause/resume fetching. Guarantees:

1. Records of a partition are cut into contiguous runs ``[start, end]`` in offset order.
2. Each partition has one worker that writes its cuts strictly in order and commits
   ``end + 1`` only after ``CutSink.write`` returned (every object durable). A committed
   offset never moves backwards, and a dropped (revoked) partition never commits again.
3. Transient write failures are retried with capped exponential backoff, forever: nothing
   is dropped, and backpressure (pause) keeps memory bounded meanwhile.
4. Memory: one ``MemoryBudget`` counts every buffered and in-flight byte. Over it, the
   largest buffer is cut early; still over it, fetching pauses until writes drain it.
5. If the manifest of a cut's start already records another end (a previous owner's cut),
   the cut is re-formed to end exactly there (``CutConflictError``), so a replay after a crash
   rewrites the same objects instead of making overlapping ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pipelines import metrics
from pipelines.batching.buffer import MemoryBudget, PartitionBuffer, RotationPolicy, SourceRecord
from pipelines.errors import TerminalError, TransientError

log = logging.getLogger(__name__)


class TopicPartition(Hashable, Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...


@dataclass
class Cut:
    """A contiguous run of one partition's records, written as one unit."""

    topic: str
    partition: int
    start: int
    records: list[SourceRecord]
    reason: str
    nbytes: int
    arrived: float
    """When the cut's first record arrived (for the freshness metric)."""

    @property
    def end(self) -> int:
        return self.records[-1].offset


class CutConflictError(Exception):
    """The manifest at ``start`` records ``standing_end``: the cut must end exactly there."""

    def __init__(self, standing_end: int) -> None:
        super().__init__(f"a cut ending at {standing_end} is already recorded")
        self.standing_end = standing_end


class CutSink(Protocol):
    """Writes a cut durably (objects, dead letters, manifest).

    Called by the partition's worker, one cut at a time per partition, in offset order.
    Returns when every record of the cut is durable (as a row or as a dead letter). Raises
    ``TransientError`` (retried), ``TerminalError`` (stops the worker) or ``CutConflictError``."""

    async def write(self, cut: Cut) -> None: ...


Committer = Callable[[TopicPartition, int], Awaitable[bool]]
Pauser = Callable[[set[TopicPartition]], None]
StartOf = Callable[[TopicPartition, int], Awaitable[int | None]]
"""Where a newly owned partition must start, given the first offset it was fetched from:
the offset of the first *record* at or after the group's committed offset (else the log
start). Offsets without a record (transaction markers, compacted or deleted records) do not
count, so a first record past them is where the partition must start."""
Rewind = Callable[[TopicPartition, int], Awaitable[None]]
"""Seek the consumer of a partition back to an offset."""


@dataclass
class _State:
    buffer: PartitionBuffer
    pending: deque[Cut] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    worker: asyncio.Task[None] | None = None
    paused: bool = False
    committed: int | None = None
    checked: bool = False
    """Whether the first cut's start was checked against where the partition must start."""


class PartitionSet:
    """Every partition this worker currently owns; see the module docstring."""

    def __init__(
        self,
        sinks: Mapping[str, CutSink],
        policy: RotationPolicy,
        budget: MemoryBudget,
        commit: Committer,
        pause: Pauser,
        resume: Pauser,
        on_terminal: Callable[[BaseException], None],
        max_pending: int = 2,
        backoff: tuple[float, float] = (0.2, 30.0),
        clock: Callable[[], float] = time.monotonic,
        record_overhead: int = 0,
        start_of: StartOf | None = None,
        rewind: Rewind | None = None,
    ) -> None:
        self.sinks = sinks
        self._start_of, self._rewind = start_of, rewind
        self.record_overhead = record_overhead
        """Bytes a buffered record costs beyond its value (see warehouse.py for the measured
        figure); counted against the memory budget."""
        self.policy = policy
        self.budget = budget
        self._commit = commit
        self._pause = pause
        self._resume = resume
        self._on_terminal = on_terminal
        self.max_pending = max_pending
        self.backoff = backoff
        self.clock = clock
        self.parts: dict[TopicPartition, _State] = {}
        self.globally_paused = False

    # --- fed by the consumer -------------------------------------------------------------
    def add(self, tp: TopicPartition, records: list[SourceRecord]) -> None:
        """Buffer fetched records of ``tp`` (in offset order); cut when a limit is reached."""
        if not records:
            return
        st = self.parts.get(tp)
        if st is None:
            st = self.parts[tp] = _State(PartitionBuffer(start=records[0].offset))
            st.worker = asyncio.ensure_future(self._work(tp, st))
        before = self._held(st.buffer.nbytes, len(st.buffer.records))
        st.buffer.add(records, self.clock())
        self.budget.take(self._held(st.buffer.nbytes, len(st.buffer.records)) - before)
        reason = st.buffer.due(self.policy, self.clock())
        if reason is not None:
            self._seal(tp, st, reason)
        if self.budget.over():
            self._relieve_memory()

    def tick(self) -> None:
        """Timer: cut aged buffers (idle partitions too) and enforce the memory budget."""
        now = self.clock()
        for tp, st in list(self.parts.items()):
            reason = st.buffer.due(self.policy, now)
            if reason is not None:
                self._seal(tp, st, reason)
        self._relieve_memory()

    def oldest_age(self) -> float:
        """Seconds since the oldest record not yet committed arrived (0 when none)."""
        now = self.clock()
        arrivals = [
            st.pending[0].arrived if st.pending else st.buffer.first_arrival
            for st in self.parts.values()
            if st.pending or st.buffer.records
        ]
        return max((now - a for a in arrivals), default=0.0)

    def _held(self, nbytes: int, count: int) -> int:
        """Memory a run of records holds: their values plus each record object."""
        return nbytes + count * self.record_overhead

    def paused_count(self) -> int:
        """How many partitions are not being fetched (their own backlog, or the budget)."""
        if self.globally_paused:
            return len(self.parts)
        return sum(1 for st in self.parts.values() if st.paused)

    def holds(self, tp: TopicPartition) -> bool:
        """Whether this set keeps ``tp`` paused (its backlog, or the memory budget): another
        component sharing the consumer must not resume it."""
        st = self.parts.get(tp)
        return st is not None and (
            st.paused or (self.globally_paused and st.buffer.forced_end is None)
        )

    def committed(self, tp: TopicPartition) -> int | None:
        st = self.parts.get(tp)
        return st.committed if st else None

    # --- cutting -------------------------------------------------------------------------
    def _seal(self, tp: TopicPartition, st: _State, reason: str) -> None:
        arrived, nbytes_before = st.buffer.first_arrival, st.buffer.nbytes
        records = st.buffer.cut(self.clock())
        if not records:
            return
        st.pending.append(
            Cut(
                tp.topic,
                tp.partition,
                # The first record's offset, not the buffer's start: offsets can skip
                # (transaction markers, compaction) and a new owner only sees records.
                records[0].offset,
                records,
                reason,
                nbytes_before - st.buffer.nbytes,
                arrived,
            )
        )
        st.wake.set()
        if reason == "replay" and self.globally_paused:  # its recorded end is reached
            self._pause({tp})
        if len(st.pending) >= self.max_pending and not st.paused:
            st.paused = True
            self._pause({tp})

    def _relieve_memory(self) -> None:
        """Over budget: cut the largest open buffer early, and pause fetching until writes
        bring the total under the resume mark (bytes leave the budget once written)."""
        if self.budget.over():
            candidates = [
                (st.buffer.nbytes, tp)
                for tp, st in self.parts.items()
                if st.buffer.records and st.buffer.forced_end is None
            ]
            if candidates:
                _, tp = max(candidates, key=lambda c: c[0])
                self._seal(tp, self.parts[tp], "memory")
        paused = self.budget.should_pause()
        if paused != self.globally_paused:
            self.globally_paused = paused
            # A partition replaying a recorded cut keeps fetching: only reaching the cut's
            # end lets it cut, and so free memory (the cut's size is bounded by its record).
            tps = {tp for tp, st in self.parts.items() if st.buffer.forced_end is None}
            if paused:
                log.warning(
                    "memory budget reached (%d bytes held): pausing %d partitions",
                    self.budget.used,
                    len(tps),
                )
                self._pause(tps)
            else:
                self._resume({tp for tp in tps if not self.parts[tp].paused})

    # --- the per-partition worker --------------------------------------------------------
    async def _work(self, tp: TopicPartition, st: _State) -> None:
        sink = self.sinks[tp.topic]
        delay = self.backoff[0]
        while True:
            await st.wake.wait()
            st.wake.clear()
            while st.pending:
                cut = st.pending[0]
                if not st.checked and await self._skipped(tp, st, cut):
                    return
                try:
                    await sink.write(cut)
                except CutConflictError as conflict:
                    self._reform(tp, st, conflict.standing_end)
                    continue
                except TransientError as err:
                    metrics.WRITE_RETRIES.labels(tp.topic).inc()
                    log.warning(
                        "%s[%d]: cut %d-%d not written yet, retrying in %.1fs: %s",
                        tp.topic,
                        tp.partition,
                        cut.start,
                        cut.end,
                        delay,
                        err,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
                except TerminalError as err:
                    log.error(
                        "%s[%d]: cut %d-%d cannot be written: %s",
                        tp.topic,
                        tp.partition,
                        cut.start,
                        cut.end,
                        err,
                    )
                    self._on_terminal(err)
                    return
                except Exception as err:  # a bug or an untranslated error: stop, loudly
                    log.exception(
                        "%s[%d]: cut %d-%d failed unexpectedly",
                        tp.topic,
                        tp.partition,
                        cut.start,
                        cut.end,
                    )
                    self._on_terminal(err)
                    return
                delay = self.backoff[0]
                if self.parts.get(tp) is not st:
                    return  # dropped while writing: never commit for a partition we lost
                ahead = st.committed is None or cut.end + 1 > st.committed
                if ahead and await self._try_commit(tp, cut.end + 1):
                    st.committed = cut.end + 1
                st.pending.popleft()
                self.budget.give(self._held(cut.nbytes, len(cut.records)))
                if st.paused and len(st.pending) < self.max_pending:
                    st.paused = False
                    if not self.globally_paused:
                        self._resume({tp})
                self._relieve_memory()

    async def _try_commit(self, tp: TopicPartition, offset: int) -> bool:
        """Commit; an error is logged and counts as not committed (the next cut's commit
        covers this one), never ending the partition's worker."""
        try:
            return await self._commit(tp, offset)
        except Exception as err:
            log.warning("%s[%d]: commit of %d failed: %r", tp.topic, tp.partition, offset, err)
            return False

    async def _skipped(self, tp: TopicPartition, st: _State, cut: Cut) -> bool:
        """Guard of a newly owned partition: its first cut must not start past the offset
        the group committed (or the log start). A consumer whose position survived a
        rebalance could otherwise deliver records from beyond it, and committing their end
        would skip the records between. If so, forget the partition and seek back."""
        if self._start_of is None or self._rewind is None:
            st.checked = True
            return False
        try:
            must = await self._start_of(tp, cut.start)
        except Exception as err:  # unknown: check again before the next attempt
            log.warning(
                "%s[%d]: committed offset unknown (%r); checking again", tp.topic, tp.partition, err
            )
            await asyncio.sleep(self.backoff[0])
            return await self._skipped(tp, st, cut) if self.parts.get(tp) is st else True
        if must is None or cut.start <= must:
            st.checked = True
            return False
        log.warning(
            "%s[%d]: fetched from %d, but the partition must be read from %d (the group's "
            "committed offset, or the log start): seeking back to %d",
            tp.topic,
            tp.partition,
            cut.start,
            must,
            must,
        )
        metrics.REWINDS.labels(tp.topic).inc()
        self._forget(tp)
        await self._rewind(tp, must)
        # Its fetching may have been paused (backlog, memory): no state is left to resume it.
        self._resume({tp})
        return True

    def _reform(self, tp: TopicPartition, st: _State, standing_end: int) -> None:
        """Re-cut so the head cut ends at ``standing_end``, as a previous owner recorded.

        Every pending record goes back to the buffer (the budget count is unchanged); the
        buffer then cuts exactly at ``standing_end`` once it holds that offset."""
        head = st.pending[0]
        st.buffer.records = [r for c in st.pending for r in c.records] + st.buffer.records
        st.buffer.nbytes += sum(c.nbytes for c in st.pending)
        st.buffer.start = head.start
        st.buffer.first_arrival = head.arrived
        st.buffer.forced_end = standing_end
        st.pending.clear()
        if st.paused or self.globally_paused:  # the recorded end may lie beyond what we
            st.paused = False  # hold: keep fetching, even while over the memory budget
            self._resume({tp})
        log.info(
            "%s[%d]: following the recorded cut %d-%d",
            tp.topic,
            tp.partition,
            head.start,
            standing_end,
        )
        if st.buffer.due(self.policy, self.clock()) == "replay":
            self._seal(tp, st, "replay")

    # --- rebalance and shutdown ----------------------------------------------------------
    def drop(self, tps: Iterable[TopicPartition]) -> int:
        """Forget partitions (revoked or lost); their uncommitted records are re-read by the
        next owner. Returns how many records were discarded."""
        discarded = 0
        for tp in list(tps):
            st = self.parts.get(tp)
            if st is None:
                continue
            n = self._forget(tp)
            discarded += n
            log.info(
                "%s[%d]: dropped, %d uncommitted records left to the next owner (committed=%s)",
                tp.topic,
                tp.partition,
                n,
                st.committed,
            )
        return discarded

    def _forget(self, tp: TopicPartition) -> int:
        """Remove a partition's state and its budget share; returns the records held."""
        st = self.parts.pop(tp)
        n = len(st.buffer.records) + sum(len(c.records) for c in st.pending)
        self.budget.give(
            self._held(st.buffer.nbytes, len(st.buffer.records))
            + sum(self._held(c.nbytes, len(c.records)) for c in st.pending)
        )
        if st.worker is not None and st.worker is not asyncio.current_task():
            st.worker.cancel()
        if not self.parts:
            self.globally_paused = False
            self.budget.paused = False
        return n

    async def drain(self, grace_seconds: float) -> None:
        """Cut every buffer and wait (bounded) until written and committed, then drop all."""
        deadline = self.clock() + grace_seconds
        while True:
            # Again each round: a cut re-formed to a recorded end leaves the rest buffered.
            for tp, st in list(self.parts.items()):
                if st.buffer.records and st.buffer.forced_end is None:
                    self._seal(tp, st, "shutdown")
            if not any(st.pending for st in self.parts.values()) or self.clock() >= deadline:
                break
            await asyncio.sleep(0.05)
        self.drop(list(self.parts))

    async def close(self) -> None:
        workers = [st.worker for st in self.parts.values() if st.worker is not None]
        self.drop(list(self.parts))
        for w in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
