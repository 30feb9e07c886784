"""Prometheus metrics of the trace router (same registry as the warehouse's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from pipelines.metrics import REGISTRY

SPANS_IN = Counter(
    "sluice_spans_in_total", "Spans decoded from Kafka", ["topic"], registry=REGISTRY
)
DELIVERED = Counter(
    "sluice_spans_delivered_total",
    "Spans accepted by a destination",
    ["destination"],
    registry=REGISTRY,
)
RETRIED = Counter(
    "sluice_spans_retried_total",
    "Spans in delivery attempts that failed",
    ["destination"],
    registry=REGISTRY,
)
DIVERTED = Counter(
    "sluice_spans_diverted_total",
    "Spans written to the destination's retry topic",
    ["destination"],
    registry=REGISTRY,
)
SAMPLED_OUT = Counter(
    "sluice_spans_sampled_out_total",
    "Spans dropped by sampling",
    ["destination"],
    registry=REGISTRY,
)
DROPPED = Counter(
    "sluice_spans_dropped_total",
    "Spans no route wanted (drop rule, no route)",
    ["reason"],
    registry=REGISTRY,
)
DEAD_LETTERED = Counter(
    "sluice_span_messages_dead_lettered_total",
    "Messages sent to the dead-letter topic",
    ["topic", "reason"],
    registry=REGISTRY,
)
QUEUE_SPANS = Gauge(
    "sluice_destination_queue_spans",
    "Spans waiting for a destination",
    ["destination"],
    registry=REGISTRY,
)
BREAKER_OPEN = Gauge(
    "sluice_destination_breaker_open",
    "1 while the breaker is not closed",
    ["destination"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "sluice_destination_send_seconds",
    "Time to deliver one batch",
    ["destination"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    "sluice_trace_consumer_lag",
    "High watermark minus committed offset",
    ["topic", "partition"],
    registry=REGISTRY,
)
