"""The decoder contract: Kafka record values in, one Arrow table plus rejects out.

A decoder is built once per table by ``get_decoder`` and called by the warehouse
pipeline for each batch it takes from one Kafka partition. ``decode`` never raises
for bad input: every input value ends up either as a row of ``table`` or as one
``Rejected`` entry (destined for the dead-letter topic), never both, never neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

import pyarrow as pa

from pipelines.batching.buffer import SourceRecord

UNPARSEABLE: Final = "unparseable"
SCHEMA_VIOLATION: Final = "schema_violation"
OVERSIZED: Final = "oversized"
BAD_TIMESTAMP: Final = "bad_timestamp"
UNKNOWN_FIELD: Final = "unknown_field"


@dataclass(frozen=True)
class Rejected:
    """One input value that cannot become a row."""

    index: int
    """Position in the input batch."""
    reason: str
    """unparseable | schema_violation | oversized | bad_timestamp | unknown_field"""
    detail: str
    """For humans: what was wrong, with the offending field when known."""


@dataclass(frozen=True)
class DecodedBatch:
    """The outcome of one ``decode`` call.

    ``table`` has the spec's ``arrow_schema`` (plus ``_extra`` when unknown fields are
    kept as JSON); its rows are in input order and ``indices[i]`` is the input position
    of row ``i``. ``sorted(indices + [r.index for r in rejected]) == range(len(input))``.
    """

    table: pa.Table
    indices: list[int]
    rejected: list[Rejected] = field(default_factory=list)
    unknown_fields_dropped: int = 0
    """Non-null unknown top-level fields dropped (policy ``drop``)."""


class Decoder(Protocol):
    """Turns raw record values into rows of one table; see the module docstring."""

    def decode(self, values: Sequence[bytes]) -> DecodedBatch:
        """Decode one batch. Pure and thread-safe: no I/O, no state between calls."""
        ...


@runtime_checkable
class RecordsDecoder(Decoder, Protocol):
    """A decoder that reads whole records rather than their values: the trace router's
    ``table`` destination, whose rows were built when the router decoded each record."""

    def decode_records(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        """As ``decode``, with ``indices`` and rejects positions in ``records``."""
        ...
