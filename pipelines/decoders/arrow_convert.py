"""Vectorized conversions from what a JSON reader yields to the declared column types.

Both decoding paths use these functions (the per-record path on one-element arrays),
so a value converts the same way whichever path it takes. ``conform`` accepts only
lossless, unambiguous conversions and raises ``UnconformableError`` otherwise; the caller
then falls back to per-record decoding, which decides row by row.
"""

from __future__ import annotations

from typing import Any, TypeAlias, cast

import pyarrow as pa
import pyarrow.compute as pc

PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Event times must lie in [1970-01-01, 10000-01-01): partition paths need 4-digit years
# and a pre-1970 event time is a producer bug, not history.
MAX_EPOCH_S = 253_402_300_800
INT64_MAX = 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38


Arr: TypeAlias = "pa.Array[Any]"
Mask: TypeAlias = pa.BooleanArray


class UnconformableError(ValueError):
    """The array cannot be converted vectorially; decode its rows one by one."""


def raw_type(target: pa.DataType) -> pa.DataType | None:
    """The type to ask the JSON reader for, or ``None`` when it cannot express it (maps)."""
    if pa.types.is_int32(target):
        return pa.int64()
    if pa.types.is_float32(target):
        return pa.float64()
    if pa.types.is_timestamp(target) or pa.types.is_date(target) or pa.types.is_binary(target):
        return pa.string()
    if pa.types.is_list(target):
        item = raw_type(cast("pa.ListType[pa.DataType]", target).value_type)
        return None if item is None else pa.list_(item)
    if pa.types.is_struct(target):
        fields = []
        for f in cast(Any, target):
            child = raw_type(f.type)
            if child is None:
                return None
            fields.append(pa.field(f.name, child))
        return pa.struct(fields)
    if pa.types.is_map(target):
        return None
    return target


def epoch_bounds(unit: str) -> tuple[int, int]:
    """Inclusive-exclusive bounds of a plausible event time as an epoch in ``unit``."""
    return 0, min(MAX_EPOCH_S * PER_SECOND[unit], INT64_MAX)


