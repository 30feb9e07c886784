"""The trace router's routing table: ordered rules over a span, compiled once at load.

Semantics of ``routes`` (each rule: ``name``, ``match``, ``to`` or ``drop``, ``sample``,
``continue``) and ``default``:
1. Rules are evaluated in order. A rule matches when every condition of its ``match`` holds
   (no ``match``: every span).
2. A matching ``to`` rule selects its destinations (fan-out); with ``sample``, a sampled-out
   span selects none of them (``Decision.sampled_out`` names them, for the metric).
3. Evaluation stops at the first matching rule unless it says ``continue: true``; then later
   rules are evaluated too and the span reaches the union of what they select.
4. A matching ``drop`` rule stops evaluation: the span goes only where earlier ``continue``
   rules already sent it (put the drop rule first to drop the span entirely).
5. A span that reaches the end of the list (no rule matched, or only ``continue`` rules did)
   goes to ``default`` too, like a firewall's default policy after non-terminal log rules.
6. No destination selected → ``Decision.dropped`` says why: ``rule``, ``sampling``,
   ``no_route``.

Guarantees: ``load`` reports every problem at once, each with its key path; regexes are
compiled once; ``route`` reads from ``span.resource`` / ``span.attributes`` only keys that a
condition it evaluates references, each at most once per span, and only after the rule's
cheap conditions (name, kind, status, duration) have held. Values compare by type: the
string ``"500"`` does not equal the integer ``500``, nor ``true`` the integer ``1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from typing import Literal, Protocol

from pipelines.errors import ConfigError, Problem
from pipelines.routing.sampling import Sampler, parse_sample
from pipelines.settings import parse_duration

__all__ = [
    "CONDITION_KEYS",
    "KINDS",
    "MISSING",
    "STATUSES",
    "AttrValue",
    "Condition",
    "Decision",
    "DropReason",
    "RoutingTable",
    "Rule",
    "Span",
    "SpanView",
]

AttrValue = str | int | float | bool
DropReason = Literal["rule", "sampling", "no_route"]
Source = Literal["span", "resource", "attributes"]
KINDS = {"unspecified": 0, "internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
STATUSES = {"unset": 0, "ok": 1, "error": 2}
CONDITION_KEYS = (
    "resource",
    "attributes",
    "name",
    "kind",
    "status",
    "min_duration",
    "max_duration",
)
RULE_KEYS = ("name", "match", "to", "drop", "sample", "continue")
_MAX_UNIONS = 4096
_COST = {"span": 0, "resource": 1, "attributes": 2}  # evaluation order within a rule
_VALUE_FORMS = "a value, a list of values, {regex: PATTERN} or {exists: true|false}"


class SpanView(Protocol):
    """What the router reads of a span; decoders provide it.

    ``resource`` and ``attributes`` may be lazy: the router only calls ``.get(key, default)``
    on them, for keys that some rule references (``RoutingTable.resource_keys`` and
    ``attribute_keys``); it never iterates them or asks their length.
    """

    @property
    def trace_id(self) -> bytes: ...  # 16 bytes
    @property
    def span_id(self) -> bytes: ...  # 8 bytes
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...  # OTLP SpanKind 0-5, see KINDS
    @property
    def status_code(self) -> int: ...  # 0 unset, 1 ok, 2 error
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def resource(self) -> Mapping[str, AttrValue]: ...
    @property
    def attributes(self) -> Mapping[str, AttrValue]: ...


@dataclass(frozen=True, slots=True)
class Span:
    """A plain, eager ``SpanView``: for tests and sample spans."""

    trace_id: bytes
    span_id: bytes
    name: str
    kind: int = KINDS["internal"]
    status_code: int = STATUSES["unset"]
    start_ns: int = 0
    end_ns: int = 0
    resource: Mapping[str, AttrValue] = field(default_factory=dict)
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "absent"


MISSING: object = _Missing()
"""The value a condition sees for a resource or span attribute the span does not have."""
_UNSEEN = object()


class _Reader:
    """One span's reads during one ``route``: each attribute key is read at most once."""

    __slots__ = ("_attributes", "_resource", "span")

    def __init__(self, span: SpanView) -> None:
        self.span = span
        self._resource: dict[str, object] = {}
        self._attributes: dict[str, object] = {}

    def resource(self, key: str) -> object:
        value = self._resource.get(key, _UNSEEN)
        if value is _UNSEEN:
            value = self._resource[key] = self.span.resource.get(key, MISSING)
        return value

    def attribute(self, key: str) -> object:
        value = self._attributes.get(key, _UNSEEN)
        if value is _UNSEEN:
            value = self._attributes[key] = self.span.attributes.get(key, MISSING)
        return value

    def duration(self) -> int:
        return self.span.end_ns - self.span.start_ns


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition: it holds when ``test(read(reader))``.

    ``source``/``key`` say what it reads (``span``/``kind``, ``resource``/``service.name``);
    ``subject``, ``expect`` and ``show`` word it for ``explain``.
    """

    source: Source
    key: str
    subject: str
    expect: str
    read: Callable[[_Reader], object]
    test: Callable[[object], bool]
    show: Callable[[object], str] = repr


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule; ``index`` is its position in ``routes``."""

    name: str
    index: int
    conditions: tuple[Condition, ...]  # cheapest first
    to: frozenset[str]
    drop: bool
    sampler: Sampler | None
    continue_: bool

    def first_failure(self, reader: _Reader) -> Condition | None:
        """The first condition that does not hold, or None when the rule matches."""
        for cond in self.conditions:
            if not cond.test(cond.read(reader)):
                return cond
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one span goes. ``dropped`` is set exactly when ``destinations`` is empty;
    ``sampled_out`` lists destinations that sampling kept the span from (for metrics)."""

    destinations: frozenset[str]
    matched: tuple[str, ...]
    dropped: DropReason | None
    sampled_out: frozenset[str] = frozenset()


def _combine(parts: list[Decision]) -> Decision:
    """The decision of several matched rules (``continue``), and possibly the default."""
    dests = frozenset[str]().union(*(p.destinations for p in parts))
    sampled_out = frozenset[str]().union(*(p.sampled_out for p in parts)) - dests
    matched = tuple(name for p in parts for name in p.matched)
    dropped: DropReason | None = None
    if not dests:
        if any(p.dropped == "rule" for p in parts):
            dropped = "rule"
        else:
            dropped = "sampling" if sampled_out else "no_route"
    return Decision(dests, matched, dropped, sampled_out)


class RoutingTable:
    """Compiled ``routes`` and ``default``. Immutable but for a bounded memo of decision
    unions; safe to share between tasks and threads."""

    def __init__(self, rules: tuple[Rule, ...], default: frozenset[str]) -> None:
        self.rules = rules
        self.default = default
        self.resource_keys = frozenset(
            c.key for r in rules for c in r.conditions if c.source == "resource"
        )
        self.attribute_keys = frozenset(
            c.key for r in rules for c in r.conditions if c.source == "attributes"
        )
        # Every decision a single rule (or the default) makes, built once: outcome 2i is rule
        # i keeping the span, 2i+1 sampling it out, the last one the default. route()
        # allocates nothing when one rule decides, and memoizes unions of outcomes.
        self._outcomes: tuple[Decision, ...] = (
            *(
                d
                for r in rules
                for d in (
                    Decision(r.to, (r.name,), "rule" if r.drop else None),
                    Decision(frozenset(), (r.name,), "sampling", r.to),
                )
            ),
            Decision(default, (), None if default else "no_route"),
        )
        self._steps = tuple(
            (r.conditions, r.sampler, r.continue_, 2 * i) for i, r in enumerate(rules)
        )
        self._unions: dict[tuple[int, ...], Decision] = {}

    @classmethod
    def load(
        cls, raw: object, destinations: AbstractSet[str], path: str = "traces"
    ) -> RoutingTable:
        """Compile the ``routes``/``default`` of ``raw`` (other keys are left to their owners).

        Raises ``ConfigError`` listing every problem, each with its key path under ``path``.
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError([Problem(path, "expected a mapping with routes and default")])
        problems: list[Problem] = []
        known = frozenset(destinations)
        rules: list[Rule] = []
        routes = raw.get("routes")
        routes = [] if routes is None else routes
        if not isinstance(routes, list):
            problems.append(Problem(f"{path}.routes", "expected a list of rules"))
        else:
            seen: dict[str, str] = {}
            for i, item in enumerate(routes):
                rule = _parse_rule(item, i, f"{path}.routes[{i}]", known, seen, problems)
                if rule is not None:
                    rules.append(rule)
        default = _parse_destinations(
            raw.get("default", []), f"{path}.default", known, problems, allow_empty=True
        )
        if problems:
            raise ConfigError(problems)
        return cls(tuple(rules), default)

    def route(self, span: SpanView) -> Decision:
        """Where ``span`` goes (module docstring, steps 1-6)."""
        reader = _Reader(span)
        taken: list[int] | None = None
        for conditions, sampler, continue_, code in self._steps:
            for cond in conditions:
                if not cond.test(cond.read(reader)):
                    break
            else:
                if sampler is not None and not sampler.keeps(span.trace_id, span.status_code):
                    code += 1  # this rule's sampled-out outcome
                if taken is None:
                    if not continue_:
                        return self._outcomes[code]
                    taken = [code]
                else:
                    taken.append(code)
                    if not continue_:
                        return self._union(tuple(taken))
        if taken is None:
            return self._outcomes[-1]
        taken.append(len(self._outcomes) - 1)
        return self._union(tuple(taken))

    def _union(self, codes: tuple[int, ...]) -> Decision:
        decision = self._unions.get(codes)
        if decision is None:
            decision = _combine([self._outcomes[c] for c in codes])
            if len(self._unions) < _MAX_UNIONS:  # bounded: 2**(continue rules) in theory
                self._unions[codes] = decision
        return decision

    def explain(self, span: SpanView) -> list[str]:
        """Human-readable lines: each rule's outcome (the failing condition, the sampling
        decision), the default, and the decision ``route`` makes."""
        reader = _Reader(span)
        lines = [
            f"span {span.name!r}: trace {span.trace_id.hex()}, kind {_kind_name(span.kind)}, "
            f"status {_status_name(span.status_code)}, "
            f"duration {_show_duration(reader.duration())}"
        ]
        stopped = False
        for rule in self.rules:
            label = f"rule {rule.name!r} (routes[{rule.index}])"
            if stopped:
                lines.append(f"{label}: not evaluated, an earlier rule stopped evaluation")
                continue
            failed = rule.first_failure(reader)
            if failed is not None:
                seen = failed.show(failed.read(reader))
                lines.append(
                    f"{label}: no match: {failed.subject} is {seen}, expected {failed.expect}"
                )
                continue
            if rule.drop:
                lines.append(f"{label}: matched: drop; evaluation stops")
                stopped = True
                continue
            lines.append(f"{label}: matched: to {', '.join(sorted(rule.to))}")
            if rule.sampler is not None:
                lines.append("  " + rule.sampler.explain(span.trace_id, span.status_code))
            if rule.continue_:
                lines.append("  continue: later rules are evaluated too")
            else:
                lines.append("  first match wins: evaluation stops")
                stopped = True
        if not stopped:
            target = ", ".join(sorted(self.default)) or "nothing (empty default)"
            lines.append(f"default: reached the end of the rules: to {target}")
        d = self.route(span)
        lines.append(
            f"decision: destinations [{', '.join(sorted(d.destinations))}], "
            f"matched [{', '.join(d.matched)}], dropped {d.dropped or 'no'}"
            + (f", sampled out of [{', '.join(sorted(d.sampled_out))}]" if d.sampled_out else "")
        )
        return lines


