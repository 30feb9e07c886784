"""Routing table and sampling: pure unit tests (no Kafka, no HTTP).

Scenario folders under ``tests/testdata/routing/`` (the OTel routing connector's style):
``config.yaml`` (``destinations`` and the routes section), ``spans.yaml`` (sample spans),
``expected.yaml`` (destination → span names it receives) and, optionally, ``dropped.yaml``
(drop reason → span names); without it every span must reach some destination.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.errors import ConfigError
from pipelines.routing import KINDS, STATUSES, Decision, RoutingTable, Sampler, Span
from pipelines.settings import parse_duration

SCENARIOS = Path(__file__).resolve().parents[1] / "testdata" / "routing"
DESTS = {"jaeger", "tempo", "zipkin", "table"}
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")


def make_span(
    name: str = "op",
    *,
    trace_id: bytes = TRACE,
    kind: str = "internal",
    status: str = "unset",
    duration_ms: float = 1.0,
    resource: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=hashlib.blake2b(name.encode(), digest_size=8).digest(),
        name=name,
        kind=KINDS[kind],
        status_code=STATUSES[status],
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_000_000_000 + round(duration_ms * 1e6),
        resource=resource or {},
        attributes=attributes or {},
    )


def table(text: str, destinations: set[str] = DESTS) -> RoutingTable:
    return RoutingTable.load(yaml.safe_load(text), destinations)


# ---- scenarios ------------------------------------------------------------------------------


def _span_from_yaml(raw: dict[str, Any]) -> Span:
    name = raw["name"]
    trace_hex = raw.get("trace_id")
    trace_id = (
        bytes.fromhex(trace_hex)
        if trace_hex
        else hashlib.blake2b(name.encode(), digest_size=16).digest()
    )
    return make_span(
        name,
        trace_id=trace_id,
        kind=raw.get("kind", "internal"),
        status=raw.get("status", "unset"),
        duration_ms=parse_duration(raw.get("duration", "1ms")) * 1000,
        resource=raw.get("resource"),
        attributes=raw.get("attributes"),
    )


def _scenarios() -> Iterator[Path]:
    return iter(sorted(p for p in SCENARIOS.iterdir() if p.is_dir()))


@pytest.mark.parametrize("folder", list(_scenarios()), ids=lambda p: p.name)
def test_scenario(folder: Path) -> None:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    known = set(config["destinations"])
    routing = RoutingTable.load(config, known)
    spans = [_span_from_yaml(s) for s in yaml.safe_load((folder / "spans.yaml").read_text())]
    assert len({s.name for s in spans}) == len(spans), "span names must be unique"
    expected = yaml.safe_load((folder / "expected.yaml").read_text())
    dropped_file = folder / "dropped.yaml"
    expected_dropped = yaml.safe_load(dropped_file.read_text()) if dropped_file.exists() else {}

    got: dict[str, list[str]] = {}
    got_dropped: dict[str, list[str]] = {}
    for span in spans:
        decision = routing.route(span)
        assert (decision.dropped is None) == bool(decision.destinations), decision
        for dest in decision.destinations:
            got.setdefault(dest, []).append(span.name)
        if decision.dropped is not None:
            got_dropped.setdefault(decision.dropped, []).append(span.name)
    assert got == {d: list(names) for d, names in expected.items()}
    assert got_dropped == expected_dropped


def test_every_scenario_folder_is_complete() -> None:
    folders = list(_scenarios())
    assert len(folders) >= 6
    for folder in folders:
        for name in ("config.yaml", "spans.yaml", "expected.yaml"):
            assert (folder / name).is_file(), f"{folder.name} lacks {name}"


# ---- conditions, each positive and negative -------------------------------------------------

CONDITION_CASES = [
    # (match, span kwargs, matches?)
    ("resource: {service.name: cart}", {"resource": {"service.name": "cart"}}, True),
    ("resource: {service.name: cart}", {"resource": {"service.name": "carts"}}, False),
    ("resource: {service.name: cart}", {}, False),
    ("resource: {service.name: [a, cart]}", {"resource": {"service.name": "cart"}}, True),
    ("resource: {service.name: [a, b]}", {"resource": {"service.name": "cart"}}, False),
    ("resource: {service.name: {regex: '^ca'}}", {"resource": {"service.name": "cart"}}, True),
    ("resource: {service.name: {regex: 'rt$'}}", {"resource": {"service.name": "cart"}}, True),
    ("resource: {service.name: {regex: '^art'}}", {"resource": {"service.name": "cart"}}, False),
    ("resource: {service.name: {exists: true}}", {"resource": {"service.name": "x"}}, True),
    ("resource: {service.name: {exists: true}}", {}, False),
    ("resource: {service.name: {exists: false}}", {}, True),
    ("resource: {service.name: {exists: false}}", {"resource": {"service.name": "x"}}, False),
    ("attributes: {http.route: /cart}", {"attributes": {"http.route": "/cart"}}, True),
    ("attributes: {http.route: /cart}", {"resource": {"http.route": "/cart"}}, False),
    ("attributes: {code: 500}", {"attributes": {"code": 500}}, True),
    ("attributes: {code: 500}", {"attributes": {"code": "500"}}, False),
    ("attributes: {ratio: 1}", {"attributes": {"ratio": 1.0}}, True),
    ("attributes: {flag: true}", {"attributes": {"flag": True}}, True),
    ("attributes: {flag: true}", {"attributes": {"flag": 1}}, False),
    ("attributes: {level: 1}", {"attributes": {"level": True}}, False),
    ("attributes: {code: {regex: '^5'}}", {"attributes": {"code": 500}}, False),
    ("attributes: {q: {exists: true}}", {"attributes": {"q": ""}}, True),
    ("name: GET /cart", {"name": "GET /cart"}, True),
    ("name: GET /cart", {"name": "GET /carts"}, False),
    ("name: [a, GET /cart]", {"name": "GET /cart"}, True),
    ("name: {regex: '^GET '}", {"name": "GET /cart"}, True),
    ("name: {regex: '^GET '}", {"name": "POST /cart"}, False),
    ("kind: [server, consumer]", {"kind": "consumer"}, True),
    ("kind: [server, consumer]", {"kind": "client"}, False),
    ("kind: SERVER", {"kind": "server"}, True),
    ("kind: unspecified", {"kind": "unspecified"}, True),
    ("status: [error]", {"status": "error"}, True),
    ("status: [error]", {"status": "unset"}, False),
    ("status: [unset, ok]", {"status": "ok"}, True),
    ("min_duration: 250ms", {"duration_ms": 250}, True),
    ("min_duration: 250ms", {"duration_ms": 249.999}, False),
    ("max_duration: 2s", {"duration_ms": 2000}, True),
    ("max_duration: 2s", {"duration_ms": 2000.001}, False),
    ("{min_duration: 1s, max_duration: 2s}", {"duration_ms": 1500}, True),
    ("{min_duration: 1s, max_duration: 2s}", {"duration_ms": 2500}, False),
    (
        "{kind: server, resource: {env: prod}}",
        {"kind": "server", "resource": {"env": "prod"}},
        True,
    ),
    (
        "{kind: server, resource: {env: prod}}",
        {"kind": "server", "resource": {"env": "dev"}},
        False,
    ),
    (
        "{kind: server, resource: {env: prod}}",
        {"kind": "client", "resource": {"env": "prod"}},
        False,
    ),
    ("{}", {}, True),
]


@pytest.mark.parametrize(("match", "span_kwargs", "matches"), CONDITION_CASES)
def test_condition(match: str, span_kwargs: dict[str, Any], matches: bool) -> None:
    match = match if match.startswith("{") else "{" + match + "}"
    routing = table(f"routes: [{{name: r, match: {match}, to: [jaeger]}}]\ndefault: [table]")
    decision = routing.route(make_span(**span_kwargs))
    assert decision.destinations == ({"jaeger"} if matches else {"table"})
    assert decision.matched == (("r",) if matches else ())


# ---- rule semantics -------------------------------------------------------------------------

ORDERED = """
routes:
  - {name: a, match: {kind: server}, to: [jaeger], continue: %s}
  - {name: b, match: {status: error}, to: [tempo]}
  - {name: c, match: {status: error}, to: [zipkin]}
