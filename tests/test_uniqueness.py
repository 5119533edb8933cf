"""Unique, debounced and run-once rules: declaration checks and the key of a start."""

import pytest

from django_tasks_live.registry import registry, task
from django_tasks_live.uniqueness import UniqueRule, rule, stored_key


def test_no_option_means_no_rule():
    assert rule() is None


@pytest.mark.parametrize("options, scope", [
    ({"unique": True}, "pending"),
    ({"unique": True, "unique_while": "active"}, "active"),
    ({"unique_key": "k"}, "pending"),
    ({"debounce": 5}, "pending"),
    ({"run_once": True}, "active"),
])
def test_options_give_a_rule_and_its_scope(options, scope):
    assert rule(**options).scope == scope


@pytest.mark.parametrize("options, error, message", [
    ({"unique": 1}, TypeError, "unique must be True or False"),
    ({"unique": True, "unique_while": "soon"}, ValueError, "unique_while must be one of pending, active"),
    ({"unique_while": "active"}, ValueError, "unique_while needs unique=True"),
    ({"debounce": 0}, ValueError, "debounce must be a positive number"),
    ({"debounce": float("inf")}, ValueError, "debounce must be a positive number"),
    ({"debounce": True}, ValueError, "debounce must be a positive number"),
    ({"debounce": 5, "run_once": True}, ValueError, "cannot be combined"),
    ({"debounce": 5, "unique_while": "active"}, ValueError, "cannot be combined"),
    ({"run_once": True, "unique_while": "pending"}, ValueError, "run_once shares the run"),
    ({"unique_key": ""}, ValueError, "unique_key must be a callable or a non-empty string"),
    ({"unique_key": 7}, ValueError, "unique_key must be a callable or a non-empty string"),
    ({"unique_key": "{x.__class__}", "parameters": ["x"]}, ValueError, "may only name the handler's"),
    ({"unique_key": "{x[0]}", "parameters": ["x"]}, ValueError, "may only name the handler's"),
    ({"unique_key": "{}"}, ValueError, "may only name the handler's"),
    ({"unique_key": "{y}", "parameters": ["x"]}, ValueError, r"\(x\) as \{name\}, got \{y\}"),
    ({"unique_key": "{x"}, ValueError, "is not a valid template"),
])
def test_bad_options_are_clear_errors(options, error, message):
    with pytest.raises(error, match=message):
        rule(**options)


def test_a_bad_option_on_task_is_refused_at_declaration():
    with pytest.raises(ValueError, match="may only name the handler's arguments"):
        @task("bad-unique-key", unique_key="{missing}")
        def handler(ctx, present: int):
            return present
    assert "bad-unique-key" not in registry


def test_keys_from_a_template_with_positional_and_default_arguments():
    spec = registry.get("unique-sync")
    assert spec.unique_key_for([7], {}) == spec.unique_key_for([], {"account": 7}) == "unique-sync:sync:7"
    # Arguments the key does not name do not change it.
    assert spec.unique_key_for([7], {"full": True}) == "unique-sync:sync:7"


def test_keys_from_the_arguments_are_order_independent_digests():
    spec = registry.get("unique-args")
    assert spec.unique_key_for([], {"n": 1}) != spec.unique_key_for([], {"n": 2})
    assert spec.unique_key_for([], {"n": 1}) == spec.unique_key_for([], {"n": 1})


def test_a_callable_key_may_exempt_a_start_and_must_return_text():
    spec = registry.get("unique-maybe")
    assert spec.unique_key_for([], {"n": -1}) is None
    assert spec.unique_key_for([], {"n": 3}) == "unique-maybe:n3"
    with pytest.raises(TypeError, match="must return a non-empty string or None, got 5"):
        UniqueRule(key=lambda: 5).key_for("t", {}, [], {})


def test_a_debounced_task_without_a_key_has_one_key():
    spec = registry.get("debounced")
    assert spec.unique_key_for([], {"value": 1}) == spec.unique_key_for([], {"value": 2}) == "debounced:"


def test_long_keys_are_digested_to_fit_the_column():
    key = stored_key("t", "x" * 500)
    assert len(key) <= 200 and key.startswith("t:sha256:")
    assert key == stored_key("t", "x" * 500) != stored_key("t", "x" * 499)
