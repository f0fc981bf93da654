// The dashboard's pages: a runs list and a run, both fed by server-sent events.
// Every string from a run is put in the page as text (textContent, canvas fillText), never as
// markup; the page fetches nothing but from its own server.
(function () {
  "use strict";
  var body = document.body;
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : null;
  var STATES = ["pending", "running", "retrying", "done", "failed", "skipped", "cancelled"];
  var COLOURS = {};
  var coloursEl = document.getElementById("colours");
  if (coloursEl) { COLOURS = JSON.parse(coloursEl.textContent); }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function duration(ms) {
    if (ms === null || ms === undefined) { return "\u2013"; }
    var s = ms / 1000;
    if (Math.round(ms * 10) / 10 < 1000) { return ms.toFixed(1) + " ms"; }
    if (Math.round(s * 10) / 10 < 60) { return s.toFixed(1) + " s"; }
    var whole = Math.round(s);
    if (whole < 3600) { return Math.floor(whole / 60) + " min " + (whole % 60) + " s"; }
    var m = Math.round(s / 60);
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function when(epoch) {
    if (epoch === null || epoch === undefined) { return "\u2013"; }
    return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function badge(status) {
    var b = el("span", "badge st-" + (STATES.indexOf(status) >= 0 || status === "abandoned" ?
      status : "other"), status);
    return b;
  }
  function post(url) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf || ""}
    });
  }
  function deleteRun(id, after) {
    if (!window.confirm("Delete the records of run " + id + "?")) { return; }
    post("/api/runs/" + encodeURIComponent(id) + "/delete").then(function (r) {
      var note = document.getElementById("action-note");
      if (note) { note.textContent = r.ok ? "deleted " + id : "refused: " + r.status; }
      if (r.ok && after) { after(); }
    });
  }
  function cancelRun(id, button) {
    if (!window.confirm("Cancel run " + id + "? Its running tasks are cut.")) { return; }
    button.disabled = true;
    post("/api/runs/" + encodeURIComponent(id) + "/cancel").then(function (r) {
      var note = document.getElementById("action-note");
      // 202: sent; the feed then shows the run cancelled once its orchestrator has stopped it.
      if (note) { note.textContent = r.ok ? "cancel sent for " + id : "refused: " + r.status; }
      if (!r.ok) { button.disabled = false; }
    });
  }
  function setConn(ok) {
    var c = document.getElementById("conn");
    if (c) { c.textContent = ok ? "live" : "reconnecting\u2026"; c.className = ok ? "ok" : "bad"; }
  }

  // ---------------------------------------------------------------- the runs list
  function runsPage() {
    var rows = {};
    var order = [];
    var total = 0;
    var page = 0;
    var size = 50;
    var source = null;
    var tbody = document.getElementById("runs-body");
    var statusSel = document.getElementById("f-status");
    var nameIn = document.getElementById("f-name");
    var pager = document.getElementById("pager");

    function connect() {
      if (source) { source.close(); }
      rows = {}; order = [];
      var q = "?status=" + encodeURIComponent(statusSel.value) + "&name=" +
        encodeURIComponent(nameIn.value) + "&page=" + page;
      source = new EventSource("/events" + q);
      source.addEventListener("snapshot", function (e) { apply(JSON.parse(e.data)); });
      source.addEventListener("delta", function (e) { apply(JSON.parse(e.data)); });
      source.onopen = function () { setConn(true); };
      source.onerror = function () { setConn(false); };
    }
    function apply(msg) {
      total = msg.total; size = msg.size; page = msg.page;
      if (msg.order) { order = msg.order; }
      var keys = Object.keys(msg.rows);
      for (var i = 0; i < keys.length; i++) { rows[keys[i]] = msg.rows[keys[i]]; }
      render();
      body.setAttribute("data-ready", "1");
    }
    function render() {
      clear(tbody);
      for (var i = 0; i < order.length; i++) {
        var r = rows[order[i]];
        if (!r) { continue; }
        var tr = el("tr");
        tr.setAttribute("data-run", r.id);
        var a = el("a", null, r.id);
        a.href = "/runs/" + encodeURIComponent(r.id);
        var td = el("td", "id"); td.appendChild(a); tr.appendChild(td);
        tr.appendChild(el("td", null, r.name));
        td = el("td"); td.appendChild(badge(r.status)); tr.appendChild(td);
        tr.appendChild(el("td", null, when(r.started_at)));
        tr.appendChild(el("td", "num", duration(r.took_ms)));
        tr.appendChild(el("td", "num", r.steps_done + "/" + r.steps));
        var wait = "";
        if (r.tasks_waiting) {
          wait = r.tasks_waiting + " task" + (r.tasks_waiting === 1 ? "" : "s") + " waiting";
          if (r.first_waiting) {
            wait += "; " + r.first_waiting[0] + ": " + r.first_waiting[1];
            if (r.waiting_steps > 1) { wait += " (+" + (r.waiting_steps - 1) + " steps)"; }
          }
        }
        tr.appendChild(el("td", "wait", wait));
        if (csrf) {
          td = el("td");
          var b = el("button", "del", "delete");
          b.setAttribute("data-run", r.id);
          td.appendChild(b);
          tr.appendChild(td);
        }
        tbody.appendChild(tr);
      }
      var pages = Math.max(1, Math.ceil(total / size));
      pager.textContent = total + " runs \u00b7 page " + (page + 1) + " of " + pages;
      document.getElementById("prev").disabled = page <= 0;
      document.getElementById("next").disabled = page + 1 >= pages;
    }
    tbody.addEventListener("click", function (e) {
      var t = e.target;
      if (t && t.classList && t.classList.contains("del")) {
        deleteRun(t.getAttribute("data-run"));
      }
    });
    statusSel.addEventListener("change", function () { page = 0; connect(); });
    var typing = null;
    nameIn.addEventListener("input", function () {
      if (typing) { clearTimeout(typing); }
      typing = setTimeout(function () { page = 0; connect(); }, 250);
    });
    document.getElementById("prev").addEventListener("click", function () {
      if (page > 0) { page -= 1; connect(); }
    });
    document.getElementById("next").addEventListener("click", function () {
      page += 1; connect();
    });
    connect();
  }

  // ---------------------------------------------------------------- one run
  // A step record: [status, tasks, done, running, retrying, failed, skipped, cancelled,
  //                 attempts, duration_ms, error, waiting, segments, waited]
  var S = 0, TASKS = 1, DONE = 2, RUNNING = 3, RETRYING = 4, FAILED = 5, SKIPPED = 6,
    CANCELLED = 7, ATTEMPTS = 8, DUR = 9, ERR = 10, WAITING = 11, SEGS = 12, WAITED = 13;
  var ROW = 22;
  var TROW = 16;

  function countsText(r) {
    var pending = Math.max(0, r[TASKS] - r[DONE] - r[RUNNING] - r[RETRYING] - r[FAILED] -
      r[SKIPPED] - r[CANCELLED]);
    var parts = [];
    var pairs = [[r[DONE], "done"], [r[RUNNING], "running"], [r[RETRYING], "retrying"],
      [r[FAILED], "failed"], [r[SKIPPED], "skipped"], [r[CANCELLED], "cancelled"],
      [pending, "pending"]];
    for (var i = 0; i < pairs.length; i++) {
      if (pairs[i][0]) { parts.push(pairs[i][0] + " " + pairs[i][1]); }
    }
    return parts.length ? parts.join(", ") : r[TASKS] + " tasks";
  }

  function runPage() {
    var runId = body.getAttribute("data-run");
    var head = null;
    var names = [];
    var recs = [];
    var shown = [];  // step indices the steps table shows (filtered)
    var selected = -1;
    var filter = "";
    var dagNodes = {};  // step index -> [svg group]
    var groupOf = {};   // svg group key -> member steps
    var tableBox = document.getElementById("steps");
    var tableSpacer = document.getElementById("steps-spacer");
    var tableRows = document.getElementById("steps-rows");
    var tlBox = document.getElementById("timeline");
    var tlSpacer = document.getElementById("timeline-spacer");
    var canvas = document.getElementById("timeline-canvas");
    var ctx = canvas.getContext("2d");
    var spanMs = 1;
    var palette = {};
    function addPalette(p) {
      if (!p) { return; }
      var keys = Object.keys(p);
      for (var i = 0; i < keys.length; i++) { palette[keys[i]] = p[keys[i]]; }
    }
    var drawPending = false;

    function indexDag() {
      var members = document.getElementById("dag-members");
      var groups = members ? JSON.parse(members.textContent) : {};
      var nodes = document.querySelectorAll("#dag-box g.node[data-step]");
      for (var i = 0; i < nodes.length; i++) {
        var first = nodes[i].getAttribute("data-step");
        var own = groups[first] || [Number(first)];
        groupOf[first] = own;
        for (var j = 0; j < own.length; j++) {
          (dagNodes[own[j]] = dagNodes[own[j]] || []).push(nodes[i]);
        }
      }
    }
    var WORST = ["failed", "cancelled", "retrying", "running", "pending", "skipped", "done"];
    function paintNode(g) {
      var own = groupOf[g.getAttribute("data-step")];
      var worst = 6;
      for (var i = 0; i < own.length; i++) {
        var r = recs[own[i]];
        var k = r ? WORST.indexOf(r[S]) : 4;
        if (k < worst) { worst = k; }
      }
      var state = WORST[worst];
      var rect = g.querySelector("rect");
      var text = g.querySelector("text");
      if (rect) { rect.setAttribute("fill", COLOURS[state] || "#cfd8dc"); }
      if (text) {
        text.setAttribute("fill", state === "pending" || state === "skipped" ? "#000" : "#fff");
      }
      g.setAttribute("data-state", state);
    }
    function paintSteps(indices) {
      var seen = [];
      for (var i = 0; i < indices.length; i++) {
        var gs = dagNodes[indices[i]];
        if (!gs) { continue; }
        for (var j = 0; j < gs.length; j++) {
          if (seen.indexOf(gs[j]) < 0) { seen.push(gs[j]); paintNode(gs[j]); }
        }
      }
    }

    function renderHead() {
      document.getElementById("run-name").textContent = head.name;
      var b = document.getElementById("run-status");
      clear(b); b.appendChild(badge(head.status));
      document.getElementById("run-started").textContent = when(head.started_at);
      var took = head.finished_at !== null ? (head.finished_at - head.started_at) * 1000 : null;
      document.getElementById("run-took").textContent = took === null ?
        "running for " + duration(Date.now() - head.started_at * 1000) : duration(took);
      document.getElementById("run-resumes").textContent = head.resumes ?
        "resumed " + head.resumes + "\u00d7" : "";
      document.getElementById("run-error").textContent = head.error || "";
      var cancel = document.getElementById("cancel-run");
      if (cancel && head.status !== "running") { cancel.disabled = true; cancel.hidden = true; }
    }
    function renderCounts() {
      var by = {};
      var tasks = 0;
      for (var i = 0; i < recs.length; i++) {
        by[recs[i][S]] = (by[recs[i][S]] || 0) + 1;
        tasks += recs[i][TASKS];
      }
      var parts = [];
      for (var k = 0; k < STATES.length; k++) {
        if (by[STATES[k]]) { parts.push(by[STATES[k]] + " " + STATES[k]); }
      }
      document.getElementById("run-counts").textContent =
        recs.length + " steps, " + tasks + " tasks: " + parts.join(", ");
    }
    function renderProblems() {
      var list = document.getElementById("problems");
      clear(list);
      var n = 0;
      for (var i = 0; i < recs.length && n < 200; i++) {
        var r = recs[i];
        if (r[S] === "failed" || r[ATTEMPTS] > r[TASKS] || r[RETRYING] || r[FAILED]) {
          var tr = el("tr");
          tr.setAttribute("data-step", String(i));
          tr.appendChild(el("td", null, names[i]));
          var td = el("td"); td.appendChild(badge(r[S])); tr.appendChild(td);
          tr.appendChild(el("td", "num", r[ATTEMPTS]));
          tr.appendChild(el("td", "num", r[TASKS]));
          tr.appendChild(el("td", "err", r[ERR] || ""));
          list.appendChild(tr);
          n += 1;
        }
      }
      document.getElementById("problems-none").hidden = n > 0;
    }

    function refilter() {
      shown = [];
      var q = filter.toLowerCase();
      for (var i = 0; i < names.length; i++) {
        if (!q || names[i].toLowerCase().indexOf(q) >= 0) { shown.push(i); }
      }
      tableSpacer.style.height = (shown.length * ROW) + "px";
      renderTable();
    }
    function renderTable() {
      var top = tableBox.scrollTop;
      var first = Math.max(0, Math.floor(top / ROW) - 5);
      var last = Math.min(shown.length, first + Math.ceil(tableBox.clientHeight / ROW) + 10);
      clear(tableRows);
      tableRows.style.transform = "translateY(" + (first * ROW) + "px)";
      for (var k = first; k < last; k++) {
        var i = shown[k];
        var r = recs[i];
        var row = el("div", "tr" + (i === selected ? " sel" : ""));
        row.setAttribute("data-step", String(i));
        row.appendChild(el("span", "name", names[i]));
        var st = el("span"); st.appendChild(badge(r[S])); row.appendChild(st);
        var c = el("span", "num", r[DONE] + "/" + r[TASKS]);
        c.title = countsText(r);
        row.appendChild(c);
        row.appendChild(el("span", "num", r[ATTEMPTS]));
        row.appendChild(el("span", "num", duration(r[DUR])));
        row.appendChild(el("span", "wait", r[WAITING] || (r[TASKS] > 1 ? countsText(r) : "")));
        tableRows.appendChild(row);
      }
    }

    // The server's clock minus this page's (what an open segment's end, "now", is read on).
    var skewMs = 0;
    function setClock(msg) {
      if (typeof msg.now === "number") { skewMs = msg.now - Date.now(); }
    }
    function nowMs() {
      // Ms from the run's start: now while it runs, else its end.
      if (head.finished_at !== null) { return (head.finished_at - head.started_at) * 1000; }
      return Date.now() + skewMs - head.started_at * 1000;
    }
    function segEnd(seg, now) { return seg[1] === null ? Math.max(seg[0], now) : seg[1]; }
    function computeSpan() {
      var now = nowMs();
      var end = now;
      for (var i = 0; i < recs.length; i++) {
        var segs = recs[i][SEGS];
        for (var j = 0; j < segs.length; j++) {
          var e = segEnd(segs[j], now);
          if (e > end) { end = e; }
        }
      }
      spanMs = Math.max(end, 1);
    }
    function drawTimeline() {
      drawPending = false;
      var width = tlBox.clientWidth;
      var height = tlBox.clientHeight;
      var ratio = window.devicePixelRatio || 1;
      if (canvas.width !== Math.round(width * ratio) ||
          canvas.height !== Math.round(height * ratio)) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
        canvas.style.width = width + "px";
        canvas.style.height = height + "px";
      }
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      canvas.style.top = tlBox.scrollTop + "px";
      var label = 200;
      var plot = Math.max(50, width - label - 20);
      var scale = plot / spanMs;
      var top = tlBox.scrollTop;
      var first = Math.floor(top / TROW);
      var last = Math.min(recs.length, first + Math.ceil(height / TROW) + 1);
      ctx.font = "11px system-ui, sans-serif";
      ctx.textBaseline = "middle";
      var now = nowMs();
      var drawn = {};  // what was drawn, by row: [[start_ms, end_ms, kind]] (read by tests)
      for (var i = first; i < last; i++) {
        var y = i * TROW - top;
        if (i === selected) {
          ctx.fillStyle = "#fff8e1"; ctx.fillRect(0, y, width, TROW);
        }
        ctx.fillStyle = "#212121";
        ctx.textAlign = "right";
        var name = names[i].length > 30 ? names[i].slice(0, 29) + "\u2026" : names[i];
        ctx.fillText(name, label - 6, y + TROW / 2);
        var segs = recs[i][SEGS];
        var bars = [];
        for (var j = 0; j < segs.length; j++) {
          var x0 = label + segs[j][0] * scale;
          var w = Math.max(1, (segEnd(segs[j], now) - segs[j][0]) * scale);
          var kind = segs[j][2];
          ctx.fillStyle = kind === "running" ? (COLOURS[recs[i][S]] || "#1565c0") :
            (palette[kind] || "#b0bec5");
          ctx.fillRect(x0, y + 2, w, TROW - 5);
          bars.push([segs[j][0], Math.round(segEnd(segs[j], now) * 10) / 10, kind]);
        }
        drawn[i] = bars;
      }
      canvas.setAttribute("data-bars", JSON.stringify(drawn));
      document.getElementById("timeline-scale").textContent =
        "0 \u2013 " + duration(spanMs) + " from the run's start";
    }
    function scheduleDraw() {
      if (!drawPending) { drawPending = true; window.requestAnimationFrame(drawTimeline); }
    }

    // The answer of the run itself for the clicked step (GET .../why): [step, text, source].
    var asked = null;
    var askedAt = 0;
    function ask(i) {
      askedAt = Date.now();
      fetch("/api/runs/" + encodeURIComponent(runId) + "/steps/" + i + "/why",
            {credentials: "same-origin"}).then(function (r) {
        return r.ok ? r.json() : null;
      }).then(function (a) {
        if (!a || selected !== i) { return; }
        asked = [i, a.why, a.source, a.asked === true];
        explain(i, true);
      });
    }
    function explain(i, answered) {
      if (i !== selected || !answered) {
        if (i !== selected) { asked = null; }
        selected = i;
        // A click, or a step that changed: ask the run again (at most once a second).
        if (!answered && (asked === null || Date.now() - askedAt > 1000)) { ask(i); }
      }
      var r = recs[i];
      var box = document.getElementById("explain");
      clear(box);
      box.hidden = false;
      var h = el("h3", null, names[i]);
      box.appendChild(h);
      var p = el("p");
      p.appendChild(badge(r[S]));
      p.appendChild(document.createTextNode(" " + countsText(r) + " \u00b7 " + r[ATTEMPTS] +
        " attempt" + (r[ATTEMPTS] === 1 ? "" : "s") + " \u00b7 " + duration(r[DUR])));
      box.appendChild(p);
      var finished = r[S] === "done" || r[S] === "failed" || r[S] === "skipped" ||
        r[S] === "cancelled";
      var why = r[WAITING];
      var source = "stored";
      if (asked !== null && asked[0] === i && asked[2] === "run" && asked[1]) {
        why = asked[1];  // the run's own answer, asked now
        source = "run";
      }
      var sentence;
      if (why) {
        sentence = why;
      } else if (finished) {
        sentence = "finished: " + r[S];
      } else if (asked !== null && asked[0] === i && asked[3]) {
        sentence = "asked the run's orchestrator why it waits\u2026";
        source = "asking";
      } else {
        sentence = "no explanation stored for this step yet";
      }
      var w = el("p", "why", sentence);
      w.id = "explain-text";
      w.setAttribute("data-source", source);
      box.appendChild(w);
      var waited = r[WAITED];
      var keys = Object.keys(waited);
      if (keys.length) {
        var parts = [];
        for (var k = 0; k < keys.length; k++) {
          parts.push(keys[k] + " " + duration(waited[keys[k]] * 1000));
        }
        box.appendChild(el("p", "waited", "waited (its tasks together): " + parts.join(", ")));
      }
      if (r[ERR]) { box.appendChild(el("pre", "err", r[ERR])); }
      var lit = document.querySelectorAll("#dag-box g.node.sel");
      for (var m = 0; m < lit.length; m++) { lit[m].classList.remove("sel"); }
      var gs = dagNodes[i] || [];
      for (var n = 0; n < gs.length; n++) { gs[n].classList.add("sel"); }
      renderTable();
      scheduleDraw();
    }

    function onSnapshot(msg) {
      head = msg.run; names = msg.names; recs = msg.steps; addPalette(msg.palette);
      setClock(msg);
      renderHead(); renderCounts(); renderProblems(); refilter();
      var all = [];
      for (var i = 0; i < recs.length; i++) { all.push(i); }
      paintSteps(all);
      computeSpan(); scheduleDraw();
      if (selected >= 0 && selected < recs.length) { explain(selected); }
      body.setAttribute("data-ready", "1");
    }
    function onDelta(msg) {
      setClock(msg);
      if (msg.run) { head = msg.run; renderHead(); }
      addPalette(msg.palette);
      if (msg.steps) {
        var changed = Object.keys(msg.steps);
        var idx = [];
        for (var i = 0; i < changed.length; i++) {
          var k = Number(changed[i]);
          recs[k] = msg.steps[changed[i]];
          idx.push(k);
        }
        paintSteps(idx);
        renderCounts(); renderProblems(); renderTable();
        if (idx.indexOf(selected) >= 0) { explain(selected); }
      }
      computeSpan(); scheduleDraw();
      body.setAttribute("data-updates", String(Number(body.getAttribute("data-updates") || 0) + 1));
    }

    // Dead letters: the feed's "letters" event lists them; Replay (a token session with a
    // broker) posts one to the server, which answers with its value or why it failed again.
    var canReplay = csrf !== null && body.getAttribute("data-replay") === "1";
    var letters = [];
    var outcomes = {};  // letter id -> what its last replay said (kept across re-renders)
    var replayed = {};  // letter ids replayed: gone even if an older list still names them
    function renderLetters() {
      var list = document.getElementById("letters");
      clear(list);
      var n = 0;
      for (var i = 0; i < letters.length; i++) {
        var d = letters[i];
        if (replayed[d.id]) { continue; }
        var tr = el("tr");
        tr.setAttribute("data-letter", d.id);
        tr.appendChild(el("td", "id", d.id));
        tr.appendChild(el("td", null, d.step));
        tr.appendChild(el("td", null, d.task));
        tr.appendChild(el("td", "num", d.attempts));
        var err = el("td", "err", d.error);
        if (outcomes[d.id]) { err.appendChild(el("div", "outcome", outcomes[d.id])); }
        tr.appendChild(err);
        tr.appendChild(el("td", null, when(d.failed_at)));
        if (canReplay) {
          var td = el("td");
          var b = el("button", "replay", "replay");
          b.setAttribute("data-letter", d.id);
          td.appendChild(b);
          tr.appendChild(td);
        }
        list.appendChild(tr);
        n += 1;
      }
      document.getElementById("letters-none").hidden = n > 0;
    }
    function onLetters(msg) {
      letters = msg.letters;
      var note = [];
      if (msg.total > msg.letters.length) {
        note.push("the oldest " + msg.letters.length + " of " + msg.total + " shown");
      }
      for (var i = 0; i < msg.problems.length; i++) { note.push(msg.problems[i]); }
      document.getElementById("letters-note").textContent = note.join("; ");
      renderLetters();
      body.setAttribute("data-letters", String(msg.total));
    }
    function replay(id, button) {
      button.disabled = true;
      var result = document.getElementById("letters-note");
      post("/api/runs/" + encodeURIComponent(runId) + "/dead-letters/" +
           encodeURIComponent(id) + "/replay").then(function (r) {
        var type = r.headers.get("content-type") || "";
        return (type.indexOf("application/json") === 0 ? r.json() : r.text().then(function (t) {
          return {error: t};
        })).then(function (a) { return [r.status, a]; });
      }).then(function (answer) {
        var a = answer[1];
        if (answer[0] === 200) {
          replayed[id] = true;
          delete outcomes[id];
          result.textContent = "replayed " + id + " (step " + a.step + "): " +
            JSON.stringify(a.value);
          result.setAttribute("data-replayed", id);
        } else {
          outcomes[id] = "replay failed (" + answer[0] + "): " + (a.error || "");
        }
        renderLetters();
      }, function (e) {
        outcomes[id] = "replay not sent: " + e;
        renderLetters();
      });
    }
    document.getElementById("letters").addEventListener("click", function (e) {
      var t = e.target;
      if (t && t.classList && t.classList.contains("replay")) {
        replay(t.getAttribute("data-letter"), t);
      }
    });

    indexDag();
    tableBox.addEventListener("scroll", renderTable);
    tlBox.addEventListener("scroll", scheduleDraw);
    window.addEventListener("resize", function () { renderTable(); scheduleDraw(); });
    document.getElementById("step-filter").addEventListener("input", function (e) {
      filter = e.target.value; refilter();
    });
    document.addEventListener("click", function (e) {
      var t = e.target;
      var hit = t && t.closest ? t.closest("[data-step]") : null;
      if (hit && /^[0-9]+$/.test(hit.getAttribute("data-step"))) {
        explain(Number(hit.getAttribute("data-step")));
      }
    });
    canvas.addEventListener("click", function (e) {
      var rect = canvas.getBoundingClientRect();
      var i = Math.floor((e.clientY - rect.top + tlBox.scrollTop) / TROW);
      if (i >= 0 && i < recs.length) { explain(i); }
    });
    var cancelButton = document.getElementById("cancel-run");
    if (cancelButton) {
      cancelButton.addEventListener("click", function () { cancelRun(runId, cancelButton); });
    }
    var del = document.getElementById("delete-run");
    if (del) {
      del.addEventListener("click", function () {
        deleteRun(runId, function () { window.location.href = "/"; });
      });
    }
    var source = new EventSource("/events/runs/" + encodeURIComponent(runId));
    source.addEventListener("snapshot", function (e) { onSnapshot(JSON.parse(e.data)); });
    source.addEventListener("delta", function (e) { onDelta(JSON.parse(e.data)); });
    source.addEventListener("letters", function (e) { onLetters(JSON.parse(e.data)); });
    source.addEventListener("gone", function () {
      document.getElementById("gone").hidden = false;
      body.setAttribute("data-gone", "1");
      body.setAttribute("data-ready", "1");
    });
    source.onopen = function () { setConn(true); };
    source.onerror = function () { setConn(false); };
    // While the run goes on, open segments grow up to now: four frames a second.
    setInterval(function () {
      if (head && head.finished_at === null) { computeSpan(); scheduleDraw(); }
    }, 250);
    setInterval(function () {
      if (head && head.finished_at === null) { renderHead(); }
    }, 1000);
  }

  if (body.getAttribute("data-page") === "runs") { runsPage(); }
  if (body.getAttribute("data-page") === "run") { runPage(); }
})();
