"""Dead-letter records: the original bytes, with the reason and the source in headers.

Guarantee: ``DeadLetterWriter.send`` returns only after the broker acknowledged every record
(acks=all), so the sink may then commit the source offsets. Delivery is at-least-once: a
replay of a cut can dead-letter a record again; the ``sluice.source.*`` headers identify it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    """Source topic."""
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    table: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("sluice.reason", self.reason.encode()),
            ("sluice.detail", self.detail[:1000].encode("utf-8", "replace")),
            ("sluice.table", self.table.encode()),
            ("sluice.source.topic", self.topic.encode()),
            ("sluice.source.partition", str(self.partition).encode()),
            ("sluice.source.offset", str(self.offset).encode()),
        ]


class Producer(Protocol):
    """The part of aiokafka's AIOKafkaProducer we use."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]: ...


class DeadLetterWriter:
    """Sends dead letters to ``<source topic><suffix>``, keeping the source partition's key."""

    def __init__(self, producer: Producer, suffix: str) -> None:
        self.producer = producer
        self.suffix = suffix

    def topic_for(self, source_topic: str) -> str:
        return f"{source_topic}{self.suffix}"

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        import asyncio

        futures = [
            await self.producer.send(
                self.topic_for(d.topic), value=d.value, key=d.key, headers=d.headers()
            )
            for d in letters
        ]
        await asyncio.gather(*futures)
