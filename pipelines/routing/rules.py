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

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Literal

from pipelines.errors import ConfigError, Problem
from pipelines.routing.conditions import (
    CONDITION_KEYS,
    KINDS,
    MISSING,
    STATUSES,
    AttrValue,
    Condition,
    Reader,
    Span,
    SpanView,
    kind_name,
    parse_match,
    show_duration,
    status_name,
)
from pipelines.routing.sampling import Sampler, parse_sample

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

DropReason = Literal["rule", "sampling", "no_route"]
RULE_KEYS = ("name", "match", "to", "drop", "sample", "continue")
_MAX_UNIONS = 4096


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

    def first_failure(self, reader: Reader) -> Condition | None:
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
        reader = Reader(span)
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
        reader = Reader(span)
        lines = [
            f"span {span.name!r}: trace {span.trace_id.hex()}, kind {kind_name(span.kind)}, "
            f"status {status_name(span.status_code)}, "
            f"duration {show_duration(reader.duration())}"
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
    conditions = parse_match(raw.get("match"), f"{path}.match", problems)
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
