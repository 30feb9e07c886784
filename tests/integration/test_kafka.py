"""aiokafka against the real Apache Kafka broker of the local stack."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition


async def test_produce_consume_round_trip_with_commit(bootstrap: str, unique: str) -> None:
    topic = f"{unique}.roundtrip"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="zstd")
    await producer.start()
    try:
        sent = {}
        for i in range(300):
            key = f"k{i % 7}".encode()
            md = await producer.send_and_wait(topic, f"v{i}".encode(), key=key)
            sent[(md.partition, md.offset)] = (key, f"v{i}".encode())
    finally:
        await producer.stop()
    assert {p for p, _ in sent} == {0, 1, 2}  # keys spread over every partition

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{unique}-g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got = {}
    try:
        async with asyncio.timeout(30):
            while len(got) < len(sent):
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    for r in records:
                        got[(tp.partition, r.offset)] = (r.key, r.value)
        await consumer.commit()
        committed = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        await consumer.stop()
    assert got == sent
    ends = {p: max(o for q, o in sent if q == p) + 1 for p in range(3)}
    assert committed == ends
