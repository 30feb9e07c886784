"""The ``traces:`` section of a deployment: topics, destinations, routes.

``load_traces(raw, ...)`` validates the whole section and raises one ``ConfigError`` with
every problem and its key path (``traces.destinations.jaeger.endpoints[0]`` …). Defaults
live in the dataclasses below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipelines.errors import ConfigError, Problem
from pipelines.routing import RoutingTable
from pipelines.settings import parse_duration, parse_size
from pipelines.spans import DECODERS

DESTINATION_TYPES = ("otlp_http", "zipkin", "kafka", "table")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    encoding: str = "otlp_proto"


@dataclass(frozen=True)
class DestinationSpec:
    """One destination; every field but ``type`` has a default."""

    name: str
    type: str
    endpoints: tuple[str, ...] = ()
    """otlp_http: base URLs (``/v1/traces`` is appended); several = shard by trace id."""
    endpoint: str = ""
    """zipkin: base URL (``/api/v2/spans`` is appended)."""
    topic: str = ""
    """kafka: where spans are re-published (OTLP protobuf)."""
    table: str = ""
    """table: the spans table (a contract in warehouse.schemas_dir, under warehouse.root)."""
    timeout_seconds: float = 5.0
    max_batch_spans: int = 2000
    max_batch_bytes: int = 4 << 20
    max_wait_seconds: float = 0.2
    max_queue_spans: int = 50_000
    """Spans held in memory for this destination; beyond it, the oldest are diverted."""
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 5.0
    retry_attempts: int = 4
    """Attempts per batch before it is diverted to the retry topic."""
    breaker_failures: int = 5
    """Consecutive failed attempts that open the breaker (divert without trying)."""
    breaker_cooldown_seconds: float = 10.0
    headers_from_env: Mapping[str, str] = field(default_factory=dict)
    """otlp_http, zipkin: HTTP header name → environment variable holding its value (an
    ``Authorization`` token, say). Values are read when a sender starts, never logged."""


@dataclass(frozen=True)
class TracesConfig:
    group_id: str
    topics: tuple[TopicSpec, ...]
    destinations: Mapping[str, DestinationSpec]
    routing: RoutingTable
    dead_letter_suffix: str = ".dlq"
    retry_topic_prefix: str = "sluice.retry"
    max_message_bytes: int = 4 << 20
    extra: Mapping[str, Any] = field(default_factory=dict)

    def retry_topic(self, destination: str) -> str:
        return f"{self.retry_topic_prefix}.{self.group_id}.{destination}"


_DEST_KEYS: dict[str, tuple[str, Any]] = {
    # yaml key: (field, parser)
    "type": ("type", str),
    "endpoints": ("endpoints", None),
    "endpoint": ("endpoint", str),
    "topic": ("topic", str),
    "table": ("table", str),
    "timeout": ("timeout_seconds", parse_duration),
    "max_batch_spans": ("max_batch_spans", int),
    "max_batch_size": ("max_batch_bytes", parse_size),
    "max_wait": ("max_wait_seconds", parse_duration),
    "max_queue_spans": ("max_queue_spans", int),
    "retry_initial": ("retry_initial_seconds", parse_duration),
    "retry_max": ("retry_max_seconds", parse_duration),
    "retry_attempts": ("retry_attempts", int),
    "breaker_failures": ("breaker_failures", int),
    "breaker_cooldown": ("breaker_cooldown_seconds", parse_duration),
    "headers_from_env": ("headers_from_env", None),
}
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {
    "group_id",
    "topics",
    "destinations",
    "routes",
    "default",
    "dead_letter_suffix",
    "retry_topic_prefix",
    "max_message_size",
}


def _has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def _headers_from_env(raw: object, where: str, problems: list[Problem]) -> dict[str, str]:
    """``{Header-Name: ENV_VAR}``, each variable set now (its value is not kept here)."""
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, "expected a mapping of header name to variable name"))
        return {}
    out: dict[str, str] = {}
    for header, var in raw.items():
        if not isinstance(header, str) or not _HEADER.match(header):
            problems.append(Problem(f"{where}.{header}", "not an HTTP header name"))
        elif not isinstance(var, str) or not _ENV_VAR.match(var):
            problems.append(Problem(f"{where}.{header}", f"{var!r} is not a variable name"))
        elif var not in os.environ:
            problems.append(Problem(f"{where}.{header}", f"environment variable {var} is not set"))
        else:
            out[header] = var
    return out


def load_traces(raw: object, path: str = "traces") -> TracesConfig:
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [Problem(path, "must be a mapping (group_id, topics, destinations, routes, default)")],
            "traces configuration",
        )
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(
                Problem(
                    f"{path}.{key}", f"unknown key; valid keys here: {', '.join(sorted(_TOP_KEYS))}"
                )
            )
    group = str(raw.get("group_id", "sluice-traces"))
    if not _TOPIC.match(group):
        problems.append(Problem(f"{path}.group_id", "must match [A-Za-z0-9._-]{1,249}"))
    topics = _topics(raw.get("topics"), f"{path}.topics", problems)
    destinations = _destinations(raw.get("destinations"), f"{path}.destinations", problems)
    routing: RoutingTable | None = None
    try:
        routing = RoutingTable.load(raw, set(destinations), path)
    except ConfigError as err:
        problems.extend(err.problems)
    max_message = 4 << 20
    try:
        max_message = parse_size(raw.get("max_message_size", max_message))
    except ValueError as err:
        problems.append(Problem(f"{path}.max_message_size", str(err)))
    suffix = str(raw.get("dead_letter_suffix", ".dlq"))
    prefix = str(raw.get("retry_topic_prefix", "sluice.retry"))
    if problems or routing is None:
        raise ConfigError(problems, "traces configuration")
    return TracesConfig(group, topics, destinations, routing, suffix, prefix, max_message)


def _topics(raw: object, path: str, problems: list[Problem]) -> tuple[TopicSpec, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(
            Problem(path, "list the span topics, e.g. [{name: otlp_spans, encoding: otlp_proto}]")
        )
        return ()
    out = []
    for i, item in enumerate(raw):
        spec = {"name": item} if isinstance(item, str) else item
        if not isinstance(spec, Mapping) or not _TOPIC.match(str(spec.get("name", ""))):
            problems.append(Problem(f"{path}[{i}].name", "a Kafka topic name is required"))
            continue
        encoding = str(spec.get("encoding", "otlp_proto"))
        if encoding not in DECODERS:
            problems.append(
                Problem(
                    f"{path}[{i}].encoding",
                    f"unknown encoding {encoding!r}; valid: {', '.join(sorted(DECODERS))}",
                )
            )
        out.append(TopicSpec(str(spec["name"]), encoding))
    return tuple(out)


def _destinations(raw: object, path: str, problems: list[Problem]) -> dict[str, DestinationSpec]:
    if not isinstance(raw, Mapping) or not raw:
        problems.append(
            Problem(
                path, "name at least one destination (types: " + ", ".join(DESTINATION_TYPES) + ")"
            )
        )
        return {}
    out: dict[str, DestinationSpec] = {}
    for name, spec in raw.items():
        where = f"{path}.{name}"
        if not _NAME.match(str(name)):
            problems.append(Problem(where, "destination names are [a-z][a-z0-9_-]*"))
            continue
        if not isinstance(spec, Mapping):
            problems.append(Problem(where, "must be a mapping with a type"))
            continue
        kwargs: dict[str, Any] = {"name": str(name)}
        for key, value in spec.items():
            if key not in _DEST_KEYS:
                problems.append(
                    Problem(
                        f"{where}.{key}",
                        "unknown key; valid keys here: " + ", ".join(sorted(_DEST_KEYS)),
                    )
                )
                continue
            target, parser = _DEST_KEYS[key]
            try:
                if key == "endpoints":
                    items = value if isinstance(value, list) else [value]
                    kwargs[target] = tuple(str(v).rstrip("/") for v in items)
                elif key == "headers_from_env":
                    kwargs[target] = _headers_from_env(value, f"{where}.{key}", problems)
                else:
                    kwargs[target] = parser(value)
            except (TypeError, ValueError) as err:
                problems.append(Problem(f"{where}.{key}", str(err)))
        kind = kwargs.get("type")
        if kind not in DESTINATION_TYPES:
            problems.append(
                Problem(
                    f"{where}.type",
                    f"{kind!r} is not a destination type; valid: {', '.join(DESTINATION_TYPES)}",
                )
            )
            continue
        dest = DestinationSpec(**kwargs)
        need = {
            "otlp_http": ("endpoints", dest.endpoints),
            "zipkin": ("endpoint", dest.endpoint),
            "kafka": ("topic", dest.topic),
            "table": ("table", dest.table),
        }[kind]
        if not need[1]:
            problems.append(Problem(f"{where}.{need[0]}", f"required for type {kind}"))
        for i, url in enumerate(dest.endpoints or ((dest.endpoint,) if dest.endpoint else ())):
            key = f"endpoints[{i}]" if dest.endpoints else "endpoint"
            if _has_userinfo(url):
                problems.append(
                    Problem(
                        f"{where}.{key}",
                        "credentials in a URL end up in logs: keep them in the environment "
                        "and name the variable in headers_from_env (Authorization: VAR)",
                    )
                )
            elif not re.match(r"^https?://[^/\s]+", url):
                problems.append(Problem(f"{where}.{key}", f"{url!r} is not an http(s) URL"))
        if dest.topic and not _TOPIC.match(dest.topic):
            problems.append(Problem(f"{where}.topic", "not a valid Kafka topic name"))
        for fname in ("max_batch_spans", "max_queue_spans", "retry_attempts", "breaker_failures"):
            if getattr(dest, fname) <= 0:
                problems.append(Problem(f"{where}.{fname}", "must be positive"))
        for key, fname, least in (
            ("timeout", "timeout_seconds", 1e-3),
            ("retry_initial", "retry_initial_seconds", 1e-3),
            ("retry_max", "retry_max_seconds", dest.retry_initial_seconds),
            ("max_wait", "max_wait_seconds", 0.0),
            ("breaker_cooldown", "breaker_cooldown_seconds", 0.0),
            ("max_batch_size", "max_batch_bytes", 1024),
        ):
            if getattr(dest, fname) < least:
                problems.append(Problem(f"{where}.{key}", f"must be at least {least:g}"))
        out[str(name)] = dest
    return out
