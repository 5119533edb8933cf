"""System checks on the database django-tasks-live stores its runs in."""

from django.db import connection

from django_tasks_live.checks import check_database


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_the_test_database_passes():
    assert "tasks_live.E010" not in ids(check_database())


def test_an_unsupported_database_is_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "mysql")
    [error] = [m for m in check_database() if m.id == "tasks_live.E010"]
    assert "'default' is mysql" in error.msg and "PostgreSQL or SQLite" in error.msg


def test_sqlite_without_immediate_transactions_is_warned(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {})
    assert "tasks_live.W001" in ids(check_database())


# ---------------------------------------------------------------- the client script

from django.test import override_settings  # noqa: E402

from django_tasks_live.checks import check_client_script  # noqa: E402

APPS_WITHOUT_STATICFILES = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "channels", "django_tasks_live",
    "tests.testapp",
]


@override_settings(DEBUG=True)
def test_debug_with_a_local_static_url_serves_the_script():
    assert check_client_script() == []


@override_settings(INSTALLED_APPS=APPS_WITHOUT_STATICFILES)
def test_without_staticfiles_the_script_cannot_be_served():
    [warning] = check_client_script()
    assert warning.id == "tasks_live.W020" and "tasks_live.js" in warning.msg


@override_settings(DEBUG=True,
                   STATICFILES_FINDERS=["django.contrib.staticfiles.finders.FileSystemFinder"])
def test_finders_that_cannot_find_the_script_are_warned():
    assert ids(check_client_script()) == ["tasks_live.W021"]


@override_settings(DEBUG=True, STATIC_URL="https://cdn.example.com/static/")
def test_a_remote_static_url_in_debug_is_warned():
    assert ids(check_client_script()) == ["tasks_live.W022"]


def test_production_without_collectstatic_is_warned(tmp_path):
    with override_settings(DEBUG=False, STATIC_ROOT=str(tmp_path)):
        [warning] = check_client_script()
    assert warning.id == "tasks_live.W023"
    assert "collectstatic" in warning.hint and "WhiteNoise" in warning.hint


def test_production_after_collectstatic_passes(tmp_path):
    from django.core.management import call_command

    with override_settings(DEBUG=False, STATIC_ROOT=str(tmp_path)):
        call_command("collectstatic", "--noinput", verbosity=0)
        assert check_client_script() == []


def _executor_checks(settings, q_cluster=None, **tasks_live):
    from django_tasks_live.checks import check_executors

    settings.TASKS_LIVE = {**settings.TASKS_LIVE, **tasks_live}
    if q_cluster is not None:
        settings.Q_CLUSTER = q_cluster
    return check_executors()


def test_unknown_engines_are_errors_naming_the_setting(settings):
    [error] = _executor_checks(settings, EXECUTOR="celery")
    assert error.id == "tasks_live.E040" and "TASKS_LIVE['EXECUTOR']" in error.msg
    [error] = _executor_checks(settings, EXECUTOR="builtin", QUEUE_EXECUTORS={"reports": "rq"})
    assert "QUEUE_EXECUTORS']['reports']" in error.msg and "'rq'" in error.msg


def test_django_q_settings_that_repeat_or_lose_work_are_flagged(settings):
    good = {"name": "site", "orm": "default", "retry": 60, "timeout": 50, "save_limit": -1}
    assert _executor_checks(settings, good, EXECUTOR="django_q") == []
    assert _executor_checks(settings, {**good, "retry": 50})[0].id == "tasks_live.W041"
    flagged = ids(_executor_checks(settings, {**good, "save_limit": 250, "ack_failures": True,
                                              "max_attempts": 3, "sync": True}))
    on_sqlite = connection.vendor == "sqlite"
    assert flagged == ["tasks_live.W040", *(["tasks_live.W042"] * on_sqlite),
                       "tasks_live.I041", "tasks_live.I042"]
    [error] = _executor_checks(settings, "not a dict")
    assert error.id == "tasks_live.E042"
    # Nothing is handed to django-q2: its settings are not this app's business.
    assert _executor_checks(settings, {**good, "retry": 1}, EXECUTOR="builtin") == []


def test_django_q_must_be_installed_to_hand_runs_to_it(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_q"]
    [error] = _executor_checks(settings, QUEUE_EXECUTORS={"reports": "django_q"})
    assert error.id == "tasks_live.E041"


def test_a_task_on_a_queue_the_backend_does_not_declare_is_an_error(settings):
    from django_tasks_live.checks import check_task_queues

    assert check_task_queues() == []  # the test settings declare default and other
    settings.TASKS = {"default": {"BACKEND": "django_tasks_live.backends.LiveTasksBackend",
                                  "QUEUES": ["other"]}}
    errors = check_task_queues()
    assert errors and {e.id for e in errors} == {"tasks_live.E030"}
    assert "task 'noop' queue 'default' is not one of the queues in TASKS[...]['QUEUES']: other." in [
        e.msg for e in errors]
