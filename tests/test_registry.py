"""The @task decorator and the handler registry."""

import importlib

import pytest

from django_tasks_live import task
from django_tasks_live.registry import Registry, UnknownTask, registry


@pytest.fixture
def scratch(monkeypatch):
    """A private registry, so these tests never touch the real handlers."""
    fresh = Registry()
    # The package re-exports the registry object under the module's name; patch the module.
    monkeypatch.setattr(importlib.import_module("django_tasks_live.registry"), "registry", fresh)
    return fresh


def test_task_registers_with_its_options(scratch):
    @task("import-data", timeout=300, retries=3, backoff="linear", queue="imports", priority=5,
          steps={"download": 30, "parse": 70}, cron="0 * * * *", cron_timezone="Europe/Paris")
    def import_data(ctx, rows: int = 100):
        """Import rows.

        Long description."""

    spec = scratch.get("import-data")
    assert import_data.task_name == "import-data"
    assert (spec.timeout, spec.max_attempts, spec.backoff, spec.queue, spec.priority) == (
        300, 4, "linear", "imports", 5)
    assert spec.steps == (("download", 30.0), ("parse", 70.0))
    assert (spec.cron, spec.cron_timezone, spec.description) == ("0 * * * *", "Europe/Paris", "Import rows.")
    assert spec.options()["steps"] == [["download", 30.0], ["parse", 70.0]]
    assert not spec.is_async


def test_bare_decorator_names_the_task_by_its_dotted_path(scratch):
    @task
    async def compute(ctx):
        pass

    spec = scratch.get(f"{__name__}.test_bare_decorator_names_the_task_by_its_dotted_path.<locals>.compute")
    assert spec.is_async and compute.task_name == spec.name


def test_steps_as_a_list_get_equal_weights(scratch):
    @task("listed", steps=["a", ("b", 3)])
    def listed(ctx):
        pass

    assert scratch.get("listed").steps == (("a", 1.0), ("b", 3.0))


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownTask, match=r"Unknown task 'improt-data'. Did you mean 'import-data'\?"):
        registry.get("improt-data")


def test_unknown_name_without_close_match_lists_the_registered_tasks():
    with pytest.raises(UnknownTask, match=r"Registered tasks: .*noop"):
        registry.get("zzzzzzzz")


def test_two_handlers_cannot_share_a_name(scratch):
    @task("same")
    def first(ctx):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @task("same")
        def second(ctx):
            pass


def test_reimporting_the_same_handler_is_harmless(scratch):
    def handler(ctx):
        pass

    task("again")(handler)
    task("again")(handler)
    assert len(scratch) == 1


def test_arguments_are_checked_against_the_signature():
    spec = registry.get("add")
    spec.check_arguments((), {"a": 1, "b": 2})
    spec.check_arguments((1,), {"b": 2})
    with pytest.raises(TypeError, match="Bad arguments for task 'add': missing a required argument: 'b'"):
        spec.check_arguments((), {"a": 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        spec.check_arguments((), {"a": 1, "b": 2, "c": 3})


@pytest.mark.parametrize("options,error,message", [
    ({"timeout": 0}, ValueError, "timeout must be a positive number"),
    ({"timeout": "5"}, ValueError, "timeout must be a positive number"),
    ({"retries": -1}, ValueError, "retries must be a non-negative integer"),
    ({"retries": True}, ValueError, "retries must be a non-negative integer"),
    ({"backoff_base": -1}, ValueError, "backoff_base must be a non-negative number"),
    ({"queue": ""}, ValueError, "queue must be a non-empty string"),
    ({"priority": 500}, ValueError, "priority must be an integer from -100 to 100"),
    ({"backoff": "random"}, ValueError, "backoff must be one of fixed, linear, exponential"),
    ({"retry_on": ["ValueError"]}, TypeError, "retry_on takes exception classes"),
    ({"steps": {"a": 0}}, ValueError, "Step 'a' needs a positive weight"),
    ({"steps": ["a", "a"]}, ValueError, "Step names must be unique"),
    ({"steps": [("", 1)]}, TypeError, "Step names must be non-empty strings"),
])
def test_bad_options_are_refused_at_decoration(scratch, options, error, message):
    with pytest.raises(error, match=message):
        task("bad", **options)
    assert "bad" not in scratch


@pytest.mark.parametrize("options", [
    {"cron": "every day"},
    {"cron": "* * * * *", "cron_timezone": "Moon/Base"},
])
def test_bad_cron_is_refused_at_decoration(scratch, options):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        task("bad-cron", **options)


def test_a_name_must_be_a_non_empty_string(scratch):
    with pytest.raises(TypeError, match="Task name must be a non-empty string"):
        task("  ")


def test_a_handler_must_take_ctx(scratch):
    with pytest.raises(TypeError, match="must take ctx as first argument"):
        @task("no-ctx")
        def no_ctx():
            pass
    with pytest.raises(TypeError, match="must take ctx as first argument"):
        @task("kw-only")
        def kw_only(*, ctx):
            pass


@pytest.mark.parametrize("check", [42, "yes", lambda: None and None])
def test_should_execute_must_be_a_plain_callable(scratch, check):
    async def later(ctx):
        return True

    bad = later if callable(check) else check
    with pytest.raises(TypeError, match=r"should_execute must be a plain \(not async\) callable"):
        task("checked", should_execute=bad)
    assert "checked" not in scratch


def test_should_execute_is_kept_and_named_in_the_options(scratch):
    def wanted(ctx):
        return True

    @task("checked", should_execute=wanted)
    def checked(ctx):
        return 1

    spec = scratch.get("checked")
    assert spec.should_execute is wanted
    assert spec.options()["should_execute"].endswith("wanted")
    assert "should_execute" not in scratch.get("checked").__class__(name="plain", func=checked).options()
