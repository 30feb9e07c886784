"""The router's ``table`` destination reuses the router's decode: its cuts must encode exactly
as a second decode of the same records (with the routing filter) would."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batching.buffer import PartitionBuffer, SourceRecord
from pipelines.batching.partitions import Cut
from pipelines.decoders.spans import SpansDecoder
from pipelines.destinations.table import RoutedRecord, RoutedRowsDecoder, routed_records
from pipelines.spans import SpanView, get_decoder
from pipelines.spans.table import to_arrow
from pipelines.spans.zipkin import python_zipkin_json
from pipelines.tables import TableSpec, load_table
from pipelines.writers.table_writer import EncodedCut, TableWriter
from tests.unit.test_spans_decode import NOW, build_request

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CUT_TIME = NOW // 10**9


@dataclass(frozen=True)
class Rec:
    offset: int
    value: bytes | None
    key: bytes | None = None


@pytest.fixture(scope="module")
def spec() -> TableSpec:
    return load_table(SCHEMAS / "spans.yaml")


def keep(span: SpanView) -> bool:
    """A stand-in for the routing table: deterministic, drops some spans of each message."""
    return span.span_id[-1] % 3 != 0


def records() -> list[Rec]:
    out = []
    for i in range(7):
        req = build_request(spans_per_scope=2 + i % 3)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:  # distinct ids per message
                    span.span_id = bytes([i + 1]) + span.span_id[1:]
        out.append(Rec(100 + i, req.SerializeToString(), key=b"k%d" % i))
    out.insert(3, Rec(103, b"\xff garbage"))  # unparseable: no rows, still in the cut
    out.insert(5, Rec(105, None))  # a tombstone: dead-lettered by the writer
    return [Rec(200 + i, r.value, r.key) for i, r in enumerate(out)]


def route(recs: list[Rec]) -> list[list[SpanView]]:
    decoder = get_decoder()
    return [[s for s in decoder.decode(r.value or b"", NOW).batch.spans if keep(s)] for r in recs]


def encode(spec: TableSpec, decoder: Any, recs: list[Any]) -> EncodedCut:
    writer = TableWriter(spec, decoder, None, "", None, 1 << 20)  # type: ignore[arg-type]
    return writer.encode(Cut("spans.in", 2, recs[0].offset, recs, "age", 0, 0.0), CUT_TIME)


@pytest.mark.parametrize("native", [True, False], ids=["native-rows", "python-rows"])
def test_routed_rows_encode_like_a_second_decode(
    spec: TableSpec, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows built from the router's spans equal a second decode's; one side's rows are built
    natively from the message bytes and the other's in Python, both ways round."""
    import pipelines.decoders.spans as warehouse_side
    import pipelines.destinations.table as router_side

    def python_rows_refused(*args: Any) -> None:
        raise AssertionError("the Python rows were built where the native ones should be")

    monkeypatch.setattr(router_side if native else warehouse_side, "to_arrow", python_rows_refused)
    recs = records()
    decoder = SpansDecoder(spec, "otlp_proto", keep, report_rejects=False)
    assert decoder.otlp_proto
    decoder.otlp_proto = not native
    again = encode(spec, decoder, recs)
    # Two fetched batches, each turned into rows at once; the cut spans both.
    shares = route(recs)
    routed = routed_records(recs[:4], shares[:4], spec.arrow_schema, native) + routed_records(
        recs[4:], shares[4:], spec.arrow_schema, native
    )
    shared = encode(spec, RoutedRowsDecoder(spec.arrow_schema), routed)
    assert [o.key for o in shared.objects] == [o.key for o in again.objects]
    assert sum(o.rows for o in shared.objects) == sum(len(s) for s in shares) > 0
    for mine, theirs in zip(shared.objects, again.objects, strict=True):
        got = pq.read_table(io.BytesIO(mine.data))
        assert got.equals(pq.read_table(io.BytesIO(theirs.data)))
        assert got.column("_offset").to_pylist() == sorted(got.column("_offset").to_pylist())
    assert [(d.offset, d.reason) for d in shared.letters] == [
        (d.offset, d.reason) for d in again.letters
    ]


