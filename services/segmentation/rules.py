"""Segment rules: small safe expressions over profile facts and the triggering event, declared in a
versioned YAML file (``rules.yaml``) and reloadable.

An expression is parsed with Python's ``ast`` and only a whitelist of nodes is accepted —
comparisons, ``and``/``or``/``not``, fact names, literals — so nothing a rule author writes is
ever executed: there is no ``eval``. Every name must be a known fact; a mistake is reported with
the rule's name when the file is loaded, not when a customer happens to hit it.
"""

from __future__ import annotations

import ast
import operator
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from services.segmentation import profile as prof
from shared import events as ev

FACTS = {
    "event": "what triggered the evaluation: customer_registered, customer_updated, order_placed, cart_abandoned, daily",
    "birthday_in_days": "days until the next birthday (0 on the day), or None",
    "birthday_year": "the year of the next birthday",
    "cart_id": "the abandoned cart's id (cart_abandoned only)",
    "cart_value": "the abandoned cart's value in minor units (cart_abandoned only)",
    "cart_currency": "the abandoned cart's currency (cart_abandoned only)",
    "spend_12m_usd": "spend over the last 12 months, USD minor units, after the event",
    "spend_12m_usd_before": "the same, before the event",
    "spend_window": "index of the 12-month window the evaluation falls in (for once-per-window triggers)",
    "favourite_brand": "the brand bought most over the last 12 months",
    "favourite_category": "the category bought most over the last 12 months",
    "preferred_channel": "the channel the customer prefers",
}

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}


class RuleError(ValueError):
    pass


def _check(node: ast.AST, rule: str) -> None:
    if isinstance(node, ast.Expression):
        _check(node.body, rule)
    elif isinstance(node, ast.BoolOp) and isinstance(node.op, (ast.And, ast.Or)):
        for v in node.values:
            _check(v, rule)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, rule)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        for v in (node.left, *node.comparators):
            _check(v, rule)
    elif isinstance(node, ast.Name):
        if node.id not in FACTS:
            raise RuleError(f"rule {rule}: unknown fact {node.id!r} (known: {', '.join(sorted(FACTS))})")
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, str, bool, type(None))):
        pass
    elif isinstance(node, (ast.Tuple, ast.List)):
        for v in node.elts:
            _check(v, rule)
    else:
        raise RuleError(f"rule {rule}: {type(node).__name__} is not allowed in a rule expression")


class FactSource(Protocol):
    """What a compiled rule reads facts from: :class:`Facts`, or a plain dict in tests and tools."""

    def get(self, name: str) -> Any: ...


Compiled = Callable[[FactSource], Any]


def _compile(node: ast.AST) -> Compiled:
    """A checked expression as nested closures over the facts (several times faster than walking
    the tree for every evaluation; still no ``eval``). A comparison that cannot be made — a
    number against an absent fact (None) — does not hold."""
    if isinstance(node, ast.Expression):
        return _compile(node.body)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v) for v in node.values]
        if isinstance(node.op, ast.And):
            def all_hold(facts):
                for p in parts:
                    if not p(facts):
                        return False
                return True
            return all_hold

        def any_holds(facts):
            for p in parts:
                if p(facts):
                    return True
            return False
        return any_holds
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand)
        return lambda facts: not operand(facts)
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.left, ast.Name)
            and isinstance(node.comparators[0], ast.Constant)):
        # The common shape, a fact against a literal (``cart_value >= 30000``), in one closure.
        name, op, value = node.left.id, _COMPARE[type(node.ops[0])], node.comparators[0].value

        def fact_against_literal(facts):
            try:
                return op(facts.get(name), value)
            except TypeError:
                return False
        return fact_against_literal
    if isinstance(node, ast.Compare):
        first = _compile(node.left)
        steps = [(_COMPARE[type(op)], _compile(right)) for op, right in zip(node.ops, node.comparators, strict=True)]

        def compare(facts):
            left = first(facts)
            for op, right_of in steps:
                right = right_of(facts)
                try:
                    if not op(left, right):
                        return False
                except TypeError:
                    return False
                left = right
            return True
        return compare
    if isinstance(node, ast.Name):
        name = node.id
        return lambda facts: facts.get(name)
    if isinstance(node, ast.Constant):
        value = node.value
        return lambda facts: value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_compile(v) for v in node.elts]
        return lambda facts: tuple(i(facts) for i in items)
    raise RuleError(f"cannot evaluate {type(node).__name__}")


@dataclass(frozen=True)
class Rule:
    segment: str
    when: str
    trigger: str
    explain: tuple[str, ...]
    test: Compiled

    trigger_facts: tuple[str, ...]  # the facts the trigger's format string names

    def holds(self, facts: Facts) -> bool:
        return bool(self.test(facts))

    def trigger_key(self, facts: Facts) -> str:
        return self.trigger.format(**{k: facts.get(k) for k in self.trigger_facts})


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[Rule, ...]


MAX_EXPRESSION_CHARS = 2000
MAX_DEPTH = 40