default: [table]
"""


def test_first_match_wins_by_default() -> None:
    d = table(ORDERED % "false").route(make_span(kind="server", status="error"))
    assert d.destinations == {"jaeger"}
    assert d.matched == ("a",)
    assert d.dropped is None


def test_continue_lets_later_rules_match_until_a_terminal_one() -> None:
    d = table(ORDERED % "true").route(make_span(kind="server", status="error"))
    assert d.destinations == {"jaeger", "tempo"}  # c is after the terminal b
    assert d.matched == ("a", "b")


def test_continue_rule_alone_still_reaches_the_default() -> None:
    d = table(ORDERED % "true").route(make_span(kind="server"))
    assert d.destinations == {"jaeger", "table"}
    assert d.matched == ("a",)


def test_fan_out_to_several_destinations() -> None:
    routing = table("routes: [{name: all, to: [jaeger, zipkin, tempo]}]")
    assert routing.route(make_span()).destinations == {"jaeger", "zipkin", "tempo"}


def test_default_route_and_empty_default() -> None:
    rules = "routes: [{name: prod, match: {resource: {env: prod}}, to: [jaeger]}]\n"
    unmatched = make_span(resource={"env": "dev"})
    d = table(rules + "default: [zipkin, table]").route(unmatched)
    assert d == Decision(frozenset({"zipkin", "table"}), (), None)
    d = table(rules + "default: []").route(unmatched)
    assert (d.destinations, d.dropped) == (frozenset(), "no_route")
    d = table(rules).route(unmatched)  # no default key: empty
    assert d.dropped == "no_route"


def test_drop_rule_drops_with_reason_rule() -> None:
    routing = table(
        """
