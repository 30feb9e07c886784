"""``make demo``: a message round trip through the local stack's Kafka and an object in S3."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from pipelines.devstack.components import StackConfig, local_s3_client


async def _kafka_round_trip(bootstrap: str, topic: str) -> tuple[int, bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        payload = f'{{"hello": "sluice", "at": {time.time():.3f}}}'.encode()
        md = await producer.send_and_wait(topic, payload)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        from aiokafka.structs import TopicPartition

        tp = TopicPartition(topic, md.partition)
        consumer.assign([tp])
        consumer.seek(tp, md.offset)
        record = await asyncio.wait_for(consumer.getone(), 30)
        return record.offset, record.value or b""
    finally:
        await consumer.stop()


def main() -> int:
    cfg = StackConfig.from_env()
    offset, value = asyncio.run(_kafka_round_trip(cfg.bootstrap, "sluice.demo"))
    print(f"kafka {cfg.bootstrap}: produced and consumed sluice.demo@{offset}: {value.decode()}")
    s3 = local_s3_client(cfg)
    key = f"demo/{os.getpid()}-{offset}.json"
    s3.put_object(Bucket="lake", Key=key, Body=value)
    head = s3.head_object(Bucket="lake", Key=key)
    print(f"s3 {cfg.s3_endpoint}: wrote s3://lake/{key} ({head['ContentLength']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
