"""Routing of spans to destinations: the routing table (``rules``), the conditions its rules
test (``conditions``) and consistent sampling (``sampling``).
Pure: no I/O, no clock, no shared state; safe to use from any worker."""

from pipelines.routing.rules import (
    KINDS,
    STATUSES,
    Decision,
    DropReason,
    RoutingTable,
    Rule,
    Span,
    SpanView,
)
from pipelines.routing.sampling import Sampler

__all__ = [
    "KINDS",
    "STATUSES",
    "Decision",
    "DropReason",
    "RoutingTable",
    "Rule",
    "Sampler",
    "Span",
    "SpanView",
]
