"""A real Faust worker process consuming from the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

HERE = Path(__file__).parent


async def test_faust_agent_consumes_and_commits(
    bootstrap: str, unique: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    src, out = f"{unique}.in", f"{unique}.out"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (src, out)])
    finally:
        await admin.close()
    env = {
        **subprocess_env,
        "ECHO_APP_ID": f"{unique}-app",
        "ECHO_IN": src,
        "ECHO_OUT": out,
        "ECHO_DATADIR": str(tmp_path / "faust"),
    }
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "faust_echo.py"), "worker", "-l", "info"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(src, f"m{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(out, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(90):
                while len(got) < 5:
                    for records in (await consumer.getmany(timeout_ms=1000)).values():
                        got.extend(r.value for r in records)
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        finally:
            await consumer.stop()
        assert got == [f"echo:m{i}".encode() for i in range(5)]
        # Faust commits the acked offsets of its group (= app id) on its commit timer.
        group = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{unique}-app")
        await group.start()
        try:
            async with asyncio.timeout(30):
                while await group.committed(TopicPartition(src, 0)) != 5:
                    await asyncio.sleep(0.5)
        finally:
            await group.stop()
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
