// graflow dashboard: the run page's live updates. Hand-written, no build
// step, no dependency. The server folds the run's log and sends what
// changed as server-sent events (see stream.go):
//   snapshot {run, tasks[]}   the whole state when the stream opens
//   ev       {seq, type, task, worker, time, events, run?, tasks?, added?, problem?}
//   end      {status, ...}    the run ended: the server closes the stream
//   fault    {message}        the log could not be read
"use strict";

(function () {
  var box = document.querySelector("[data-live-run]");
  if (!box || !window.EventSource) {
    return;
  }
  var tasks = {}; // id -> last view received
  var stateEl = box.querySelector("[data-stream-state]");
  var eventsEl = box.querySelector("[data-events]");
  var redrawing = false;
  var redrawAgain = false;

  function setState(state, text) {
    box.dataset.state = state;
    if (stateEl) {
      stateEl.textContent = text;
    }
  }

  // byTask returns the elements (DAG node, table row) showing task id,
  // from an index built on first use and dropped when the DAG is redrawn.
  var index = null;
  function byTask(id) {
    if (!index) {
      index = {};
      var all = box.querySelectorAll("[data-task]");
      for (var i = 0; i < all.length; i++) {
        var k = all[i].getAttribute("data-task");
        (index[k] = index[k] || []).push(all[i]);
      }
    }
    return index[id] || [];
  }

  function setField(el, name, text) {
    var f = el.querySelector('[data-field="' + name + '"]');
    if (f) {
      f.textContent = text;
      if (name === "status") {
        f.setAttribute("data-status", text);
      }
    }
  }

  // showTask paints one task's view on its DAG node and table row; it
  // returns false when the page has no element for the task (added since
  // the page was drawn).
  function showTask(t) {
    tasks[t.id] = t;
    var els = byTask(t.id);
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      el.setAttribute("data-status", t.status);
      setField(el, "status", t.status);
      if (el.tagName.toLowerCase() === "tr") {
        setField(el, "attempt", String(t.attempt));
        setField(el, "owner", t.owner || "");
        setField(el, "error", t.error || "");
      } else {
        setField(el, "attempt", t.attempt > 1 ? " · attempt " + t.attempt : "");
      }
    }
    return els.length > 0;
  }

  function showRun(r) {
    var b = box.querySelector("[data-run-status]");
    if (b) {
      b.textContent = r.status;
      b.setAttribute("data-status", r.status);
    }
    var n = box.querySelector("[data-run-events]");
    if (n && r.events) {
      n.textContent = String(r.events);
    }
    var c = box.querySelector("[data-run-cause]");
    if (c) {
      c.textContent = r.cause ? (r.failed_task ? "task " + r.failed_task + ": " : "") + r.cause : "";
      c.hidden = !r.cause;
    }
  }

  function showCounts() {
    var counts = {};
    for (var id in tasks) {
      counts[tasks[id].status] = (counts[tasks[id].status] || 0) + 1;
    }
    var els = box.querySelectorAll("[data-count]");
    for (var i = 0; i < els.length; i++) {
      var k = els[i].getAttribute("data-count");
      var n = els[i].querySelector("[data-n]");
      if (n) {
        n.textContent = String(counts[k] || 0);
      }
      els[i].hidden = !counts[k];
    }
  }

  // redraw fetches the DAG again (tasks were added) and repaints every
  // task on it. One fetch at a time; a request during one runs after it.
  function redraw() {
    if (redrawing) {
      redrawAgain = true;
      return;
    }
    redrawing = true;
    fetch(box.dataset.dag, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status)); })
      .then(function (html) {
        box.querySelector("[data-dag-box]").innerHTML = html;
        index = null;
        for (var id in tasks) {
          showTask(tasks[id]);
        }
      })
      .catch(function () { /* the table still shows every task */ })
      .then(function () {
        redrawing = false;
        if (redrawAgain) {
          redrawAgain = false;
          redraw();
        }
      });
  }

  function logEvent(e) {
    if (!eventsEl) {
      return;
    }
    var li = document.createElement("li");
    var t = e.time ? new Date(e.time).toISOString().substring(11, 23) : "";
    var line = t + " " + e.type;
    if (e.task) {
      line += " " + e.task + (e.attempt ? " #" + e.attempt : "");
    }
    if (e.worker) {
      line += " by " + e.worker;
    }
    if (e.problem) {
      line += " (not folded: " + e.problem + ")";
    }
    li.textContent = line;
    eventsEl.insertBefore(li, eventsEl.firstChild);
    while (eventsEl.children.length > 200) {
      eventsEl.removeChild(eventsEl.lastChild);
    }
  }

  var es = new EventSource(box.dataset.stream);
  es.addEventListener("open", function () { setState("open", "live"); });
  es.addEventListener("snapshot", function (m) {
    var s = JSON.parse(m.data);
    var missing = false;
    tasks = {};
    for (var i = 0; i < s.tasks.length; i++) {
      missing = !showTask(s.tasks[i]) || missing;
    }
    showRun(s.run);
    showCounts();
    setState("open", "live");
    if (missing) {
      redraw();
    }
  });
  es.addEventListener("ev", function (m) {
    var e = JSON.parse(m.data);
    var missing = e.added > 0;
    for (var i = 0; e.tasks && i < e.tasks.length; i++) {
      missing = !showTask(e.tasks[i]) || missing;
    }
    if (e.run) {
      showRun(e.run);
    }
    var n = box.querySelector("[data-run-events]");
    if (n) {
      n.textContent = String(e.events);
    }
    showCounts();
    logEvent(e);
    if (missing) {
      redraw();
    }
  });
  es.addEventListener("end", function (m) {
    es.close(); // or EventSource would reconnect
    showRun(JSON.parse(m.data));
    setState("ended", "run ended: live updates stopped");
  });
  es.addEventListener("fault", function (m) {
    es.close();
    setState("broken", JSON.parse(m.data).message);
  });
  es.addEventListener("error", function () {
    if (es.readyState === EventSource.CLOSED) {
      setState("broken", "live updates unavailable: reload the page");
    } else if (box.dataset.state !== "ended") {
      setState("connecting", "reconnecting…");
    }
  });
})();
