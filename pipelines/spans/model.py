"""Decoded spans: cheap per-span views over the parsed OTLP protobuf, attributes on demand.

Every encoding (OTLP protobuf, OTLP JSON, Zipkin JSON) is decoded into OTLP protobuf
messages; a ``SpanView`` points at one ``Span`` message plus its shared ``ResourceView``
and ``ScopeView``. Guarantees for every view in a ``SpanBatch``:

- ``trace_id`` is 16 bytes, ``span_id`` 8 bytes, neither all zero; ``parent_span_id`` is
  ``b""`` (root) or 8 non-zero bytes; ``start_ns <= end_ns``, both inside the decoder's
  limits. ``kind`` is 0-5 and ``status_code`` 0-2 (unknown enum values read as 0).
- Nothing is copied out of the protobuf until asked for: attribute dicts are built at most
  once per span, and once per resource (shared by every span of that resource).
- Views and the protobuf objects behind them are read-only; never mutate ``proto``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

AttrValue: TypeAlias = (
    "str | bool | int | float | bytes | list[AttrValue] | dict[str, AttrValue] | None"
)
SERVICE_NAME = "service.name"


def to_python(value: AnyValue) -> AttrValue:
    """An OTLP ``AnyValue`` as a plain Python value (``None`` when no value is set)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "array_value":
        return [to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: to_python(kv.value) for kv in value.kvlist_value.values}
    return None


def to_text(value: AnyValue) -> str:
    """An ``AnyValue`` as a string, as the Collector's ``Value.AsString`` renders it:
    bools ``true``/``false``, bytes base64, arrays and maps JSON, unset ``""``."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return _float_text(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind is None:
        return ""
    return json.dumps(_jsonable(to_python(value)), separators=(",", ":"), ensure_ascii=False)


def attributes_text(attributes: Sequence[KeyValue]) -> dict[str, str]:
    """``key -> to_text(value)``, in input order; a repeated key keeps its last value."""
    out: dict[str, str] = {}
    for kv in attributes:
        value = kv.value
        # Most values are non-empty strings: one protobuf read instead of two.
        out[kv.key] = value.string_value or to_text(value)
    return out


def find_attribute(attributes: Sequence[KeyValue], key: str) -> AttrValue:
    """The value of ``key``, converted alone; ``None`` when absent. OTLP forbids repeated
    keys; if there are some, this returns the first while attribute dicts keep the last."""
    for kv in attributes:
        if kv.key == key:
            return to_python(kv.value)
    return None


def _float_text(f: float) -> str:
    if math.isfinite(f) and f == int(f) and abs(f) < 1e21:
        return str(int(f))
    return repr(f)


def _jsonable(v: AttrValue) -> object:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


class _ResourceAttributes:
    """A resource's attributes converted once per process, not once per message: producers
    send the same few resources over and over (one per pod). Keyed by ``ResourceView.key``;
    the cache is bounded by dropping everything when full. Values are shared: never mutate."""

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self.values: dict[bytes, dict[str, AttrValue]] = {}
        self.texts: dict[bytes, dict[str, str]] = {}

    def value(self, key: bytes, resource: ResourceSpans) -> dict[str, AttrValue]:
        got = self.values.get(key)
        if got is None:
            if len(self.values) >= self.MAX_ENTRIES:
                self.values.clear()
            got = {kv.key: to_python(kv.value) for kv in resource.resource.attributes}
            self.values[key] = got
        return got

    def text(self, key: bytes, resource: ResourceSpans) -> dict[str, str]:
        got = self.texts.get(key)
        if got is None:
            if len(self.texts) >= self.MAX_ENTRIES:
                self.texts.clear()
            got = self.texts[key] = attributes_text(resource.resource.attributes)
        return got


_RESOURCES = _ResourceAttributes()


class ResourceView:
    """One ``ResourceSpans``' resource, shared by its spans; attributes read once, on demand
    (and converted once per process for a resource seen before: ``_ResourceAttributes``)."""

    __slots__ = ("_attrs", "_key", "_service", "_texts", "proto", "wire")

    def __init__(self, proto: ResourceSpans, wire: bytes | None = None) -> None:
        self.proto = proto
        self.wire = wire
        """The OTLP protobuf message it was parsed from, when it was (OTLP protobuf input):
        native encoders read its spans' bytes by their ``SpanView.index``."""
        self._attrs: dict[str, AttrValue] | None = None
        self._texts: dict[str, str] | None = None
        self._service: str | None = None
        self._key: bytes | None = None

    @property
    def attributes(self) -> Mapping[str, AttrValue]:
        if self._attrs is None:
            self._attrs = _RESOURCES.value(self.key, self.proto)
        return self._attrs

    @property
    def attributes_text(self) -> Mapping[str, str]:
        """Attributes as strings (see ``to_text``), for tables and Zipkin tags."""
        if self._texts is None:
            self._texts = _RESOURCES.text(self.key, self.proto)
        return self._texts

    @property
    def service_name(self) -> str:
        """``service.name`` when it is a string attribute, else ``""``."""
        if self._service is None:
            value = self.attributes.get(SERVICE_NAME)
            self._service = value if isinstance(value, str) else ""
        return self._service

    @property
    def key(self) -> bytes:
        """Equal for equal resources (same attributes, schema URL): re-encoding merges them."""
        if self._key is None:
            self._key = (
                self.proto.resource.SerializeToString(deterministic=True)
                + b"\x00"
                + self.proto.schema_url.encode()
            )
        return self._key


