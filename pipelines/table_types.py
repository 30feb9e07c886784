"""Contract type strings (``map<string,int64>``) parsed into Arrow types.

The grammar is small on purpose: every type here has a Parquet mapping that Hive,
Trino, Spark and DuckDB read the same way. ``timestamp[ns]`` is absent because several
engines mis-read it; sources in nanoseconds are stored as microseconds.
"""

from __future__ import annotations

import re

import pyarrow as pa

NAME_RE = re.compile(r"[a-z_][a-z0-9_]*")
PRIMITIVES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "date": pa.date32(),
    "binary": pa.binary(),
}
_TIMESTAMPS: dict[str, pa.DataType] = {
    "s": pa.timestamp("s", tz="UTC"),
    "ms": pa.timestamp("ms", tz="UTC"),
    "us": pa.timestamp("us", tz="UTC"),
}
TYPE_FORMS = (*PRIMITIVES, "decimal(p,s)", "timestamp[s|ms|us]", "list<T>", "map<K,V>")
VALID_TYPES = ", ".join((*TYPE_FORMS, "struct<name:T,...>"))
_TOKEN_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|[0-9]+|[<>(),:\[\]])")


def parse_type(text: str) -> pa.DataType:
    """Parse a contract type string (``map<string,int64>``) into an Arrow type.

    Timestamps are UTC-aware. Raises ``ValueError`` saying what is wrong.
    """
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ValueError(f"unexpected character {text[pos]!r} in type {text!r}")
        tokens.append(m.group(1))
        pos = m.end()
    parser = _TypeParser(tokens, text)
    result = parser.parse()
    if parser.pos != len(tokens):
        raise ValueError(f"unexpected {' '.join(tokens[parser.pos :])!r} after {text!r}")
    return result


class _TypeParser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens, self.text, self.pos = tokens, text, 0

    def take(self, expected: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise ValueError(f"type {self.text!r} ends early")
        tok = self.tokens[self.pos]
        if expected is not None and tok != expected:
            raise ValueError(f"expected {expected!r} but found {tok!r} in type {self.text!r}")
        self.pos += 1
        return tok

    def parse(self) -> pa.DataType:
        name = self.take()
        if name in PRIMITIVES:
            return PRIMITIVES[name]
        if name == "timestamp":
            self.take("[")
            unit = self.take()
            self.take("]")
            if unit not in _TIMESTAMPS:
                raise ValueError(f"timestamp unit {unit!r} is not one of s, ms, us (no ns)")
            return _TIMESTAMPS[unit]
        if name == "decimal":
            self.take("(")
            precision = self.int_token()
            self.take(",")
            scale = self.int_token()
            self.take(")")
            if not 1 <= precision <= 38 or not 0 <= scale <= precision:
                raise ValueError("decimal(p,s) needs 1 <= p <= 38 and 0 <= s <= p")
            return pa.decimal128(precision, scale)
        if name == "list":
            self.take("<")
            item = self.parse()
            self.take(">")
            return pa.list_(item)
        if name == "map":
            self.take("<")
            key = self.parse()
            self.take(",")
            value = self.parse()
            self.take(">")
            if not (pa.types.is_string(key) or pa.types.is_integer(key)):
                raise ValueError(f"map keys must be string or an integer type, not {key}")
            return pa.map_(key, value)
        if name == "struct":
            return self.struct()
        raise ValueError(f"unknown type {name!r}; valid types: {VALID_TYPES}")

    def struct(self) -> pa.DataType:
        self.take("<")
        fields: list[pa.Field[pa.DataType]] = []
        while True:
            fname = self.take()
            if not NAME_RE.fullmatch(fname) or fname in {f.name for f in fields}:
                raise ValueError(f"struct field name {fname!r} is invalid or repeated")
            self.take(":")
            fields.append(pa.field(fname, self.parse()))
            if self.take() == ">":
                return pa.struct(fields)
            self.pos -= 1
            self.take(",")

    def int_token(self) -> int:
        tok = self.take()
        if not tok.isdigit():
            raise ValueError(f"expected a number but found {tok!r} in type {self.text!r}")
        return int(tok)
