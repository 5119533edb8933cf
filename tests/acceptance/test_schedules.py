"""Three processes tick one every-minute schedule through the same simulated minutes:
the database lets exactly one run through per fire time."""

import datetime as dt
import subprocess
import sys
import textwrap

import pytest

from django_tasks_live import schedules
from django_tasks_live.models import Run, Schedule
from tests.support.processes import ROOT, child_env

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
MINUTES = 30
PROCESSES = 3

# Each child waits at a barrier (a file), then ticks every simulated minute in order.
TICKER = textwrap.dedent("""
    import datetime as dt, os, sys, time
    import django
    django.setup()
    from django_tasks_live import schedules
    start, minutes, go = dt.datetime.fromisoformat(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    schedules.tick(start - dt.timedelta(minutes=1))  # sync code schedules before the race
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    created = 0
    for k in range(minutes):
        created += len(schedules.tick(start + dt.timedelta(minutes=k, seconds=0.5)))
    print("created", created, flush=True)
""")


def test_three_tickers_make_one_run_per_fire_time(tmp_path):
    schedule = schedules.create_schedule("race", "noop", "* * * * *", kwargs={"n": 1})
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=T0)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", TICKER, T0.isoformat(), str(MINUTES), str(go)],
                         env=child_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(PROCESSES)
    ]
    try:
        for proc in procs:  # all three set up before any ticks
            line = proc.stdout.readline().strip()
            assert line == "ready", f"ticker did not start ({line!r}):\n{proc.communicate()[1]}"
        go.touch()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs), outputs
    created = [int(out.split()[-1]) for out, _ in outputs]

    # Our schedule and the code-declared "every-minute" one (synced by the children,
    # first due at T0 too): each simulated minute exactly once for each.
    expected = [T0 + dt.timedelta(minutes=k) for k in range(MINUTES)]
    for name in ("race", "code:every-minute"):
        runs = Run.objects.filter(schedule__name=name)
        assert sorted(runs.values_list("fire_time", flat=True)) == expected, name
    assert sum(created) == 2 * MINUTES  # each process counted only the runs it inserted
    assert min(created) < 2 * MINUTES  # the processes really raced for the fire times
    schedule.refresh_from_db()
    assert schedule.next_run_at == expected[-1] + dt.timedelta(minutes=1)
