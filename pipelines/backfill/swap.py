"""Swapping rebuilt hours in: carry-over, checks, and the one-call location change.

For every hour of the run, once every chunk is done:

1. **Check** (all hours, before any swap): the rows the current objects hold at offsets the
   run re-read must all reappear in a rebuilt hour or be dead-lettered by the rebuild. Rows
   that now decode to an hour outside the run would vanish from the table: the job stops
   and names them (widen ``--from``/``--to``).
2. **Record** the partition's new location in the store (``locations.record_swap``); from now
   on live writes into the hour are copied into the generation too.
3. **Carry over** from the current objects every row at an offset the run did not re-read
   (records that arrived outside the window), under the object's own name (rows before the
   range) or named by their first offset (rows after it), then mark ``_SUCCESS`` if the old
   location had one, and write the hour's record (objects, rows before and after).
4. **Swap** the catalog partition's location: one metastore call, so a query plans against
   the old directory or the new one, never both; then record the old directory as replaced
   (``locations.record_replaced``): it is kept for the grace period from then on
   (``locations.expire_replaced``). A kill before this record leaves the old directory
   untouched until a rerun finishes the hour.

Every step is idempotent, so a killed job redoes the hour and several processes may finish
the same run at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.backfill.plan import Plan, run_prefix
from pipelines.backfill.rebuild import Chunk, ChunkResult
from pipelines.catalog.base import Catalog
from pipelines.catalog.locations import (
    Location,
    current,
    default_prefix,
    generation_prefix,
    record_replaced,
    record_swap,
)
from pipelines.errors import TerminalError
from pipelines.tables import TableSpec
from pipelines.writers.parquet import decode_parquet, encode_parquet
from pipelines.writers.store import ObjectStore

log = logging.getLogger(__name__)


def hour_key(table: str, run: str, path: str) -> str:
    return f"{run_prefix(table, run)}hours/{path}.json"


@dataclass
class HourSummary:
    path: str
    rows_before: int = 0
    rows_after: int = 0
    rebuilt: int = 0
    carried: int = 0
    objects: list[tuple[str, int]] = field(default_factory=list)


def previous_prefix(store: ObjectStore, table: str, run: str, path: str) -> str:
    """Where the hour lives now (or lived, if this run already recorded its swap)."""
    loc = current(store, table, path)
    if loc is None:
        return default_prefix(table, path)
    return loc.previous if loc.run == run else loc.prefix


def objects_in(store: ObjectStore, prefix: str) -> list[str]:
    """Parquet objects directly in ``prefix`` (not in subdirectories)."""
    base = prefix + "/"
    return [k for k, _ in store.list(base) if k.endswith(".parquet") and "/" not in k[len(base) :]]


def _source(name: str) -> tuple[str, int, int]:
    """``<topic>-<partition>-<first>.parquet`` → (topic, partition, first)."""
    stem = name.removesuffix(".parquet")
    topic, p, first = stem.rsplit("-", 2)
    return topic, int(p), int(first)


def check_moves(
    store: ObjectStore, spec: TableSpec, plan: Plan, results: Mapping[Chunk, ChunkResult]
) -> tuple[dict[str, int], list[str]]:
    """Rows per hour now, and the problems of step 1 (see the module docstring)."""
    accounted: dict[tuple[str, int], list[Any]] = {}
    for (topic, p, _, _), r in results.items():
        arrays = accounted.setdefault((topic, p), [])
        arrays.append(pa.array(r.rejected, pa.int64()))
        for objs in r.objects.values():
            for key, _ in objs:
                data = store.get(key)
                if data is None:
                    raise TerminalError(f"{key}: a rebuilt object is missing; rerun the job")
                t = decode_parquet(data, ["_offset"])
                arrays.append(t.column("_offset").combine_chunks())
    known = {tp: pa.concat_arrays(arrays) for tp, arrays in accounted.items()}
    before: dict[str, int] = {}
    lost: list[str] = []
    for path in plan.hours:
        prefix = previous_prefix(store, spec.name, plan.run, path)
        before[path] = 0
        for key in objects_in(store, prefix):
            data = store.get(key)
            if data is None:
                continue
            topic, p, _ = _source(key.rsplit("/", 1)[-1])
            offsets = decode_parquet(data, ["_offset"]).column("_offset")
            before[path] += len(offsets)
            span = plan.range_of(topic, p)
            if span is None:
                continue
            inside = offsets.filter(
                pc.and_(
                    pc.greater_equal(offsets, pa.scalar(span[0], pa.int64())),
                    pc.less(offsets, pa.scalar(span[1], pa.int64())),
                )
            )
            have = known.get((topic, p), pa.array([], pa.int64()))
            gone = inside.filter(pc.invert(pc.is_in(inside, value_set=have)))
            lost += [f"{topic}[{p}]@{o} (now in {path})" for o in gone.to_pylist()[:5]]
            if len(gone) > 5:
                lost += [f"… {len(gone) - 5} more of {topic}[{p}]"]
    problems = []
    if lost:
        problems = [
            "rows of the table's current hours now decode to hours outside --from/--to and "
            f"would vanish; widen the range: {', '.join(lost[:8])}"
        ]
    return before, problems


def finish_hour(
    store: ObjectStore,
    catalog: Catalog,
    spec: TableSpec,
    plan: Plan,
    path: str,
    rebuilt: list[tuple[str, int]],
    rows_before: int,
    location: str,
) -> HourSummary:
    """Steps 2-4 for one hour; ``location`` is the table's catalog location."""
    new = generation_prefix(spec.name, plan.run, path)
    previous = previous_prefix(store, spec.name, plan.run, path)
    if not rebuilt and not objects_in(store, previous):
        return HourSummary(path)  # nothing before, nothing now: no partition to swap
    loc = Location(new, plan.run, previous, time.time())
    record_swap(store, spec.name, path, loc)
    # Fault injection for the resume test (unset in production): SIGKILL after the n-th
    # hour's location record, before its carry-over and catalog swap.
    kill_at = int(os.environ.get("SLUICE_FAILPOINT_KILL_AT_SWAP", "0") or 0)
    if kill_at and plan.hours.index(path) + 1 == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    summary = HourSummary(path, rows_before=rows_before, rebuilt=sum(n for _, n in rebuilt))
    summary.objects = list(rebuilt)
    summary.carried, carried = _carry_over(store, plan, previous, new)
    summary.objects += carried
    summary.rows_after = summary.rebuilt + summary.carried
    if store.get(f"{previous}/_SUCCESS") is not None:
        store.put(f"{new}/_SUCCESS", b"")
    record = {
        "rows_before": summary.rows_before,
        "rows_after": summary.rows_after,
        "rebuilt": summary.rebuilt,
        "carried": summary.carried,
        "objects": [[k, n] for k, n in sorted(summary.objects)],
        "previous": previous,
    }
    store.put(hour_key(spec.name, plan.run, path), json.dumps(record, sort_keys=True).encode())
    catalog.add_partitions(spec, location, [path])
    catalog.set_partition_location(spec, path, f"{location}/{new.removeprefix(spec.name + '/')}")
    standing = current(store, spec.name, path)
    if standing is not None and standing.run != plan.run:
        # Another run swapped the hour meanwhile: the catalog follows its (later) record.
        there = standing.prefix.removeprefix(spec.name + "/")
        catalog.set_partition_location(spec, path, f"{location}/{there}")
        raise TerminalError(
            f"{path}: backfill run {standing.run} swapped this partition while run {plan.run} "
            f"did; it stays with {standing.run}. Run one backfill per partition at a time"
        )
    record_replaced(store, spec.name, path, loc)
    return summary


