"""What sluice needs of Kafka records beyond its client library.

- ``SAFE_MESSAGE_BYTES``: the largest message sluice produces of its own accord (dead
  letters, retry-topic batches): under Kafka's default topic limit (``max.message.bytes``,
  1 MiB) with room for headers, so every such message fits a default topic.
- ``record_time_ns``: the reference time a record's contents are judged against (absurd
  span timestamps): the record's own timestamp, so a replay judges exactly as the first
  attempt did; the wall clock only for a record without one.
- ``first_record_at``: the first offset at or after a given one that holds a record.
  Offsets can hold none: a transaction's commit marker takes an offset no consumer sees, and
  retention or compaction remove records.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from pipelines.errors import TransientError

SAFE_MESSAGE_BYTES = 900 * 1024


def record_time_ns(record: Any, default_ns: int) -> int:
    """``record.timestamp`` (epoch ms) in ns, or ``default_ns`` when it has none."""
    stamp = getattr(record, "timestamp", None)
    return stamp * 1_000_000 if isinstance(stamp, int) and stamp > 0 else default_ns


async def first_record_at(
    bootstrap: str, client_id: str, topic: str, partition: int, offset: int
) -> int | None:
    """The offset of the first record at or after ``offset`` (or the log start, if that is
    later); None when none lies before the end. Read by a consumer of its own, no group.
    ``TransientError`` when Kafka cannot be read."""
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, client_id=f"{client_id}-probe", enable_auto_commit=False
    )
    tp = TopicPartition(topic, partition)
    try:
        await probe.start()
        probe.assign([tp])
        begin = (await probe.beginning_offsets([tp]))[tp]
        end = (await probe.end_offsets([tp]))[tp]
        if max(offset, begin) >= end:
            return None
        probe.seek(tp, max(offset, begin))
        while await probe.position(tp) < end:
            batch = await probe.getmany(tp, timeout_ms=2000, max_records=1)
            records = batch.get(tp, [])
            if records:
                return int(records[0].offset)
            if not batch and await probe.position(tp) < end:
                raise TransientError(f"{topic}[{partition}]: nothing read at {offset}")
        return None
    except KafkaError as err:
        raise TransientError(f"{topic}[{partition}]: reading at {offset}: {err}") from err
    finally:
        await probe.stop()
