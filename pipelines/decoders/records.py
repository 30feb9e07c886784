"""Per-record JSON validation: the slow path, and the authority on why a record is bad.

``RecordConverter.convert`` parses one value with the stdlib ``json`` and returns either
a dict of Python values ready for ``pa.Table.from_pylist(rows, schema=arrow_schema)``
or a ``(reason, detail)`` pair. Canonical forms shared with the vectorized path: JSON
``null`` equals an absent field; map entries are sorted by key and null values dropped;
unknown fields nested inside struct columns are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, cast

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.decoders import arrow_convert as ac
from pipelines.decoders.base import BAD_TIMESTAMP, SCHEMA_VIOLATION, UNKNOWN_FIELD, UNPARSEABLE
from pipelines.tables import TableSpec

Convert = Callable[[Any], Any]


class Rejection(NamedTuple):
    reason: str
    detail: str


class Accepted(NamedTuple):
    row: dict[str, Any]
    unknown_dropped: int


class MismatchError(ValueError):
    """A value does not fit its declared type."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in JSON object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class RecordConverter:
    """Validates and converts one JSON record against a ``TableSpec``."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.declared = {c.name for c in spec.columns}
        has_decimal = any("decimal" in c.type_text for c in spec.columns)
        # Decimal columns need the exact digits; floats are converted back below.
        self.parse_float: Callable[[str], Any] = Decimal if has_decimal else float
        self.columns = [
            (
                c.name,
                c.required,
                self._event_time if c.name == spec.event_time_field else converter(c.type),
            )
            for c in spec.columns
        ]

    def convert(self, value: bytes) -> Accepted | Rejection:
        try:
            obj = json.loads(
                value.decode("utf-8"),
                object_pairs_hook=_pairs,
                parse_constant=_no_constant,
                parse_float=self.parse_float,
            )
        except (ValueError, RecursionError) as err:
            return Rejection(UNPARSEABLE, str(err)[:200])
        if not isinstance(obj, dict):
            return Rejection(UNPARSEABLE, f"expected a JSON object, got {type(obj).__name__}")
        row: dict[str, Any] = {}
        for name, required, conv in self.columns:
            raw = obj.get(name)
            if raw is None:
                if name == self.spec.event_time_field:
                    return Rejection(BAD_TIMESTAMP, f"event-time field {name!r} is missing")
                if required:
                    return Rejection(SCHEMA_VIOLATION, f"required field {name!r} is missing")
                row[name] = None
                continue
            try:
                row[name] = conv(raw)
            except MismatchError as err:
                reason = BAD_TIMESTAMP if name == self.spec.event_time_field else SCHEMA_VIOLATION
                return Rejection(reason, f"field {name!r}: {err}")
        unknown = {k: v for k, v in obj.items() if k not in self.declared and v is not None}
        if unknown and self.spec.unknown_fields == "reject":
            names = ", ".join(sorted(unknown))
            detail = f"undeclared field(s) {names}; add them to the table contract"
            return Rejection(UNKNOWN_FIELD, detail)
        if self.spec.unknown_fields == "keep_json":
            row["_extra"] = _dumps(unknown) if unknown else None
            return Accepted(row, 0)
        return Accepted(row, len(unknown))

    def _event_time(self, raw: Any) -> int:
        column = self.spec.event_time_column
        unit = cast(pa.TimestampType, column.type).unit
        fmt = self.spec.event_time_format
        if fmt == "iso8601":
            if not isinstance(raw, str):
                raise MismatchError(f"expected an ISO-8601 string, got {type(raw).__name__}")
            try:
                ts = ac.iso_to_timestamp(pa.array([raw], pa.string()), column.type)
            except pa.ArrowInvalid as err:
                raise MismatchError(f"{raw!r} is not an ISO-8601 time in {unit}: {err}") from err
            if ac.implausible(ts)[0].as_py():
                raise MismatchError(f"{raw!r} is outside 1970-01-01..9999-12-31")
            return int(pc.cast(ts, pa.int64())[0].as_py())
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise MismatchError(f"expected an integer {fmt}, got {type(raw).__name__}")
        source = fmt.removeprefix("epoch_")
        lo, hi = ac.epoch_bounds(source)
        if not lo <= raw < hi:
            raise MismatchError(f"{raw} ({fmt}) is outside 1970-01-01..9999-12-31")
        src, dst = ac.PER_SECOND[source], ac.PER_SECOND[unit]
        return raw * (dst // src) if dst >= src else raw // (src // dst)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=float)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MismatchError(message)


def _string(v: Any) -> str:
    _check(isinstance(v, str), f"expected a string, got {type(v).__name__}")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as err:
            raise MismatchError("string holds an unpaired surrogate escape") from err
    return cast(str, v)


def _boolean(v: Any) -> bool:
    _check(isinstance(v, bool), f"expected true or false, got {v!r}")
    return cast(bool, v)


def _integer(lo: int, hi: int, name: str) -> Convert:
    def conv(v: Any) -> int:
        _check(isinstance(v, int) and not isinstance(v, bool), f"expected an integer, got {v!r}")
        _check(lo <= v <= hi, f"{v} is out of {name} range")
        return cast(int, v)

    return conv


def _floating(limit: float) -> Convert:
    def conv(v: Any) -> float:
        ok = isinstance(v, int | float | Decimal) and not isinstance(v, bool)
        _check(ok, f"expected a number, got {type(v).__name__}")
        try:
            out = float(v)
        except OverflowError as err:
            raise MismatchError(f"{v} is out of range") from err
        _check(abs(out) <= limit or out != out, f"{v} is out of range")
        return out

    return conv


def _decimal(t: pa.Decimal128Type) -> Convert:
    quantum = Decimal(1).scaleb(-t.scale)

    def conv(v: Any) -> Decimal:
        ok = isinstance(v, int | str | Decimal) and not isinstance(v, bool)
        _check(ok, f"expected a decimal number or string, got {type(v).__name__}")
        try:
            d = Decimal(v)
            exact = d.quantize(quantum) == d
        except InvalidOperation as err:
            raise MismatchError(f"{v!r} is not a decimal({t.precision},{t.scale})") from err
        digits = len(d.quantize(quantum).as_tuple().digits)
        _check(
            exact and d.is_finite() and digits <= t.precision,
            f"{v!r} does not fit decimal({t.precision},{t.scale})",
        )
        return d

    return conv


def _cast_string(target: pa.DataType) -> Convert:
    def conv(v: Any) -> Any:
        try:
            return ac.conform(pa.array([_string(v)], pa.string()), target)[0].as_py()
        except (pa.ArrowInvalid, ac.UnconformableError) as err:
            raise MismatchError(f"{v!r} is not a valid {target}") from err

    return conv


def converter(t: pa.DataType) -> Convert:
    """A function validating one JSON value against ``t`` and returning the Python value."""
    if pa.types.is_string(t):
        return _string
    if pa.types.is_boolean(t):
        return _boolean
    if pa.types.is_int32(t):
        return _integer(ac.INT32_MIN, ac.INT32_MAX, "int32")
    if pa.types.is_int64(t):
        return _integer(-(2**63), ac.INT64_MAX, "int64")
    if pa.types.is_float32(t):
        return _floating(ac.FLOAT32_MAX)
    if pa.types.is_float64(t):
        return _floating(float("inf"))
    if pa.types.is_decimal(t):
        return _decimal(cast(pa.Decimal128Type, t))
    if pa.types.is_binary(t):
        return lambda v: _string(v).encode("utf-8")
    if pa.types.is_timestamp(t):
        return _cast_string(t)
    if pa.types.is_date(t):
        return _cast_string(t)
    if pa.types.is_list(t):
        item = converter(t.value_type)
        return lambda v: [None if x is None else item(x) for x in _typed(v, list)]
    if pa.types.is_map(t):
        return _map(converter(t.item_type))
    if pa.types.is_struct(t):
        fields = [(f.name, converter(f.type)) for f in t]
        return lambda v: {
            n: None if (x := _typed(v, dict).get(n)) is None else c(x) for n, c in fields
        }
    raise MismatchError(f"unsupported type {t}")


def _map(value: Convert) -> Convert:
    def conv(v: Any) -> list[tuple[str, Any]]:
        entries = [(k, value(x)) for k, x in _typed(v, dict).items() if x is not None]
        return sorted(entries, key=lambda kv: kv[0])

    return conv


def _typed(v: Any, kind: type) -> Any:
    _check(isinstance(v, kind), f"expected a JSON {'array' if kind is list else 'object'}")
    return v
