"""Where each partition's objects live now, in the store itself (catalog or not).

A partition ``dt=…/hr=…`` of table ``t`` lives at ``t/<path>/`` (its *default* directory,
where the live sink writes) until a backfill swaps a rebuilt generation in; from then on it
lives at ``t/_backfill/<run>/<path>/``, recorded as ``_sluice/t/locations/<path>``. The
record is written before the catalog's partition location is changed, so every component
that reads objects directly (``sluice verify``, the live sink, a later backfill) agrees with
the engines once the swap is done. Directories starting with ``_`` are hidden from Hive,
Spark and Trino listings, so a generation is never read twice through the table's root.

The directory a generation replaced is recorded as ``_sluice/t/replaced/<run>/<path>`` only
once the catalog points at the generation (``record_replaced``, the swap's last step), and
deleted once ``grace`` has passed since then (``expire_replaced``), so queries that resolved
the old location just before the swap can still finish. A swap killed between its location
record and its catalog call leaves no replaced record: nothing is deleted until the rerun
completes it. Expiry deletes only a partition's default directory or one of its
generations, never a directory some partition's record names.

Live writes into a swapped partition (records that arrive after the hour was rebuilt) are
written to the default directory as always, and ``follow_location`` copies each such object
into the current generation before its offsets are committed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pipelines.errors import TerminalError, TransientError
from pipelines.writers.store import ObjectStore

log = logging.getLogger(__name__)
RUN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class Location:
    """A partition's current directory (a store key prefix, no trailing slash)."""

    prefix: str
    run: str
    previous: str
    swapped_at: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Location:
        try:
            d = json.loads(data)
            return cls(str(d["prefix"]), str(d["run"]), str(d["previous"]), float(d["swapped_at"]))
        except (ValueError, KeyError, TypeError) as err:
            raise TerminalError(f"corrupt location record: {err}") from err


def check_run_id(run: str) -> str:
    """Run ids name directories: lowercase letters, digits and ``-`` only (no ``=``)."""
    if not run or len(run) > 80 or not set(run) <= RUN_ID_CHARS or run.startswith("-"):
        raise TerminalError(f"run id {run!r}: use 1-80 of [a-z0-9-], not starting with '-'")
    return run


def default_prefix(table: str, path: str) -> str:
    return f"{table}/{path}"


def generation_prefix(table: str, run: str, path: str) -> str:
    return f"{table}/_backfill/{check_run_id(run)}/{path}"


def location_key(table: str, path: str) -> str:
    return f"_sluice/{table}/locations/{path}"


def replaced_key(table: str, run: str, path: str) -> str:
    return f"_sluice/{table}/replaced/{run}/{path}"


def current(store: ObjectStore, table: str, path: str) -> Location | None:
    """The partition's swap record, or None while it lives in its default directory."""
    data = store.get(location_key(table, path))
    return None if data is None else Location.from_json(data)


def current_prefix(store: ObjectStore, table: str, path: str) -> str:
    loc = current(store, table, path)
    return loc.prefix if loc is not None else default_prefix(table, path)


def all_current(store: ObjectStore, table: str) -> dict[str, Location]:
    """Every swapped partition of ``table``: path → record."""
    base = f"_sluice/{table}/locations/"
    out: dict[str, Location] = {}
    for key, _ in store.list(base):
        data = store.get(key)
        if data is not None:
            out[key.removeprefix(base)] = Location.from_json(data)
    return out


def record_swap(store: ObjectStore, table: str, path: str, loc: Location) -> None:
    """Step one of a swap: the partition's objects live at ``loc.prefix`` from now on."""
    store.put(location_key(table, path), loc.to_json())


def record_replaced(
    store: ObjectStore, table: str, path: str, loc: Location, clock: Callable[[], float] = time.time
) -> None:
    """The swap's last step, after the catalog points at ``loc.prefix``: ``loc.previous``
    may be deleted once the grace period has passed from now."""
    if loc.previous != loc.prefix:
        record = json.dumps({"prefix": loc.previous, "at": clock()}).encode()
        store.put(replaced_key(table, loc.run, path), record, if_absent=True)


def follow_location(store: ObjectStore, table: str, path: str, key: str) -> list[str]:
    """Copy the just-written object ``key`` (in ``path``'s default directory) into the
    partition's current generation, if it was swapped; returns the keys written.

    The record is read again after each copy: a swap that happened meanwhile either
    listed the object already or gets the copy now (see the module docstring)."""
    name = key.rsplit("/", 1)[-1]
    written: list[str] = []
    seen: set[str] = set()
    data: bytes | None = None
    for _ in range(5):
        loc = current(store, table, path)
        if loc is None or loc.prefix in seen:
            return written
        seen.add(loc.prefix)
        if data is None:
            data = store.get(key)
            if data is None:  # removed by an expiry meanwhile: the cut is written again
                raise TransientError(f"{key} vanished before it could follow its partition")
        target = f"{loc.prefix}/{name}"
        store.put(target, data)
        written.append(target)
        log.info("%s: late object %s copied into the current generation %s", path, name, target)
    return written


def expire_replaced(
    store: ObjectStore, table: str, grace_seconds: float, clock: Callable[[], float] = time.time
) -> list[str]:
    """Delete directories replaced more than ``grace_seconds`` ago; returns their prefixes.
    A directory that is a partition's current location is never deleted."""
    base = f"_sluice/{table}/replaced/"
    due: list[tuple[str, str]] = []
    for key, _ in list(store.list(base)):
        data = store.get(key)
        if data is None:
            continue
        try:
            record = json.loads(data)
            prefix, at = str(record["prefix"]), float(record["at"])
        except (ValueError, KeyError, TypeError) as err:
            raise TerminalError(f"corrupt replaced record {key}: {err}") from err
        if clock() >= at + grace_seconds:
            due.append((key, prefix))
    if not due:
        return []
    live = {loc.prefix for loc in all_current(store, table).values()}
    done: list[str] = []
    for key, prefix in due:
        path = key.removeprefix(base).split("/", 1)[-1]
        if prefix not in live and _is_partition_dir(table, path, prefix):
            for obj, _ in list(store.list(prefix + "/")):
                store.delete(obj)
            done.append(prefix)
        elif prefix not in live:
            log.warning("%s: %s is not a directory of partition %s; not deleted", key, prefix, path)
        store.delete(key)
    return done


def _is_partition_dir(table: str, path: str, prefix: str) -> bool:
    """``prefix`` is ``path``'s default directory or one of its backfill generations."""
    if prefix == default_prefix(table, path):
        return True
    run = prefix.removeprefix(f"{table}/_backfill/").removesuffix(f"/{path}")
    return prefix == f"{table}/_backfill/{run}/{path}" and set(run) <= RUN_ID_CHARS and run != ""
