"""Prometheus metrics of a worker. One registry per process; names are stable API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RECORDS_IN = Counter(
    "sluice_records_in_total", "Records consumed from Kafka", ["table"], registry=REGISTRY
)
RECORDS_WRITTEN = Counter(
    "sluice_records_written_total",
    "Rows written to committed objects",
    ["table"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "sluice_records_dead_lettered_total",
    "Records sent to the DLQ",
    ["table", "reason"],
    registry=REGISTRY,
)
UNKNOWN_FIELDS_DROPPED = Counter(
    "sluice_unknown_fields_dropped_total",
    "Unknown fields dropped by the decoder",
    ["table"],
    registry=REGISTRY,
)
LATE_RECORDS = Counter(
    "sluice_late_records_total",
    "Records outside the table's time window",
    ["table", "kind", "policy"],
    registry=REGISTRY,
)
BYTES_WRITTEN = Counter(
    "sluice_bytes_written_total", "Parquet bytes uploaded", ["table"], registry=REGISTRY
)
OBJECTS_WRITTEN = Counter(
    "sluice_objects_written_total", "Parquet objects uploaded", ["table"], registry=REGISTRY
)
CUTS = Counter("sluice_cuts_total", "Cuts made, by reason", ["table", "reason"], registry=REGISTRY)
CUT_REPLAYS = Counter(
    "sluice_cut_replays_total",
    "Cuts found already recorded in a manifest and rewritten identically (after a crash)",
    ["table"],
    registry=REGISTRY,
)
WRITE_RETRIES = Counter(
    "sluice_write_retries_total",
    "Cut writes retried after a transient error (store or broker unavailable)",
    ["topic"],
    registry=REGISTRY,
)
REWINDS = Counter(
    "sluice_rewinds_total",
    "Newly owned partitions whose first fetch started past the committed offset (re-read)",
    ["topic"],
    registry=REGISTRY,
)
UPLOAD_SECONDS = Histogram(
    "sluice_upload_seconds",
    "Time to upload one object",
    ["table"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge(
    "sluice_consumer_lag",
    "High watermark minus committed offset",
    ["topic", "partition"],
    registry=REGISTRY,
)
OLDEST_UNFLUSHED_SECONDS = Gauge(
    "sluice_oldest_unflushed_seconds",
    "Age of the oldest buffered record not yet committed",
    registry=REGISTRY,
)
BUFFERED_BYTES = Gauge(
    "sluice_buffered_bytes", "Bytes held in buffers and in-flight cuts", registry=REGISTRY
)
PAUSED = Gauge(
    "sluice_paused_partitions",
    "Partitions not fetched because of backpressure (backlog or memory budget)",
    registry=REGISTRY,
)