routes:
  - {name: health, match: {name: {regex: health}}, drop: true}
  - {name: all, to: [jaeger]}
default: [table]
"""
    )
    d = routing.route(make_span("GET /health"))
    assert (d.destinations, d.matched, d.dropped) == (frozenset(), ("health",), "rule")
    assert routing.route(make_span("GET /cart")).destinations == {"jaeger"}


def test_drop_after_continue_keeps_what_was_selected() -> None:
    routing = table(
        """
routes:
  - {name: archive, to: [table], continue: true}
  - {name: health, match: {name: {regex: health}}, drop: true}
  - {name: all, to: [jaeger]}
default: [zipkin]
"""
    )
    d = routing.route(make_span("GET /health"))
    assert d == Decision(frozenset({"table"}), ("archive", "health"), None)


# ---- sampling -------------------------------------------------------------------------------


def _trace_ids(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


@pytest.mark.parametrize("seed", [None, "tier-a"])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.9])
def test_sampled_fraction_is_close_to_the_ratio(ratio: float, seed: str | None) -> None:
    sampler = Sampler(ratio, seed=seed)
    ids = _trace_ids(20_000)
    kept = sum(sampler.keeps(t, 0) for t in ids) / len(ids)
    assert abs(kept - ratio) < 0.02
    assert abs(kept - ratio) < 5 * (ratio * (1 - ratio) / len(ids)) ** 0.5  # 5 sigma


def test_ratio_one_keeps_everything() -> None:
    sampler = Sampler(1.0)
    assert all(sampler.keeps(t, 0) for t in [bytes(16), *_trace_ids(1000)])


def test_randomness_is_stable_across_processes_and_versions() -> None:
    # Golden values: a change here reshuffles which traces are kept during a rolling deploy.
    trace = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert Sampler(0.5).randomness(trace) == 0xCE929D0E0E4736  # W3C: the low 7 bytes
    assert Sampler(0.5, seed="a").randomness(trace) == 0xA6AD6887045450
    assert Sampler(0.25).threshold == 3 << 54


def test_every_span_of_a_trace_gets_the_same_decision_in_every_worker() -> None:
    config = """