def _carry_over(
    store: ObjectStore, plan: Plan, previous: str, new: str
) -> tuple[int, list[tuple[str, int]]]:
    """Copy rows of ``previous`` at offsets the run did not re-read into ``new``."""
    rows, written = 0, []

    def put(target_name: str, data: bytes, n: int) -> None:
        nonlocal rows
        store.put(f"{new}/{target_name}", data)
        rows += n
        written.append((f"{new}/{target_name}", n))

    for key in objects_in(store, previous):
        name = key.rsplit("/", 1)[-1]
        topic, p, start = _source(name)
        data = store.get(key)
        if data is None:
            continue
        offsets = decode_parquet(data, ["_offset"]).column("_offset")
        span = plan.range_of(topic, p) or (0, 0)
        below = pc.less(offsets, pa.scalar(span[0], pa.int64()))
        above = pc.greater_equal(offsets, pa.scalar(span[1], pa.int64()))
        outside = pc.or_(below, above)
        if pc.all(outside).as_py():
            if span[0] <= start < span[1]:
                # A cut that began inside the range but left this hour only rows after it:
                # its name is a chunk's name too, so it is named by its first row instead.
                first = pc.min(offsets).as_py()
                name = f"{topic}-{p:05d}-{first:020d}.parquet"
            # Whole objects keep their names: a live copy of the same object is identical.
            put(name, data, len(offsets))
        elif pc.any(outside).as_py():  # straddles the range: split what is outside it
            table = decode_parquet(data)
            low, high = table.filter(below), table.filter(above)
            if low.num_rows:
                put(name, encode_parquet(low), low.num_rows)
            if high.num_rows:
                first = pc.min(high.column("_offset")).as_py()
                put(f"{topic}-{p:05d}-{first:020d}.parquet", encode_parquet(high), high.num_rows)
    return rows, written