class ScopeView:
    """One ``ScopeSpans``' instrumentation scope, shared by its spans."""

    __slots__ = ("_key", "proto")

    def __init__(self, proto: ScopeSpans) -> None:
        self.proto = proto
        self._key: bytes | None = None

    @property
    def name(self) -> str:
        return self.proto.scope.name

    @property
    def version(self) -> str:
        return self.proto.scope.version

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = (
                self.proto.scope.SerializeToString(deterministic=True)
                + b"\x00"
                + self.proto.schema_url.encode()
            )
        return self._key


class SpanView:
    """One valid span. Ids and times are plain attributes; the rest reads the protobuf."""

    __slots__ = (
        "_attrs",
        "end_ns",
        "index",
        "parent_span_id",
        "proto",
        "resource",
        "scope",
        "span_id",
        "start_ns",
        "texts",
        "trace_id",
    )

    def __init__(
        self,
        proto: Span,
        resource: ResourceView,
        scope: ScopeView,
        index: int,
        trace_id: bytes,
        span_id: bytes,
        parent_span_id: bytes,
        start_ns: int,
        end_ns: int,
    ) -> None:
        self.proto = proto
        self.resource = resource
        self.scope = scope
        self.index = index
        """Position of the span in its message (flattened order of the input)."""
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.start_ns = start_ns
        self.end_ns = end_ns
        self._attrs: dict[str, AttrValue] | None = None
        self.texts: dict[str, str] | None = None
        """``attributes_text()`` once built (by it or by ``table.to_arrow``); never mutated."""

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def kind(self) -> int:
        k = self.proto.kind
        return k if 0 <= k <= 5 else 0

    @property
    def status_code(self) -> int:
        c = self.proto.status.code
        return c if 0 <= c <= 2 else 0

    @property
    def status_message(self) -> str:
        return self.proto.status.message

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def attributes(self) -> Mapping[str, AttrValue]:
        """All span attributes, converted once and cached. Prefer ``attribute`` for one key."""
        if self._attrs is None:
            self._attrs = {kv.key: to_python(kv.value) for kv in self.proto.attributes}
        return self._attrs

    def attributes_text(self) -> Mapping[str, str]:
        """All span attributes as strings (see ``to_text``), built once: the table and the
        Zipkin encoder of one span share it."""
        if self.texts is None:
            self.texts = attributes_text(self.proto.attributes)
        return self.texts

    def attribute(self, key: str) -> AttrValue:
        """One span attribute without converting the others; ``None`` when absent."""
        if self._attrs is not None:
            return self._attrs.get(key)
        return find_attribute(self.proto.attributes, key)

    def __repr__(self) -> str:
        return f"SpanView({self.trace_id.hex()}/{self.span_id.hex()} {self.name!r})"


@dataclass(frozen=True)
class SpanBatch:
    """The valid spans of one message, in input order."""

    spans: list[SpanView] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[SpanView]:
        return iter(self.spans)

    def __getitem__(self, i: int) -> SpanView:
        return self.spans[i]


@dataclass(frozen=True)
class RejectedSpan:
    """One span of a message that cannot be routed; the message's other spans can."""

    index: int
    """Position of the span in its message (flattened order of the input)."""
    reason: str
    """``invalid_id`` | ``bad_timestamp`` | ``unparseable`` (a Zipkin element not an object)"""
    detail: str


@dataclass(frozen=True)
class DecodedSpans:
    """The outcome of decoding one message. Never both a ``message_error`` and spans:

    - ``message_error`` set (``unparseable`` | ``oversized``): ``batch`` and ``rejected``
      are empty and the whole message goes to the dead-letter topic.
    - otherwise every span of the message is in exactly one of ``batch`` and ``rejected``.
    """

    batch: SpanBatch
    rejected: list[RejectedSpan]
    message_error: str | None = None
    detail: str = ""
