"""Chains and groups on real worker processes: members end at the same moment in
different executors, and the flow still advances exactly once per member."""

from __future__ import annotations

import pytest

import django_tasks_live as tasks_live
from django_tasks_live.models import Run
from django_tasks_live.states import Status
from tests.support.processes import children, worker_args

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def test_groups_and_chains_on_two_workers(tmp_path):
    members = 40
    group = tasks_live.group(*[("add", {"a": i, "b": 1}) for i in range(members)], then="total")
    chain = tasks_live.chain(("add", {"a": 1, "b": 1}), "double", "double", ("add", {"b": 1}))
    with children(tmp_path) as spawn:
        for _ in range(2):
            spawn(worker_args("--concurrency", "2"))
        grouped = tasks_live.wait(group.pk, timeout=120)
        chained = tasks_live.wait(chain.pk, timeout=120)
    assert (grouped.status, grouped.result) == (Status.COMPLETED, sum(range(1, members + 1)))
    assert Run.objects.filter(parent=group).count() == members + 1  # one join, not two
    assert [s["state"] for s in grouped.steps] == ["done"] * (members + 1)
    assert (chained.status, chained.result) == (Status.COMPLETED, 9)
