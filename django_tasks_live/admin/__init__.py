"""The admin as an operations console.

One module per page family, all registered on import:

- :mod:`.runs` the runs changelist (status tabs with capped counts, filters, search,
  live rows) and :mod:`.run_page` one run's compact page (Cancel, Rerun, Rerun with
  changed arguments);
- :mod:`.actions` bulk Cancel / Rerun on the selection or on every run matching the
  filter, confirmed, in bounded batches, reported in words;
- :mod:`.tasks` registered handlers (read-only rows, Start form from the signature),
  :mod:`.schedules` cron schedules, :mod:`.workers` worker heartbeats.

Every read and write of runs goes through :mod:`django_tasks_live.store`,
:mod:`django_tasks_live.api` and :mod:`django_tasks_live.bulk`, so the admin follows
the same lifecycle rules (and emits the same live events) as everything else.
"""

from .runs import RunAdmin
from .schedules import ScheduleAdmin, ScheduleForm
from .tasks import TaskAdmin
from .workers import WorkerAdmin, worker_state

__all__ = ["RunAdmin", "ScheduleAdmin", "ScheduleForm", "TaskAdmin", "WorkerAdmin", "worker_state"]
