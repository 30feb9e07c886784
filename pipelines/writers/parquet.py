"""Arrow table ↔ Parquet bytes, tuned for the engines that scan the lake. Pure: no I/O.

zstd, dictionary encoding and column statistics everywhere; row groups capped at 1M rows
or about 128 MiB of Arrow data; nanosecond timestamps are stored as microseconds (Hive,
Spark and older Trino mis-read ``INT64 TIMESTAMP(NANOS)``), other units as they are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

MAX_ROW_GROUP_ROWS = 1_000_000
TARGET_ROW_GROUP_BYTES = 128 * 1024 * 1024
ZSTD_LEVEL = 3
# Observed on app_logs-like data (zstd-3, dictionary); only used to plan flushes.
ESTIMATED_COMPRESSION_RATIO = 0.2


def encode_parquet(table: pa.Table) -> bytes:
    """Encode ``table`` as one Parquet file; ``pq.read_table`` returns it unchanged
    (except nanosecond timestamps, which come back as microseconds)."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=row_group_rows(table),
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=True,
        write_statistics=True,
        coerce_timestamps="us" if _has_nanoseconds(table.schema) else None,
        allow_truncated_timestamps=False,
        store_schema=True,
    )
    return sink.getvalue().to_pybytes()


def decode_parquet(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """The table in Parquet bytes (``columns`` only, if given), read on the calling thread.

    Not on Arrow's CPU thread pool: a short command (``sluice verify``) that exits right
    after a threaded read can abort in the pool's teardown ("terminate called without an
    active exception", exit 134); objects read here are small, threads gain nothing."""
    wanted = None if columns is None else list(columns)
    return pq.read_table(io.BytesIO(data), columns=wanted, use_threads=False)


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: as many as fit ``TARGET_ROW_GROUP_BYTES``, at most 1M."""
    if table.num_rows == 0:
        return MAX_ROW_GROUP_ROWS
    bytes_per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(MAX_ROW_GROUP_ROWS, TARGET_ROW_GROUP_BYTES // bytes_per_row))


def parquet_bytes_estimate(table: pa.Table) -> int:
    """A rough size of ``encode_parquet(table)`` for flush planning, without encoding."""
    return int(table.nbytes * ESTIMATED_COMPRESSION_RATIO)


def _has_nanoseconds(schema: pa.Schema) -> bool:
    stack: list[pa.DataType] = [f.type for f in schema]
    while stack:
        t = stack.pop()
        if pa.types.is_timestamp(t) and t.unit == "ns":
            return True
        stack.extend(t.field(i).type for i in range(t.num_fields))
    return False
