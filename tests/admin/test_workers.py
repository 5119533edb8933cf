"""Workers: alive, lost or stopped from their heartbeat."""

import datetime as dt
import re

import pytest
from django.utils import timezone

from django_tasks_live.admin import worker_state
from django_tasks_live.admin.workers import worker_uptime
from django_tasks_live.models import Worker
from django_tasks_live.states import Status
from tests.admin.helpers import make_run

pytestmark = pytest.mark.django_db


def test_worker_states_from_heartbeat(admin_client, settings):
    now = timezone.now()
    timeout = 3
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "HEARTBEAT_TIMEOUT": timeout}
    Worker.objects.create(id="w-alive", hostname="h", pid=1, heartbeat_at=now)
    Worker.objects.create(id="w-lost", hostname="h", pid=2,
                          heartbeat_at=now - dt.timedelta(seconds=timeout + 1))
    Worker.objects.create(id="w-stopped", hostname="h", pid=3, heartbeat_at=now, stopped_at=now)
    assert {w.id: worker_state(w, now) for w in Worker.objects.all()} == {
        "w-alive": "alive", "w-lost": "lost", "w-stopped": "stopped"}

    for state in ("alive", "lost", "stopped"):
        response = admin_client.get("/admin/django_tasks_live/worker/", {"state": state})
        assert [w.id for w in response.context["cl"].result_list] == [f"w-{state}"]


def test_workers_show_their_current_runs_and_uptime(admin_client):
    now = timezone.now()
    Worker.objects.create(id="worker-1", hostname="h", pid=1, heartbeat_at=now,
                          started_at=now - dt.timedelta(hours=2, minutes=5), processed=7)
    Worker.objects.create(id="w-idle", hostname="h", pid=2, heartbeat_at=now,
                          started_at=now - dt.timedelta(seconds=40))
    running = make_run(Status.RUNNING)  # claimed by worker-1 (tests/admin/helpers.py)
    claimed = make_run(Status.CLAIMED)
    make_run(Status.COMPLETED)  # worker-1 ran it: no longer current

    response = admin_client.get("/admin/django_tasks_live/worker/")
    rows = {row.split(">", 1)[1].split("</a>")[0]: row for row in
            response.content.decode().split('<th class="field-id">')[1:]}
    assert (f'>#{claimed.pk}</a>, <a href="/admin/django_tasks_live/run/{running.pk}/change/">'
            f'#{running.pk}</a>') in rows["worker-1"]  # newest first
    assert "run/?worker=worker-1" in rows["worker-1"]
    assert '<td class="field-uptime">2 h 5 min</td>' in rows["worker-1"]
    assert '<td class="field-processed">7</td>' in rows["worker-1"]
    assert '<td class="field-running">—</td>' in rows["w-idle"]
    assert re.search(r'<td class="field-uptime">4\d s</td>', rows["w-idle"])  # 40 s, or a slow 41


def test_uptime_of_a_stopped_worker_ends_when_it_stopped():
    start = timezone.now() - dt.timedelta(days=5)
    worker = Worker(id="w", hostname="h", pid=1, started_at=start,
                    heartbeat_at=start + dt.timedelta(days=3), stopped_at=start + dt.timedelta(
                        days=3, hours=4))
    assert worker_uptime(worker) == "3 d 4 h"
