"""``sluice verify``: a table checked against Kafka, offset by offset.

For every Kafka partition of the table's topics, the offsets whose records were appended in
``[from, to)`` (Kafka record time, found with ``offsets_for_times``) and already committed by
the sink's group must each be in the table exactly once, or in the dead-letter topic. The
evidence is read, not trusted: the table's Parquet objects are read (their
``_partition``/``_offset`` columns only), the cut manifests are checked against the objects
they name, and the dead-letter topic is read for this table's records.

Which objects: by default those of the table partitions (hours) that can hold the range's
offsets: every partition an object of a cut manifest covering the range lies in (manifests
are named by their first offset, so finding them costs one listing per Kafka partition),
and every partition a backfill run over intersecting offsets swapped in; every object in
those partitions is read, whatever cut wrote it. Cost: proportional to the range, not to the
table. ``--full`` reads every object and manifest of the table instead: it also finds a
stray copy of the range's rows in a partition no cut of the range wrote to.

Reported, each with the objects involved: offsets missing (a gap), offsets present twice (a
duplicate object or overlapping cuts), objects a manifest names that are gone, and objects
in the partitions read that no manifest names. Hours a backfill swapped in are read from
their current generation and checked against that run's record; replaced directories are
ignored.
"""

from __future__ import annotations

import bisect
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipelines.backfill.plan import Plan, plan_key
from pipelines.backfill.swap import hour_key, objects_in
from pipelines.catalog.finalizer import object_partition
from pipelines.catalog.locations import Location, all_current, default_prefix
from pipelines.errors import ConfigError, Problem, TransientError
from pipelines.tables import TableSpec
from pipelines.writers.manifest import Manifest, manifest_key, manifest_prefix
from pipelines.writers.parquet import decode_parquet
from pipelines.writers.store import ObjectStore

TP = tuple[str, int]


@dataclass
class Report:
    """What ``verify`` found; ``ok`` when nothing is wrong."""

    checked: dict[TP, tuple[int, int]] = field(default_factory=dict)
    """Per partition, the offset range [lo, hi) checked."""
    rows: int = 0
    dead_lettered: int = 0
    objects_read: int = 0
    partitions_read: int = 0
    gaps: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    missing_objects: list[str] = field(default_factory=list)
    unreferenced_objects: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.gaps or self.duplicates or self.missing_objects or self.unreferenced_objects
        )

    def lines(self) -> list[str]:
        out = [
            f"{t}[{p}]: offsets {lo}-{hi - 1}" if hi > lo else f"{t}[{p}]: no offsets"
            for (t, p), (lo, hi) in sorted(self.checked.items())
        ]
        out.append(f"rows {self.rows}, dead-lettered {self.dead_lettered}")
        out.append(f"read {self.objects_read} objects in {self.partitions_read} partitions")
        for title, items in (
            ("GAP", self.gaps),
            ("DUPLICATE", self.duplicates),
            ("MISSING OBJECT", self.missing_objects),
            ("UNREFERENCED OBJECT", self.unreferenced_objects),
        ):
            out.extend(f"{title}: {item}" for item in items)
        out.append("OK: every offset exactly once" if self.ok else "MISMATCH")
        return out


