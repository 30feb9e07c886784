"""JSON object per Kafka record → Arrow rows of one table.

Guarantees (beyond the ``Decoder`` contract):

1. Vectorized first: the batch is joined into newline-delimited JSON and parsed by
   ``pyarrow.json`` in one call; required-null, int32 range, event-time range and
   unknown-field checks are array operations.
2. Rows the vectorized path flags go to the per-record path (``records.py``), which
   decides each one. When the reader rejects a whole block (one bad record poisons
   it), the block is split at the row the error names (else in half) and the parts
   retried, so a few bad records cost about two parses, not a per-record decode; past
   a failure budget (1/256 of the batch) the rest is decoded per record.
3. Values that cannot be newline-delimited (empty, or holding a newline or CR byte,
   e.g. pretty printed) skip the vectorized path; other non-objects (``[1,2]``) fail it
   and are split out as in 2.
   Non-ASCII input is UTF-8 validated (the reader does not check it).
4. Whichever path a record takes, it yields the same row or the same rejection.
5. Unknown top-level fields are detected on both paths (the reader infers them as extra
   columns): ``drop`` counts the non-null ones, ``reject`` routes the records to the
   per-record path, which rejects them, and ``keep_json`` routes them there to render
   ``_extra`` (a JSON object of the unknown non-null fields, re-serialized compactly).
   Unknown fields with mixed types across a block make the reader fail, which costs a
   split but changes no result.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pipelines.decoders import arrow_convert as ac
from pipelines.decoders.base import OVERSIZED, DecodedBatch, Rejected
from pipelines.decoders.records import Accepted, RecordConverter
from pipelines.errors import ConfigError, Problem
from pipelines.tables import TableSpec

SLOW_LEAF = 32
"""Blocks this small that fail vectorized decoding are decoded record by record."""

_FALLBACK_ERRORS = (pa.ArrowException, ValueError)
_ROW_RE = re.compile(r" in row ([0-9]+)$")


class _Result:
    """What one ``decode`` call accumulates; pieces are (input indices, table) pairs."""

    def __init__(self) -> None:
        self.pieces: list[tuple[ac.Arr, pa.Table]] = []
        self.rejected: list[Rejected] = []
        self.dropped = 0
        self.slow: list[int] = []


class _Block:
    """Input indices of the values joined, newline-separated, in ``buffer``."""

    def __init__(self, idx: list[int], data: bytes, sizes: list[int]) -> None:
        self.idx = idx
        self.buffer = pa.py_buffer(data)
        self.ascii = data.isascii()
        # starts[j] is where value j begins; starts[-1] is one past the end (+ newline).
        self.starts = [0, *itertools.accumulate(size + 1 for size in sizes)]


class JsonDecoder:
    """Decoder for ``encoding: json`` tables; see the module docstring."""

    def __init__(self, spec: TableSpec) -> None:
        if any(pa.types.is_map(t) and not pa.types.is_string(t.key_type) for t in _walk(spec)):
            raise ConfigError(
                [Problem("columns", "JSON object keys are strings: declare map<string,V>")],
                source=spec.source,
            )
        self.spec = spec
        self.records = RecordConverter(spec)
        schema = spec.arrow_schema
        if spec.unknown_fields == "keep_json":
            schema = schema.append(pa.field("_extra", pa.string()))
        self.schema = schema
        raw: list[pa.Field[Any]] = []
        for column in spec.columns:
            if column.name == spec.event_time_field:
                is_iso = spec.event_time_format == "iso8601"
                raw.append(pa.field(column.name, pa.string() if is_iso else pa.int64()))
            elif (raw_t := ac.raw_type(column.type)) is not None:
                raw.append(pa.field(column.name, raw_t))
        self.raw_schema = pa.schema(raw)
        self.parse_options = pj.ParseOptions(
            explicit_schema=self.raw_schema, unexpected_field_behavior="infer"
        )

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        result = _Result()
        sizes = list(map(len, values))
        data = b"\n".join(values)
        # C-speed checks prove the common case: no value is empty, oversized or holds a
        # newline or CR byte. Only otherwise look at the values one by one.
        clean = (
            bool(values)
            and min(sizes) > 0
            and max(sizes) <= self.spec.max_record_bytes
            and data.count(b"\n") == len(values) - 1
            and b"\r" not in data
        )
        if clean:
            fast = list(range(len(values)))
        else:
            fast = self._triage(values, result)
            sizes = [sizes[i] for i in fast]
            data = b"\n".join([values[i] for i in fast])
        if fast:
            self._vectorized(_Block(fast, data, sizes), result)
        if result.slow:
            self._per_record(values, sorted(result.slow), result)
        return self._assemble(result)

    def decode_per_record(self, values: Sequence[bytes]) -> DecodedBatch:
        """Decode with the per-record path only: the reference ``decode`` must match."""
        result = _Result()
        self._per_record(values, list(range(len(values))), result)
        return self._assemble(result)

    def _triage(self, values: Sequence[bytes], result: _Result) -> list[int]:
        fast: list[int] = []
        limit = self.spec.max_record_bytes
        for i, value in enumerate(values):
            if len(value) > limit:
                detail = f"{len(value)} bytes > limits.max_record_bytes={limit}"
                result.rejected.append(Rejected(i, OVERSIZED, detail))
            elif value[:1] == b"{" and b"\n" not in value and b"\r" not in value:
                fast.append(i)
            else:
                result.slow.append(i)
        return fast

    def _vectorized(self, block: _Block, result: _Result) -> None:
        """Parse ``block`` whole; on failure split it and retry the parts.

        The split is at the failing row when the reader names it (everything before it
        parsed), else in the middle. Past a failure budget the rest goes per-record.
        """
        pending = [(0, len(block.idx))]
        budget = max(8, len(block.idx) // 256)
        while pending:
            lo, hi = pending.pop()
            try:
                self._parse_block(block, lo, hi, result)
                continue
            except _FALLBACK_ERRORS as err:
                budget -= 1
                match = _ROW_RE.search(str(err))
                row = lo + int(match.group(1)) if match else -1
            if budget <= 0 or hi - lo <= SLOW_LEAF:
                result.slow.extend(block.idx[lo:hi])
            elif lo <= row < hi:
                result.slow.append(block.idx[row])
                pending.extend(r for r in ((row + 1, hi), (lo, row)) if r[0] < r[1])
            else:
                mid = (lo + hi) // 2
                pending.extend(((mid, hi), (lo, mid)))
        for lo, hi in pending:  # left over once the budget ran out
            result.slow.extend(block.idx[lo:hi])

    def _parse_block(self, block: _Block, lo: int, hi: int, result: _Result) -> None:
        buffer = block.buffer.slice(block.starts[lo], block.starts[hi] - block.starts[lo] - 1)
        idx = block.idx[lo:hi]
        table = pj.read_json(
            # The stubs accept only Python files; Arrow's zero-copy readers work too.
            cast("IO[bytes]", pa.BufferReader(buffer)),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(buffer.size + 1, 4096)),
            parse_options=self.parse_options,
        )
        if table.num_rows != len(idx):  # e.g. two objects on one line
            raise ac.UnconformableError("row count differs from record count")
        if not block.ascii:
            table.validate(full=True)  # the reader does not check UTF-8 itself
        table = table.combine_chunks()
        arrays: list[ac.Arr] = []
        bad = pa.array([False] * len(idx), pa.bool_())
        for column in self.spec.columns:
            raw = _column(table, column.name)
            if column.name == self.spec.event_time_field:
                arr = self._event_time(raw)
                bad = ac.any_of(bad, ac.implausible(arr))
            elif pa.types.is_int32(column.type):
                bad = ac.any_of(bad, ac.out_of_int32(raw))
                arr = pc.cast(raw, pa.int32(), safe=False)  # overflowing rows are dropped
            else:
                arr = ac.conform(raw, column.type)
            if column.required:
                bad = ac.any_of(bad, arr.is_null())
            arrays.append(arr)
        declared = {c.name for c in self.spec.columns}
        unknown = [_column(table, n).is_valid() for n in table.column_names if n not in declared]
        if self.spec.unknown_fields != "drop":
            for present in unknown:
                bad = ac.any_of(bad, present)
        if self.spec.unknown_fields == "keep_json":
            arrays.append(pa.nulls(len(idx), pa.string()))
        good = pc.invert(bad)
        positions = pa.array(idx, pa.int64())
        result.slow.extend(cast(list[int], positions.filter(bad).to_pylist()))
        for present in unknown:
            result.dropped += int(pc.sum(pc.cast(present.filter(good), pa.int64())).as_py() or 0)
        kept = pa.Table.from_arrays(arrays, schema=self.schema)
        result.pieces.append((positions.filter(good), kept.filter(good)))

    def _event_time(self, raw: ac.Arr) -> ac.Arr:
        target = self.spec.event_time_column.type
        if self.spec.event_time_format == "iso8601":
            return ac.iso_to_timestamp(raw, target)
        return ac.epoch_to_timestamp(raw, self.spec.event_time_format[len("epoch_") :], target)

    def _per_record(self, values: Sequence[bytes], idx: list[int], result: _Result) -> None:
        rows: list[dict[str, Any]] = []
        positions: list[int] = []
        for i in idx:
            outcome = self.records.convert(values[i])
            if isinstance(outcome, Accepted):
                rows.append(outcome.row)
                positions.append(i)
                result.dropped += outcome.unknown_dropped
            else:
                result.rejected.append(Rejected(i, outcome.reason, outcome.detail))
        if rows:
            table = pa.Table.from_pylist(rows, schema=self.schema)
            result.pieces.append((pa.array(positions, pa.int64()), table))

    def _assemble(self, result: _Result) -> DecodedBatch:
        rejected = sorted(result.rejected, key=lambda r: r.index)
        if not result.pieces:
            return DecodedBatch(self.schema.empty_table(), [], rejected, result.dropped)
        positions = pa.concat_arrays([p for p, _ in result.pieces])
        table = pa.concat_tables([t for _, t in result.pieces])
        if len(result.pieces) > 1:
            order = pc.sort_indices(positions)
            positions, table = positions.take(order), table.take(order)
        indices = cast(list[int], positions.to_pylist())
        return DecodedBatch(table.combine_chunks(), indices, rejected, result.dropped)


def _column(table: pa.Table, name: str) -> ac.Arr:
    """One column of a single-chunk table as an array (all-null when absent)."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows)
    column = table.column(name)
    # Arrow's JSON reader yields no chunk for an empty input.
    return cast(ac.Arr, column.chunk(0) if column.num_chunks else pa.nulls(0, column.type))


def _walk(spec: TableSpec) -> list[pa.DataType]:
    types: list[pa.DataType] = []
    stack = [c.type for c in spec.columns]
    while stack:
        t = stack.pop()
        types.append(t)
        stack.extend(t.field(i).type for i in range(t.num_fields))
    return types