# ---- compiling the config ---------------------------------------------------------------


def _parse_rule(
    raw: object,
    index: int,
    path: str,
    known: frozenset[str],
    seen: dict[str, str],
    problems: list[Problem],
) -> Rule | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, "expected a mapping with name, match, and to or drop"))
        return None
    before = len(problems)
    for key in raw:
        if key not in RULE_KEYS:
            valid = ", ".join(RULE_KEYS)
            problems.append(Problem(f"{path}.{key}", f"unknown key; valid keys here: {valid}"))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem(f"{path}.name", "missing; every rule needs a unique name"))
    elif name in seen:
        problems.append(
            Problem(f"{path}.name", f"duplicate rule name {name!r} (also {seen[name]})")
        )
    else:
        seen[name] = path
    conditions = _parse_match(raw.get("match"), f"{path}.match", problems)
    drop, continue_ = raw.get("drop", False), raw.get("continue", False)
    for key, flag in (("drop", drop), ("continue", continue_)):
        if not isinstance(flag, bool):
            problems.append(Problem(f"{path}.{key}", f"{flag!r} is not true or false"))
    to: frozenset[str] = frozenset()
    sampler = None
    if drop is True:
        if "to" in raw:
            problems.append(Problem(f"{path}.drop", "a rule either sends (to) or drops, not both"))
        if "sample" in raw:
            problems.append(Problem(f"{path}.sample", "a drop rule cannot sample"))
        if continue_ is True:
            problems.append(Problem(f"{path}.continue", "a drop rule always stops evaluation"))
    elif "to" not in raw:
        problems.append(
            Problem(f"{path}.to", "missing; a rule needs to: [dest, ...] or drop: true")
        )
    else:
        to = _parse_destinations(raw["to"], f"{path}.to", known, problems, allow_empty=False)
        if "sample" in raw:
            sampler = parse_sample(raw["sample"], f"{path}.sample", problems)
    if len(problems) > before:
        return None
    assert isinstance(name, str)
    return Rule(name, index, conditions, to, drop is True, sampler, continue_ is True)


