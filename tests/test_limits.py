"""Constraint group declarations: what is accepted, the errors for what is not, keys and
the decisions limits.py makes without a database."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import override_settings

from django_tasks_live import checks, limits
from django_tasks_live.limits import Concurrency, Cooldown, LimitKeyError, Rate
from django_tasks_live.registry import registry, task

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def declare():
    """Register throwaway tasks; they are removed afterwards."""
    names = []

    def register(name, **options):
        def handler(ctx, domain: str = "", tenant: str = "t", n: int = 0):
            return n

        handler.__qualname__ = f"handler_{name}"
        task(name, **options)(handler)
        names.append(name)
        return registry.get(name)

    yield register
    for name in names:
        registry.remove(name)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Concurrency(0), "Concurrency max must be an integer from 1 to 10000, got 0"),
    (lambda: Concurrency(True), "got True"),
    (lambda: Concurrency(2, key=""), "key must be a callable or a non-empty string"),
    (lambda: Concurrency(2, key="{a.b}"), "may only name arguments as {name}"),
    (lambda: Concurrency(2, group="a:b"), "group must be a non-empty string"),
    (lambda: Rate(0, per=1), "Rate max must be an integer from 1 to 1000"),
    (lambda: Rate(5, per=0), "Rate per must be a positive number of seconds, got 0"),
    (lambda: Rate(5, per=float("inf")), "Rate per must be a positive number"),
    (lambda: Cooldown(-1), "Cooldown seconds must be a positive number"),
])
def test_bad_limits_are_refused_at_declaration(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("{", r"\{").replace("}", r"\}")):
        make()


def test_task_checks_limits_and_their_key_templates(declare):
    with pytest.raises(TypeError, match="limits must be a list"):
        declare("bad-1", limits=Concurrency(1))
    with pytest.raises(ValueError, match=r"may only name the handler's arguments "
                       r"\(domain, tenant, n\) as \{name\}, got \{host\}"):
        declare("bad-2", limits=[Concurrency(1, key="{host}")])
    with pytest.raises(ValueError, match="names exactly one of concurrency, rate, cooldown"):
        declare("bad-3", limits=[{"concurrency": 1, "rate": 2}])
    with pytest.raises(ValueError, match="Unknown limit option"):
        declare("bad-4", limits=[{"concurrency": 1, "keys": "{domain}"}])
    with pytest.raises(ValueError, match="A rate limit needs per"):
        declare("bad-5", limits=[{"rate": 1}])
    spec = declare("ok", limits=[{"concurrency": 2, "key": "{domain}"}, Rate(3, per=60)])
    assert spec.limits == (Concurrency(2, key="{domain}"), Rate(3, per=60.0))
    assert spec.options()["limits"] == ["Concurrency(2)", "Rate(3, per=60)"]


def test_keys_from_templates_callables_groups_and_exemptions(declare):
    def key(domain="", **_):
        return domain or None

    spec = declare("keys", limits=[Concurrency(2, key="{domain}"), Concurrency(3, group="dns"),
                                   Rate(10, per=1, key=key), Cooldown(5, key="{tenant}")])
    needs = limits.needs(spec, [], {"domain": "a.com"})
    assert [(n.key, n.cap, n.rate, n.window) for n in needs] == [
        ("c:dns", 3, None, None), ("c:keys:a.com", 2, None, None),
        ("r:keys:a.com", 1, 10, 1.0), ("w:keys:t", 1, None, 5.0)]
    assert limits.bits(needs) == limits.SLOTS | limits.RATE
    # The callable returns None: that limit does not apply; the others do.
    assert [n.key for n in limits.needs(spec, [], {})] == ["c:dns", "c:keys:", "w:keys:t"]
    long = limits.needs(spec, ["x" * 300], {})[1].key
    assert long.startswith("c:keys:sha256:") and len(long) <= limits.MAX_KEY


def test_a_key_function_that_raises_or_returns_nonsense_is_a_clear_error(declare):
    def broken(**_):
        raise KeyError("domain")

    spec = declare("broken", limits=[Concurrency(1, key=broken)])
    with pytest.raises(LimitKeyError, match=r"The key of Concurrency\(1\) on task 'broken' "
                       "raised KeyError: 'domain'"):
        limits.needs(spec, [], {})
    spec = declare("nonsense", limits=[Concurrency(1, key=lambda **_: 3)])
    with pytest.raises(LimitKeyError, match="must return a non-empty string or None, got 3"):
        limits.needs(spec, [], {})


def test_settings_limits_apply_beside_the_tasks_own(declare):
    spec = declare("configured", limits=[Concurrency(1, key="{domain}")])
    with override_settings(TASKS_LIVE={"LIMITS": {"configured": [{"concurrency": 3,
                                                                  "group": "dns"}]}}):
        assert [n.key for n in limits.needs(spec, [], {"domain": "a"})] == ["c:configured:a",
                                                                            "c:dns"]
    assert [n.key for n in limits.needs(spec, [], {"domain": "a"})] == ["c:configured:a"]


def test_gates_of_rates_and_cooldowns():
    rate = limits.Need("r:t:k", 1, 2, 10.0)
    assert limits.gate(rate, [T0], None) is None  # one start of two in the window
    second = T0 + dt.timedelta(seconds=3)
    assert limits.gate(rate, [T0, second], None) == T0 + dt.timedelta(seconds=10)
    cooldown = limits.Need("w:t:k", 1, None, 5.0)
    assert limits.gate(cooldown, [], None) is None
    assert limits.gate(cooldown, [], T0) == T0 + dt.timedelta(seconds=5)
    assert limits.gate(limits.Need("c:t:k", 2), [], T0) is None


def test_reasons():
    assert limits.waiting_reason("c:fetch:a.com") == "waiting for key a.com"
    assert limits.waiting_reason("c:dns") == "waiting for a dns slot"
    assert limits.waiting_reason("r:api:acme") == "rate limited (key acme)"
    assert limits.waiting_reason("w:sync") == "cooling down (sync)"
    with override_settings(USE_TZ=True, TIME_ZONE="UTC"):
        assert limits.gated_reason("r:api:acme", T0 + dt.timedelta(seconds=3)) == \
            "rate limited until 12:00:03"


def test_system_check_reports_bad_settings_unknown_tasks_and_conflicting_groups(declare):
    with override_settings(TASKS_LIVE={"LIMITS": {"x": [{"concurrency": 0}]}}):
        [error] = checks.check_limits()
        assert error.id == "tasks_live.E060" and "LIMITS\"]['x']" in error.msg
    declare("dns-a", limits=[Concurrency(3, group="dns-test")])
    declare("dns-b", limits=[Concurrency(4, group="dns-test")])
    with override_settings(TASKS_LIVE={"LIMITS": {"nope": [{"cooldown": 1}],
                                                  "dns-a": [{"rate": 1, "per": 1,
                                                             "key": "{host}"}]}}):
        found = {(m.id, m.msg) for m in checks.check_limits()}
    assert any(i == "tasks_live.W061" and "names 'nope'" in m for i, m in found)
    assert any(i == "tasks_live.E061" and "{host}" in m for i, m in found)
    assert any(i == "tasks_live.E062" and "'dns-test'" in m for i, m in found)
