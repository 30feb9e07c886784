"""PartitionSet and its buffers: cutting, ordered commit-after-write, retries, backpressure,
memory budget, manifest conflicts, rebalance and drain. No servers: a fake sink and clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from pipelines.batching.buffer import MemoryBudget, PartitionBuffer, RotationPolicy, SourceRecord
from pipelines.batching.partitions import Cut, CutConflictError, PartitionSet, TopicPartition
from pipelines.errors import TerminalError, TransientError

TOPIC = "logs.app"


@dataclass(frozen=True)
class Rec:
    offset: int
    value: bytes | None = b"xxxx"
    key: bytes | None = None


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


A, B, C = TP(TOPIC, 0), TP(TOPIC, 1), TP(TOPIC, 2)


def recs(lo: int, hi: int, size: int = 4) -> list[SourceRecord]:
    """Records with offsets lo..hi inclusive, each value ``size`` bytes."""
    return [Rec(o, b"x" * size) for o in range(lo, hi + 1)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSink:
    """Records every write; can block per partition, fail on demand and follow a manifest
    (start → end) the way TableWriter does."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, str]] = []
        self.written: list[Cut] = []
        self.failures: list[BaseException] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.manifest: dict[tuple[int, int], int] = {}

    def gate(self, partition: int) -> asyncio.Event:
        self.gates[partition] = asyncio.Event()
        return self.gates[partition]

    async def write(self, cut: Cut) -> None:
        self.calls.append((cut.partition, cut.start, cut.end, cut.reason))
        if self.failures:
            raise self.failures.pop(0)
        standing = self.manifest.setdefault((cut.partition, cut.start), cut.end)
        if standing != cut.end:
            raise CutConflictError(standing)
        gate = self.gates.get(cut.partition)
        if gate is not None:
            await gate.wait()
        self.written.append(cut)

    def spans(self, partition: int | None = None) -> list[tuple[int, int]]:
        return [
            (c.start, c.end) for c in self.written if partition is None or c.partition == partition
        ]


@dataclass
class Harness:
    ps: PartitionSet
    sink: FakeSink
    clock: Clock
    commits: list[tuple[TopicPartition, int, int]] = field(default_factory=list)
    """(tp, offset, cuts written when the commit was made)."""
    paused: list[set[TopicPartition]] = field(default_factory=list)
    resumed: list[set[TopicPartition]] = field(default_factory=list)
    terminal: list[BaseException] = field(default_factory=list)

    def committed(self, tp: TopicPartition) -> list[int]:
        return [o for t, o, _ in self.commits if t == tp]