def _depth(node: ast.AST) -> int:
    """How deeply the expression nests (iteratively: a hostile rule must not exhaust the stack)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def parse(text: str) -> RuleSet:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"rules file is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or "version" not in doc or not isinstance(doc.get("segments"), dict):
        raise RuleError("rules file needs 'version' and a 'segments' mapping")
    rules = []
    for segment, spec in doc["segments"].items():
        if not isinstance(spec, dict) or not {"when", "trigger"} <= set(spec):
            raise RuleError(f"rule {segment}: needs 'when' and 'trigger'")
        when, trigger = str(spec["when"]), str(spec["trigger"])
        if len(when) > MAX_EXPRESSION_CHARS or len(trigger) > MAX_EXPRESSION_CHARS:
            raise RuleError(f"rule {segment}: 'when' and 'trigger' are limited to {MAX_EXPRESSION_CHARS} characters")
        try:
            tree = ast.parse(when, mode="eval")
        except SyntaxError as exc:
            raise RuleError(f"rule {segment}: {exc.msg} in {when!r}") from None
        except (RecursionError, MemoryError):
            raise RuleError(f"rule {segment}: 'when' is nested too deeply") from None
        if _depth(tree) > MAX_DEPTH:
            raise RuleError(f"rule {segment}: 'when' is nested deeper than {MAX_DEPTH} levels")
        _check(tree, segment)
        try:
            fields = list(string.Formatter().parse(trigger))
        except ValueError as exc:
            raise RuleError(f"rule {segment}: trigger is not a format string: {exc}") from None
        for _, name, format_spec, conversion in fields:
            if name is not None and name not in FACTS:
                raise RuleError(f"rule {segment}: trigger uses unknown fact {name!r}")
            if format_spec or conversion:  # '{cart_id:>50000000}' would build 50 MB keys
                raise RuleError(f"rule {segment}: trigger fields take no format spec or conversion ({{{name}}} only)")
        explain = tuple(spec.get("explain", ()))
        for name in explain:
            if name not in FACTS:
                raise RuleError(f"rule {segment}: explain lists unknown fact {name!r}")
        names = tuple(name for _, name, _, _ in fields if name)
        rules.append(Rule(str(segment), when, trigger, explain, _compile(tree), names))
    return RuleSet(str(doc["version"]), tuple(rules))


def load(path: Path) -> RuleSet:
    return parse(path.read_text())


_EVENT_KIND: dict[type[ev.Event], str] = {ev.CustomerRegistered: "customer_registered", ev.CustomerUpdated: "customer_updated",
               ev.OrderPlaced: "order_placed", ev.CartAbandoned: "cart_abandoned"}


class Facts:
    """The facts a rule may read, from the profile before and after the triggering event. Each is
    computed when a rule first reads it (a cart rule never needs the 12-month spend), then kept."""

    __slots__ = ("_before", "_after", "_event", "_now", "_known")

    def __init__(self, before: prof.Profile, after: prof.Profile, event: ev.Event | None, now: datetime) -> None:
        self._before, self._after, self._event, self._now = before, after, event, now
        self._known: dict[str, Any] = {"event": "daily" if event is None else _EVENT_KIND.get(type(event), "daily")}

    def get(self, name: str) -> Any:
        try:
            return self._known[name]
        except KeyError:
            value = self._known[name] = self._compute(name)
            return value

    def _compute(self, name: str) -> Any:
        after, now, event = self._after, self._now, self._event
        if name == "spend_12m_usd":
            return prof.spend_12m(after, "USD", now)
        if name == "spend_12m_usd_before":
            return prof.spend_12m(self._before, "USD", now)
        if name == "spend_window":
            return (now - datetime(2000, 1, 1, tzinfo=now.tzinfo)).days // 365
        if name == "favourite_brand":
            return prof.favourite(after.get("brands", {}), now)
        if name == "favourite_category":
            return prof.favourite(after.get("categories", {}), now)
        if name == "preferred_channel":
            return after.get("preferred_channel")
        if name in ("birthday_in_days", "birthday_year"):
            upcoming = prof.next_birthday(after, now.date())
            self._known["birthday_in_days"] = (upcoming - now.date()).days if upcoming else None
            self._known["birthday_year"] = upcoming.year if upcoming else None
            return self._known[name]
        if name in ("cart_id", "cart_value", "cart_currency"):
            cart = event if isinstance(event, ev.CartAbandoned) else None
            self._known["cart_id"] = cart.cart_id if cart else None
            self._known["cart_value"] = cart.value.amount if cart else None
            self._known["cart_currency"] = cart.value.currency if cart else None
            return self._known[name]
        return None  # not a fact (rules are checked against FACTS when loaded)


def facts(before: prof.Profile, after: prof.Profile, event: ev.Event | None, now: datetime) -> Facts:
    """The facts a rule may read, from the profile before and after the triggering event."""
    return Facts(before, after, event, now)


@dataclass(frozen=True)
class Entry:
    segment: str
    trigger_key: str
    facts: dict[str, Any]


def evaluate(ruleset: RuleSet, facts_: Facts, already: set[str]) -> list[Entry]:
    """The segments entered now, each at most once per trigger (``already`` holds the triggers
    this customer has emitted)."""
    out = []
    for rule in ruleset.rules:
        if not rule.test(facts_):
            continue
        key = f"{rule.segment}:{rule.trigger_key(facts_)}"
        if key in already:
            continue
        names = rule.explain or tuple(n for n in FACTS if n in rule.when)
        out.append(Entry(rule.segment, key, {n: facts_.get(n) for n in names}))
    return out