routes:
  - {name: s, to: [jaeger], sample: {ratio: 0.3}}
default: [table]
"""
    worker_a, worker_b = table(config), table(config)  # two separately loaded tables
    rng = random.Random(1)
    traces = _trace_ids(500)
    decisions: dict[bytes, set[frozenset[str]]] = {}
    for _ in range(5_000):
        t = rng.choice(traces)
        span = make_span(f"op{rng.randrange(50)}", trace_id=t, kind=rng.choice(list(KINDS)))
        a, b = worker_a.route(span), worker_b.route(span)
        assert a == b
        decisions.setdefault(t, set()).add(a.destinations)
    assert all(len(seen) == 1 for seen in decisions.values())
    kept = sum(seen == {frozenset({"jaeger"})} for seen in decisions.values())
    assert 0 < kept < len(decisions)  # both outcomes occur: the test could fail


def test_different_seeds_sample_independently() -> None:
    ids = _trace_ids(20_000)
    a, b, unseeded = Sampler(0.5, seed="a"), Sampler(0.5, seed="b"), Sampler(0.5)
    ka = [a.keeps(t, 0) for t in ids]
    kb = [b.keeps(t, 0) for t in ids]
    ku = [unseeded.keeps(t, 0) for t in ids]
    both = sum(x and y for x, y in zip(ka, kb, strict=True)) / len(ids)
    assert abs(both - 0.25) < 0.02  # independent: P(a and b) = P(a) P(b)
    both_u = sum(x and y for x, y in zip(ka, ku, strict=True)) / len(ids)
    assert abs(both_u - 0.25) < 0.02
    same_seed = Sampler(0.5, seed="a")
    assert [same_seed.keeps(t, 0) for t in ids] == ka


def test_unseeded_samplers_nest() -> None:
    ids = _trace_ids(5_000)
    small, large = Sampler(0.1), Sampler(0.5)
    assert all(large.keeps(t, 0) for t in ids if small.keeps(t, 0))


def test_keep_errors_keeps_error_spans_of_sampled_out_traces() -> None:
    out = bytes(16)  # randomness 0: sampled out at any ratio below 1
    assert not Sampler(0.99).keeps(out, STATUSES["ok"])
    assert Sampler(0.99, keep_errors=True).keeps(out, STATUSES["error"])
    assert not Sampler(0.99, keep_errors=True).keeps(out, STATUSES["ok"])
    assert not Sampler(0.99, keep_errors=False).keeps(out, STATUSES["error"])


def test_sampled_out_span_is_counted_and_may_still_reach_other_rules() -> None:
    routing = table(
        """
routes:
  - {name: viz, to: [jaeger], sample: {ratio: 0.5}, continue: true}
  - {name: errors, match: {status: error}, to: [zipkin]}
default: []
"""
    )
    out = bytes(16)
    d = routing.route(make_span(trace_id=out))
    assert d == Decision(frozenset(), ("viz",), "sampling", frozenset({"jaeger"}))
    d = routing.route(make_span(trace_id=out, status="error"))
    assert d == Decision(frozenset({"zipkin"}), ("viz", "errors"), None, frozenset({"jaeger"}))


def test_sampled_out_counts_only_destinations_not_reached_and_drop_wins_as_reason() -> None:
    routing = table(
        """
routes:
  - {name: viz, to: [jaeger, tempo], sample: {ratio: 0.5}, continue: true}
  - {name: noise, match: {name: noise}, drop: true}
  - {name: errors, match: {status: error}, to: [jaeger]}
