"""The ``table`` destination: routed spans into a Parquet spans table, exactly once.

It is the warehouse sink's machinery inside the router: a ``PartitionSet`` cuts the span
topic's records (every record, so cuts stay contiguous) and a ``TableWriter`` writes each cut
through the manifest protocol, with a ``SpansDecoder`` that keeps only the spans the routing
table sends to this destination (routing is deterministic, so a replay keeps the same spans).
A message routed here is *done* for this destination when the cut holding it is durable; the
router commits only then, so a crash replays it and the manifest makes the rewrite identical.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from pipelines.batching.buffer import MemoryBudget, RotationPolicy
from pipelines.batching.partitions import CutSink, PartitionSet, Pauser, Rewind, StartOf
from pipelines.deadletter import DeadLetterWriter
from pipelines.decoders.spans import SpansDecoder
from pipelines.tables import TableSpec
from pipelines.writers.store import ObjectStore
from pipelines.writers.table_writer import TableWriter

log = logging.getLogger(__name__)
Done = Callable[[Hashable, int, int], None]


class TableDestination:
    """See the module docstring. ``add`` is fed every record of the span topics."""

    def __init__(
        self,
        name: str,
        spec: TableSpec,
        encodings: dict[str, str],
        keep: Callable[[str, Any], bool],
        store: ObjectStore,
        dead_letters: DeadLetterWriter,
        policy: RotationPolicy,
        budget: MemoryBudget,
        done: Done,
        pause: Pauser,
        resume: Pauser,
        on_terminal: Callable[[BaseException], None],
        max_message_bytes: int,
        start_of: StartOf | None = None,
        rewind: Rewind | None = None,
    ) -> None:
        self.name = name
        self._done = done
        sinks: dict[str, CutSink] = {}
        for topic, encoding in encodings.items():
            decoder = SpansDecoder(
                spec, encoding, keep=lambda span: keep(name, span), report_rejects=False
            )
            sinks[topic] = TableWriter(spec, decoder, store, "", dead_letters, max_message_bytes)
        self.partitions = PartitionSet(
            sinks,
            policy,
            budget,
            commit=self._committed,
            pause=pause,
            resume=resume,
            on_terminal=on_terminal,
            record_overhead=800,
            start_of=start_of,
            rewind=rewind,
        )
        self.waiting: dict[Hashable, deque[tuple[int, int]]] = {}

    def add(self, tp: Any, records: list[Any], selected: list[tuple[int, int]]) -> None:
        """Buffer ``records``; ``selected`` are the (offset, generation) of the messages
        that have spans routed here: they are done when their cut is durable."""
        if selected:
            self.waiting.setdefault(tp, deque()).extend(selected)
        self.partitions.add(tp, records)

    async def _committed(self, tp: Any, next_offset: int) -> bool:
        queue = self.waiting.get(tp)
        while queue and queue[0][0] < next_offset:
            offset, generation = queue.popleft()
            self._done(tp, offset, generation)
        return True

    def tick(self) -> None:
        self.partitions.tick()

    def drop(self, tps: list[Any]) -> None:
        self.partitions.drop(tps)
        for tp in tps:
            self.waiting.pop(tp, None)