def _parse_destinations(
    raw: object, path: str, known: frozenset[str], problems: list[Problem], allow_empty: bool
) -> frozenset[str]:
    if raw is None:
        raw = []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        problems.append(Problem(path, "expected a list of destination names"))
        return frozenset()
    if not items and not allow_empty:
        problems.append(Problem(path, "empty; name a destination, or drop with drop: true"))
    names: set[str] = set()
    for j, item in enumerate(items):
        if isinstance(item, str) and item in known:
            names.add(item)
            continue
        where = path if isinstance(raw, str) else f"{path}[{j}]"
        listed = ", ".join(sorted(known)) or "(none)"
        problems.append(
            Problem(where, f"unknown destination {item!r}; known destinations: {listed}")
        )
    return frozenset(names)


def _parse_match(raw: object, path: str, problems: list[Problem]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, "expected a mapping of conditions"))
        return ()
    found: list[Condition | None] = []
    limits: dict[str, int | None] = {}
    for key, value in raw.items():
        where = f"{path}.{key}"
        if key in ("resource", "attributes"):
            found += _parse_keyed(key, value, where, problems)
        elif key == "name":
            found.append(
                _parse_value(value, where, problems, "span", "name", attrgetter("span.name"))
            )
        elif key == "kind":
            found.append(_parse_enum(value, where, problems, "kind", KINDS, _kind_name))
        elif key == "status":
            found.append(_parse_enum(value, where, problems, "status", STATUSES, _status_name))
        elif key in ("min_duration", "max_duration"):
            limits[key] = ns = _parse_duration_ns(value, where, problems)
            if ns is not None:
                found.append(_duration_condition(key, ns))
        else:
            valid = ", ".join(CONDITION_KEYS)
            problems.append(Problem(where, f"unknown condition; valid conditions: {valid}"))
    low, high = limits.get("min_duration"), limits.get("max_duration")
    if low is not None and high is not None and low > high:
        problems.append(Problem(f"{path}.max_duration", "is below min_duration: matches nothing"))
    conditions = [c for c in found if c is not None]
    return tuple(sorted(conditions, key=lambda c: _COST[c.source]))