def test_a_cut_may_end_inside_a_fetched_batch(spec: TableSpec) -> None:
    recs = records()
    routed = routed_records(recs, route(recs), spec.arrow_schema)
    decoder = RoutedRowsDecoder(spec.arrow_schema)
    first, rest = decoder.decode_records(routed[:6]), decoder.decode_records(routed[6:])
    whole = decoder.decode_records(routed)
    assert first.table.num_rows + rest.table.num_rows == whole.table.num_rows
    assert first.indices + [6 + i for i in rest.indices] == whole.indices
    assert decoder.decode([]).table.num_rows == 0
    with pytest.raises(TypeError):
        decoder.decode_records([Rec(1, b"")])


def test_routed_records_count_their_rows_against_the_memory_budget(spec: TableSpec) -> None:
    recs = records()
    routed = routed_records(recs, route(recs), spec.arrow_schema)
    assert all(isinstance(r, RoutedRecord) for r in routed)
    values = sum(len(r.value or b"") for r in recs)
    rows = routed[0].rows if isinstance(routed[0], RoutedRecord) else None
    assert rows is not None
    buffer = PartitionBuffer(start=0)
    buffer.add(routed, 0.0)
    assert buffer.nbytes == sum(r.nbytes for r in routed if isinstance(r, RoutedRecord))
    assert values < buffer.nbytes <= values + rows.nbytes
    buffer.cut(1.0)
    assert buffer.nbytes == 0
    plain: list[SourceRecord] = list(recs)
    buffer = PartitionBuffer(start=0)
    buffer.add(plain, 2.0)
    assert buffer.nbytes == values  # a plain record holds its value only


def test_rows_are_the_same_when_zipkin_built_the_attribute_texts_first(spec: TableSpec) -> None:
    value = build_request().SerializeToString()
    fresh = list(get_decoder().decode(value, NOW).batch)
    seen = list(get_decoder().decode(value, NOW).batch)
    python_zipkin_json(seen)  # fills SpanView.texts (the native encoder does not)
    assert all(s.texts is not None for s in seen)
    assert to_arrow(seen, spec.arrow_schema).equals(to_arrow(fresh, spec.arrow_schema))
    assert [s.texts for s in fresh] == [s.texts for s in seen]  # to_arrow filled them too


async def test_commits_land_only_where_a_cut_of_the_table_begins(
    spec: TableSpec, tmp_path: Path
) -> None:
    """A new owner starts where the old one committed: that must be where one of the old
    owner's cuts began (a manifest), or it would cut differently and store rows twice."""
    import asyncio

    from pipelines.batching.buffer import MemoryBudget, RotationPolicy
    from pipelines.destinations.table import TableDestination
    from pipelines.writers.store import LocalStore

    @dataclass(frozen=True)
    class TP:
        topic: str
        partition: int

    done: list[int] = []
    table = TableDestination(
        "lake",
        spec,
        ["spans.in"],
        LocalStore(tmp_path.as_uri()),
        None,  # type: ignore[arg-type]  # nothing here is dead-lettered
        RotationPolicy(max_rows=3, max_bytes=1 << 30, max_age_seconds=3600),
        MemoryBudget(1 << 30),
        lambda tp, offset, gen: done.append(offset),
        lambda tps: None,
        lambda tps: None,
        lambda err: pytest.fail(repr(err)),
        1 << 20,
    )
    tp = TP("spans.in", 2)
    recs = [r for r in records() if r.value and not r.value.startswith(b"\xff")][:7]
    recs = [Rec(300 + i, r.value, r.key) for i, r in enumerate(recs)]
    shares = route(recs)

    async def cut(lo: int, hi: int) -> None:
        table.add(tp, recs[lo:hi], shares[lo:hi], [(r.offset, 1) for r in recs[lo:hi]])
        async with asyncio.timeout(10):
            while len(done) < hi:
                table.tick()
                await asyncio.sleep(0.01)

    table.add(tp, recs[:1], shares[:1], [(300, 1)])
    assert table.commit_point(tp, 305) == 300  # nothing durable yet: where it started
    await cut(1, 3)
    await cut(3, 6)  # cuts 300-302 and 303-305 are durable
    table.add(tp, recs[6:], shares[6:], [(306, 1)])
    assert table.commit_point(tp, 299) is None
    assert table.commit_point(tp, 302) == 300  # inside the first cut: back to its start
    assert table.commit_point(tp, 304) == 303
    assert table.commit_point(tp, 306) == 306
    assert table.commit_point(TP("sluice.retry.x.lake", 0), 41) == 41  # not a span topic
    table.drop([tp])


