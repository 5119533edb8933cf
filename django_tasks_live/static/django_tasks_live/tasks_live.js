/*
 * django-tasks-live browser client. No build step, no dependency.
 *
 *   const live = new TasksLive.EventSource("/tasks/events/?task=import-data");
 *   const stop = live.subscribe((runs, connected) => render(runs));
 *
 * Declarative mode: an element with data-tasks-live-stream="<url>" (empty: the
 * configured stream URL) gets a stream on DOMContentLoaded, and every
 * data-tasks-live-* element inside it updates itself (see bind() below).
 *
 * Stream protocol (django_tasks_live.sse): events
 *   snapshot {"runs": [state...], "last_event_id": N}  replaces all known runs
 *   run      {"kind": "...", "run": state} with an id    upserts one run
 *   progress {"run": state} without id                  moves a non-terminal run's progress
 *   reset    {"reason": "..."}                          forget everything; a snapshot follows
 * All text reaches the page through textContent, never as markup.
 */
(function (global) {
  "use strict";

  var TERMINAL = ["completed", "failed", "canceled", "timed_out"];
  var STABLE_MS = 5000;
  var DEFAULTS = {
    streamUrl: "/tasks/events/",
    initialDelay: 500,
    maxDelay: 15000,
    maxRetries: null,
    labels: {},
    urls: {},
    csrfToken: null
  };

  function readConfig() {
    var config = {};
    var node = global.document && document.getElementById("tasks-live-config");
    if (node) {
      try {
        config = JSON.parse(node.textContent) || {};
      } catch (err) {
        console.warn("tasks_live: unreadable #tasks-live-config", err);
      }
    }
    var out = {};
    Object.keys(DEFAULTS).forEach(function (key) {
      out[key] = config[key] !== undefined && config[key] !== null ? config[key] : DEFAULTS[key];
    });
    return out;
  }

  function isTerminal(status) {
    return TERMINAL.indexOf(status) !== -1;
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (err) {
      console.warn("tasks_live: ignoring an unreadable event", event.type, err);
      return null;
    }
  }

  // ------------------------------------------------------------------ the stream

  /**
   * new TasksLive.EventSource(url, {initialDelay, maxDelay, maxRetries, lastEventId, start})
   * runs: Map of run id -> state; connected: true while the stream is open.
   */
  function LiveSource(url, options) {
    var config = readConfig();
    options = options || {};
    this.url = url || config.streamUrl;
    this.initialDelay = pick(options.initialDelay, config.initialDelay);
    this.maxDelay = pick(options.maxDelay, config.maxDelay);
    this.maxRetries = pick(options.maxRetries, config.maxRetries);
    this.lastEventId = options.lastEventId != null ? options.lastEventId : null;
    this.runs = new Map();
    this.connected = false;
    this.closed = false;
    this.retries = 0; // failed attempts since the stream last worked
    this.reconnects = 0; // connections made after the first one (for tests and dashboards)
    this._subscribers = [];
    this._source = null;
    this._timer = null;
    this._stable = null;
    if (options.start !== false) {
      this.open();
    }
  }

  function pick(value, fallback) {
    return value !== undefined && value !== null ? value : fallback;
  }

  LiveSource.prototype.streamUrl = function () {
    var url = new URL(this.url, global.location.href);
    if (this.lastEventId !== null) {
      // We recreate the native EventSource ourselves, so it cannot send Last-Event-ID.
      url.searchParams.set("last_event_id", String(this.lastEventId));
    }
    return url.toString();
  };

  LiveSource.prototype.open = function () {
    var self = this;
    this.closed = false;
    clearTimeout(this._timer);
    var source = new global.EventSource(this.streamUrl());
    this._source = source;
    source.onopen = function () {
      if (self._source !== source) return;
      // The backoff restarts once the stream proved itself (an event, or STABLE_MS
      // open), so a server that accepts and drops at once is not hammered.
      clearTimeout(self._stable);
      self._stable = setTimeout(function () { self.retries = 0; }, STABLE_MS);
      self._setConnected(true);
    };
    source.onerror = function () {
      if (self._source !== source) return;
      clearTimeout(self._stable);
      // Drop the native auto-reconnect: it ignores our backoff and forgets nothing.
      source.close();
      self._source = null;
      self._setConnected(false);
      self._scheduleReconnect();
    };
    source.addEventListener("snapshot", function (event) {
      var data = parse(event);
      if (!data || self._source !== source) return;
      self.retries = 0;
      self.runs = new Map();
      (data.runs || []).forEach(function (state) {
        if (state && state.id != null) self.runs.set(state.id, state);
      });
      if (data.last_event_id != null) self.lastEventId = data.last_event_id;
      self._notify();
    });
    source.addEventListener("run", function (event) {
      var data = parse(event);
      if (!data || self._source !== source) return;
      self.retries = 0;
      var id = parseInt(event.lastEventId, 10);
      if (!isNaN(id)) self.lastEventId = id;
      if (data.run && data.run.id != null) {
        self.runs.set(data.run.id, data.run);
        self._notify();
      }
    });
    source.addEventListener("progress", function (event) {
      var data = parse(event);
      if (!data || !data.run || self._source !== source) return;
      var known = self.runs.get(data.run.id);
      // A late progress push must never drag a finished run back.
      if (!known || isTerminal(known.status)) return;
      var merged = Object.assign({}, known);
      if (data.run.progress) merged.progress = data.run.progress;
      if (data.run.steps) merged.steps = data.run.steps;
      self.runs.set(known.id, merged);
      self._notify();
    });
    source.addEventListener("reset", function (event) {
      if (self._source !== source) return;
      var data = parse(event) || {};
      console.info("tasks_live: stream reset", data.reason || "");
      self.runs = new Map();
      self.lastEventId = null;
      self._notify();
    });
  };

  LiveSource.prototype._scheduleReconnect = function () {
    var self = this;
    if (this.closed) return;
    if (this.maxRetries !== null && this.retries >= this.maxRetries) {
      this.closed = true;
      this._notify();
      dispatch(global.document, "tasks-live:gave-up", {source: this});
      return;
    }
    var delay = Math.min(this.maxDelay, this.initialDelay * Math.pow(2, this.retries));
    delay = delay * (0.8 + Math.random() * 0.4); // jitter: restarted servers are not stampeded
    this.retries += 1;
    this._timer = setTimeout(function () {
      self.reconnects += 1;
      self.open();
    }, delay);
  };

  LiveSource.prototype.close = function () {
    this.closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._stable);
    if (this._source) this._source.close();
    this._source = null;
    this._setConnected(false);
  };

  /** Add a run state learned elsewhere (e.g. an HTTP response) unless the stream knows it. */
  LiveSource.prototype.learn = function (state) {
    if (state && state.id != null && !this.runs.has(state.id)) {
      this.runs.set(state.id, state);
      this._notify();
    }
  };

  /** fn(runs, connected) now and after every change; returns the unsubscribe function. */
  LiveSource.prototype.subscribe = function (fn) {
    var self = this;
    this._subscribers.push(fn);
    fn(this.runs, this.connected);
    return function () {
      self._subscribers = self._subscribers.filter(function (other) {
        return other !== fn;
      });
    };
  };

  LiveSource.prototype._setConnected = function (value) {
    if (this.connected !== value) {
      this.connected = value;
      this._notify();
    }
  };

  LiveSource.prototype._notify = function () {
    var runs = this.runs;
    var connected = this.connected;
    this._subscribers.slice().forEach(function (fn) {
      try {
        fn(runs, connected);
      } catch (err) {
        console.error("tasks_live: subscriber failed", err);
      }
    });
  };

  function dispatch(target, name, detail) {
    if (target && typeof global.CustomEvent === "function") {
      target.dispatchEvent(new CustomEvent(name, {detail: detail, bubbles: true}));
    }
  }

  // ------------------------------------------------------------------ declarative mode

  var ITEM = "[data-tasks-live-run], [data-tasks-live-task]";

  function list(value) {
    return (value || "").split(",").map(function (s) {
      return s.trim();
    }).filter(Boolean);
  }

  function latestOf(runs, taskName) {
    var latest = null;
    runs.forEach(function (state) {
      if (state.task === taskName && (!latest || state.id > latest.id)) latest = state;
    });
    return latest;
  }

  function within(item, selector) {
    // Elements of this item, not of items nested inside it.
    return Array.prototype.filter.call(item.querySelectorAll(selector), function (el) {
      return el.closest(ITEM) === item;
    });
  }

  function setText(el, text) {
    text = text == null ? "" : String(text);
    if (el.textContent !== text) el.textContent = text;
  }

  function percentOf(state) {
    if (state.status === "completed") return 100;
    var p = state.progress && state.progress.percent;
    return typeof p === "number" && isFinite(p) ? Math.max(0, Math.min(100, p)) : null;
  }

  function render(item, state, config) {
    var status = state.status;
    item.setAttribute("data-status", status);
    item.setAttribute("data-run-id", String(state.id));
    item.className = item.className.replace(/(^|\s)tasks-live--[\w-]+/g, "").trim() +
      " tasks-live--" + String(status).replace(/[^\w-]/g, "");
    var percent = percentOf(state);
    within(item, "[data-tasks-live-bar]").forEach(function (el) {
      el.style.width = (percent || 0) + "%";
      var bar = el.closest("[role=progressbar]");
      if (bar) bar.setAttribute("aria-valuenow", String(Math.round(percent || 0)));
    });
    within(item, "[data-tasks-live-percent]").forEach(function (el) {
      setText(el, percent === null ? "" : Math.round(percent) + "%");
    });
    within(item, "[data-tasks-live-message]").forEach(function (el) {
      setText(el, state.progress && state.progress.message);
    });
    within(item, "[data-tasks-live-status]").forEach(function (el) {
      setText(el, config.labels[status] || status);
    });
    within(item, "[data-tasks-live-id]").forEach(function (el) {
      setText(el, "#" + state.id);
    });
    within(item, "[data-tasks-live-attempt]").forEach(function (el) {
      setText(el, "attempt " + state.attempt + " of " + state.max_attempts);
    });
    within(item, "[data-tasks-live-error]").forEach(function (el) {
      setText(el, state.error);
    });
    within(item, "[data-tasks-live-result]").forEach(function (el) {
      setText(el, state.result === undefined ? "" : JSON.stringify(state.result));
    });
    within(item, "[data-tasks-live-field]").forEach(function (el) {
      var value = state[el.getAttribute("data-tasks-live-field")];
      setText(el, value !== null && typeof value === "object" ? JSON.stringify(value) : value);
    });
    within(item, "[data-tasks-live-steps]").forEach(function (el) {
      renderSteps(el, state.steps || []);
    });
    within(item, "[data-tasks-live-show]").forEach(function (el) {
      el.hidden = list(el.getAttribute("data-tasks-live-show")).indexOf(status) === -1;
    });
  }

  function renderSteps(el, steps) {
    var key = JSON.stringify(steps);
    if (el.getAttribute("data-tasks-live-rendered") === key) return;
    el.setAttribute("data-tasks-live-rendered", key);
    while (el.firstChild) el.removeChild(el.firstChild);
    steps.forEach(function (step) {
      var li = document.createElement("li");
      li.className = "tasks-live-step tasks-live-step--" + String(step.state).replace(/[^\w-]/g, "");
      li.textContent = step.name;
      el.appendChild(li);
    });
  }

  function renderList(container, runs) {
    var statuses = list(container.getAttribute("data-tasks-live-list-status"));
    var tasks = list(container.getAttribute("data-tasks-live-list-task"));
    var limit = parseInt(container.getAttribute("data-tasks-live-list-limit"), 10) || 50;
    var holder = container.querySelector("[data-tasks-live-items]") || container;
    var template = container.querySelector("template[data-tasks-live-template]");
    var wanted = [];
    runs.forEach(function (state) {
      if ((!statuses.length || statuses.indexOf(state.status) !== -1) &&
          (!tasks.length || tasks.indexOf(state.task) !== -1)) {
        wanted.push(state);
      }
    });
    wanted.sort(function (a, b) { return b.id - a.id; });
    wanted = wanted.slice(0, limit);
    var wantedIds = wanted.map(function (s) { return String(s.id); });
    var present = {};
    Array.prototype.forEach.call(holder.querySelectorAll(":scope > [data-tasks-live-run]"), function (el) {
      var id = el.getAttribute("data-tasks-live-run");
      // A run the stream knows that no longer matches leaves the list; unknown ones stay.
      if (runs.has(Number(id)) && wantedIds.indexOf(id) === -1) {
        el.remove();
      } else {
        present[id] = el;
      }
    });
    if (template) {
      // Newest first: insert missing runs before the first older item.
      wanted.forEach(function (state) {
        var id = String(state.id);
        if (present[id]) return;
        var clone = template.content.firstElementChild.cloneNode(true);
        clone.setAttribute("data-tasks-live-run", id);
        var before = null;
        Array.prototype.some.call(holder.querySelectorAll(":scope > [data-tasks-live-run]"), function (el) {
          if (Number(el.getAttribute("data-tasks-live-run")) < state.id) {
            before = el;
            return true;
          }
          return false;
        });
        holder.insertBefore(clone, before);
        present[id] = clone;
      });
    }
    var empty = container.querySelector("[data-tasks-live-empty]");
    if (empty) empty.hidden = holder.querySelector("[data-tasks-live-run]") !== null;
  }

  function update(root, source, config) {
    var runs = source.runs;
    var connected = source.connected;
    root.classList.toggle("tasks-live--connected", connected);
    root.classList.toggle("tasks-live--disconnected", !connected);
    root.querySelectorAll("[data-tasks-live-connection]").forEach(function (el) {
      setText(el, connected ? "live" : source.closed ? "offline" : "reconnecting…");
    });
    root.querySelectorAll("[data-tasks-live-list]").forEach(function (el) {
      renderList(el, runs);
    });
    root.querySelectorAll(ITEM).forEach(function (item) {
      var state;
      if (item.hasAttribute("data-tasks-live-run")) {
        state = runs.get(Number(item.getAttribute("data-tasks-live-run")));
      } else {
        state = latestOf(runs, item.getAttribute("data-tasks-live-task"));
      }
      if (state) render(item, state, config);
    });
  }

  function currentState(item, source) {
    var id = Number(item.getAttribute("data-run-id") || item.getAttribute("data-tasks-live-run"));
    return id ? source.runs.get(id) || {id: id} : null;
  }

  function actionUrl(button, item, source, config) {
    var explicit = button.getAttribute("data-tasks-live-url");
    if (explicit) return explicit;
    var action = button.getAttribute("data-tasks-live-action");
    var urls = config.urls || {};
    if (action === "start") {
      var task = button.getAttribute("data-tasks-live-start") ||
        (item && item.getAttribute("data-tasks-live-task"));
      if (!task) {
        var known = item && currentState(item, source);
        task = known && known.task;
      }
      return task && urls.start ? urls.start.replace("{task}", encodeURIComponent(task)) : null;
    }
    var state = item && currentState(item, source);
    return state && urls[action] ? urls[action].replace("{id}", String(state.id)) : null;
  }

  function csrfToken(config) {
    if (config.csrfToken) return config.csrfToken;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function act(button, source, config) {
    var item = button.closest(ITEM);
    var feedback = item ? within(item, "[data-tasks-live-feedback]")[0] : null;
    var url = actionUrl(button, item, source, config);
    if (!url) {
      if (feedback) setText(feedback, "Nothing to " + button.getAttribute("data-tasks-live-action") + ".");
      return;
    }
    var body = button.getAttribute("data-tasks-live-kwargs") || "{}";
    button.disabled = true;
    if (feedback) setText(feedback, "");
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken(config),
        "Accept": "application/json"},
      body: body
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
        if (data.run) source.learn(data.run);
        dispatch(button, "tasks-live:action", {ok: true, run: data.run});
      });
    }).catch(function (err) {
      if (feedback) setText(feedback, err.message);
      dispatch(button, "tasks-live:action", {ok: false, error: err.message});
    }).then(function () {
      button.disabled = false;
    });
  }

  /** Keep every data-tasks-live-* element inside root in step with source. */
  function bind(root, source) {
    var config = readConfig();
    root.addEventListener("click", function (event) {
      var button = event.target.closest("[data-tasks-live-action]");
      if (button && root.contains(button)) {
        event.preventDefault();
        act(button, source, config);
      }
    });
    return source.subscribe(function () {
      update(root, source, config);
    });
  }

  function autoStart() {
    var config = readConfig();
    document.querySelectorAll("[data-tasks-live-stream]").forEach(function (root) {
      if (root.__tasksLive) return;
      var source = new LiveSource(root.getAttribute("data-tasks-live-stream") || config.streamUrl);
      root.__tasksLive = source;
      bind(root, source);
      TasksLive.sources.push(source);
    });
  }

  var TasksLive = {
    EventSource: LiveSource,
    bind: bind,
    start: autoStart,
    sources: [],
    TERMINAL: TERMINAL.slice()
  };
  global.TasksLive = TasksLive;

  if (global.document) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", autoStart);
    } else {
      autoStart();
    }
  }
})(typeof window !== "undefined" ? window : this);