@asynccontextmanager
async def harness(
    max_rows: int = 1000,
    max_bytes: int = 1 << 30,
    max_age: float = 3600.0,
    budget: int = 1 << 30,
    max_pending: int = 2,
) -> AsyncIterator[Harness]:
    sink, clock = FakeSink(), Clock()
    h: Harness

    async def commit(tp: TopicPartition, offset: int) -> bool:
        h.commits.append((tp, offset, len(sink.written)))
        return True

    h = Harness(
        PartitionSet(
            {TOPIC: sink},
            RotationPolicy(max_rows, max_bytes, max_age),
            MemoryBudget(budget),
            commit=commit,
            pause=lambda tps: h.paused.append(set(tps)),
            resume=lambda tps: h.resumed.append(set(tps)),
            on_terminal=lambda err: h.terminal.append(err),
            max_pending=max_pending,
            backoff=(0.001, 0.004),
            clock=clock,
        ),
        sink,
        clock,
    )
    try:
        yield h
    finally:
        await h.ps.close()


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def settle(rounds: int = 20) -> None:
    """Let the workers run whatever they can without waiting on anything."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def add_each(h: Harness, tp: TP, records: Iterable[SourceRecord]) -> None:
    for r in records:
        h.ps.add(tp, [r])


# --- cutting and ordering -------------------------------------------------------------------


async def test_cuts_are_contiguous_in_order_and_committed_after_each_write() -> None:
    async with harness(max_rows=3) as h:
        add_each(h, A, recs(0, 9))
        await until(lambda: h.committed(A) == [3, 6, 9])
        assert h.sink.spans() == [(0, 2), (3, 5), (6, 8)]
        assert all(c.reason == "rows" for c in h.sink.written)
        assert [r.offset for c in h.sink.written for r in c.records] == list(range(9))
        # each commit saw its own cut (and every earlier one) written
        assert [n for _, _, n in h.commits] == [1, 2, 3]
        assert h.ps.committed(A) == 9
        assert h.ps.budget.used == 4  # offset 9 still buffered


async def test_partitions_are_cut_independently() -> None:
    async with harness(max_rows=2) as h:
        h.ps.add(A, recs(100, 101))
        h.ps.add(B, recs(7, 8))
        await until(lambda: len(h.commits) == 2)
        assert h.sink.spans(0) == [(100, 101)]
        assert h.sink.spans(1) == [(7, 8)]
        assert (h.ps.committed(A), h.ps.committed(B)) == (102, 9)


async def test_no_commit_before_the_write_returns() -> None:
    async with harness(max_rows=3) as h:
        gate = h.sink.gate(0)
        h.ps.add(A, recs(0, 2))
        await until(lambda: len(h.sink.calls) == 1)
        await asyncio.sleep(0.02)
        assert h.commits == []
        assert h.ps.committed(A) is None
        gate.set()
        await until(lambda: bool(h.commits))
        assert h.commits == [(A, 3, 1)]


async def test_rotation_by_bytes() -> None:
    async with harness(max_bytes=10) as h:
        add_each(h, A, recs(0, 1, size=4))
        await settle()
        assert h.sink.calls == []
        add_each(h, A, recs(2, 2, size=4))  # 12 bytes >= 10
        await until(lambda: h.committed(A) == [3])
        assert h.sink.calls == [(0, 0, 2, "bytes")]
        assert h.sink.written[0].nbytes == 12


async def test_rotation_by_age_on_tick_counts_from_the_first_record() -> None:
    async with harness(max_age=5.0) as h:
        h.ps.add(A, recs(0, 0))
        h.clock.now += 3
        h.ps.add(A, recs(1, 1))
        h.clock.now += 1.9
        h.ps.tick()
        await settle()
        assert h.sink.calls == []
        assert h.ps.oldest_age() == pytest.approx(4.9)
        h.clock.now += 0.1
        h.ps.tick()
        await until(lambda: h.committed(A) == [2])
        assert h.sink.calls == [(0, 0, 1, "age")]
        assert h.sink.written[0].arrived == 1000.0
        assert h.ps.oldest_age() == 0.0


async def test_tick_cuts_idle_partitions_but_not_empty_ones() -> None:
    async with harness(max_age=1.0) as h:
        h.ps.add(A, recs(0, 0))
        h.clock.now += 2
        h.ps.tick()
        await until(lambda: h.committed(A) == [1])
        h.clock.now += 10
        h.ps.tick()
        await settle()
        assert h.sink.spans() == [(0, 0)]


async def test_refetched_and_duplicate_records_are_ignored() -> None:
    async with harness(max_rows=5) as h:
        h.ps.add(A, recs(10, 12))
        h.ps.add(A, recs(11, 13))  # overlap: only 13 is new
        h.ps.add(A, [Rec(13), Rec(14)])
        await until(lambda: h.committed(A) == [15])
        assert [r.offset for r in h.sink.written[0].records] == [10, 11, 12, 13, 14]
        h.ps.add(A, recs(8, 14))  # a re-fetch of written offsets
        assert h.ps.parts[A].buffer.records == []
        assert h.ps.budget.used == 0
        h.ps.add(A, recs(12, 19))
        await until(lambda: h.committed(A) == [15, 20])
        assert h.sink.spans() == [(10, 14), (15, 19)]


async def test_offset_gaps_a_new_owner_finds_the_same_cut_starts() -> None:
    """Offsets may skip (transaction markers, compaction): a cut starts at its first record,
    which a new owner fetching from the committed offset sees too, so it finds the manifest
    of a cut the old owner recorded and did not commit."""
    gapped = [Rec(o) for o in (0, 1, 2, 4, 5, 6)]  # 3 is a transaction marker
    async with harness(max_rows=3) as old:
        add_each(old, A, gapped[:3])
        await until(lambda: old.committed(A) == [3])
        old.sink.gate(0)
        add_each(old, A, gapped[3:])
        await until(lambda: len(old.sink.calls) == 2)
        assert [(s, e) for _, s, e, _ in old.sink.calls] == [(0, 2), (4, 6)]
        manifest = old.sink.manifest  # then it crashes while writing 4..6
    async with harness(max_rows=10) as new:
        new.sink.manifest = manifest
        new.ps.add(A, [Rec(o) for o in (4, 5, 6, 7, 8)])
        await asyncio.wait_for(new.ps.drain(1.0), 2.0)
        assert new.sink.calls[:2] == [(0, 4, 8, "shutdown"), (0, 4, 6, "replay")]
        assert new.sink.spans() == [(4, 6), (7, 8)]
        assert new.committed(A) == [7, 9]


# --- failures -------------------------------------------------------------------------------


async def test_transient_errors_are_retried_and_commit_happens_once() -> None:
    async with harness(max_rows=2) as h:
        h.sink.failures = [TransientError("503"), TransientError("503"), TransientError("slow")]
        h.ps.add(A, recs(0, 1))
        await until(lambda: bool(h.commits))
        await settle()
        assert len(h.sink.calls) == 4
        assert h.commits == [(A, 2, 1)]
        assert h.terminal == []


async def test_terminal_error_stops_the_partition_without_committing() -> None:
    async with harness(max_rows=2) as h:
        err = TerminalError("access denied")
        h.sink.failures = [err]
        h.ps.add(A, recs(0, 1))
        await until(lambda: bool(h.terminal))
        h.ps.add(A, recs(2, 3))
        await asyncio.sleep(0.02)
        assert h.terminal == [err]
        assert h.commits == []
        assert h.sink.calls == [(0, 0, 1, "rows")]  # nothing after the failed cut is written


async def test_unexpected_error_is_terminal_not_a_silent_stall() -> None:
    async with harness(max_rows=2) as h:
        err = RuntimeError("bug in a sink")
        h.sink.failures = [err]
        h.ps.add(A, recs(0, 1))
        await until(lambda: bool(h.terminal))
        assert h.terminal == [err]
        assert h.commits == []


# --- backpressure and memory ----------------------------------------------------------------


async def test_max_pending_pauses_the_partition_and_resumes_when_writes_drain() -> None:
    async with harness(max_rows=1, max_pending=2) as h:
        gate = h.sink.gate(0)
        h.ps.add(A, recs(0, 0))
        await settle()
        assert h.paused == []
        h.ps.add(A, recs(1, 1))
        assert h.paused == [{A}]
        assert h.resumed == []
        gate.set()
        await until(lambda: h.committed(A) == [1, 2])
        assert h.resumed == [{A}]
        assert not h.ps.parts[A].paused


async def test_memory_budget_cuts_the_largest_buffer_and_pauses_everything() -> None:
    async with harness(budget=100) as h:  # resume mark: 80 bytes
        gates = {p: h.sink.gate(p) for p in (0, 1, 2)}
        h.ps.add(A, recs(0, 2, size=5))  # 15 bytes
        h.ps.add(B, recs(0, 3, size=10))  # 40 bytes
        h.ps.add(C, recs(0, 4, size=10))  # 50 bytes: 105 in all
        await until(lambda: len(h.sink.calls) == 1)
        assert h.sink.calls == [(2, 0, 4, "memory")]
        assert h.paused == [{A, B, C}]
        assert h.ps.globally_paused
        assert h.ps.budget.used == 105  # in flight still counts
        h.ps.tick()  # still over: the next largest goes too
        h.ps.tick()
        await until(lambda: len(h.sink.calls) == 3)
        assert h.sink.calls[1:] == [(1, 0, 3, "memory"), (0, 0, 2, "memory")]
        gates[0].set()
        await until(lambda: h.committed(A) == [3])
        assert h.ps.budget.used == 90
        assert h.resumed == []  # under the limit but above the resume mark
        gates[1].set()
        await until(lambda: h.committed(B) == [4])
        assert h.ps.budget.used == 50
        assert h.resumed == [{A, B, C}]
        assert not h.ps.globally_paused
        assert h.paused == [{A, B, C}]
        gates[2].set()
        await until(lambda: h.committed(C) == [5])
        assert h.ps.budget.used == 0


async def test_memory_resume_skips_partitions_paused_for_their_own_backlog() -> None:
    async with harness(budget=100, max_rows=2, max_pending=1) as h:
        ga, gb = h.sink.gate(0), h.sink.gate(1)
        h.ps.add(A, recs(0, 1, size=10))  # cut: A pauses itself
        assert h.paused == [{A}]
        h.ps.add(B, [Rec(0, b"x" * 90)])  # 110: global pause
        assert h.paused[-1] == {A, B}
        gb.set()
        await until(lambda: h.committed(B) == [1])
        assert h.resumed == [{B}]  # A still has its cut pending
        ga.set()
        await until(lambda: h.committed(A) == [2])
        assert h.resumed == [{B}, {A}]


def test_memory_budget_hysteresis() -> None:
    budget = MemoryBudget(100, resume_fraction=0.8)
    budget.take(99)
    assert (budget.over(), budget.should_pause()) == (False, False)
    budget.take(1)
    assert (budget.over(), budget.should_pause()) == (True, True)
    budget.give(19)
    assert (budget.over(), budget.should_pause()) == (False, True)
    budget.give(1)
    assert budget.should_pause() is False
    budget.give(1000)
    assert budget.used == 0


# --- manifests recorded by a previous owner -------------------------------------------------


async def test_conflict_with_an_earlier_end_writes_that_cut_then_the_rest() -> None:
    async with harness(max_rows=10) as h:
        h.sink.manifest[(0, 0)] = 4
        h.ps.add(A, recs(0, 9))
        await until(lambda: h.committed(A) == [5])
        assert h.sink.calls[:2] == [(0, 0, 9, "rows"), (0, 0, 4, "replay")]
        assert [r.offset for r in h.ps.parts[A].buffer.records] == [5, 6, 7, 8, 9]
        h.ps.add(A, recs(10, 14))
        await until(lambda: h.committed(A) == [5, 15])
        assert h.sink.spans() == [(0, 4), (5, 14)]
        assert [r.offset for c in h.sink.written for r in c.records] == list(range(15))
        assert h.ps.budget.used == 0


async def test_conflict_with_a_later_end_waits_for_records_then_ends_exactly_there() -> None:
    async with harness(max_rows=10, max_age=1.0) as h:
        h.sink.manifest[(0, 0)] = 14
        h.ps.add(A, recs(0, 9))
        await until(lambda: len(h.sink.calls) == 1)
        await settle()
        h.ps.add(A, recs(10, 13))
        h.clock.now += 60
        h.ps.tick()  # neither age nor memory may cut a recorded cut short
        await settle()
        assert h.sink.written == []
        assert h.commits == []
        h.ps.add(A, recs(14, 19))
        await until(lambda: h.committed(A) == [15])
        assert h.sink.spans() == [(0, 14)]
        assert h.sink.written[0].reason == "replay"
        assert [r.offset for r in h.ps.parts[A].buffer.records] == list(range(15, 20))


async def test_conflict_on_a_partition_paused_for_backlog_resumes_fetching() -> None:
    """The recorded cut needs records we have not fetched: the partition must not stay
    paused, or it never gets them."""
    async with harness(max_rows=5, max_pending=1) as h:
        h.sink.manifest[(0, 0)] = 9
        h.ps.add(A, recs(0, 4))
        assert h.paused == [{A}]
        await until(lambda: len(h.sink.calls) == 1)
        await settle()
        assert h.resumed == [{A}]
        h.ps.add(A, recs(5, 9))
        await until(lambda: h.committed(A) == [10])
        assert h.sink.spans() == [(0, 9)]


# --- rebalance and shutdown -----------------------------------------------------------------


async def test_drop_during_a_write_never_commits_it() -> None:
    async with harness(max_rows=3) as h:
        gate = h.sink.gate(0)
        h.ps.add(A, recs(0, 4))  # 5 records: one cut of 5
        h.ps.add(A, recs(5, 6))  # buffered
        await until(lambda: len(h.sink.calls) == 1)
        assert h.ps.drop([A]) == 7
        assert h.ps.budget.used == 0
        assert A not in h.ps.parts
        gate.set()
        await asyncio.sleep(0.02)
        assert h.commits == []
        assert h.ps.committed(A) is None
        # re-assigned later: a fresh state re-reads from 0 and follows the recorded cut
        h.sink.gates.clear()
        h.ps.add(A, recs(0, 6))
        await until(lambda: h.committed(A) == [5])
        assert h.sink.spans() == [(0, 4)]  # the cancelled write never completed


async def test_drain_writes_and_commits_what_is_buffered() -> None:
    async with harness(max_rows=100) as h:
        h.ps.add(A, recs(0, 2))
        h.ps.add(B, recs(5, 5))
        await asyncio.wait_for(h.ps.drain(2.0), 3.0)
        assert sorted(h.sink.calls) == [(0, 0, 2, "shutdown"), (1, 5, 5, "shutdown")]
        assert sorted((tp.partition, o) for tp, o, _ in h.commits) == [(0, 3), (1, 6)]
        assert h.ps.parts == {}
        assert h.ps.budget.used == 0


async def test_drain_also_writes_the_rest_of_a_cut_re_formed_on_the_way() -> None:
    async with harness(max_rows=100) as h:
        h.sink.manifest[(0, 0)] = 4
        h.ps.add(A, recs(0, 9))
        await asyncio.wait_for(h.ps.drain(2.0), 3.0)
        assert [c[1:] for c in h.sink.calls] == [
            (0, 9, "shutdown"),
            (0, 4, "replay"),
            (5, 9, "shutdown"),
        ]
        assert h.committed(A) == [5, 10]


# --- the buffer alone -----------------------------------------------------------------------


def test_buffer_forced_cut_takes_exactly_up_to_the_recorded_end() -> None:
    buf = PartitionBuffer(start=0, forced_end=3)
    buf.add(recs(0, 2), now=1.0)
    policy = RotationPolicy(max_rows=1, max_bytes=1, max_age_seconds=0)
    assert buf.due(policy, now=99.0) is None  # rows/bytes/age never apply to a recorded cut
    assert buf.cut(now=2.0) == []
    buf.add(recs(3, 5), now=3.0)
    assert buf.due(policy, now=3.0) == "replay"
    taken = buf.cut(now=4.0)
    assert [r.offset for r in taken] == [0, 1, 2, 3]
    assert (buf.start, buf.forced_end, buf.nbytes) == (4, None, 8)
    assert [r.offset for r in buf.records] == [4, 5]


async def test_a_new_partition_fetched_past_its_committed_offset_is_re_read_from_there() -> None:
    """The guard against a fetch position that survived a rebalance: committing the end of
    a cut that starts past the committed offset would skip the records between."""
    rewinds: list[tuple[TopicPartition, int]] = []
    committed_at = {A: 6500, B: 0}

    async def start_of(tp: TopicPartition, first: int) -> int | None:
        return committed_at[tp]

    async def rewind(tp: TopicPartition, offset: int) -> None:
        rewinds.append((tp, offset))

    async with harness(max_rows=3) as h:
        h.ps._start_of, h.ps._rewind = start_of, rewind
        add_each(h, A, recs(9000, 9003))
        await until(lambda: rewinds == [(A, 6500)])
        assert h.sink.written == [] and h.committed(A) == []
        assert A not in h.ps.parts and h.ps.budget.used == 0
        assert {A} in h.resumed  # a pause of the forgotten state must not outlive it
        # Read again from the committed offset: written and committed as usual.
        add_each(h, A, recs(6500, 6503))
        await until(lambda: h.committed(A) == [6503])
        assert h.sink.spans() == [(6500, 6502)]
        # A replay below the committed offset is fine (the manifests make it identical).
        add_each(h, B, recs(0, 3))
        await until(lambda: h.committed(B) == [3])
        assert rewinds == [(A, 6500)]


async def test_a_partition_replaying_a_recorded_cut_keeps_fetching_over_the_budget() -> None:
    """A previous owner recorded cut 0-19 of A. Over the memory budget every partition is
    paused, but A can only free memory by reaching offset 19: it must keep fetching."""
    async with harness(max_rows=10**6, budget=1000) as h:
        h.sink.manifest[(0, 0)] = 19
        add_each(h, B, [Rec(0, b"y" * 150)])
        add_each(h, A, [Rec(o, b"x" * 50) for o in range(17)])  # over budget: cut at memory
        await until(lambda: h.ps.parts[A].buffer.forced_end == 19)
        assert h.ps.globally_paused
        assert any(A in tps for tps in h.resumed)  # A fetches on
        assert h.ps.holds(B) and not h.ps.holds(A)  # what a router sharing the consumer sees
        add_each(h, A, [Rec(o, b"x" * 50) for o in range(17, 20)])
        await until(lambda: (0, 19) in h.sink.spans(0))
        await until(lambda: not h.ps.globally_paused)