def _parse_keyed(
    source: Literal["resource", "attributes"], raw: object, path: str, problems: list[Problem]
) -> list[Condition | None]:
    if not isinstance(raw, Mapping) or not raw:
        problems.append(Problem(path, f"expected a mapping of attribute key to {_VALUE_FORMS}"))
        return []
    method = "resource" if source == "resource" else "attribute"
    found: list[Condition | None] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            problems.append(Problem(f"{path}[{key!r}]", "attribute keys are strings"))
            continue
        read = methodcaller(method, key)
        found.append(_parse_value(value, f"{path}[{key!r}]", problems, source, key, read))
    return found


def _parse_value(
    raw: object,
    path: str,
    problems: list[Problem],
    source: Source,
    key: str,
    read: Callable[[_Reader], object],
) -> Condition | None:
    """A value, a list of values, ``{regex: P}`` or ``{exists: bool}`` → a Condition."""
    subject = key if source == "span" else f"{source}[{key!r}]"
    if isinstance(raw, Mapping):
        if len(raw) != 1 or next(iter(raw)) not in ("regex", "exists"):
            problems.append(Problem(path, f"expected {_VALUE_FORMS}"))
            return None
        ((op, arg),) = raw.items()
        if op == "regex":
            if not isinstance(arg, str):
                problems.append(Problem(f"{path}.regex", f"{arg!r} is not a string"))
                return None
            try:
                search = re.compile(arg).search
            except re.error as err:
                problems.append(Problem(f"{path}.regex", f"bad regex {arg!r}: {err}"))
                return None
            expect = f"a match of regex {arg!r}"
            return Condition(source, key, subject, expect, read, _regex_test(search))
        if source == "span":
            problems.append(Problem(f"{path}.exists", "exists applies to resource and attributes"))
            return None
        if not isinstance(arg, bool):
            problems.append(Problem(f"{path}.exists", f"{arg!r} is not true or false"))
            return None
        test = _present if arg else _absent
        return Condition(source, key, subject, "present" if arg else "absent", read, test)
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        problems.append(Problem(path, "empty list: matches nothing"))
    ok = bool(values)
    for i, v in enumerate(values):
        if isinstance(v, str | int | float):  # bool is an int
            continue
        where = f"{path}[{i}]" if isinstance(raw, list) else path
        problems.append(
            Problem(where, f"{v!r} is not a string, number or boolean; expected {_VALUE_FORMS}")
        )
        ok = False
    if not ok:
        return None
    expect = f"== {values[0]!r}" if len(values) == 1 else f"in {values!r}"
    return Condition(source, key, subject, expect, read, _equals_any(values))