def epoch_to_timestamp(raw: Arr, source_unit: str, target: pa.DataType) -> Arr:
    """int64 epochs in ``source_unit`` → ``target`` timestamps; out-of-range values → null."""
    lo, hi = epoch_bounds(source_unit)
    plausible = pc.and_(pc.greater_equal(raw, _i64(lo)), pc.less(raw, _i64(hi)))
    values: Arr = pc.if_else(plausible, raw, pa.scalar(None, pa.int64()))
    src, dst = PER_SECOND[source_unit], PER_SECOND[_unit(target)]
    # Non-negative by now, so integer division truncating equals flooring.
    if dst >= src:
        values = pc.multiply(values, _i64(dst // src))
    else:
        values = pc.divide(values, _i64(src // dst))
    return pc.cast(values, target)


def _i64(value: int) -> pa.Int64Scalar:
    return pa.scalar(value, pa.int64())


def _unit(timestamp_type: pa.DataType) -> str:
    return str(cast("pa.TimestampType[Any, Any]", timestamp_type).unit)


def iso_to_timestamp(raw: Arr, target: pa.DataType) -> Arr:
    """ISO-8601 strings → UTC ``target`` timestamps. Strings without a zone offset are UTC.

    Raises ``pa.ArrowInvalid`` if any string does not parse (including fractional
    seconds finer than the target unit).
    """
    try:
        return cast(Arr, pc.cast(raw, target))
    except pa.ArrowInvalid:
        naive = pa.timestamp(cast(Any, _unit(target)))
        return pc.cast(pc.cast(raw, naive), target)


def implausible(ts: Arr) -> Mask:
    """Boolean mask of event times outside the plausible range (nulls → false)."""
    lo, hi = epoch_bounds(_unit(ts.type))
    as_int = pc.cast(ts, pa.int64())
    mask = pc.or_(pc.less(as_int, _i64(lo)), pc.greater_equal(as_int, _i64(hi)))
    return cast(Mask, pc.fill_null(mask, pa.scalar(False)))


def out_of_int32(raw: Arr) -> Mask:
    """Boolean mask of int64 values that do not fit int32 (nulls → false)."""
    mask = pc.or_(pc.less(raw, _i64(INT32_MIN)), pc.greater(raw, _i64(INT32_MAX)))
    return cast(Mask, pc.fill_null(mask, pa.scalar(False)))


def any_of(mask: Mask, other: Arr) -> Mask:
    """Element-wise OR of two null-free boolean arrays."""
    return pc.or_(mask, cast(Mask, other))


def conform(arr: Arr, target: pa.DataType) -> Arr:
    """Convert ``arr`` (raw or inferred by the JSON reader) to ``target``, or raise."""
    source = arr.type
    if source == target:
        return arr
    if pa.types.is_null(source):
        return cast(Arr, pa.nulls(len(arr), cast(Any, target)))
    if pa.types.is_string(source):
        if pa.types.is_timestamp(target):
            return iso_to_timestamp(arr, target)
        if pa.types.is_date(target) or pa.types.is_binary(target):
            return pc.cast(arr, target)
    if pa.types.is_int64(source) and (pa.types.is_int32(target) or pa.types.is_floating(target)):
        return pc.cast(arr, target)  # safe cast: raises on int32 overflow
    if pa.types.is_float64(source) and pa.types.is_float32(target):
        if pc.any(pc.greater(pc.abs(arr), pa.scalar(FLOAT32_MAX))).as_py():
            raise UnconformableError("value out of float32 range")
        return pc.cast(arr, target, safe=False)
    if pa.types.is_list(source) and pa.types.is_list(target):
        lst = cast("pa.ListArray[Any]", arr)
        item = conform(lst.values, cast("pa.ListType[pa.DataType]", target).value_type)
        return pa.ListArray.from_arrays(lst.offsets, item, mask=arr.is_null())
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        return _struct(cast(pa.StructArray, arr), cast(Any, target))
    if pa.types.is_struct(source) and pa.types.is_map(target):
        return _map_from_struct(cast(pa.StructArray, arr), cast("pa.MapType[Any, Any]", target))
    raise UnconformableError(f"cannot convert {source} to {target}")


def _struct(arr: pa.StructArray, target: pa.StructType) -> Arr:
    present = {arr.type.field(i).name: i for i in range(arr.type.num_fields)}
    children = [
        conform(arr.field(present[f.name]), f.type)
        if f.name in present
        else pa.nulls(len(arr), cast(Any, f.type))
        for f in target
    ]
    return pa.StructArray.from_arrays(children, fields=list(target), mask=arr.is_null())


def _map_from_struct(arr: pa.StructArray, target: pa.MapType[Any, Any]) -> Arr:
    """An inferred struct (one field per key seen in the batch) → map.

    Entries are ordered by key and null values are dropped, the same canonical form the
    per-record path produces.
    """
    if not pa.types.is_string(target.key_type):
        raise UnconformableError("JSON object keys are strings")
    order = sorted(range(arr.type.num_fields), key=lambda i: arr.type.field(i).name)
    counts: Arr = pa.array([0] * len(arr), pa.int32())
    rows: list[Arr] = []
    keys: list[Arr] = []
    items: list[Arr] = []
    for i in order:
        child = conform(arr.field(i), target.item_type)
        valid = pc.and_(child.is_valid(), arr.is_valid())
        counts = pc.add(counts, pc.cast(valid, pa.int32()))
        hits = pc.indices_nonzero(valid)
        rows.append(hits)
        keys.append(pa.array([arr.type.field(i).name] * len(hits), pa.string()))
        items.append(child.take(hits))
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(counts)])
    if rows:
        # Stable sort by row keeps the per-row key order given by the sorted field order.
        by_row = pc.sort_indices(pa.concat_arrays(rows))
        key_values = pa.concat_arrays(keys).take(by_row)
        item_values = pa.concat_arrays(items).take(by_row)
    else:
        key_values, item_values = pa.array([], pa.string()), pa.array([], target.item_type)
    # The stubs type map offsets as int64 and reject `type=`; Arrow wants int32 here.
    from_arrays = cast(Any, pa.MapArray.from_arrays)
    result = from_arrays(offsets, key_values, item_values, type=target, mask=arr.is_null())
    return cast(Arr, result)
