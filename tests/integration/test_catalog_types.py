"""Every contract type round-trips through the sink and reads alike in Spark, Trino and DuckDB:
timestamps (ms and us, UTC), decimals, lists, maps, structs and binary."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.enginekit import duckdb_s3, trino_query
from tests.sinkkit import create_topic, produce, start_worker, stop_worker, wait_committed

BUCKET = "lake"
pytestmark = pytest.mark.timeout(300)
CONTRACT = {
    "table": "typed_events",
    "encoding": "json",
    "event_time": {"field": "ts", "format": "epoch_ms"},
    "partitioning": "hourly",
    "late_data": {"max_past": "30d", "max_future": "1h", "policy": "write"},
    "columns": [
        {"name": "id", "type": "string", "required": True},
        {"name": "ts", "type": "timestamp[ms]", "required": True},
        {"name": "ts_us", "type": "timestamp[us]"},
        {"name": "amount", "type": "decimal(12,3)"},
        {"name": "tags", "type": "list<string>"},
        {"name": "counts", "type": "map<string,int64>"},
        {"name": "geo", "type": "struct<lat:float64,lon:float64>"},
        {"name": "blob", "type": "binary"},
    ],
}


async def test_types_read_alike_in_every_engine(
    bootstrap, stack_env, s3, unique, tmp_path, subprocess_env, spark
) -> None:
    topic, group = f"{unique}.typed", f"{unique}-g"
    await create_topic(bootstrap, topic, 1)
    ts = (int(time.time()) // 3600 - 2) * 3_600_000 + 1234
    record = {
        "id": "r1",
        "ts": ts,
        "ts_us": "2026-11-25T05:06:07.123456Z",
        "amount": "12345.678",
        "tags": ["a", "b"],
        "counts": {"x": 1, "y": 2},
        "geo": {"lat": 1.5, "lon": -2.25},
        "blob": "bytes-1",
    }
    await produce(bootstrap, topic, [(0, json.dumps(record).encode())])
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "typed_events.yaml").write_text(yaml.safe_dump({**CONTRACT, "topics": [topic]}))
    config = tmp_path / "sluice.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": bootstrap},
                "s3": {"endpoint_url": stack_env["AWS_ENDPOINT_URL_S3"]},
                "warehouse": {
                    "root": f"s3://{BUCKET}/{unique}",
                    "schemas_dir": str(schemas),
                    "group_id": group,
                    "rotation": {"max_age": "1s"},
                },
                "catalog": {
                    "type": "hive",
                    "uri": stack_env["HIVE_METASTORE_URI"],
                    "database": unique,
                },
                "metrics": {"port": 0},
            }
        )
    )
    worker = start_worker(config, tmp_path / "worker.log", subprocess_env)
    try:
        await wait_committed(bootstrap, group, topic, {0: 1}, 90, [worker])
    finally:
        assert stop_worker(worker) == 0

    want = [
        "r1",
        "2026-11-25 05:06:07.123456",
        "12345.678",
        2,
        "b",
        2,
        -2.25,
        "bytes-1",
        ts // 1000,
    ]
    trino = trino_query(
        stack_env,
        unique,
        "select id, cast(ts_us as varchar), cast(amount as varchar), cardinality(tags), tags[2], "
        "element_at(counts, 'y'), geo.lon, from_utf8(blob), to_unixtime(ts) from typed_events",
    )
    spark.catalog.refreshTable(f"{unique}.typed_events")
    sparked = spark.sql(
        "select id, cast(ts_us as string), cast(amount as string), size(tags), tags[1], "
        "counts['y'], geo.lon, cast(blob as string), unix_millis(ts) / 1000 "
        f"from {unique}.typed_events"
    ).collect()
    duck = (
        duckdb_s3(stack_env)
        .execute(
            "select id, strftime(ts_us, '%Y-%m-%d %H:%M:%S.%f'), cast(amount as varchar), "
            "len(tags), tags[2], counts['y'], geo.lon, decode(blob), epoch_ms(ts) / 1000 "
            "from read_parquet("
            f"'s3://{BUCKET}/{unique}/typed_events/*/*/*.parquet')"
        )
        .fetchall()
    )
    for name, rows in (("trino", trino), ("spark", [list(r) for r in sparked]), ("duckdb", duck)):
        assert len(rows) == 1, name
        row = list(rows[0])
        assert row[:8] == want[:8], (name, row)
        assert float(row[8]) == ts / 1000, (name, row)
