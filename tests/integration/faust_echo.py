"""A minimal Faust app for the integration test: copies every value of IN_TOPIC to OUT_TOPIC
with a prefix. Run as ``python faust_echo.py worker``; configured by environment."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
    value_serializer="raw",
    web_enabled=False,
    datadir=os.environ["ECHO_DATADIR"],
    topic_partitions=1,
    stream_wait_empty=False,
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw")


@app.agent(source)
async def echo(stream):  # type: ignore[no-untyped-def]
    async for value in stream:
        await sink.send(value=b"echo:" + value)


if __name__ == "__main__":
    app.main()
