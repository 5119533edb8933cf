"""The runs changelist: status tabs with capped counts, filters, search, live markup."""

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

import django_tasks_live as tasks_live
from django_tasks_live import store
from django_tasks_live.admin import changelist
from django_tasks_live.states import Status
from tests.admin.helpers import RUNS, listed, make_run

pytestmark = pytest.mark.django_db


def tabs_of(response) -> dict[str, str]:
    return {tab.status or "all": str(tab.count) for tab in response.context["cl"].tabs}


def test_each_status_tab_lists_its_runs(admin_client):
    runs = {status: make_run(status) for status in Status}
    for status, run in runs.items():
        response = admin_client.get(RUNS, {"status__exact": status.value})
        assert listed(response) == [run.pk], status
        selected = [tab.status for tab in response.context["cl"].tabs if tab.selected]
        assert selected == [status.value]


def test_tabs_count_each_status_under_the_other_filters(admin_client):
    for _ in range(2):
        make_run(Status.COMPLETED, "add", a=1, b=2)
    make_run(Status.FAILED, "add", a=1, b=2)
    make_run(Status.COMPLETED)  # noop: not counted under task=add
    response = admin_client.get(RUNS, {"task": "add", "status__exact": "failed"})
    counts = tabs_of(response)
    assert (counts["all"], counts["completed"], counts["failed"], counts["pending"]) == ("3", "2", "1", "0")
    content = response.content.decode()
    assert 'data-tl-tab="completed" data-tl-count="2" data-tl-exact="1"' in content
    # A tab link keeps the other filters and drops the page number.
    tab = next(t for t in response.context["cl"].tabs if t.status == "completed")
    assert "task=add" in tab.url and "status__exact=completed" in tab.url


def test_counts_above_the_cap_are_shown_as_capped(admin_client, monkeypatch):
    monkeypatch.setattr(changelist, "COUNT_CAP", 3)
    monkeypatch.setattr(changelist.capped_count, "__defaults__", (3,))
    for _ in range(5):
        make_run(Status.PENDING)
    make_run(Status.FAILED)
    response = admin_client.get(RUNS)
    counts = tabs_of(response)
    assert (counts["all"], counts["pending"], counts["failed"]) == ("3+", "3+", "1")
    content = response.content.decode()
    assert "3+ runs" in content and "narrow the filter" in content
    assert 'data-tl-tab="pending" data-tl-count="3" data-tl-exact="0"' in content


def test_capped_count_reads_at_most_cap_plus_one_rows(django_assert_num_queries):
    for _ in range(4):
        tasks_live.start("noop")
    with django_assert_num_queries(1) as ctx:
        count = changelist.capped_count(store.runs(), 2)
    assert (count.value, count.exact, str(count)) == (2, False, "2+")
    assert "LIMIT 3" in ctx.captured_queries[0]["sql"]
    assert str(changelist.capped_count(store.runs(), 10)) == "4"


def test_filters_by_task_queue_label_worker_and_dates(admin_client):
    noop = make_run(Status.PENDING)
    other = tasks_live.using(queue="other", labels={"tenant": "acme"}).start("add", a=1, b=2)
    ran = make_run(Status.COMPLETED)  # claimed by worker-1
    assert listed(admin_client.get(RUNS, {"task": "add"})) == [other.pk]
    assert listed(admin_client.get(RUNS, {"queue": "other"})) == [other.pk]
    assert listed(admin_client.get(RUNS, {"label": "tenant:acme"})) == [other.pk]
    assert listed(admin_client.get(RUNS, {"label": "tenant:other"})) == []
    assert listed(admin_client.get(RUNS, {"worker": "worker-1"})) == [ran.pk]
    assert set(listed(admin_client.get(RUNS, {"created_at__gte": "2000-01-01"}))) == {
        noop.pk, other.pk, ran.pk}
    assert listed(admin_client.get(RUNS, {"finished_at__isnull": "False"})) == [ran.pk]


def test_a_label_filter_that_is_not_key_value_is_refused_not_a_500(admin_client):
    response = admin_client.get(RUNS, {"label": "no-colon"})
    assert response.status_code == 302  # the admin's answer to bad lookup parameters
    assert "e=1" in response["Location"]


def test_search_by_id_task_error_type_and_message(admin_client):
    noop = make_run(Status.PENDING)
    failed = make_run(Status.RUNNING, "add", a=1, b=2)
    failed = store.transition(failed.pk, Status.FAILED, error="disk quota exceeded",
                              error_type="builtins.OSError")
    assert listed(admin_client.get(RUNS, {"q": str(noop.pk)})) == [noop.pk]
    assert listed(admin_client.get(RUNS, {"q": f"#{noop.pk}"})) == [noop.pk]
    assert listed(admin_client.get(RUNS, {"q": "add"})) == [failed.pk]
    assert listed(admin_client.get(RUNS, {"q": "OSError"})) == [failed.pk]
    assert listed(admin_client.get(RUNS, {"q": "builtins.OSError"})) == [failed.pk]
    assert listed(admin_client.get(RUNS, {"q": "quota"})) == [failed.pk]
    assert listed(admin_client.get(RUNS, {"q": "no-such-run"})) == []