def _ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted offsets → inclusive runs."""
    runs: list[tuple[int, int]] = []
    for o in sorted(offsets):
        if runs and o == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], o)
        else:
            runs.append((o, o))
    return runs


async def offset_ranges(
    bootstrap: str, group: str, topics: Iterable[str], start: datetime, end: datetime
) -> dict[TP, tuple[int, int]]:
    """Per partition, [first offset at/after ``start``, first at/after ``end``), capped at
    what ``group`` has committed. ``ConfigError`` if the group committed nothing at all."""
    topics = list(topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        meta = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(meta.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.offsets_for_times({tp: int(start.timestamp() * 1000) for tp in tps})
        lasts = await consumer.offsets_for_times({tp: int(end.timestamp() * 1000) for tp in tps})
        out: dict[TP, tuple[int, int]] = {}
        committed = {tp: await consumer.committed(tp) for tp in tps}
        if tps and all(c is None for c in committed.values()):
            raise ConfigError(
                [
                    Problem(
                        "warehouse.group_id",
                        f"group {group} has committed nothing on {', '.join(topics)}: "
                        "there is nothing to check (is it the group that writes this table?)",
                    )
                ]
            )
        for tp in tps:
            lo = firsts[tp].offset if firsts[tp] is not None else ends[tp]
            hi = lasts[tp].offset if lasts[tp] is not None else ends[tp]
            done = committed[tp] or 0
            out[(tp.topic, tp.partition)] = (lo, max(lo, min(hi, done)))
        return out
    finally:
        await consumer.stop()


def _letter_source(
    headers: Sequence[tuple[str, bytes | None]], table: str
) -> tuple[TP, int] | None:
    """(source partition, offset) of a dead letter of ``table``; None for another table's
    letter or one without readable source headers (it cannot account for an offset)."""
    h = {k: v.decode(errors="replace") for k, v in headers if v is not None}
    if h.get("sluice.table") != table:
        return None
    try:
        topic = h["sluice.source.topic"]
        return (topic, int(h["sluice.source.partition"])), int(h["sluice.source.offset"])
    except (KeyError, ValueError):
        return None


async def dead_lettered(
    bootstrap: str, table: str, topics: Iterable[str], suffix: str, read_timeout: float = 120.0
) -> dict[TP, set[int]]:
    """Source offsets of this table's records in the dead-letter topics, read to the end
    offsets seen at the start; ``TransientError`` if that takes over ``read_timeout``."""
    out: dict[TP, set[int]] = defaultdict(set)
    for topic in topics:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            meta = await consumer._client.fetch_all_metadata()
            parts = meta.partitions_for_topic(topic + suffix) or set()
            tps = [TopicPartition(topic + suffix, p) for p in parts]
            if not tps:
                continue
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + read_timeout
            while remaining:
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"{topic + suffix}: not read to its end in {read_timeout:.0f}s "
                        f"({len(remaining)} partitions left); without it every dead letter "
                        "would look like a gap"
                    )
                batch = await consumer.getmany(*remaining, timeout_ms=2000)
                for records in batch.values():
                    for rec in records:
                        src = _letter_source(rec.headers, table)
                        if src is not None:
                            out[src[0]].add(src[1])
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
    return out


def verify_table(
    spec: TableSpec,
    store: ObjectStore,
    ranges: dict[TP, tuple[int, int]],
    letters: dict[TP, set[int]],
    full: bool = False,
) -> Report:
    """Check every offset of ``ranges`` against the table's objects, manifests and letters.

    By default only the partitions (hours) that can hold offsets of ``ranges`` are read: those
    named by the cut manifests covering the ranges, and those a backfill run over
    intersecting offsets swapped in. ``full`` reads every object and manifest of the table
    instead, which also finds stray copies of the range's rows in unrelated partitions."""
    report = Report(checked=dict(ranges))
    seen: dict[TP, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    swapped = all_current(store, spec.name)

    def current_dir(path: str) -> str:
        loc = swapped.get(path)
        return loc.prefix if loc is not None else default_prefix(spec.name, path)

    manifests = _all_manifests(store, spec) if full else _range_manifests(store, spec, ranges)
    if full:
        keys = [
            k
            for k, _ in store.list(f"{spec.name}/")
            if k.endswith(".parquet")
            and k.rsplit("/", 1)[0] == current_dir(object_partition(k, spec.name))
        ]
        hours = set(swapped)
    else:
        hours = {object_partition(e.key, spec.name) for _, m in manifests for e in m.objects}
        hours |= _backfilled(store, spec, swapped, ranges)
        keys = [k for path in sorted(hours) for k in objects_in(store, current_dir(path))]
    existing = set(keys)
    report.partitions_read = len({k.rsplit("/", 1)[0] for k in keys})
    for key in keys:
        data = store.get(key)
        if data is None:
            continue
        report.objects_read += 1
        table = decode_parquet(data, ["_partition", "_offset"])
        topic = key.rsplit("/", 1)[-1].rsplit("-", 2)[0]
        if topic not in spec.topics:  # a renamed copy: attribute it to the (first) topic
            topic = spec.topics[0]
        for p, o in zip(
            table.column("_partition").to_pylist(), table.column("_offset").to_pylist(), strict=True
        ):
            seen[(topic, int(p or 0))][int(o or 0)].append(key)
    referenced: set[str] = set()  # as they would be named in the partition's current place

    def named(key: str, rows: int, what: str) -> None:
        path = object_partition(key, spec.name)
        here = f"{current_dir(path)}/{key.rsplit('/', 1)[-1]}"
        referenced.add(here)
        if here not in existing:
            report.missing_objects.append(f"{key} ({rows} rows of {what})")

    def refer(mkey: str, m: Manifest, check: bool) -> None:
        for entry in m.objects:
            path = object_partition(entry.key, spec.name)
            if path in swapped or not check:
                # Rebuilt since (only a late copy would be in the generation), or a cut
                # outside the range: it accounts for objects, its own are not checked.
                referenced.add(f"{current_dir(path)}/{entry.key.rsplit('/', 1)[-1]}")
                continue
            what = f"{m.topic}[{m.partition}] {m.start}-{m.end}, named by {mkey}"
            named(entry.key, entry.rows, what)

    for mkey, m in manifests:
        refer(mkey, m, check=True)
    if not full:  # objects of the read partitions from cuts outside the range
        loaded = {mkey for mkey, _ in manifests}
        for key in sorted(existing):
            owner = _manifest_of(spec, key)
            if owner is not None and owner not in loaded:
                loaded.add(owner)
                data = store.get(owner)
                if data is not None:
                    refer(owner, Manifest.from_json(data), check=False)
    for path in sorted(hours & set(swapped)):
        loc = swapped[path]
        data = store.get(hour_key(spec.name, loc.run, path))
        if data is None:
            report.missing_objects.append(f"{loc.prefix}/ (the record of backfill run {loc.run})")
            continue
        for key, rows in json.loads(data)["objects"]:
            named(str(key), int(rows), f"{path}, backfill run {loc.run}")
    report.unreferenced_objects = sorted(existing - referenced)
    for tp, (lo, hi) in sorted(ranges.items()):
        offsets = seen.get(tp, {})
        lettered = letters.get(tp, set())
        missing, doubled = [], []
        for o in range(lo, hi):
            where = offsets.get(o, [])
            if len(where) > 1:
                doubled.append((o, where))
            elif not where and o not in lettered:
                missing.append(o)
            if where:
                report.rows += 1
            elif o in lettered:
                report.dead_lettered += 1
        for a, b in _ranges(missing):
            report.gaps.append(f"{tp[0]}[{tp[1]}] offsets {a}-{b} ({b - a + 1}) in no object")
        for o, where in doubled[:20]:
            report.duplicates.append(f"{tp[0]}[{tp[1]}] offset {o} in {', '.join(sorted(where))}")
        if len(doubled) > 20:
            report.duplicates.append(f"{tp[0]}[{tp[1]}] ... {len(doubled)} duplicated offsets")
    return report


def _all_manifests(store: ObjectStore, spec: TableSpec) -> list[tuple[str, Manifest]]:
    out = []
    for topic in spec.topics:
        for mkey, _ in store.list(f"_sluice/{spec.name}/manifests/{topic}/"):
            data = store.get(mkey)
            if data is not None:
                out.append((mkey, Manifest.from_json(data)))
    return out


def _range_manifests(
    store: ObjectStore, spec: TableSpec, ranges: dict[TP, tuple[int, int]]
) -> list[tuple[str, Manifest]]:
    """The cuts of each partition from the last one starting at or before ``lo`` up to
    the last one starting before ``hi`` (manifest keys are named by their start offset)."""
    out = []
    for (topic, p), (lo, hi) in sorted(ranges.items()):
        if hi <= lo:
            continue
        starts = sorted(
            int(k.rsplit("/", 1)[-1].removesuffix(".json"))
            for k, _ in store.list(manifest_prefix(spec.name, topic, p))
            if k.endswith(".json")
        )
        first = max(bisect.bisect_right(starts, lo) - 1, 0)
        for start in starts[first : bisect.bisect_left(starts, hi)]:
            mkey = manifest_key(spec.name, topic, p, start)
            data = store.get(mkey)
            if data is not None:
                m = Manifest.from_json(data)
                if m.end >= lo:
                    out.append((mkey, m))
    return out


def _backfilled(
    store: ObjectStore,
    spec: TableSpec,
    swapped: dict[str, Location],
    ranges: dict[TP, tuple[int, int]],
) -> set[str]:
    """Partitions swapped in by a backfill run whose re-read offsets meet ``ranges``."""
    plans: dict[str, Plan | None] = {}
    out: set[str] = set()
    for path, loc in swapped.items():
        if loc.run not in plans:
            data = store.get(plan_key(spec.name, loc.run))
            plans[loc.run] = None if data is None else Plan.from_json(data)
        plan = plans[loc.run]
        if plan is None:  # no plan to judge by: read the partition
            out.add(path)
            continue
        for tp, (lo, hi) in plan.ranges.items():
            a, b = ranges.get(tp, (0, 0))
            if max(lo, a) < min(hi, b):
                out.add(path)
                break
    return out


def _manifest_of(spec: TableSpec, key: str) -> str | None:
    """The manifest of the cut that wrote ``<topic>-<partition>-<start>.parquet``."""
    parts = key.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return manifest_key(spec.name, parts[0], int(parts[1]), int(parts[2]))
