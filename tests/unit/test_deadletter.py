"""Dead letters fit their topic, and producer errors become ours."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError
from faust.exceptions import ProducerSendError

from pipelines.deadletter import (
    MAX_LETTER_VALUE_BYTES,
    DeadLetter,
    DeadLetterWriter,
    translate_produce_error,
)
from pipelines.errors import TerminalError, TransientError


def letter(value: bytes) -> DeadLetter:
    return DeadLetter("logs", 3, 17, b"k", value, "oversized", "too big", "app_logs")


def test_an_oversized_value_is_left_out_and_its_size_said() -> None:
    small, headers = letter(b"x" * 10).payload()
    assert small == b"x" * 10 and "sluice.value_omitted" not in dict(headers)
    big, headers = letter(b"x" * (MAX_LETTER_VALUE_BYTES + 1)).payload()
    assert big is None
    said = dict(headers)
    assert said["sluice.value_omitted"].startswith(f"{MAX_LETTER_VALUE_BYTES + 1} bytes".encode())
    assert said["sluice.source.offset"] == b"17" and said["sluice.reason"] == b"oversized"


def wrapped(cause: Exception) -> Exception:
    try:
        raise ProducerSendError(f"Error while sending: {cause!r}") from cause
    except ProducerSendError as err:
        return err


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        (NotLeaderForPartitionError(), TransientError),
        (KafkaTimeoutError(), TransientError),
        (MessageSizeTooLargeError(), TerminalError),
        (ValueError("bug"), TerminalError),
    ],
)
def test_producer_errors_are_translated_through_fausts_wrapper(
    cause: Exception, kind: type
) -> None:
    assert isinstance(translate_produce_error(wrapped(cause), "letters"), kind)


async def test_the_writer_raises_ours() -> None:
    class Failing:
        async def send(self, *args: object, **kwargs: object) -> object:
            raise wrapped(NotLeaderForPartitionError())

    with pytest.raises(TransientError, match="NotLeaderForPartitionError"):
        await DeadLetterWriter(Failing(), ".dlq").send([letter(b"v")])  # type: ignore[arg-type]