def test_rows_carry_live_markup_and_the_page_its_live_settings(admin_client):
    run = make_run(Status.RUNNING, "import-data", labels={"tenant": "acme"})
    store.save_progress(run.pk, percent=42.0, progress_message="halfway")
    response = admin_client.get(RUNS, {"task": "import-data", "label": "tenant:acme"})
    content = response.content.decode()
    assert '<progress max="100" value="42"></progress>' in content
    assert '<span data-tl-field="percent">42%</span>' in content
    assert '<span data-tl-field="attempt">1/4</span>' in content  # 1 attempt + 3 retries
    live = response.context["cl"].live
    assert live["streamUrl"] == "/tasks/events/?task=import-data&label=tenant%3Aacme"
    assert [state["id"] for state in live["rows"]] == [run.pk]
    assert (live["maxId"], live["insertNew"], live["detectNew"]) == (run.pk, True, True)
    assert 'id="tl-admin-live"' in content and "admin_live.js" in content
    # Page 2, a search or a sort: no rows inserted (a bar counts new runs or nothing).
    assert admin_client.get(RUNS, {"o": "2"}).context["cl"].live["detectNew"] is False
    assert admin_client.get(RUNS, {"q": "x"}).context["cl"].live["insertNew"] is False


def test_progress_messages_are_escaped_in_the_changelist(admin_client):
    run = make_run(Status.RUNNING)
    store.save_progress(run.pk, progress_message="<script>alert(1)</script>")
    content = admin_client.get(RUNS).content.decode()
    assert "<script>alert(1)</script>" not in content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content
    # In the JSON the live script reads, "<" is escaped too (json_script).
    config = content.split('id="tl-admin-live" type="application/json">')[1].split("</script>")[0]
    assert "<script>" not in config
    assert json.loads(config)["rows"][0]["progress"]["message"] == "<script>alert(1)</script>"


def test_view_only_staff_sees_runs_but_no_actions_or_buttons(client):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_run"))
    client.force_login(user)
    run = make_run(Status.PENDING)
    response = client.get(RUNS)
    assert listed(response) == [run.pk]
    assert "cancel_runs" not in response.content.decode()
    page = client.get(reverse("admin:django_tasks_live_run_change", args=[run.pk])).content.decode()
    assert "data-tl-button" not in page
    for name in ("cancel", "rerun", "rerun_with"):
        url = reverse(f"admin:django_tasks_live_run_{name}", args=[run.pk])
        assert client.post(url).status_code == 403, name
    forged = client.post(RUNS, {"action": "cancel_runs", "_selected_action": [run.pk],
                                "tl_confirm": "yes", "index": "0"})
    assert forged.status_code == 403  # an action it is not offered: forged
    assert store.get_run(run.pk).status == Status.PENDING


def test_staff_without_view_permission_is_refused(client):
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(RUNS).status_code == 403
    run = make_run(Status.PENDING)
    assert client.get(reverse("admin:django_tasks_live_run_change", args=[run.pk])).status_code == 403


def test_the_engine_of_each_run_is_shown_and_filterable(admin_client, settings):
    builtin = make_run(Status.PENDING)
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "EXECUTOR": "django_q"}
    handed = make_run(Status.PENDING)
    assert listed(admin_client.get(RUNS, {"executor__exact": "django_q"})) == [handed.pk]
    assert listed(admin_client.get(RUNS, {"executor__exact": "builtin"})) == [builtin.pk]
    page = admin_client.get(reverse("admin:django_tasks_live_run_change", args=[handed.pk]))
    assert "<tr><th>Executor</th><td>django_q</td></tr>" in page.content.decode()


def test_tabs_are_not_counted_under_filters_no_index_answers(admin_client):
    tasks_live.using(labels={"tenant": "acme"}).start("noop")
    for params in ({"label": "tenant:acme"}, {"queue": "default"}, {"q": "noop"}):
        response = admin_client.get(RUNS, params)
        assert all(tab.count is None for tab in response.context["cl"].tabs), params
        assert 'class="tl-count"' not in response.content.decode()
    counted = admin_client.get(RUNS, {"task": "noop"}).context["cl"].tabs
    assert str(counted[0].count) == "1"


def test_rerun_needs_the_start_permission_too(client, settings):
    # START_PERMISSION gates reruns in the admin as on the endpoints.
    settings.TASKS_LIVE = {**settings.TASKS_LIVE, "START_PERMISSION": "django_tasks_live.add_schedule"}
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_run", "change_run",
                                                                       "add_run"]))
    client.force_login(user)
    run = make_run(Status.COMPLETED)
    for name in ("rerun", "rerun_with"):
        url = reverse(f"admin:django_tasks_live_run_{name}", args=[run.pk])
        assert client.post(url).status_code == 403, name
    assert "rerun_runs" not in client.get(RUNS).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="add_schedule",
                                                     content_type__app_label="django_tasks_live"))
    client.force_login(User.objects.get(pk=user.pk))  # a fresh permission cache
    response = client.post(reverse("admin:django_tasks_live_run_rerun", args=[run.pk]))
    assert response.status_code == 302 and store.runs(task=["noop"]).count() == 2


def test_counts_under_an_unindexed_filter_stop_at_the_lower_cap(admin_client, monkeypatch):
    monkeypatch.setattr(changelist, "FILTERED_COUNT_CAP", 2)
    for _ in range(3):
        make_run(Status.FAILED, labels={"tenant": "t3"})
    by_label = admin_client.get(RUNS, {"label": "tenant:t3"})
    assert by_label.context["cl"].result_count_text == "2+"  # each counted row is read
    assert len(by_label.context["cl"].result_list) == 3  # the page itself is complete
    assert admin_client.get(RUNS, {"q": "noop"}).context["cl"].result_count_text == "2+"
    assert admin_client.get(RUNS, {"task": "noop"}).context["cl"].result_count_text == "3"