def _parse_enum(
    raw: object,
    path: str,
    problems: list[Problem],
    what: Literal["kind", "status"],
    names: dict[str, int],
    show: Callable[[object], str],
) -> Condition | None:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        problems.append(Problem(path, "empty list: matches nothing"))
        return None
    codes: set[int] = set()
    for i, item in enumerate(items):
        code = names.get(item.lower()) if isinstance(item, str) else None
        if code is None:
            where = f"{path}[{i}]" if isinstance(raw, list) else path
            valid = ", ".join(names)
            problems.append(Problem(where, f"unknown {what} {item!r}; valid values: {valid}"))
            return None
        codes.add(code)
    expect = "in [" + ", ".join(show(c) for c in sorted(codes)) + "]"
    read = attrgetter("span.kind" if what == "kind" else "span.status_code")
    return Condition("span", what, what, expect, read, frozenset(codes).__contains__, show)


def _parse_duration_ns(raw: object, path: str, problems: list[Problem]) -> int | None:
    try:
        seconds = parse_duration(raw)
    except ValueError as err:
        problems.append(Problem(path, str(err)))
        return None
    if seconds < 0:
        problems.append(Problem(path, f"{raw!r} is negative"))
        return None
    return round(seconds * 1e9)


def _duration_condition(key: str, limit_ns: int) -> Condition:
    read = methodcaller("duration")
    if key == "min_duration":
        expect = f">= {_show_duration(limit_ns)}"
        return Condition("span", key, "duration", expect, read, _at_least(limit_ns), _show_duration)
    expect = f"<= {_show_duration(limit_ns)}"
    return Condition("span", key, "duration", expect, read, _at_most(limit_ns), _show_duration)


# ---- tests and formatting (closures over compiled config) -------------------------------


def _equals_any(values: list[object]) -> Callable[[object], bool]:
    strings = frozenset(v for v in values if isinstance(v, str))
    others = tuple(v for v in values if not isinstance(v, str))

    def test(value: object) -> bool:
        if isinstance(value, str):
            return value in strings
        # Python says True == 1; a span attribute of another type should not match.
        return any(isinstance(value, bool) == isinstance(o, bool) and value == o for o in others)

    return test


def _regex_test(search: Callable[[str], re.Match[str] | None]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, str) and search(value) is not None


def _present(value: object) -> bool:
    return value is not MISSING


def _absent(value: object) -> bool:
    return value is MISSING


def _at_least(limit: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, int) and value >= limit


def _at_most(limit: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, int) and value <= limit


_KIND_NAMES = {code: name for name, code in KINDS.items()}
_STATUS_NAMES = {code: name for name, code in STATUSES.items()}


def _kind_name(code: object) -> str:
    return _KIND_NAMES[code] if isinstance(code, int) and code in _KIND_NAMES else repr(code)


def _status_name(code: object) -> str:
    return _STATUS_NAMES[code] if isinstance(code, int) and code in _STATUS_NAMES else repr(code)


def _show_duration(ns: object) -> str:
    return f"{ns / 1e6:g}ms" if isinstance(ns, int) else repr(ns)
