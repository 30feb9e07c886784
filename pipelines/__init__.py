"""sluice: Kafka to data lake (exactly-once Hive-partitioned Parquet on S3) and trace routing."""

__version__ = "0.1.0"
