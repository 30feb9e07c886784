"""Record decoders: bytes from Kafka → Arrow rows of one table. Looked up by encoding name."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.decoders.base import DecodedBatch, Decoder, Rejected
from pipelines.decoders.json import JsonDecoder
from pipelines.errors import ConfigError, Problem
from pipelines.tables import TableSpec

__all__ = ["DECODERS", "DecodedBatch", "Decoder", "Rejected", "get_decoder"]

DECODERS: dict[str, Callable[[TableSpec], Decoder]] = {
    "json": JsonDecoder,
    # Span messages into a spans table (one row per span): see decoders/spans.py.
    "otlp_proto": lambda spec: _spans(spec, "otlp_proto"),
    "otlp_json": lambda spec: _spans(spec, "otlp_json"),
    "zipkin_json": lambda spec: _spans(spec, "zipkin_json"),
}


def _spans(spec: TableSpec, encoding: str) -> Decoder:
    # Imported here: pipelines.spans itself imports the reason codes of this package.
    from pipelines.decoders.spans import SpansDecoder

    return SpansDecoder(spec, encoding)


def get_decoder(name: str, spec: TableSpec) -> Decoder:
    """Build the decoder for ``spec``; an unknown ``name`` lists the valid ones."""
    factory = DECODERS.get(name)
    if factory is None:
        valid = ", ".join(sorted(DECODERS))
        raise ConfigError(
            [Problem("encoding", f"unknown encoding {name!r}; valid encodings: {valid}")],
            source=spec.source,
        )
    return factory(spec)
