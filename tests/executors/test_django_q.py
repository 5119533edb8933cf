"""Handing runs to django-q2 (ORM broker on the test database; Redis where it is named):
which runs are handed over, when, with what, and what happens when the broker is down."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.models import OrmQ
from django_q.signing import SignedPackage

import django_tasks_live as tasks_live
from django_tasks_live import schedules, store
from django_tasks_live.executors import choose, django_q
from django_tasks_live.models import Run
from django_tasks_live.registry import registry, task
from django_tasks_live.states import Status
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def to_django_q(settings):
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "EXECUTOR": "django_q"}


def handed_over() -> list[dict]:
    """The packages waiting in the ORM broker, decoded as django-q2 decodes them."""
    return [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]


def test_the_engine_is_chosen_per_task_then_queue_then_setting(settings, monkeypatch):
    monkeypatch.setattr(registry, "_specs", dict(registry._specs))  # put back afterwards
    task("on-q2", executor="django_q")(lambda ctx: None)
    assert choose("on-q2", "default") == "django_q"
    assert choose("noop", "default") == "builtin"
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "QUEUE_EXECUTORS": {"other": "django_q"}}
    assert choose("noop", "other") == "django_q"
    assert tasks_live.using(queue="other").start("noop").executor == "django_q"
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "EXECUTOR": "celery"}
    with pytest.raises(ValueError, match="EXECUTOR'] must be one of 'builtin', 'django_q'"):
        choose("noop", "default")
    with pytest.raises(ValueError, match="executor must be one of"):
        task("bad-engine", executor="huey")


def test_a_committed_run_is_handed_over_with_its_id_only(to_django_q):
    run = tasks_live.start("add", a=1, b=2)
    [package] = handed_over()
    assert package["func"] == django_q.RUNNER
    assert package["args"] == (run.pk,) and package["kwargs"] == {}
    # django-q2's time limit is off (this app enforces its own), its result store too.
    assert package["timeout"] == -1 and package["save"] is False
    assert Run.objects.get(pk=run.pk).executor == "django_q"


def test_a_rolled_back_run_is_never_handed_over(to_django_q):
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks_live.start("noop")
        assert handed_over() == []  # not before the commit
        raise RuntimeError("the view failed after starting the run")
    assert handed_over() == [] and not Run.objects.exists()
    with transaction.atomic():
        run = tasks_live.start("noop")
    assert [p["args"] for p in handed_over()] == [(run.pk,)]


def test_builtin_workers_leave_django_q_runs_alone(to_django_q):
    tasks_live.start("noop")
    assert store.claim("w1", None, 10) == []
    assert not store.has_due(None)


def test_a_run_is_claimed_once_and_only_when_due(to_django_q):
    run = tasks_live.start("noop")
    assert store.claim_run(run.pk, "djq-a").status == Status.RUNNING
    assert store.claim_run(run.pk, "djq-b") is None  # redelivered while it runs: refused
    later = tasks_live.using(delay=3600).start("noop")
    assert store.claim_run(later.pk, "djq-a") is None  # a redelivered retry waits its backoff


def test_the_sweeper_hands_over_what_needs_it_once(to_django_q):
    later = tasks_live.using(run_after=timezone.now() + dt.timedelta(seconds=0.5)).start("noop")
    fresh = tasks_live.start("noop")
    OrmQ.objects.all().delete()
    assert django_q.sweep() == []  # fresh was handed over at commit; later is not due
    Run.objects.filter(pk=later.pk).update(run_after=timezone.now())
    assert django_q.sweep() == [later.pk]
    assert django_q.sweep() == []
    # A hand-over the broker lost is repeated once HANDOVER_RETRY has passed.
    Run.objects.filter(pk=fresh.pk).update(handed_at=timezone.now() - dt.timedelta(seconds=61))
    assert django_q.sweep() == [fresh.pk]
    # A run that changed since its hand-over (a retry, a rescue) is handed over again.
    Run.objects.filter(pk=later.pk).update(updated_at=timezone.now() + dt.timedelta(seconds=1))
    assert django_q.sweep() == [later.pk]
    assert [p["args"] for p in handed_over()] == [(later.pk,), (fresh.pk,), (later.pk,)]


def test_schedules_make_one_handed_over_run_per_fire_time(to_django_q):
    fire = schedules.create_schedule("q2-minutely", "noop", "* * * * *").next_run_at
    created = [*schedules.tick(fire + dt.timedelta(seconds=1)),
               *schedules.tick(fire + dt.timedelta(seconds=10))]
    assert len(created) == 1 and created[0].executor == "django_q"
    assert [p["args"] for p in handed_over()] == [(created[0].pk,)]


@pytest.mark.skipif("not __import__('tests.support.db', fromlist=['x']).service_reachable("
                    "'127.0.0.1', 6379)", reason="needs Redis at 127.0.0.1:6379")
def test_a_broker_outage_leaves_runs_pending_until_the_sweeper_hands_them_over(
        to_django_q, monkeypatch, settings):
    proxy = TcpProxy("127.0.0.1", 6379)
    name = f"tl-outage-{id(proxy)}"
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", {"host": "127.0.0.1", "port": proxy.port, "db": 5})
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "DJANGO_Q_CLUSTER": name}
    broker = get_broker(name)
    try:
        proxy.cut()
        run = tasks_live.start("noop")
        assert Run.objects.get(pk=run.pk).handed_at is None  # left for the sweeper
        assert django_q.sweep() == []  # still down: still pending
        assert Run.objects.get(pk=run.pk).status == Status.PENDING
        proxy.restore()
        assert django_q.sweep() == [run.pk]
        assert broker.queue_size() == 1
        assert SignedPackage.loads(broker.dequeue()[0][1])["args"] == (run.pk,)
    finally:
        broker.delete_queue()
        proxy.close()
