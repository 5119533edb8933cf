"""Model instances from raw rows (django_tasks_live/raw.py): the same as the ORM's."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import signals

import django_tasks_live as tasks_live
from django_tasks_live import raw
from django_tasks_live.models import Run

pytestmark = pytest.mark.django_db


def fetch(names=None) -> list[Run]:
    shape = raw.shape(Run, connection.alias, names)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {shape.columns} FROM {Run._meta.db_table} ORDER BY id")
        return raw.instances(Run, cursor.fetchall(), connection.alias, names)


def test_instances_equal_what_the_orm_reads():
    tasks_live.using(labels={"tenant": "acme"}).start("add", a=1, b=2)
    [ours], [orms] = fetch(), list(Run.objects.all())
    assert {f.attname: getattr(ours, f.attname) for f in Run._meta.concrete_fields} == \
        {f.attname: getattr(orms, f.attname) for f in Run._meta.concrete_fields}
    assert not ours._state.adding and ours._state.db == connection.alias
    ours.progress_message = "saved"
    ours.save(update_fields=["progress_message"])
    assert Run.objects.get().progress_message == "saved"


def test_fields_left_out_are_deferred_and_load_on_access(django_assert_num_queries):
    run = tasks_live.start("add", a=1, b=2)
    [partial] = fetch(Run.STATE_FIELDS)
    assert "kwargs" in partial.get_deferred_fields()
    with django_assert_num_queries(0):
        assert partial.to_state() == run.to_state()
    with django_assert_num_queries(1):
        assert partial.kwargs == {"a": 1, "b": 2}


def test_an_init_signal_listener_gets_its_call():
    tasks_live.start("noop")
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance.pk)

    signals.post_init.connect(listener, sender=Run)
    try:
        [run] = fetch()
    finally:
        signals.post_init.disconnect(listener, sender=Run)
    assert seen == [run.pk]