default: []
"""
    )
    out = bytes(16)
    d = routing.route(make_span(trace_id=out, status="error"))
    assert d == Decision(frozenset({"jaeger"}), ("viz", "errors"), None, frozenset({"tempo"}))
    d = routing.route(make_span("noise", trace_id=out))
    assert (d.destinations, d.dropped) == (frozenset(), "rule")


# ---- lazy attributes ------------------------------------------------------------------------


class StrictMapping(Mapping[str, Any]):
    """Fails the test on any read of a key outside ``allowed``, and on iteration."""

    def __init__(self, data: dict[str, Any], allowed: set[str]) -> None:
        self.data, self.allowed = data, allowed
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> Any:
        if key not in self.allowed:
            raise AssertionError(f"router read unreferenced attribute {key!r}")
        self.reads.append(key)
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("router iterated an attribute mapping")

    def __len__(self) -> int:
        raise AssertionError("router asked an attribute mapping's length")


LAZY = """
routes:
  - {name: a, match: {attributes: {http.route: /cart}}, to: [jaeger]}
  - {name: b, match: {attributes: {http.route: /pay}, resource: {service.name: pay}},
     to: [tempo]}
  - {name: c, match: {kind: server, attributes: {expensive: x}}, to: [zipkin]}
default: [table]
"""


def _lazy_span(route: str, kind: str = "internal") -> tuple[Span, StrictMapping, StrictMapping]:
    resource = StrictMapping({"service.name": "pay", "host": "h"}, {"service.name"})
    attrs = StrictMapping({"http.route": route, "secret": "s", "expensive": "x"}, {"http.route"})
    span = make_span(kind=kind)
    return (
        Span(
            **{
                **{f: getattr(span, f) for f in span.__slots__},
                "resource": resource,
                "attributes": attrs,
            }
        ),
        resource,
        attrs,
    )


def test_router_reads_only_referenced_attributes_each_once() -> None:
    routing = table(LAZY)
    assert routing.attribute_keys == {"http.route", "expensive"}
    assert routing.resource_keys == {"service.name"}
    span, resource, attrs = _lazy_span("/pay")
    assert routing.route(span).destinations == {"tempo"}
    assert attrs.reads == ["http.route"]  # rules a and b both reference it: read once
    assert resource.reads == ["service.name"]
    span, resource, attrs = _lazy_span("/other")  # rule c's kind fails before `expensive`
    assert routing.route(span).destinations == {"table"}
    assert routing.explain(span)[-1].startswith("decision: destinations [table]")


def test_cheap_conditions_are_evaluated_before_attributes() -> None:
    routing = table("routes: [{name: r, match: {attributes: {x: 1}, kind: server}, to: [jaeger]}]")
    span, _, attrs = _lazy_span("/cart", kind="client")
    attrs.allowed = set()  # any attribute read fails the test
    assert routing.route(span).dropped == "no_route"


# ---- validation -----------------------------------------------------------------------------

BAD = """
routes:
  - name: one
    match:
      resource: {service.name: {regex: "(unclosed"}}
      colour: red
      kind: [server, sever]
      min_duration: soon
    to: [jaeger, jaegr]
    sample: {ratio: 1.5}
  - name: one
    to: []
  - name: neither
    match: {name: {exists: true}}
  - name: both
    drop: true
    to: [jaeger]
    continue: true
  - name: shadow
    match: {min_duration: 2s, max_duration: 1s, status: fine}
    to: jaeger
    sample: {ratio: 0, keep_errors: maybe, extra: 1}
    whatever: 1
  - just a string