def test_a_message_whose_rows_overflow_a_column_is_dead_lettered_not_retried(
    spec: TableSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows past Arrow's 2 GiB per column (faked here) fail the batch's one call: the rows
    are then built message by message, and the message that cannot fit alone is
    dead-lettered (oversized) while the others' rows are written as usual."""
    import pipelines.destinations.table as router_side

    recs = records()
    shares = route(recs)
    poison = {id(s) for s in shares[2]}
    assert poison
    real = router_side.to_arrow

    def capped(spans: Any, schema: Any) -> Any:
        if any(id(s) in poison for s in spans):
            raise pa.ArrowCapacityError("array cannot contain more than 2147483646 bytes")
        return real(spans, schema)

    monkeypatch.setattr(router_side, "native_rows", lambda *args, **kw: None)
    monkeypatch.setattr(router_side, "to_arrow", capped)
    routed = routed_records(recs, shares, spec.arrow_schema, True)
    assert [r.count for r in routed] == [0 if i == 2 else len(s) for i, s in enumerate(shares)]
    assert "2147483646" in routed[2].rejected and not any(r.rejected for r in routed[3:])
    writer = TableWriter(
        spec, RoutedRowsDecoder(spec.arrow_schema), None, "", None, 1 << 20, screens_records=False
    )  # type: ignore[arg-type]  # encode only
    cut = writer.encode(Cut("spans.in", 2, recs[0].offset, routed, "age", 0, 0.0), CUT_TIME)
    assert [(d.offset, d.reason) for d in cut.letters] == [(recs[2].offset, "oversized")]
    rows = sum(o.rows for o in cut.objects)
    assert rows == sum(len(s) for i, s in enumerate(shares) if i != 2) > 0


def test_the_warehouse_spans_decoder_rejects_a_message_whose_rows_overflow(
    spec: TableSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in `sluice warehouse` with the spans table: the batch is decoded message by
    message, and the one that does not fit alone is rejected as oversized."""
    import pipelines.decoders.spans as warehouse_side

    recs = records()
    real = warehouse_side.to_arrow

    def capped(spans: Any, schema: Any) -> Any:
        if any(s.span_id[0] == 3 for s in spans):  # the spans of recs[2]
            raise pa.ArrowCapacityError("array cannot contain more than 2147483646 bytes")
        return real(spans, schema)

    monkeypatch.setattr(warehouse_side, "native_rows", lambda *args, **kw: None)
    monkeypatch.setattr(warehouse_side, "to_arrow", capped)
    decoder = SpansDecoder(spec, "otlp_proto")
    values = [r.value or b"" for r in recs]
    whole = decoder.decode(values)
    assert [(r.index, r.reason) for r in whole.rejected] == [(2, "oversized"), (3, "unparseable")]
    assert 2 not in whole.indices and whole.table.num_rows == len(whole.indices) > 0
    assert sorted(set(whole.indices)) == [0, 1, 4, 6, 7, 8]


def test_a_message_over_the_tables_record_limit_is_dead_lettered_by_the_table(
    spec: TableSpec,
) -> None:
    """The router's message limit may be higher than the spans contract's: a message within
    the router's but over the table's gets no rows and an oversized letter, as in
    `sluice warehouse`; messages with no spans for the table are not the table's business."""
    recs = records()
    shares = route(recs)
    limit = min(len(r.value or b"") for r, s in zip(recs, shares, strict=True) if s) + 1
    routed = routed_records(recs, shares, spec.arrow_schema, True, max_record_bytes=limit)
    over = [
        i for i, (r, s) in enumerate(zip(recs, shares, strict=True)) if s and len(r.value) > limit
    ]
    assert over and len(over) < sum(1 for s in shares if s)
    assert [i for i, r in enumerate(routed) if r.rejected] == over  # type: ignore[attr-defined]
    writer = TableWriter(
        spec, RoutedRowsDecoder(spec.arrow_schema), None, "", None, 1 << 20, screens_records=False
    )  # type: ignore[arg-type]  # encode only
    cut = writer.encode(Cut("spans.in", 2, recs[0].offset, routed, "age", 0, 0.0), CUT_TIME)
    assert [(d.offset, d.reason) for d in cut.letters] == [
        (recs[i].offset, "oversized") for i in over
    ]
    assert sum(o.rows for o in cut.objects) == sum(
        len(s) for i, s in enumerate(shares) if i not in over
    )
