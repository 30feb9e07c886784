"""Per-partition cut manifests: the intent record that makes replays exactly-once.

Before any object of a cut ``[start, end]`` of topic-partition ``tp`` is written, the worker
writes ``_sluice/<table>/manifests/<topic>/<partition>/<start>.json`` with ``if_absent``. The
first writer wins; everyone after follows the manifest's ``end``. Manifests are kept: they
are the log `sluice verify` checks the table against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from pipelines.errors import TerminalError
from pipelines.writers.store import ObjectStore


@dataclass(frozen=True)
class ObjectEntry:
    key: str
    rows: int


@dataclass(frozen=True)
class Manifest:
    table: str
    topic: str
    partition: int
    start: int
    end: int
    """Last offset of the cut (inclusive)."""
    objects: tuple[ObjectEntry, ...]
    dead_lettered: int
    reason: str
    """Why the cut was made: rows, bytes, age, memory, replay, shutdown."""
    cut_time: int
    """Wall-clock epoch seconds the late/early window was judged against; replays reuse it."""

    def to_json(self) -> bytes:
        d = asdict(self)
        d["objects"] = [asdict(o) for o in self.objects]
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            d = json.loads(data)
            return cls(
                table=d["table"],
                topic=d["topic"],
                partition=int(d["partition"]),
                start=int(d["start"]),
                end=int(d["end"]),
                objects=tuple(ObjectEntry(o["key"], int(o["rows"])) for o in d["objects"]),
                dead_lettered=int(d["dead_lettered"]),
                reason=str(d["reason"]),
                cut_time=int(d["cut_time"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TerminalError(f"corrupt manifest: {err}") from err


def manifest_prefix(table: str, topic: str, partition: int) -> str:
    return f"_sluice/{table}/manifests/{topic}/{partition:05d}/"


def manifest_key(table: str, topic: str, partition: int, start: int) -> str:
    return f"{manifest_prefix(table, topic, partition)}{start:020d}.json"


def read_manifest(
    store: ObjectStore, table: str, topic: str, partition: int, start: int
) -> Manifest | None:
    data = store.get(manifest_key(table, topic, partition, start))
    return None if data is None else Manifest.from_json(data)


def claim(store: ObjectStore, manifest: Manifest) -> Manifest:
    """Write ``manifest`` if no cut was recorded at its start; return the one that stands."""
    key = manifest_key(manifest.table, manifest.topic, manifest.partition, manifest.start)
    if store.put(key, manifest.to_json(), if_absent=True):
        return manifest
    existing = store.get(key)
    if existing is None:  # deleted between our put and get: try once more
        if store.put(key, manifest.to_json(), if_absent=True):
            return manifest
        existing = store.get(key)
        if existing is None:
            raise TerminalError(f"manifest {key} vanished twice")
    return Manifest.from_json(existing)
