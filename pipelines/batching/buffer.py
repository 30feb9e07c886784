"""Buffers of raw records per Kafka partition, and when to cut them.

A *cut* is the contiguous run of offsets ``[start, end]`` that becomes one set of objects
(one per dt/hr) and one offset commit. Cut points are recorded in the partition's manifest
before any object is written, so a replay after a crash cuts at exactly the same offset
whatever the clock or the memory pressure said (see docs/design.md, "Exactly once").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class SourceRecord(Protocol):
    """What we need of a Kafka record (aiokafka's ConsumerRecord and Faust's Message fit)."""

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...


def held_bytes(rec: SourceRecord) -> int:
    """Bytes a buffered record holds: its value, or its ``nbytes`` when it has one (the trace
    router's table records also hold their decoded rows)."""
    n: int | None = getattr(rec, "nbytes", None)
    return len(rec.value or b"") if n is None else n


@dataclass(frozen=True)
class RotationPolicy:
    """Cut when any limit is reached. Age counts from the first buffered record's arrival."""

    max_rows: int
    max_bytes: int
    max_age_seconds: float


@dataclass
class PartitionBuffer:
    """Raw records of one partition since the last cut, in offset order."""

    start: int
    """Lowest offset accepted next (the committed offset); a cut starts at its first record."""
    records: list[SourceRecord] = field(default_factory=list)
    nbytes: int = 0
    first_arrival: float = 0.0
    forced_end: int | None = None
    """End offset a previous owner recorded for the cut starting at ``start``: cut exactly here."""

    def add(self, records: Sequence[SourceRecord], now: float) -> None:
        """Append records in offset order; records before ``start`` (a re-fetch) are skipped."""
        for rec in records:
            if rec.offset < self.start or (self.records and rec.offset <= self.records[-1].offset):
                continue
            if not self.records:
                self.first_arrival = now
            self.records.append(rec)
            self.nbytes += held_bytes(rec)

    @property
    def end(self) -> int | None:
        return self.records[-1].offset if self.records else None

    def due(self, policy: RotationPolicy, now: float) -> str | None:
        """Why this buffer should be cut now (``rows``/``bytes``/``age``/``replay``), or None."""
        if not self.records:
            return None
        if self.forced_end is not None:
            return "replay" if self.records[-1].offset >= self.forced_end else None
        if len(self.records) >= policy.max_rows:
            return "rows"
        if self.nbytes >= policy.max_bytes:
            return "bytes"
        if now - self.first_arrival >= policy.max_age_seconds:
            return "age"
        return None

    def cut(self, now: float) -> list[SourceRecord]:
        """Take the records of the next cut (all of them, or up to ``forced_end``)."""
        if self.forced_end is not None:
            if not self.records or self.records[-1].offset < self.forced_end:
                return []  # the recorded cut is not complete yet
            n = next(
                (i for i, r in enumerate(self.records) if r.offset > self.forced_end),
                len(self.records),
            )
        else:
            n = len(self.records)
        taken, self.records = self.records[:n], self.records[n:]
        if not taken:
            return taken
        self.nbytes -= sum(held_bytes(r) for r in taken)
        self.start = taken[-1].offset + 1
        self.forced_end = None
        self.first_arrival = now if self.records else 0.0
        return taken


class MemoryBudget:
    """One byte budget across every buffer and in-flight cut of a worker.

    ``over()`` tells the worker to cut its largest buffers early; ``should_pause()`` (with
    hysteresis) tells it to stop fetching until uploads drain. Nothing is ever dropped."""

    def __init__(self, limit: int, resume_fraction: float = 0.8) -> None:
        self.limit = limit
        self.resume_at = int(limit * resume_fraction)
        self.used = 0
        self.paused = False

    def take(self, n: int) -> None:
        self.used += n

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)

    def over(self) -> bool:
        return self.used >= self.limit

    def should_pause(self) -> bool:
        if self.paused and self.used <= self.resume_at:
            self.paused = False
        elif not self.paused and self.used >= self.limit:
            self.paused = True
        return self.paused
