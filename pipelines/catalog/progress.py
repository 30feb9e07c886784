"""``KafkaProgress`` over aiokafka: partitions, committed and end offsets, offsets by time.

Its own clients (no group membership, opened on first use and kept for the worker's life), so
the finalizer never disturbs the sink's consumer. Connection failures surface as ``TransientError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from pipelines.errors import TransientError
from pipelines.kafka_records import first_record_at

TP = tuple[str, int]


class AioKafkaProgress:
    def __init__(self, bootstrap: str, client_id: str) -> None:
        self.bootstrap, self.client_id = bootstrap, f"{client_id}-finalizer"
        self._consumer: Any = None
        self._admin: Any = None

    async def _clients(self) -> tuple[Any, Any]:
        if self._consumer is None:
            try:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    enable_auto_commit=False,
                )
                await consumer.start()
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id=self.client_id
                )
                await admin.start()
            except KafkaError as err:
                raise TransientError(f"finalizer cannot reach Kafka: {err}") from err
            self._consumer, self._admin = consumer, admin
        return self._consumer, self._admin

    async def partitions(self, topics: Sequence[str]) -> list[TP]:
        consumer, _ = await self._clients()
        try:
            found = await consumer._client.fetch_all_metadata()
        except KafkaError as err:
            raise TransientError(f"finalizer: metadata: {err}") from err
        out: list[TP] = []
        for topic in topics:
            out.extend((topic, p) for p in sorted(found.partitions_for_topic(topic) or ()))
        return out

    async def committed(self, group: str, tps: Sequence[TP]) -> dict[TP, int]:
        _, admin = await self._clients()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        except KafkaError as err:
            raise TransientError(f"finalizer: committed offsets of {group}: {err}") from err
        wanted = set(tps)
        return {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if (tp.topic, tp.partition) in wanted and meta.offset >= 0
        }

    async def end_offsets(self, tps: Sequence[TP]) -> dict[TP, int]:
        consumer, _ = await self._clients()
        try:
            ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in tps])
        except KafkaError as err:
            raise TransientError(f"finalizer: end offsets: {err}") from err
        return {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}

    async def first_record_at(self, tp: TP, offset: int) -> int | None:
        return await first_record_at(self.bootstrap, self.client_id, tp[0], tp[1], offset)

    async def offsets_for_time(self, tps: Sequence[TP], epoch_ms: int) -> dict[TP, int | None]:
        consumer, _ = await self._clients()
        try:
            found = await consumer.offsets_for_times(
                {TopicPartition(t, p): epoch_ms for t, p in tps}
            )
        except KafkaError as err:
            raise TransientError(f"finalizer: offsets for time: {err}") from err
        return {
            (tp.topic, tp.partition): (None if o is None else int(o.offset))
            for tp, o in found.items()
        }