default: [nowhere]
"""


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        table(BAD)
    problems = {p.path: p.reason for p in info.value.problems}
    r = "traces.routes"
    assert set(problems) == {
        f"{r}[0].match.resource['service.name'].regex",
        f"{r}[0].match.colour",
        f"{r}[0].match.kind[1]",
        f"{r}[0].match.min_duration",
        f"{r}[0].to[1]",
        f"{r}[0].sample.ratio",
        f"{r}[1].name",
        f"{r}[1].to",
        f"{r}[2].match.name.exists",
        f"{r}[2].to",
        f"{r}[3].drop",
        f"{r}[3].continue",
        f"{r}[4].match.max_duration",
        f"{r}[4].match.status",
        f"{r}[4].sample.ratio",
        f"{r}[4].sample.keep_errors",
        f"{r}[4].sample.extra",
        f"{r}[4].whatever",
        f"{r}[5]",
        "traces.default[0]",
    }
    assert (
        "missing ), unterminated subpattern"
        in problems[f"{r}[0].match.resource['service.name'].regex"]
    )
    assert "valid conditions: resource, attributes, name, kind" in problems[f"{r}[0].match.colour"]
    assert "valid values: unspecified, internal, server" in problems[f"{r}[0].match.kind[1]"]
    assert "'soon' is not a duration" in problems[f"{r}[0].match.min_duration"]
    unknown = problems[f"{r}[0].to[1]"]
    assert (
        "unknown destination 'jaegr'; known destinations: jaeger, table, tempo, zipkin" in unknown
    )
    assert "(0, 1]" in problems[f"{r}[0].sample.ratio"]
    assert "duplicate rule name 'one' (also traces.routes[0])" in problems[f"{r}[1].name"]
    assert "drop: true" in problems[f"{r}[2].to"]
    assert (
        "valid keys here: name, match, to, drop, sample, continue" in problems[f"{r}[4].whatever"]
    )
    assert str(info.value).startswith("configuration has 20 problem(s):")


def test_a_custom_path_prefixes_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RoutingTable.load({"routes": "nope", "default": "x"}, {"a"}, path="pipelines.traces")
    assert [p.path for p in info.value.problems] == [
        "pipelines.traces.routes",
        "pipelines.traces.default",
    ]


def test_non_mapping_config_is_one_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RoutingTable.load(["routes"], DESTS)
    assert [p.path for p in info.value.problems] == ["traces"]


# ---- explain --------------------------------------------------------------------------------

EXPLAINED = """
routes:
  - {name: payments, match: {kind: server, resource: {service.name: [pay, billing]}},
     to: [tempo]}
  - {name: slow, match: {min_duration: 250ms}, to: [jaeger], sample: {ratio: 0.5}}
  - {name: never, to: [zipkin]}
default: [table]
"""


def test_explain_names_the_failing_condition_and_the_sampling_decision() -> None:
    routing = table(EXPLAINED)
    span = make_span(
        "GET /x",
        kind="server",
        duration_ms=300,
        trace_id=bytes(16),
        resource={"service.name": "cart"},
    )
    lines = routing.explain(span)
    text = "\n".join(lines)
    assert lines[0].startswith("span 'GET /x': trace 0000")
    assert (
        "rule 'payments' (routes[0]): no match: resource['service.name'] is 'cart', "
        "expected in ['pay', 'billing']"
    ) in text
    assert "rule 'slow' (routes[1]): matched: to jaeger" in text
    assert "sampled out" in text and "ratio 0.5" in text
    assert "rule 'never' (routes[2]): not evaluated" in text
    assert lines[-1] == (
        "decision: destinations [], matched [slow], dropped sampling, sampled out of [jaeger]"
    )
    d = routing.route(span)
    assert (d.destinations, d.matched, d.dropped) == (frozenset(), ("slow",), "sampling")


def test_explain_shows_absent_values_kind_names_and_the_default() -> None:
    routing = table(
        "routes: [{name: k, match: {kind: server}, to: [jaeger]},"
        " {name: e, match: {attributes: {env: prod}}, to: [zipkin]}]\ndefault: [table]"
    )
    lines = routing.explain(make_span(kind="client"))
    assert "rule 'k' (routes[0]): no match: kind is client, expected in [server]" in lines
    assert (
        "rule 'e' (routes[1]): no match: attributes['env'] is absent, expected == 'prod'" in lines
    )
    assert "default: reached the end of the rules: to table" in lines
