"""Unique and debounced starts from several processes at once, on the test's database."""

from __future__ import annotations

import json
import sys

import pytest

from django_tasks_live.models import Run
from tests.support.processes import children

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

PROCESSES = 4
STARTS = 30

# Each process waits for the go file, then starts the task STARTS times and prints
# one JSON line: [[run id, created], ...].
STARTER = """
import json, os, sys, time
import django
django.setup()
import django_tasks_live as tasks_live
task, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.005)
out = []
for i in range(int(sys.argv[4])):
    run, created = tasks_live.start_or_get(task, **json.loads(sys.argv[3].replace("I", str(i))))
    out.append([run.pk, created])
print("RESULT " + json.dumps(out), flush=True)
"""


def start_from_processes(tmp_path, task: str, kwargs_template: str) -> list[list]:
    go = tmp_path / "go"
    with children(tmp_path) as spawn:
        starters = [spawn([sys.executable, "-c", STARTER, task, str(go), kwargs_template, str(STARTS)])
                    for _ in range(PROCESSES)]
        go.touch()
        for starter in starters:
            assert starter.wait(120) == 0, starter.output()
        outputs = [starter.output() for starter in starters]
    results = []
    for output in outputs:
        [line] = [line for line in output.splitlines() if line.startswith("RESULT ")]
        results += json.loads(line[len("RESULT "):])
    assert len(results) == PROCESSES * STARTS
    return results


def test_unique_starts_from_several_processes_create_one_run(tmp_path):
    results = start_from_processes(tmp_path, "unique-sync", '{"account": 9}')
    assert len({pk for pk, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    assert Run.objects.filter(task_name="unique-sync").count() == 1


def test_debounced_starts_from_several_processes_collapse(tmp_path):
    results = start_from_processes(tmp_path, "debounced", '{"value": I}')
    assert len({pk for pk, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1
    [run] = Run.objects.filter(task_name="debounced")
    assert run.kwargs == {"value": STARTS - 1}  # the last start of whichever process came last
