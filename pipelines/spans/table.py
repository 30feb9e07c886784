"""Spans → rows of the spans table (``schemas/spans.yaml``), as one Arrow table.

``to_arrow(spans, schema)`` guarantees: one row per span, in order; the result's schema
equals ``schema`` (the contract's ``arrow_schema``, or any subset of its columns in any
order); ids are raw bytes (16/8), a root's ``parent_span_id`` and empty strings
(``trace_state``, ``status_message``, ``service_name``, scope) are null; times are µs
(truncated) and ``duration_ns`` exact; attribute maps hold every attribute as a string
(``model.to_text``) in input order, a repeated key keeping its last value; dropped counts
over 2**31 - 1 read as 2**31 - 1.

Promoted columns are filled from the span attribute named in ``promoted`` (column →
attribute key, default ``PROMOTED``), converted to the column's type: a string column takes
the attribute's text (as in ``span_attributes``; null for an unset value), an integer column
an int or a decimal string in range; a value that does not convert (``"abc"`` for an int32)
is null there, and is still in ``span_attributes``. ``native.native_rows`` builds the same
rows from OTLP protobuf bytes in native code.
One pass in Python over spans and attributes; resource attributes are converted once per
resource and gathered with ``take``; every column is built from flat lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, cast

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.spans.model import (
    AttrValue,
    ResourceView,
    ScopeView,
    SpanView,
    attributes_text,
    to_python,
    to_text,
)

PROMOTED: Mapping[str, str] = {
    "http_request_method": "http.request.method",
    "http_route": "http.route",
    "http_response_status_code": "http.response.status_code",
    "rpc_method": "rpc.method",
    "db_system": "db.system",
    "error_type": "error.type",
}
Arr: TypeAlias = "pa.Array[Any]"
_MAP = pa.map_(pa.string(), pa.string())
_INT_RE = re.compile(r"[+-]?[0-9]{1,19}")
_I32_MAX = 2**31 - 1  # dropped counts are uint32 in OTLP, int32 here: larger ones saturate


class _Maps:
    """Flat builder of a ``map<string,string>`` column: offsets, keys, values."""

    def __init__(self) -> None:
        self.offsets = [0]
        self.keys: list[str] = []
        self.values: list[str] = []

    def add(self, entries: Mapping[str, str]) -> None:
        self.keys.extend(entries)
        self.values.extend(entries.values())
        self.offsets.append(len(self.keys))

    def array(self) -> Arr:
        from_arrays = cast(Any, pa.MapArray.from_arrays)  # the stubs want int64 offsets
        return cast(
            Arr,
            from_arrays(
                pa.array(self.offsets, pa.int32()),
                pa.array(self.keys, pa.string()),
                pa.array(self.values, pa.string()),
            ),
        )


def to_arrow(
    spans: Sequence[SpanView], schema: pa.Schema, promoted: Mapping[str, str] = PROMOTED
) -> pa.Table:
    """Rows of the spans table; see the module docstring. Raises ``ValueError`` for a
    column of ``schema`` that is neither a known column nor in ``promoted``."""
    unknown = [f.name for f in schema if f.name not in _CORE and f.name not in promoted]
    if unknown:
        raise ValueError(f"spans table columns with no source: {', '.join(unknown)}")
    columns = {f.name: promoted[f.name] for f in schema if f.name in promoted}
    # attribute key -> (row, value) of every span that has it
    hot: dict[str, list[tuple[int, AttrValue, str]]] = {key: [] for key in columns.values()}
    cols: dict[str, list[Any]] = {name: [] for name in _PER_SPAN}
    state, flags, name, kind = cols["state"], cols["flags"], cols["name"], cols["kind"]
    code, message = cols["code"], cols["message"]
    d_attrs, d_events, d_links = cols["d_attrs"], cols["d_events"], cols["d_links"]
    attrs, event_attrs, link_attrs = _Maps(), _Maps(), _Maps()
    ev: dict[str, list[Any]] = {"time": [], "name": [], "dropped": [], "offsets": [0]}
    lk: dict[str, list[Any]] = {"tid": [], "sid": [], "state": [], "dropped": [], "offsets": [0]}
    keys, texts_out, key_offsets = attrs.keys, attrs.values, attrs.offsets
    for row, s in enumerate(spans):
        p = s.proto
        texts = s.texts
        if texts is None:
            # One pass over the attributes: their texts (kept on the view for the Zipkin
            # encoder) and the hot values; a non-empty string_value is the value itself.
            texts = {}
            for kv in p.attributes:
                key, value = kv.key, kv.value
                text = value.string_value
                if text:
                    texts[key] = text
                    if key in hot:
                        hot[key].append((row, text, text))
                else:
                    texts[key] = text = to_text(value)
                    if key in hot:
                        hot[key].append((row, to_python(value), text))
            s.texts = texts
        else:  # built by another encoder: read the hot values (the last of a repeated key)
            for key, pairs in hot.items():
                if key in texts:
                    pairs.append((row, s.attributes.get(key), texts[key]))
        keys.extend(texts)
        texts_out.extend(texts.values())
        key_offsets.append(len(keys))
        state.append(p.trace_state or None)
        flags.append(p.flags)
        name.append(p.name)
        kind.append(p.kind)
        status = p.status
        code.append(status.code)
        message.append(status.message or None)
        d_attrs.append(min(p.dropped_attributes_count, _I32_MAX))
        d_events.append(min(p.dropped_events_count, _I32_MAX))
        d_links.append(min(p.dropped_links_count, _I32_MAX))
        if p.events:
            for e in p.events:
                ev["time"].append(e.time_unix_nano // 1000)
                ev["name"].append(e.name)
                ev["dropped"].append(min(e.dropped_attributes_count, _I32_MAX))
                event_attrs.add(attributes_text(e.attributes))
        ev["offsets"].append(len(ev["time"]))
        if p.links:
            for link in p.links:
                lk["tid"].append(link.trace_id)
                lk["sid"].append(link.span_id)
                lk["state"].append(link.trace_state or None)
                lk["dropped"].append(min(link.dropped_attributes_count, _I32_MAX))
                link_attrs.add(attributes_text(link.attributes))
        lk["offsets"].append(len(lk["tid"]))
    arrays = {col: pa.array(cols[src], type_) for col, (src, type_) in _CORE.items() if src}
    arrays["kind"] = _clamp(arrays["kind"], 5)
    arrays["status_code"] = _clamp(arrays["status_code"], 2)
    arrays.update(_ids_and_times(spans))
    arrays.update(_shared(spans))
    arrays["span_attributes"] = attrs.array()
    for column, key in columns.items():
        arrays[column] = _promoted(hot[key], len(spans), schema.field(column).type)
    out: list[Arr] = []
    for f in schema:
        if f.name == "events":
            out.append(_events(ev, event_attrs, f.type))
        elif f.name == "links":
            out.append(_links(lk, link_attrs, f.type))
        else:
            out.append(arrays[f.name].cast(f.type))
    return pa.Table.from_arrays(out, schema=schema)


_TS = pa.timestamp("us", tz="UTC")
# column -> (per-span list collected in to_arrow's loop, Arrow type); "" = built elsewhere.
_CORE: dict[str, tuple[str, pa.DataType]] = {
    "trace_id": ("", pa.binary()),
    "span_id": ("", pa.binary()),
    "parent_span_id": ("", pa.binary()),
    "trace_state": ("state", pa.string()),
    "flags": ("flags", pa.int64()),
    "name": ("name", pa.string()),
    "kind": ("kind", pa.int32()),
    "start_time": ("", _TS),
    "end_time": ("", _TS),
    "duration_ns": ("", pa.int64()),
    "status_code": ("code", pa.int32()),
    "status_message": ("message", pa.string()),
    "service_name": ("", pa.string()),
    "scope_name": ("", pa.string()),
    "scope_version": ("", pa.string()),
    "resource_attributes": ("", _MAP),
    "span_attributes": ("", _MAP),
    "events": ("", pa.null()),
    "links": ("", pa.null()),
    "dropped_attributes_count": ("d_attrs", pa.int32()),
    "dropped_events_count": ("d_events", pa.int32()),
    "dropped_links_count": ("d_links", pa.int32()),
}
_PER_SPAN = [source for source, _ in _CORE.values() if source]


def _clamp(values: Arr, top: int) -> Arr:
    """Enum values outside 0..top (open protobuf enums) read as 0, as ``SpanView`` does."""
    zero = pa.scalar(0, pa.int32())
    ok = pc.and_(pc.greater_equal(values, zero), pc.less_equal(values, pa.scalar(top, pa.int32())))
    return cast(Arr, pc.if_else(ok, values, zero))


def _ids_and_times(spans: Sequence[SpanView]) -> dict[str, Arr]:
    start = pa.array([s.start_ns for s in spans], pa.int64())
    end = pa.array([s.end_ns for s in spans], pa.int64())
    thousand = pa.scalar(1000, pa.int64())
    return {
        "trace_id": pa.array([s.trace_id for s in spans], pa.binary()),
        "span_id": pa.array([s.span_id for s in spans], pa.binary()),
        "parent_span_id": pa.array([s.parent_span_id or None for s in spans], pa.binary()),
        # Validated times are >= 2000, so integer division truncates like floor.
        "start_time": pc.divide(start, thousand).cast(_TS),
        "end_time": pc.divide(end, thousand).cast(_TS),
        "duration_ns": pc.subtract(end, start),
    }


def _shared(spans: Sequence[SpanView]) -> dict[str, Arr]:
    """Resource and scope columns: converted once per resource/scope, gathered by index."""
    resources: dict[int, int] = {}
    scopes: dict[int, int] = {}
    unique_r: list[ResourceView] = []
    unique_s: list[ScopeView] = []
    r_rows: list[int] = []
    s_rows: list[int] = []
    for s in spans:
        r = resources.get(id(s.resource))
        if r is None:
            r = resources[id(s.resource)] = len(unique_r)
            unique_r.append(s.resource)
        r_rows.append(r)
        i = scopes.get(id(s.scope))
        if i is None:
            i = scopes[id(s.scope)] = len(unique_s)
            unique_s.append(s.scope)
        s_rows.append(i)
    maps = _Maps()
    for resource in unique_r:
        maps.add(resource.attributes_text)
    rr, sr = pa.array(r_rows, pa.int32()), pa.array(s_rows, pa.int32())
    return {
        "resource_attributes": maps.array().take(rr),
        "service_name": pa.array([x.service_name or None for x in unique_r], pa.string()).take(rr),
        "scope_name": pa.array([x.name or None for x in unique_s], pa.string()).take(sr),
        "scope_version": pa.array([x.version or None for x in unique_s], pa.string()).take(sr),
    }


def _promoted(values: list[tuple[int, AttrValue, str]], n: int, type_: pa.DataType) -> Arr:
    column: list[object] = [None] * n
    if pa.types.is_string(type_):  # the common case, without a call per value
        for row, value, text in values:
            column[row] = None if value is None else text
    else:
        for row, value, _ in values:
            column[row] = _convert(value, type_)
    return pa.array(column, type_)


def _convert(value: AttrValue, type_: pa.DataType) -> object:
    """``value`` as a Python value of Arrow ``type_`` (not a string type), or ``None`` if it
    does not fit."""
    if pa.types.is_integer(type_):
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            bits = type_.bit_width - 1
            return value if -(2**bits) <= value < 2**bits else None
        return None
    if pa.types.is_floating(type_):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None
    if pa.types.is_boolean(type_):
        return value if isinstance(value, bool) else None
    return None


def _events(ev: dict[str, list[Any]], attrs: _Maps, type_: pa.DataType) -> Arr:
    struct = pa.StructArray.from_arrays(
        [
            pa.array(ev["time"], _TS),
            pa.array(ev["name"], pa.string()),
            attrs.array(),
            pa.array(ev["dropped"], pa.int32()),
        ],
        fields=list(cast("pa.ListType[Any]", type_).value_type),
    )
    return pa.ListArray.from_arrays(pa.array(ev["offsets"], pa.int32()), struct, type=type_)


def _links(lk: dict[str, list[Any]], attrs: _Maps, type_: pa.DataType) -> Arr:
    struct = pa.StructArray.from_arrays(
        [
            pa.array(lk["tid"], pa.binary()),
            pa.array(lk["sid"], pa.binary()),
            pa.array(lk["state"], pa.string()),
            attrs.array(),
            pa.array(lk["dropped"], pa.int32()),
        ],
        fields=list(cast("pa.ListType[Any]", type_).value_type),
    )
    return pa.ListArray.from_arrays(pa.array(lk["offsets"], pa.int32()), struct, type=type_)
