"""Which Kafka offsets are done, per partition, when each message fans out to destinations.

A message at ``(tp, offset)`` is *open* until every destination it was given to has
delivered it or durably diverted it (``done``). The committable offset of a partition is one
past the longest run of done messages from the oldest open one: a done message behind an open
one is never committed (the same rule as Faust's commit, without its bug #606).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class _Partition:
    pending: dict[int, int] = field(default_factory=dict)
    """offset -> deliveries still outstanding"""
    order: deque[int] = field(default_factory=deque)
    """open offsets in arrival (= offset) order"""
    committable: int | None = None
    generation: int = 0
    first: int = 0
    """The first offset this owner saw (checked against the committed offset)."""
    checked: bool = False


class OffsetTracker:
    """Counts outstanding deliveries per message and derives commit points."""

    def __init__(self) -> None:
        self.parts: dict[Hashable, _Partition] = {}
        self._generations = 0

    def open(self, tp: Hashable, offset: int, deliveries: int) -> int:
        """Register a message with ``deliveries`` outstanding (0: done at once). Returns the
        partition's generation, to be handed back with ``done``."""
        part = self.parts.get(tp)
        if part is None:
            self._generations += 1  # a new owner's era: stale done() calls can't match it
            part = self.parts[tp] = _Partition(generation=self._generations, first=offset)
        if deliveries <= 0:
            if not part.order:
                part.committable = offset + 1
            else:
                part.pending[offset] = 0
                part.order.append(offset)
            return part.generation
        part.pending[offset] = deliveries
        part.order.append(offset)
        return part.generation

    def done(self, tp: Hashable, offset: int, generation: int) -> None:
        """One delivery of the message finished (delivered or durably diverted)."""
        part = self.parts.get(tp)
        if part is None or part.generation != generation or offset not in part.pending:
            return  # the partition was revoked since: its next owner re-reads it
        part.pending[offset] -= 1
        while part.order and part.pending[part.order[0]] <= 0:
            head = part.order.popleft()
            del part.pending[head]
            part.committable = head + 1

    def committable(self, tp: Hashable) -> int | None:
        part = self.parts.get(tp)
        return part.committable if part else None

    def unchecked(self) -> list[tuple[Hashable, int]]:
        """Partitions whose first offset was not yet checked, with that offset."""
        return [(tp, p.first) for tp, p in self.parts.items() if not p.checked]

    def mark_checked(self, tp: Hashable) -> None:
        part = self.parts.get(tp)
        if part is not None:
            part.checked = True

    def open_count(self) -> int:
        return sum(len(p.order) for p in self.parts.values())

    def drop(self, tp: Hashable) -> None:
        """Forget a revoked partition; late ``done`` calls for it are ignored."""
        self.parts.pop(tp, None)
