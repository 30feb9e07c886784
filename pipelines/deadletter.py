"""Dead-letter records: the original bytes, with the reason and the source in headers.

Guarantee: ``DeadLetterWriter.send`` returns only after the broker acknowledged every record
(acks=all), so the sink may then commit the source offsets. Delivery is at-least-once: a
replay of a cut can dead-letter a record again; the ``sluice.source.*`` headers identify it.
A value over ``MAX_LETTER_VALUE_BYTES`` (an oversized record, typically) is left out and
``sluice.value_omitted`` says its size: the letter must fit the dead-letter topic, or the
partition could never commit past it. Producer errors become ``TransientError`` (retried
with the cut) or ``TerminalError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines.errors import TerminalError, TransientError
from pipelines.kafka_records import SAFE_MESSAGE_BYTES

MAX_LETTER_VALUE_BYTES = SAFE_MESSAGE_BYTES


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

    def payload(self) -> tuple[bytes | None, list[tuple[str, bytes]]]:
        """The value and headers to produce: the value only if it fits the topic."""
        if self.value is None or len(self.value) <= MAX_LETTER_VALUE_BYTES:
            return self.value, self.headers()
        omitted = f"{len(self.value)} bytes, over the dead-letter limit of {MAX_LETTER_VALUE_BYTES}"
        return None, [*self.headers(), ("sluice.value_omitted", omitted.encode())]

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

        try:
            futures = []
            for d in letters:
                value, headers = d.payload()
                futures.append(
                    await self.producer.send(
                        self.topic_for(d.topic), value=value, key=d.key, headers=headers
                    )
                )
            await asyncio.gather(*futures)
        except Exception as err:
            raise translate_produce_error(err, "dead letters") from err


def translate_produce_error(err: Exception, what: str) -> Exception:
    """A producer's exception (aiokafka's, or Faust's wrapper of one) as ours: retriable
    broker errors and timeouts are transient, the rest terminal."""
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    cause: BaseException = err
    while not isinstance(cause, KafkaError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, TransientError | TerminalError):
        return cause
    retriable = isinstance(cause, KafkaError) and bool(getattr(cause, "retriable", False))
    if retriable or isinstance(cause, TimeoutError | KafkaTimeoutError):
        return TransientError(f"{what}: {type(cause).__name__}: {cause}")
    return TerminalError(f"{what}: {type(err).__name__}: {err}")
