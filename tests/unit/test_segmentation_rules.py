import ast
from datetime import UTC, datetime

import pytest

from services.segmentation import profile as prof
from services.segmentation import rules
from shared import events as ev

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
RULES = rules.load(__import__("pathlib").Path(__file__).resolve().parents[2] / "services/segmentation/rules.yaml")


def order(amount, brand="Maison", category="perfume", month=11, qty=1, order_id="o1"):
    return ev.OrderPlaced(order_id=order_id, customer_id="c", total=ev.Money(amount=amount, currency="USD"),
                          items=[ev.LineItem(sku="s", brand=brand, category=category, quantity=qty,
                                             unit_price=ev.Money(amount=amount // qty, currency="USD"))],
                          placed_at=datetime(2026, month, 1, tzinfo=UTC))


def run_rules(before, after, event, already=()):
    return rules.evaluate(RULES, rules.facts(before, after, event, NOW), set(already))


def test_profiles_keep_only_the_listed_fields_and_monthly_totals():
    p = prof.apply(prof.empty(), ev.CustomerRegistered(customer_id="c", birthday={"month": 12, "day": 3},
                                                        preferred_channel="sms", registered_at=NOW), NOW)
    p = prof.apply(p, order(12000, qty=2), NOW)
    assert prof.only_listed_fields(p)
    assert p["birthday"] == {"month": 12, "day": 3}
    assert p["brands"] == {"2026-11": {"Maison": 2}} and p["spend"] == {"2026-11": {"USD": 12000}}


def test_the_favourite_brand_is_the_most_bought_over_twelve_months():
    p = prof.empty()
    p = prof.apply(p, order(1000, brand="Old", qty=9, month=1), datetime(2026, 1, 15, tzinfo=UTC))
    for m in (9, 10, 11):
        p = prof.apply(p, order(1000, brand="Maison", month=m), NOW)
    p = prof.apply(p, order(1000, brand="Other", month=11), NOW)
    assert prof.favourite(p["brands"], NOW) == "Old"
    assert prof.favourite(p["brands"], datetime(2027, 1, 15, tzinfo=UTC)) == "Maison"  # January 2026 aged out


def test_the_birthday_week_fires_once_per_year_with_its_explanation():
    p = prof.apply(prof.empty(), ev.CustomerRegistered(customer_id="c", birthday={"month": 12, "day": 3},
                                                        registered_at=NOW), NOW)
    assert run_rules(p, p, None) == []  # no favourite brand yet: nothing to offer 25 % off
    p = prof.apply(p, order(9000), NOW)
    (entry,) = run_rules(p, p, None)
    assert entry.facts["favourite_brand"] == "Maison"
    assert entry.segment == "birthday-week" and entry.trigger_key == "birthday-week:2026"
    assert entry.facts["birthday_in_days"] == 4
    assert run_rules(p, p, None, already={"birthday-week:2026"}) == []
    far = prof.apply(prof.apply(prof.empty(), ev.CustomerRegistered(customer_id="c", birthday={"month": 6, "day": 1},
                                                                     registered_at=NOW), NOW), order(9000), NOW)
    assert run_rules(far, far, None) == []


def test_a_300_usd_cart_fires_once_per_cart():
    cart = ev.CartAbandoned(cart_id="k-9", customer_id="c", value=ev.Money(amount=30000, currency="USD"),
                            abandoned_at=NOW)
    small = cart.model_copy(update={"cart_id": "k-10", "value": ev.Money(amount=29999, currency="USD")})
    p = prof.empty()
    (entry,) = run_rules(p, prof.apply(p, cart, NOW), cart)
    assert entry.trigger_key == "cart-abandoned-300:k-9" and entry.facts["cart_value"] == 30000
    assert run_rules(p, prof.apply(p, small, NOW), small) == []


def test_spend_fires_when_it_crosses_2000_usd_not_while_it_stays_above():
    p = prof.apply(prof.empty(), order(150000), NOW)
    q = prof.apply(p, order(60000, order_id="o2"), NOW)
    (entry,) = run_rules(p, q, order(60000))
    assert entry.segment == "spend-2000-12m" and entry.facts["spend_12m_usd"] == 210000
    r = prof.apply(q, order(1000, order_id="o3"), NOW)
    assert run_rules(q, r, order(1000)) == []


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('true')", "Call is not allowed"),
    ("birthday_in_days.real > 1", "Attribute is not allowed"),
    ("shoe_size > 42", "unknown fact 'shoe_size'"),
    ("cart_value >", "invalid syntax"),
])
def test_rule_expressions_are_checked_not_executed(expr, message):
    with pytest.raises(rules.RuleError, match=message):
        rules.parse(f"version: x\nsegments:\n  s:\n    when: \"{expr}\"\n    trigger: 'x'\n")


@pytest.mark.parametrize("when, trigger, message", [
    ("cart_value > 1", "cart:{cart_id:>50000000}", "no format spec or conversion"),
    ("cart_value > 1", "cart:{cart_id!r}", "no format spec or conversion"),
    ("cart_value > 1", "cart:{cart_id", "not a format string"),
    ("-" * 60 + "cart_value > 1", "x", "nested deeper than 40"),
    ("not " * 300 + "cart_value", "x", "nested deeper than 40|nested too deeply"),
    ("cart_value > 1 and " * 200 + "True", "x", "limited to 2000 characters"),
])
def test_rules_that_could_exhaust_memory_or_the_stack_are_refused_when_they_load(when, trigger, message):
    with pytest.raises(rules.RuleError, match=message):
        rules.parse(f"version: x\nsegments:\n  s:\n    when: \"{when}\"\n    trigger: '{trigger}'\n")


@pytest.mark.parametrize("expr", [
    "cart_value >= 30000", "cart_value > 30000", "cart_value < 30000", "cart_value <= 30000", "cart_value == 30000",
    "cart_value != 30000", "cart_currency == 'USD'", "cart_currency is None", "cart_currency is not None",
    "birthday_in_days <= 7", "30000 <= cart_value", "0 <= birthday_in_days <= 7", "not cart_value > 5",
    "preferred_channel in ('email', 'sms')", "preferred_channel not in ['push']",
    "event == 'cart_abandoned' and cart_value >= 30000 or birthday_in_days == 0",
])
@pytest.mark.parametrize("facts", [
    {"cart_value": 30000, "cart_currency": "USD", "birthday_in_days": 3, "preferred_channel": "email", "event": "cart_abandoned"},
    {"cart_value": 29999, "cart_currency": "EUR", "birthday_in_days": 0, "preferred_channel": "push", "event": "daily"},
    {"cart_value": None, "cart_currency": None, "birthday_in_days": None, "preferred_channel": None, "event": "daily"},
])
def test_a_compiled_rule_means_what_python_means_and_an_absent_fact_compares_false(expr, facts):
    (rule,) = rules.parse(f"version: x\nsegments:\n  s:\n    when: \"{expr}\"\n    trigger: 'k'\n").rules

    def python(node):  # the reference: Python's own semantics, a comparison with None failing
        try:
            return eval(compile(ast.Expression(node), "<rule>", "eval"), {}, dict(facts))
        except TypeError:
            return False

    tree = ast.parse(expr, mode="eval").body
    expected = python(tree) if not isinstance(tree, (ast.BoolOp, ast.UnaryOp)) else _reference(tree, python)
    assert bool(rule.test(facts)) == bool(expected)


def _reference(node, leaf):
    if isinstance(node, ast.BoolOp):
        values = [_reference(v, leaf) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        return not _reference(node.operand, leaf)
    return leaf(node)
