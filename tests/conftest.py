"""Integration and e2e tests run against the real local stack (Kafka + S3).

`make test` starts the stack before pytest and stops it after; run alone, this fixture starts
what is not running and stops only what it started.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from pipelines.devstack.components import StackConfig
from pipelines.devstack.stack import Stack


@pytest.fixture(scope="session")
def stack_env() -> Iterator[dict[str, str]]:
    stack = Stack(StackConfig.from_env())
    running = {s.name for s in stack.status() if s.pid and s.listening}
    started = [c.name for c, _ in stack.components() if c.name not in running]
    env = stack.up(log=False)
    yield env
    # Only what this session started: others may share the stack.
    for name in reversed(started):
        stack.procs.stop(name)


@pytest.fixture(scope="session")
def bootstrap(stack_env: dict[str, str]) -> str:
    return stack_env["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="session")
def s3(stack_env: dict[str, str]):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=stack_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        region_name=stack_env["AWS_REGION"],
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def unique() -> str:
    """A name no other test (or earlier run against the same stack) uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def subprocess_env(stack_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **stack_env}


@pytest.fixture(scope="session")
def spark(stack_env: dict[str, str]) -> Iterator[object]:
    """A local Spark session reading through the stack's Hive Metastore over s3a."""
    from tests.enginekit import spark_session

    session = spark_session(stack_env)
    yield session
    session.stop()
