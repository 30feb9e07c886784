"""Senders: one batch of spans to one store. Vendor errors leave as our own types.

Every sender's ``send`` either returns (the store accepted every span), or raises
``TransientError`` (worth retrying: connection refused, timeout, HTTP 429/5xx) or
``TerminalError`` (the store refuses this payload: other HTTP 4xx).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import aiohttp

from pipelines.errors import TerminalError, TransientError
from pipelines.spans import SpanView, to_otlp_proto, to_zipkin_json
from pipelines.traces_config import DestinationSpec


class Sender(Protocol):
    async def send(self, spans: Sequence[SpanView]) -> None: ...

    async def close(self) -> None: ...


def shard(trace_id: bytes, endpoints: Sequence[str]) -> int:
    """Index of the endpoint with the highest hash of (endpoint, trace id)."""
    weights = [
        hashlib.blake2b(trace_id, digest_size=8, key=url.encode()[:64]).digest()
        for url in endpoints
    ]
    return max(range(len(endpoints)), key=weights.__getitem__)


def env_headers(spec: DestinationSpec) -> dict[str, str]:
    """The destination's ``headers_from_env``, read from the environment now. The values
    stay in the sender: error messages name the URL and status, never a header."""
    return {header: os.environ[var] for header, var in spec.headers_from_env.items()}


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    seconds: float,
) -> None:
    shown = url.split("?", 1)[0]  # a query string may carry a token: never in messages
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            if 200 <= resp.status < 300:
                await resp.read()
                return
            text = (await resp.text(errors="replace"))[:200]  # OTLP errors may be protobuf
            if resp.status == 429 or resp.status >= 500:
                raise TransientError(f"POST {shown}: HTTP {resp.status} {text}")
            raise TerminalError(f"POST {shown}: HTTP {resp.status} {text}")
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        said = str(err).replace(url, shown)
        raise TransientError(f"POST {shown}: {type(err).__name__}: {said}") from err


class OtlpHttpSender:
    """OTLP/HTTP protobuf to ``<endpoint>/v1/traces``. With several endpoints, spans are
    sharded by trace id with rendezvous (highest-random-weight) hashing: a whole trace lands
    on one backend, every worker picks the same one, and adding or removing an endpoint moves
    only the traces that belonged to it (1/n of them)."""

    def __init__(self, spec: DestinationSpec) -> None:
        self.urls = [f"{e}/v1/traces" for e in spec.endpoints]
        self.headers = {**env_headers(spec), "Content-Type": "application/x-protobuf"}
        self.timeout = spec.timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    def shard(self, trace_id: bytes) -> int:
        if len(self.urls) == 1:
            return 0
        return shard(trace_id, self.urls)

    async def send(self, spans: Sequence[SpanView]) -> None:
        session = self._session = self._session or aiohttp.ClientSession()
        groups: dict[int, list[SpanView]] = {}
        for span in spans:
            groups.setdefault(self.shard(span.trace_id), []).append(span)
        # Encoded off the event loop, as the Zipkin sender does (the native encoder releases
        # the GIL, so this runs beside the router).
        bodies = await asyncio.to_thread(lambda: {i: to_otlp_proto(g) for i, g in groups.items()})
        await asyncio.gather(
            *(
                _post(
                    session,
                    self.urls[i],
                    bodies[i],
                    self.headers,
                    self.timeout,
                )
                for i in bodies
            )
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ZipkinSender:
    """Zipkin v2 JSON to ``<endpoint>/api/v2/spans``."""

    def __init__(self, spec: DestinationSpec) -> None:
        self.url = f"{spec.endpoint}/api/v2/spans"
        self.headers = {**env_headers(spec), "Content-Type": "application/json"}
        self.timeout = spec.timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    async def send(self, spans: Sequence[SpanView]) -> None:
        session = self._session = self._session or aiohttp.ClientSession()
        body = await asyncio.to_thread(to_zipkin_json, spans)
        await _post(session, self.url, body, self.headers, self.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


Produce = Callable[[str, bytes], Awaitable[object]]


class KafkaSender:
    """Re-publishes a batch as one OTLP protobuf message to a topic."""

    def __init__(self, spec: DestinationSpec, produce: Produce) -> None:
        self.topic = spec.topic
        self.produce = produce

    async def send(self, spans: Sequence[SpanView]) -> None:
        from aiokafka.errors import KafkaError

        try:
            await self.produce(self.topic, to_otlp_proto(spans))
        except KafkaError as err:
            if getattr(err, "retriable", False) or "Timeout" in type(err).__name__:
                raise TransientError(f"produce to {self.topic}: {err!r}") from err
            raise TerminalError(f"produce to {self.topic}: {err!r}") from err

    async def close(self) -> None:
        return None


def make_sender(spec: DestinationSpec, produce: Produce) -> Sender:
    if spec.type == "otlp_http":
        return OtlpHttpSender(spec)
    if spec.type == "zipkin":
        return ZipkinSender(spec)
    return KafkaSender(spec, produce)
