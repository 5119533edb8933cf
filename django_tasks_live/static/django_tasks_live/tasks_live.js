/*
 * django-tasks-live browser client. No build step, no dependency.
 *
 *   const live = new TasksLive.EventSource("/tasks/events/?task=import-data");
 *   const stop = live.subscribe((runs, connected, info) => render(runs));
 *
 * info.state is "connecting", "live", "reconnecting", "offline" (gave up) or "denied":
 * the stream answered 401/403 (info.status, info.reason), so the client stops retrying
 * (the visitor must log in; a page with data-tasks-live-denied elements shows them).
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

  var TERMINAL = ["completed", "failed", "canceled", "timed_out", "skipped"];
  var STABLE_MS = 5000;
  var DEFAULTS = {
    streamUrl: "/tasks/events/",
    initialDelay: 500,
    maxDelay: 15000,
    maxRetries: null,
    labels: {},
    connectionLabels: {connecting: "connecting…", live: "live", reconnecting: "reconnecting…",
      offline: "offline", denied: "log in to see runs"},
    outcomes: {},
    loginUrl: null,
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
    this.state = "connecting";
    this.denied = null; // {status, reason} once the stream refused this visitor
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
    this.denied = null;
    clearTimeout(this._timer);
    var source = new global.EventSource(this.streamUrl());
    this._source = source;
    source.onopen = function () {
      if (self._source !== source) return;
      // The backoff restarts once the stream proved itself (an event, or STABLE_MS
      // open), so a server that accepts and drops at once is not hammered.
      clearTimeout(self._stable);
      self._stable = setTimeout(function () { self.retries = 0; self._probed = false; }, STABLE_MS);
      self._setConnected(true);
    };
    source.onerror = function () {
      if (self._source !== source) return;
      clearTimeout(self._stable);
      // CLOSED: the server answered with an error status, which EventSource hides.
      var refused = source.readyState === 2;
      // Drop the native auto-reconnect: it ignores our backoff and forgets nothing.
      source.close();
      self._source = null;
      self._setConnected(false);
      if (refused && !self._probed) {
        self._probe();
      } else {
        self._scheduleReconnect();
      }
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

  /**
   * Ask once, with fetch, why the stream was refused: 401/403 means "log in", and
   * retrying cannot help. Other refusals (503 while a server starts) back off as usual;
   * the probe is not repeated until the stream has worked again.
   */
  LiveSource.prototype._probe = function () {
    var self = this;
    this._probed = true;
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    fetch(this.streamUrl(), {credentials: "same-origin", headers: {"Accept": "text/event-stream"},
      signal: controller ? controller.signal : undefined})
      .then(function (response) {
        if (self.closed) return null;
        if (response.status === 401 || response.status === 403) {
          return response.text().then(function (text) {
            self._deny(response.status, text.slice(0, 500));
          });
        }
        if (controller) controller.abort(); // a 200 is a live stream: not ours to read
        self._scheduleReconnect();
        return null;
      })
      .catch(function () {
        if (!self.closed && !self.denied) self._scheduleReconnect();
      });
  };

  LiveSource.prototype._deny = function (status, reason) {
    this.closed = true;
    this.denied = {status: status, reason: reason};
    this.state = "denied";
    this._notify();
    dispatch(global.document, "tasks-live:denied", {source: this, status: status, reason: reason});
  };

  /** What subscribers get as their third argument. */
  LiveSource.prototype.info = function () {
    return {state: this.state, status: this.denied ? this.denied.status : null,
      reason: this.denied ? this.denied.reason : null};
  };

  LiveSource.prototype._scheduleReconnect = function () {
    var self = this;
    if (this.closed) return;
    if (this.maxRetries !== null && this.retries >= this.maxRetries) {
      this.closed = true;
      this.state = "offline";
      this._notify();
      dispatch(global.document, "tasks-live:gave-up", {source: this});
      return;
    }
    this.state = "reconnecting";
    this._notify();
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
    if (!this.denied) this.state = "offline";
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

  /** fn(runs, connected, info) now and after every change; returns the unsubscribe function. */
  LiveSource.prototype.subscribe = function (fn) {
    var self = this;
    this._subscribers.push(fn);
    fn(this.runs, this.connected, this.info());
    return function () {
      self._subscribers = self._subscribers.filter(function (other) {
        return other !== fn;
      });
    };
  };

  LiveSource.prototype._setConnected = function (value) {
    if (value) this.state = "live";
    if (this.connected !== value) {
      this.connected = value;
      this._notify();
    }
  };

  LiveSource.prototype._notify = function () {
    var runs = this.runs;
    var connected = this.connected;
    var info = this.info();
    this._subscribers.slice().forEach(function (fn) {
      try {
        fn(runs, connected, info);
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

  function hasLabels(state, wanted) {
    // wanted: ["key:value", ...]; a run matches when it carries every one of them.
    var labels = state.labels || {};
    return wanted.every(function (pair) {
      var at = pair.indexOf(":");
      return at > 0 && labels[pair.slice(0, at)] === pair.slice(at + 1);
    });
  }

  function latestOf(runs, taskName, wantedLabels) {
    var latest = null;
    runs.forEach(function (state) {
      if (state.task === taskName && hasLabels(state, wantedLabels) &&
          (!latest || state.id > latest.id)) latest = state;
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

  // ------------------------------------------------------------------ readable text
  // The same rules as the template tags (django_tasks_live/templatetags/tasks_live.py),
  // so a card reads alike before and after the stream updates it.

  /** 3.2 s, 42 s, 3 min 5 s, 1 h 2 min. */
  function duration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds) || seconds < 0) return "";
    if (seconds < 10) return (Math.floor(seconds * 10) / 10).toFixed(1) + " s";
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) {
      var sec = Math.floor(seconds % 60);
      return Math.floor(seconds / 60) + " min" + (sec ? " " + sec + " s" : "");
    }
    var min = Math.floor((seconds % 3600) / 60);
    return Math.floor(seconds / 3600) + " h" + (min ? " " + min + " min" : "");
  }

  function parseTime(value) {
    var date = value ? new Date(value) : null;
    return date && !isNaN(date.getTime()) ? date : null;
  }

  /** A moment in the browser's local time: the time alone when it is today. */
  function localTime(date) {
    var now = new Date();
    return date.toDateString() === now.toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
  }

  function runSeconds(state) {
    var start = parseTime(state.started_at), end = parseTime(state.finished_at);
    return start && end ? (end - start) / 1000 : null;
  }

  /** What a finished card says instead of its last progress message. */
  function outcomeText(state, config) {
    var words = config.outcomes[state.status];
    if (!words) return null;
    var seconds = runSeconds(state);
    return seconds === null ? words[0] : words[1].replace("{duration}", duration(seconds));
  }

  function whenOf(state) {
    var pairs = [["finished", state.finished_at], ["started", state.started_at],
      ["due", state.run_after], ["queued", state.created_at]];
    for (var i = 0; i < pairs.length; i++) {
      var date = parseTime(pairs[i][1]);
      if (date && (pairs[i][0] !== "due" || date > new Date())) return [pairs[i][0], date];
    }
    return null;
  }

  var TIME_KEY = /(^|_)(at|time|timestamp|date)$/;

  /** Results for people: "key: value" lines, times in local time, short numbers. */
  function readable(value, key, depth) {
    depth = depth || 0;
    if (value === null || value === undefined) return "";
    var timed = key && TIME_KEY.test(key);
    if (typeof value === "number") {
      if (timed && value >= 1e9 && value < 1e11) return localTime(new Date(value * 1000));
      return String(Math.round(value * 1000) / 1000);
    }
    if (typeof value === "string") {
      var date = timed && /^\d{4}-\d\d-\d\dT/.test(value) ? parseTime(value) : null;
      return date ? localTime(date) : value;
    }
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (depth > 0) return JSON.stringify(value);
    if (Array.isArray(value)) {
      return value.map(function (item) { return readable(item, null, 1); }).join(", ");
    }
    return Object.keys(value).map(function (name) {
      return name + ": " + readable(value[name], name, 1);
    }).join("\n");
  }

  function loginHref(config) {
    if (!config.loginUrl) return null;
    var here = global.location.pathname + global.location.search;
    return config.loginUrl + (config.loginUrl.indexOf("?") === -1 ? "?" : "&") +
      "next=" + encodeURIComponent(here);
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
    var outcome = isTerminal(status) ? outcomeText(state, config) : null;
    within(item, "[data-tasks-live-message]").forEach(function (el) {
      setText(el, outcome !== null ? outcome : state.progress && state.progress.message);
    });
    var when = whenOf(state);
    within(item, "[data-tasks-live-when]").forEach(function (el) {
      setText(el, when ? when[0] + " " + localTime(when[1]) : "");
      if (when) el.setAttribute("datetime", when[1].toISOString());
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
      setText(el, state.result === undefined ? "" : readable(state.result));
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
    var labels = list(container.getAttribute("data-tasks-live-list-label"));
    var limit = parseInt(container.getAttribute("data-tasks-live-list-limit"), 10) || 50;
    var holder = container.querySelector("[data-tasks-live-items]") || container;
    var template = container.querySelector("template[data-tasks-live-template]");
    var wanted = [];
    runs.forEach(function (state) {
      if ((!statuses.length || statuses.indexOf(state.status) !== -1) &&
          (!tasks.length || tasks.indexOf(state.task) !== -1) && hasLabels(state, labels)) {
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
    var denied = source.state === "denied";
    root.classList.toggle("tasks-live--connected", connected);
    root.classList.toggle("tasks-live--disconnected", !connected);
    root.classList.toggle("tasks-live--denied", denied);
    root.querySelectorAll("[data-tasks-live-connection]").forEach(function (el) {
      setText(el, config.connectionLabels[source.state] || source.state);
      el.title = denied && source.denied.reason ? source.denied.reason : "";
    });
    // "Log in to see runs" blocks: shown when refused, hidden once live; until the
    // stream answers they keep what the server rendered (no flash for anonymous pages).
    root.querySelectorAll("[data-tasks-live-denied]").forEach(function (el) {
      if (denied || connected) el.hidden = !denied;
    });
    var login = loginHref(config);
    if (login) {
      root.querySelectorAll("a[data-tasks-live-login]").forEach(function (el) {
        el.setAttribute("href", login);
      });
    }
    root.querySelectorAll("[data-tasks-live-list]").forEach(function (el) {
      renderList(el, runs);
    });
    root.querySelectorAll(ITEM).forEach(function (item) {
      var state;
      if (item.hasAttribute("data-tasks-live-run")) {
        state = runs.get(Number(item.getAttribute("data-tasks-live-run")));
      } else {
        state = latestOf(runs, item.getAttribute("data-tasks-live-task"),
                         list(item.getAttribute("data-tasks-live-label")));
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
    var body;
    try {
      body = JSON.stringify(actionKwargs(button, item));
    } catch (err) {
      if (feedback) setText(feedback, err.message);
      return;
    }
    if (body === undefined) return; // the form asked for a missing argument
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
        if (response.status === 401 && data.login_url) {
          // Logged out: log in, then come back to this page (not to the POST endpoint).
          global.location.assign(data.login_url);
          return;
        }
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

  /**
   * The keyword arguments of an action: the button's data-tasks-live-kwargs (JSON), plus
   * for Start the fields of the item's data-tasks-live-form, typed by data-tasks-live-type.
   * Undefined when the form is not valid yet (the browser says what is missing).
   */
  function actionKwargs(button, item) {
    var kwargs = JSON.parse(button.getAttribute("data-tasks-live-kwargs") || "{}");
    var form = item && button.getAttribute("data-tasks-live-action") === "start"
      ? within(item, "form[data-tasks-live-form]")[0] : null;
    if (!form) return kwargs;
    if (form.reportValidity && !form.reportValidity()) return undefined;
    Array.prototype.forEach.call(form.elements, function (el) {
      var type = el.getAttribute("data-tasks-live-type");
      if (!el.name || !type) return;
      if (type === "bool") {
        kwargs[el.name] = el.checked;
      } else if (el.value !== "" || el.required) {
        if (type === "int" || type === "float") {
          kwargs[el.name] = Number(el.value);
        } else if (type === "json") {
          try {
            kwargs[el.name] = JSON.parse(el.value);
          } catch (err) {
            throw new Error(el.name + " must be JSON: " + err.message);
          }
        } else {
          kwargs[el.name] = el.value;
        }
      } // an optional field left empty: the handler's default applies
    });
    return kwargs;
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
    TERMINAL: TERMINAL.slice(),
    format: {duration: duration, readable: readable, localTime: localTime}
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
