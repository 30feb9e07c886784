"""Query engines reading our tables back: Spark (pyspark, through the Hive Metastore over
s3a), Trino (its hive catalog on the same metastore) and DuckDB (S3 globs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pipelines.devstack.components import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, StackConfig
from pipelines.devstack.duckdb_s3 import duckdb_over_s3

HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.3.4"  # = the Hadoop bundled with pyspark 3.5.9


def spark_session(stack_env: dict[str, str]) -> Any:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    cfg = StackConfig.from_env()
    ivy = cfg.cache_dir / "ivy"
    ivy.mkdir(parents=True, exist_ok=True)
    s3 = stack_env["AWS_ENDPOINT_URL_S3"]
    b = (
        SparkSession.builder.master("local[2]")
        .appName("sluice-tests")
        .config("spark.jars.packages", HADOOP_AWS)
        .config("spark.jars.ivy", str(ivy))
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(Path(cfg.state_dir) / "spark-warehouse"))
        .config("spark.hadoop.hive.metastore.uris", stack_env["HIVE_METASTORE_URI"])
        .config("spark.hadoop.fs.s3a.endpoint", s3)
        .config("spark.hadoop.fs.s3a.path.style.access", "true")
        .config("spark.hadoop.fs.s3a.directory.marker.retention", "keep")
        .config("spark.hadoop.fs.s3a.multiobjectdelete.enable", "false")
        .config("spark.hadoop.fs.s3a.connection.ssl.enabled", "false")
        .config("spark.hadoop.fs.s3a.access.key", LOCAL_ACCESS_KEY)
        .config("spark.hadoop.fs.s3a.secret.key", LOCAL_SECRET_KEY)
        .config(
            "spark.hadoop.fs.s3a.aws.credentials.provider",
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        )
        .enableHiveSupport()
    )
    return b.getOrCreate()


def trino_query(stack_env: dict[str, str], schema: str, sql: str) -> list[list[Any]]:
    import trino

    url = stack_env["TRINO_URL"].removeprefix("http://")
    host, port = url.split(":")
    conn = trino.dbapi.connect(
        host=host, port=int(port), user="sluice", catalog="hive", schema=schema
    )
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return [list(r) for r in cur.fetchall()]
    finally:
        conn.close()


def duckdb_s3(stack_env: dict[str, str]) -> Any:
    return duckdb_over_s3(stack_env["AWS_ENDPOINT_URL_S3"].removeprefix("http://"))
