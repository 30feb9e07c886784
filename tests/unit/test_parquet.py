import io
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.writers import parquet
from pipelines.writers.parquet import encode_parquet, parquet_bytes_estimate, row_group_rows


def sample(n: int = 1000) -> pa.Table:
    return pa.table(
        {
            "event_id": pa.array([f"e-{i}" for i in range(n)], pa.string()),
            "ts": pa.array([1_764_043_200_000 + i for i in range(n)], pa.timestamp("ms", tz="UTC")),
            "level": pa.array(["INFO", "WARN"] * (n // 2), pa.string()),
            "status": pa.array([None if i % 7 == 0 else 200 for i in range(n)], pa.int32()),
            "price": pa.array([Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
            "attrs": pa.array(
                [[("k", str(i))] if i % 2 else None for i in range(n)],
                pa.map_(pa.string(), pa.string()),
            ),
            "tags": pa.array([["a", None] for _ in range(n)], pa.list_(pa.string())),
            "_partition": pa.array([3] * n, pa.int32()),
            "_offset": pa.array(range(n), pa.int64()),
        }
    )


def test_round_trip_equals_input_and_uses_zstd() -> None:
    table = sample()
    data = encode_parquet(table)
    assert data[:4] == b"PAR1"
    back = pq.read_table(io.BytesIO(data))
    assert back.equals(table)
    assert back.schema.field("ts").type == pa.timestamp("ms", tz="UTC")  # ms stays ms
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.num_rows == 1000
    for rg in range(meta.num_row_groups):
        for col in range(meta.num_columns):
            column = meta.row_group(rg).column(col)
            assert column.compression == "ZSTD"
            assert column.is_stats_set
    assert meta.row_group(0).column(0).statistics.min == "e-0"


def test_nanoseconds_are_stored_as_microseconds() -> None:
    table = pa.table(
        {
            "t": pa.array(
                [datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)], pa.timestamp("ns", tz="UTC")
            )
        }
    )
    back = pq.read_table(io.BytesIO(encode_parquet(table)))
    assert back.schema.field("t").type == pa.timestamp("us", tz="UTC")
    assert back.column("t").to_pylist() == table.column("t").to_pylist()


def test_row_groups_are_large_but_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert row_group_rows(sample(10)) == 1_000_000
    monkeypatch.setattr(parquet, "TARGET_ROW_GROUP_BYTES", 1 << 20)
    wide = pa.table({"blob": pa.array([b"x" * 10_000] * 300, pa.binary())})
    assert row_group_rows(wide) == (1 << 20) // 10_004  # 10 kB + a 4-byte offset per row
    assert pq.ParquetFile(io.BytesIO(encode_parquet(wide))).metadata.num_row_groups == 3


def test_size_estimate_is_in_the_right_ballpark() -> None:
    table = sample(50_000)
    actual = len(encode_parquet(table))
    assert actual / 5 < parquet_bytes_estimate(table) < actual * 5
    assert encode_parquet(pa.table({"a": pa.array([], pa.int64())}))[:4] == b"PAR1"
