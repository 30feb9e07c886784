"""Conditions of the routing table's rules: what a rule's ``match`` can test, compiled once.

``parse_match`` turns one ``match`` mapping (``resource``, ``attributes``, ``name``, ``kind``,
``status``, ``min_duration``, ``max_duration``) into ``Condition`` objects, cheapest first
(span fields, then resource attributes, then span attributes), appending every problem it
finds with its key path. A condition reads through a ``Reader``, which reads each resource or
span attribute key at most once per span. Values compare by type: the string ``"500"`` does
not equal the integer ``500``, nor ``true`` the integer ``1``; an absent attribute reads as
``MISSING``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from typing import Literal, Protocol

from pipelines.errors import Problem
from pipelines.settings import parse_duration

AttrValue = str | int | float | bool
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


class Reader:
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
    read: Callable[[Reader], object]
    test: Callable[[object], bool]
    show: Callable[[object], str] = repr


def parse_match(raw: object, path: str, problems: list[Problem]) -> tuple[Condition, ...]:
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
            found.append(_parse_enum(value, where, problems, "kind", KINDS, kind_name))
        elif key == "status":
            found.append(_parse_enum(value, where, problems, "status", STATUSES, status_name))
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
    read: Callable[[Reader], object],
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
        expect = f">= {show_duration(limit_ns)}"
        return Condition("span", key, "duration", expect, read, _at_least(limit_ns), show_duration)
    expect = f"<= {show_duration(limit_ns)}"
    return Condition("span", key, "duration", expect, read, _at_most(limit_ns), show_duration)


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


def kind_name(code: object) -> str:
    return _KIND_NAMES[code] if isinstance(code, int) and code in _KIND_NAMES else repr(code)


def status_name(code: object) -> str:
    return _STATUS_NAMES[code] if isinstance(code, int) and code in _STATUS_NAMES else repr(code)


def show_duration(ns: object) -> str:
    return f"{ns / 1e6:g}ms" if isinstance(ns, int) else repr(ns)
