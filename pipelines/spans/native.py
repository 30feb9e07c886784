"""Spans-table rows, Zipkin JSON and OTLP requests built natively from OTLP protobuf bytes.

``native_rows(messages, schema)`` returns the same table as ``table.to_arrow`` over the
same spans (the tests compare both), several times faster: the ``sluice_native`` extension
(``native/``, Rust, built by ``make install``) walks each message's bytes once, outside the
GIL, and hands back flat Arrow buffers that pyarrow wraps without a copy. ``messages`` pairs
a message value with the positions of the spans wanted (``SpanView.index``: the flattened
order, which is the message's own for OTLP protobuf input). It returns ``None`` when it
cannot answer — the extension is not installed, the schema promotes an attribute to a type
it does not build, or a message does not walk (logged) — and the caller uses ``to_arrow``.

``native_zipkin(spans)`` is ``zipkin.to_zipkin_json`` the same way (byte for byte equal),
and ``native_otlp(spans)`` ``encode.to_otlp_proto``, for spans decoded from OTLP protobuf
(their ``ResourceView.wire``). The OTLP request holds every span once, its bytes as they came,
under its own resource and scope; spans of equal resources (scopes) share one group when
those are encoded alike — always for canonical encodings, as SDKs and the Collector write
them (Python compares re-serialized messages and may merge more).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pyarrow as pa

from pipelines.spans.model import SpanView
from pipelines.spans.table import _CORE, PROMOTED, Arr

log = logging.getLogger(__name__)

_native: Any = None
if os.environ.get("SLUICE_NATIVE", "1") != "0":  # SLUICE_NATIVE=0: the Python encoders only
    try:
        _native = importlib.import_module("sluice_native")
    except ImportError:  # pragma: no cover - make install builds it
        _native = None

AVAILABLE = _native is not None
"""Whether the extension is installed (``make install`` builds it) and not switched off
(``SLUICE_NATIVE=0`` in the environment keeps every encoder in Python)."""
_PROMOTABLE = {
    pa.string(): "string",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
}
_warned: set[str] = set()
REFUSED: dict[str, int] = {}
"""How many calls fell back to Python, per product (rows, Zipkin JSON, OTLP protobuf)."""
# What makes a call fall back to Python: the walker's ValueError for a message it cannot
# walk, an Arrow error assembling its buffers, and (never expected) a panic in the extension,
# which pyo3 raises as a BaseException. Nothing a caller could act on escapes.
_REFUSALS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OverflowError,
    pa.ArrowException,
)
if _native is not None:
    _REFUSALS += (cast(type[BaseException], _native.PanicException),)


class RowsTooLargeError(ValueError):
    """The rows asked for pass Arrow's 2 GiB in a string column (``native_rows`` raises it
    rather than answer None: the Python path would fail the same way, after as much work)."""


ROWS_TOO_LARGE: tuple[type[BaseException], ...] = (
    RowsTooLargeError,
    pa.ArrowInvalid,  # e.g. "offset overflow while concatenating arrays"
    pa.ArrowCapacityError,
    OverflowError,
)
"""What building spans-table rows raises when they cannot fit Arrow's columns: the same for
the same messages on every attempt (unlike running out of memory)."""


def native_rows(
    messages: Sequence[tuple[bytes, Sequence[int]]],
    schema: pa.Schema,
    promoted: Mapping[str, str] = PROMOTED,
    max_column_bytes: int | None = None,
) -> pa.Table | None:
    """See the module docstring. A string column may not pass 2 GiB (Arrow's offsets), or
    ``max_column_bytes`` when given: then ``RowsTooLargeError`` is raised."""
    if _native is None:
        return None
    hot: list[tuple[str, str, pa.DataType]] = []
    for f in schema:
        if f.name in _CORE:
            continue
        key, type_name = promoted.get(f.name), _PROMOTABLE.get(f.type)
        if key is None or type_name is None:
            return None
        hot.append((f.name, key, f.type))
    try:
        cols = _native.spans_columns(
            [(value, list(spans)) for value, spans in messages],
            [(key, _PROMOTABLE[type_]) for _, key, type_ in hot],
            max_column_bytes,
        )
        return _assemble(cols, schema, hot)
    except ValueError as e:
        if str(e).startswith("a column over"):
            raise RowsTooLargeError(str(e)) from e
        _refused("spans rows", e)
        return None
    except _REFUSALS as e:
        _refused("spans rows", e)
        return None


def _assemble(
    cols: dict[str, Any], schema: pa.Schema, hot: list[tuple[str, str, pa.DataType]]
) -> pa.Table:
    n: int = cols["rows"]
    arrays: dict[str, Arr] = {}
    for name, (_, type_) in _CORE.items():
        if name in ("events", "links"):
            continue
        raw = cols[name]
        if name.endswith("_attributes"):
            arrays[name] = _map(n, raw)
        elif name in ("start_time", "end_time"):
            arrays[name] = _prim(pa.int64(), n, raw).cast(type_)
        else:
            arrays[name] = _column(type_, n, raw)
    for (name, _, type_), raw in zip(hot, cols["promoted"], strict=True):
        arrays[name] = _column(type_, n, raw, wide=True)
    out: list[Arr] = []
    for f in schema:
        if f.name == "events":
            out.append(_events(cols["events"], n, f.type))
        elif f.name == "links":
            out.append(_links(cols["links"], n, f.type))
        else:
            out.append(arrays[f.name].cast(f.type))
    return pa.Table.from_arrays(out, schema=schema)


def native_zipkin(spans: Sequence[SpanView]) -> bytes | None:
    """``zipkin.to_zipkin_json(spans)`` built natively from the messages' bytes, or ``None``
    when it cannot be (the extension is missing, a span's message is not OTLP protobuf —
    ``ResourceView.wire`` unset — or a message does not walk: logged)."""
    return _encode("zipkin_json", "Zipkin JSON", spans)


def native_otlp(spans: Sequence[SpanView]) -> bytes | None:
    """``encode.to_otlp_proto(spans)`` built natively, as ``native_zipkin``: each span's
    bytes copied from its message, grouped under equal resources and scopes."""
    return _encode("otlp_proto", "OTLP protobuf", spans)


def _encode(function: str, what: str, spans: Sequence[SpanView]) -> bytes | None:
    if _native is None:
        return None
    messages: list[bytes] = []
    numbers: dict[int, int] = {}
    refs: list[tuple[int, int]] = []
    for span in spans:
        wire = span.resource.wire
        if wire is None:
            return None
        m = numbers.get(id(wire))
        if m is None:
            m = numbers[id(wire)] = len(messages)
            messages.append(wire)
        refs.append((m, span.index))
    try:
        return cast(bytes, getattr(_native, function)(messages, refs))
    except _REFUSALS as e:
        _refused(what, e)
        return None


def _refused(what: str, e: BaseException) -> None:
    """Logged once per kind of refusal (the first 100 kinds; counted always)."""
    REFUSED[what] = REFUSED.get(what, 0) + 1
    key = f"{what}: {type(e).__name__}"
    if key not in _warned and len(_warned) < 100:
        _warned.add(key)
        log.warning("%s built in Python: the native walker refused a message: %r", what, e)


def _buf(raw: Any) -> pa.Buffer | None:
    """A native buffer (read in place through the buffer protocol), or None."""
    return None if raw is None else pa.py_buffer(raw)


def _column(type_: pa.DataType, n: int, raw: tuple[Any, ...], wide: bool = False) -> Arr:
    if pa.types.is_string(type_) or pa.types.is_binary(type_):
        validity, offsets, data, nulls = raw
        return cast(
            Arr,
            pa.Array.from_buffers(type_, n, [_buf(validity), _buf(offsets), _buf(data)], nulls),
        )
    if wide:  # promoted ints come as int64, already in the column's range
        return _prim(pa.int64(), n, raw).cast(type_)
    return _prim(type_, n, raw)


def _prim(type_: pa.DataType, n: int, raw: tuple[Any, ...]) -> Arr:
    validity, values, nulls = raw
    return cast(Arr, pa.Array.from_buffers(type_, n, [_buf(validity), _buf(values)], nulls))


def _offsets(raw: Any, n: int) -> pa.Int32Array:
    return cast(pa.Int32Array, pa.Array.from_buffers(pa.int32(), n + 1, [None, pa.py_buffer(raw)]))


def _last(offsets: Any) -> int:
    """The last of little-endian int32 offsets: how many child values they span."""
    return int.from_bytes(memoryview(offsets)[-4:], "little", signed=True)


def _map(n: int, raw: tuple[Any, ...]) -> Arr:
    offsets, keys, values = raw
    entries = _last(offsets)
    from_arrays = cast(Any, pa.MapArray.from_arrays)  # the stubs want int64 offsets
    return cast(
        Arr,
        from_arrays(
            _offsets(offsets, n),
            _column(pa.string(), entries, keys),
            _column(pa.string(), entries, values),
        ),
    )


def _events(raw: tuple[Any, ...], n: int, type_: pa.DataType) -> Arr:
    offsets, time, name, attrs, dropped = raw
    m = _last(offsets)
    struct = pa.StructArray.from_arrays(
        [
            _prim(pa.int64(), m, time).cast(pa.timestamp("us", tz="UTC")),
            _column(pa.string(), m, name),
            _map(m, attrs),
            _prim(pa.int32(), m, dropped),
        ],
        fields=list(cast("pa.ListType[Any]", type_).value_type),
    )
    return cast(Arr, pa.ListArray.from_arrays(_offsets(offsets, n), struct, type=type_))


def _links(raw: tuple[Any, ...], n: int, type_: pa.DataType) -> Arr:
    offsets, tid, sid, state, attrs, dropped = raw
    m = _last(offsets)
    struct = pa.StructArray.from_arrays(
        [
            _column(pa.binary(), m, tid),
            _column(pa.binary(), m, sid),
            _column(pa.string(), m, state),
            _map(m, attrs),
            _prim(pa.int32(), m, dropped),
        ],
        fields=list(cast("pa.ListType[Any]", type_).value_type),
    )
    return cast(Arr, pa.ListArray.from_arrays(_offsets(offsets, n), struct, type=type_))
