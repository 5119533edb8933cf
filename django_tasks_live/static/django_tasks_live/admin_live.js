/*
 * The admin's live runs: the changelist and a run's page patch themselves from the
 * event stream (TasksLive.EventSource from tasks_live.js). No build step.
 *
 * What it never does (Sidekiq #5184 wiped handlers and a confirmation never showed):
 * re-render a row or the form. It only sets the text of marked spans
 * ([data-tl-field]) inside rows, so checked boxes, an open action menu and focus stay
 * as they are. New runs are added above the first row (without a checkbox until the
 * page is reloaded: Django's actions.js counts the boxes it saw at load) only on the
 * first page sorted newest first with nothing checked; otherwise a "new runs" bar
 * counts them. While the tab is hidden the stream is closed; it resumes (and replays
 * what it missed) when the tab is shown again. All text goes in as textContent.
 */
(function () {
  "use strict";
  var configNode = document.getElementById("tl-admin-live");
  if (!configNode || !window.TasksLive) return;
  var config = JSON.parse(configNode.textContent);
  var TERMINAL = window.TasksLive.TERMINAL;
  var LABELS = {
    pending: "Pending", claimed: "Claimed", running: "Running", retrying: "Retrying",
    cancel_requested: "Cancel requested", completed: "Completed", failed: "Failed",
    canceled: "Canceled", timed_out: "Timed out", skipped: "Skipped"
  };
  var runPage = document.querySelector("[data-tl-run-page]");
  var table = document.getElementById("result_list");
  var indicator = document.querySelector("[data-tl-indicator]");
  var known = new Map(); // run id -> status we last showed (counts move from it)
  var seeded = config.rows || [];
  var maxId = config.maxId || 0;
  var newRuns = new Set();
  var source = null;
  var paused = false;

  function text(el, value) {
    if (el && el.textContent !== value) el.textContent = value;
  }

  function label(status) {
    return LABELS[status] || String(status).replace(/_/g, " ");
  }

  function seconds(value) {
    if (value == null || isNaN(value)) return "—";
    if (value < 10) return value.toFixed(2) + " s";
    if (value < 60) return value.toFixed(1) + " s";
    if (value < 3600) return Math.floor(value / 60) + " min " + Math.floor(value % 60) + " s";
    return Math.floor(value / 3600) + " h " + Math.floor((value % 3600) / 60) + " min";
  }

  function patch(root, state) {
    var status = root.querySelector("[data-tl-field=status]");
    if (status) {
      text(status, label(state.status));
      status.className = "tl-status tl-status-" + state.status;
      status.setAttribute("data-tl-status", state.status);
    }
    if (state.status !== "pending" && state.status !== "retrying") {
      // Claimed: it no longer waits on a pause, so its "paused" badge or note goes.
      root.querySelectorAll(".tl-paused, [data-tl-paused]").forEach(function (el) { el.remove(); });
    }
    var progress = state.progress || {};
    var bar = root.querySelector("[data-tl-field=progress] progress");
    if (bar && progress.percent != null) {
      bar.hidden = false;
      bar.value = Math.round(progress.percent);
    }
    if (progress.percent != null) text(root.querySelector("[data-tl-field=percent]"), Math.round(progress.percent) + "%");
    // Once finished, the outcome replaces the progress message (never a stale "Saving").
    var done = TERMINAL.indexOf(state.status) !== -1;
    var failed = state.status === "failed" || state.status === "timed_out";
    text(root.querySelector("[data-tl-field=message]"),
         done ? (failed ? String(state.error || "").replace(/^[\w.]*\./, "") : "") : (progress.message || ""));
    text(root.querySelector("[data-tl-field=attempt]"), state.attempt + "/" + state.max_attempts);
    var duration = root.querySelector("[data-tl-field=duration]");
    if (duration) {
      duration.setAttribute("data-tl-started", state.started_at || "");
      duration.setAttribute("data-tl-finished", TERMINAL.indexOf(state.status) !== -1 ? (state.finished_at || "") : "");
      tickDuration(duration);
    }
    var steps = root.querySelector("[data-tl-field=steps]");
    if (steps && state.steps) {
      Array.prototype.forEach.call(steps.children, function (li, i) {
        var step = state.steps[i];
        if (step) li.className = "tl-step tl-step-" + step.state;
        if (step) text(li.querySelector("small"), step.state);
      });
    }
  }

  function tickDuration(el) {
    var started = el.getAttribute("data-tl-started");
    if (!started) return;
    var finished = el.getAttribute("data-tl-finished");
    var end = finished ? Date.parse(finished) : Date.now();
    text(el, seconds((end - Date.parse(started)) / 1000));
  }

  // ------------------------------------------------------------------ changelist

  function rowOf(id) {
    var box = table && table.querySelector('input.action-select[value="' + id + '"]');
    if (box) return box.closest("tr");
    return table && table.querySelector('tr[data-tl-new-row="' + id + '"]');
  }

  function moveCount(status, delta) {
    ["all", status].forEach(function (key) {
      var tab = document.querySelector('[data-tl-tab="' + key + '"]');
      if (!tab || tab.getAttribute("data-tl-exact") !== "1") return; // "10,000+" stays
      var value = Math.max(0, parseInt(tab.getAttribute("data-tl-count"), 10) + delta);
      tab.setAttribute("data-tl-count", String(value));
      text(tab.querySelector(".tl-count"), value.toLocaleString("en-US"));
    });
  }

  function matchesPage(state) {
    var f = config.filters || {};
    if (f.status && state.status !== f.status) return false;
    if (f.queue && state.queue !== f.queue) return false;
    return true;
  }

  function nothingChecked() {
    return !table.querySelector("input.action-select:checked");
  }

  function addRow(state) {
    var template = table.querySelector("tbody tr");
    if (!template) return false;
    var row = template.cloneNode(true);
    row.removeAttribute("class");
    row.classList.add("tl-new-row");
    row.setAttribute("data-tl-new-row", String(state.id));
    var box = row.querySelector("input.action-select");
    if (box) {
      var cell = box.parentNode;
      cell.textContent = "";
      var mark = document.createElement("span");
      mark.className = "tl-new-mark";
      mark.title = "New: reload to select it";
      mark.textContent = "new";
      cell.appendChild(mark);
    }
    var url = config.runUrl.replace("{id}", state.id);
    var idCell = row.querySelector(".field-id");
    if (idCell) {
      var link = idCell.querySelector("a") || idCell;
      text(link, String(state.id));
      if (link.tagName === "A") link.href = url;
    }
    var taskCell = row.querySelector(".field-task_name");
    if (taskCell) {
      var taskLink = taskCell.querySelector("a") || taskCell;
      text(taskLink, state.task);
      if (taskLink.tagName === "A") taskLink.href = url;
    }
    text(row.querySelector(".field-queue"), state.queue || "");
    var created = row.querySelector(".field-created time");
    if (created && state.created_at) {
      created.setAttribute("datetime", state.created_at);
      created.title = state.created_at;
      text(created, new Date(state.created_at).toTimeString().slice(0, 8));
    }
    var badge = row.querySelector("[data-tl-field=status]");
    if (badge) badge.setAttribute("data-tl-run", String(state.id));
    var bar = row.querySelector("[data-tl-field=progress] progress");
    if (bar) { bar.hidden = true; bar.value = 0; }
    text(row.querySelector("[data-tl-field=percent]"), "—");
    patch(row, state);
    template.parentNode.insertBefore(row, template);
    return true;
  }

  function showNewBar() {
    var bar = document.querySelector("[data-tl-new-runs]");
    if (!bar) return;
    bar.hidden = newRuns.size === 0;
    text(bar.querySelector("[data-tl-new-count]"), String(newRuns.size));
  }

  function onChangelist(runs) {
    runs.forEach(function (state, id) {
      var before = known.get(id);
      if (before === undefined && config.detectNew && id > maxId && !rowOf(id)) {
        if (!matchesPage(state)) { known.set(id, state.status); return; }
        moveCount(state.status, +1);
        if (config.insertNew && nothingChecked()) addRow(state);
        else { newRuns.add(id); showNewBar(); }
      } else if (before !== undefined && before !== state.status) {
        moveCount(before, -1);
        moveCount(state.status, +1);
      }
      known.set(id, state.status);
      var row = rowOf(id);
      if (row) patch(row, state);
    });
  }

  // ------------------------------------------------------------------ run page

  function onRunPage(runs) {
    var state = runs.get(parseInt(runPage.getAttribute("data-tl-run-page"), 10));
    if (!state) return;
    patch(runPage, state);
    if (TERMINAL.indexOf(state.status) !== -1 && !runPage.hasAttribute("data-tl-done")) {
      runPage.setAttribute("data-tl-done", "1"); // its outcome, attempts and buttons: reload
      setTimeout(function () { window.location.reload(); }, 300);
    }
  }

  // ------------------------------------------------------------------ the stream

  function showIndicator() {
    if (!indicator) return;
    var state = paused ? "paused" : (source && source.connected ? "live" : "reconnecting");
    if (source && source.closed && !paused) state = "stopped";
    indicator.setAttribute("data-tl-indicator", state);
    text(indicator, {live: "● live", reconnecting: "reconnecting…", paused: "paused", stopped: "not live"}[state]);
  }

  function onUpdate(runs) {
    // A snapshot holds the newest runs only: runs further down keep the state they
    // were rendered with, so their progress (which only moves known runs) applies.
    seeded.forEach(function (state) { if (!runs.has(state.id)) runs.set(state.id, state); });
    if (runPage) onRunPage(runs); else if (table) onChangelist(runs);
    showIndicator();
  }

  function start() {
    source = new window.TasksLive.EventSource(config.streamUrl);
    source.subscribe(onUpdate);
    window.TasksLive.adminSource = source;
  }

  seeded.forEach(function (state) { known.set(state.id, state.status); });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      paused = true;
      if (source) source.close();
    } else {
      paused = false;
      if (source) source.open(); // replays from the last event id it saw
    }
    showIndicator();
  });
  setInterval(function () {
    document.querySelectorAll("[data-tl-field=duration]").forEach(tickDuration);
  }, 1000);
  start();
  showIndicator();
})();
