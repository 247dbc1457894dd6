// runnel editor: one flow's graph, YAML editor, debug sidebar and traces.
"use strict";

(() => {
  const { api, apiJson, el, svg, wsUrl, fmtNumber } = Runnel;
  const app = document.getElementById("app");
  const flow = app.dataset.flow;
  const flowPath = "/api/flows/" + encodeURIComponent(flow);
  const MAX_DEBUG = 500;

  const state = {
    revision: null,
    savedText: null,
    graphKey: null,
    nodes: new Map(), // id -> NodeInfo
    paused: false,
    filter: "",
    scope: "flow", // "flow": this flow's debug nodes; "all": every flow's
    socket: null,
    skipped: 0,
    trace: null, // last trace answer, re-applied after a redraw
  };

  // ---------------------------------------------------------------- YAML
  const textarea = document.getElementById("yaml");
  const gutter = document.getElementById("gutter");
  const statusBox = document.getElementById("editor-status");
  const diagList = document.getElementById("diagnostics");
  let errorLines = new Map(); // line -> message

  function renderGutter() {
    const lines = textarea.value.split("\n").length;
    const spans = [];
    for (let i = 1; i <= lines; i++) {
      const message = errorLines.get(i);
      spans.push(el("span", { class: message ? "ln err" : "ln", "data-line": i, title: message }, String(i)));
      spans.push("\n");
    }
    gutter.replaceChildren(...spans);
    gutter.scrollTop = textarea.scrollTop;
  }

  function setStatus(text, kind) {
    statusBox.textContent = text;
    statusBox.className = "editor-status " + (kind || "");
  }

  // "deployed: 2 nodes restarted, 5 kept" from a PUT answer.
  function deployedText(body) {
    const restarted = (body.restarted || []).length;
    const kept = (body.kept || []).length;
    const removed = (body.removed || []).length;
    let text = "deployed: " + restarted + (restarted === 1 ? " node" : " nodes") + " restarted, " + kept + " kept";
    if (removed) text += ", " + removed + " removed";
    return text;
  }

  function showDiagnostics(errors, warnings) {
    errorLines = new Map();
    const items = [];
    for (const d of errors || []) {
      if (d.line > 0 && !errorLines.has(d.line)) errorLines.set(d.line, d.message);
      items.push(diagItem(d, "error"));
    }
    for (const d of warnings || []) items.push(diagItem(d, "warning"));
    diagList.replaceChildren(...items);
    renderGutter();
  }

  function diagItem(d, kind) {
    const where = d.line > 0 ? "line " + d.line + ":" + d.column : "file";
    const node = d.node ? ' node "' + d.node + '"' : "";
    return el("li", {
      class: "diag " + kind, "data-line": d.line,
      onclick: () => goToLine(d.line),
    }, el("span", { class: "where" }, where), " ", kind + node + ": " + d.message);
  }

  function goToLine(line) {
    if (!(line > 0)) return;
    const lines = textarea.value.split("\n");
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    textarea.focus();
    textarea.setSelectionRange(offset, offset + (lines[line - 1] || "").length);
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 18;
    textarea.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  async function loadYaml() {
    const response = await api(flowPath);
    if (!response.ok) {
      setStatus("cannot load the flow (" + response.status + ")", "error");
      return;
    }
    const text = await response.text();
    state.revision = response.headers.get("x-runnel-revision");
    state.savedText = text;
    textarea.value = text;
    document.getElementById("revision").textContent = "revision " + state.revision;
    showDiagnostics([], []);
    setStatus("", "");
  }

  let validateTimer = null;
  let validateSeq = 0;
  async function validate(explicit) {
    const seq = ++validateSeq;
    const { ok, body } = await apiJson(flowPath + "/validate", {
      method: "POST",
      headers: { "Content-Type": "application/yaml" },
      body: textarea.value,
    });
    if (seq !== validateSeq) return; // a newer validation is on its way
    if (!ok || !body) {
      setStatus((body && body.error) || "validation failed", "error");
      return;
    }
    showDiagnostics(body.errors, body.warnings);
    if (body.valid) setStatus(explicit ? "valid" : (textarea.value === state.savedText ? "" : "valid, not deployed"), "ok");
    else setStatus(body.errors.length + " error(s)", "error");
  }

  async function deploy() {
    const button = document.getElementById("deploy-btn");
    button.disabled = true;
    setStatus("deploying…", "");
    try {
      const headers = { "Content-Type": "application/yaml" };
      if (state.revision) headers["If-Match"] = '"' + state.revision + '"';
      const text = textarea.value;
      const { ok, status, body } = await apiJson(flowPath, { method: "PUT", headers, body: text });
      if (ok) {
        state.revision = body.revision;
        state.savedText = text;
        document.getElementById("revision").textContent = "revision " + state.revision;
        showDiagnostics([], body.warnings);
        setStatus(body.deployed ? deployedText(body) : (body.saved ? "saved; nothing to redeploy" : "no changes"), "ok");
        refreshInfo();
      } else if (status === 400 && body && body.diagnostics) {
        showDiagnostics(body.diagnostics, []);
        setStatus("not deployed: " + body.error, "error");
      } else if (status === 409) {
        setStatus((body && body.error) || "conflict", "error");
        statusBox.append(" ", el("button", { type: "button", onclick: loadYaml }, "Reload"));
      } else {
        setStatus("not deployed: " + ((body && body.error) || status), "error");
      }
    } finally {
      button.disabled = false;
    }
  }

  textarea.addEventListener("input", () => {
    renderGutter();
    clearTimeout(validateTimer);
    validateTimer = setTimeout(() => validate(false), 600);
  });
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Tab") {
      event.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      renderGutter();
    } else if ((event.ctrlKey || event.metaKey) && event.key === "s") {
      event.preventDefault();
      deploy();
    }
  });
  document.getElementById("validate-btn").addEventListener("click", () => validate(true));
  document.getElementById("deploy-btn").addEventListener("click", deploy);

  // --------------------------------------------------------------- graph
  const graph = document.getElementById("graph");
  const FILL = { green: "#2e9d4f", yellow: "#d9a400", red: "#d23b3b", blue: "#3572c6", grey: "#8a8a8a" };

  function edgePath(e) {
    const dx = Math.max(40, Math.abs(e.end.x - e.start.x) / 2);
    if (e.back) {
      const lift = 40;
      return `M${e.start.x},${e.start.y} C${e.start.x + dx},${e.start.y - lift} ${e.end.x - dx},${e.end.y - lift} ${e.end.x},${e.end.y}`;
    }
    return `M${e.start.x},${e.start.y} C${e.start.x + dx},${e.start.y} ${e.end.x - dx},${e.end.y} ${e.end.x},${e.end.y}`;
  }

  function drawGraph(layout) {
    graph.setAttribute("viewBox", `0 0 ${Math.max(layout.width, 200)} ${Math.max(layout.height, 100)}`);
    graph.setAttribute("width", Math.max(layout.width, 200));
    graph.setAttribute("height", Math.max(layout.height, 100));
    const edges = layout.edges.map((e) => svg("path", {
      class: "edge" + (e.back ? " back" : ""), d: edgePath(e),
      "data-from": e.from, "data-to": e.to, "data-port": e.port,
    }));
    const boxes = layout.nodes.map((n) => {
      const ports = [];
      if (n.input) ports.push(svg("rect", { class: "port in", x: -5, y: n.input.y - n.y - 5, width: 10, height: 10, rx: 2 }));
      n.outputs.forEach((p, i) => ports.push(svg("rect", {
        class: "port out", x: n.width - 5, y: p.y - n.y - 5, width: 10, height: 10, rx: 2,
      }, svg("title", {}, "output " + i))));
      return svg("g", {
        class: "node", "data-node": n.id, transform: `translate(${n.x},${n.y})`,
        onclick: () => selectNode(n.id),
      },
      svg("rect", { class: "box", width: n.width, height: n.height, rx: 6 }),
      svg("text", { class: "type", x: 10, y: 17 }, n.type),
      svg("text", { class: "id", x: 10, y: 32 }, n.name ? `${n.id} · ${n.name}` : n.id),
      svg("circle", { class: "dot", cx: 14, cy: n.height - 12, r: 4, fill: "none" }),
      svg("text", { class: "status", x: 23, y: n.height - 8 }, ""),
      svg("text", { class: "counters", x: n.width - 10, y: n.height - 8, "text-anchor": "end" }, ""),
      ...ports);
    });
    graph.replaceChildren(svg("g", { class: "edges" }, edges), svg("g", { class: "nodes" }, boxes));
    if (state.trace) highlightTrace(state.trace);
  }

  function updateNode(info) {
    const g = graph.querySelector(`g.node[data-node="${CSS.escape(info.id)}"]`);
    if (!g) return;
    const c = info.counters;
    g.querySelector(".counters").textContent = `in ${fmtNumber(c.received)} · out ${fmtNumber(c.sent)}` + (c.errors ? ` · err ${fmtNumber(c.errors)}` : "") + (c.dropped ? ` · drop ${fmtNumber(c.dropped)}` : "") + (info.queued ? ` · q ${fmtNumber(info.queued)}` : "");
    g.classList.toggle("has-errors", c.errors > 0);
    applyStatus(info.id, info.status);
  }

  function applyStatus(id, status) {
    const g = graph.querySelector(`g.node[data-node="${CSS.escape(id)}"]`);
    if (!g || !status) return;
    const dot = g.querySelector(".dot");
    const color = FILL[status.fill] || "none";
    dot.setAttribute("fill", status.shape === "ring" ? "none" : color);
    dot.setAttribute("stroke", status.fill ? color : "none");
    g.querySelector(".status").textContent = status.text || "";
  }

  function fillFilter(nodes) {
    const select = document.getElementById("debug-filter");
    const current = select.value;
    const options = [el("option", { value: "" }, "all nodes")];
    for (const n of nodes) options.push(el("option", { value: n.id }, n.id + " (" + n.type + ")"));
    select.replaceChildren(...options);
    select.value = nodes.some((n) => n.id === current) ? current : "";
  }

  async function refreshInfo() {
    const { ok, body } = await apiJson(flowPath + "/info");
    const pill = document.getElementById("flow-state");
    if (!ok || !body) {
      pill.textContent = "unknown";
      return;
    }
    pill.textContent = body.running ? "running" : "stopped";
    pill.className = "pill " + (body.running ? "ok" : "off");
    document.getElementById("graph-note").textContent = body.running
      ? `${body.nodes.length} nodes · ${body.in_flight} in flight` : "not running";
    if (!body.layout) {
      graph.replaceChildren();
      state.graphKey = null;
      return;
    }
    const key = JSON.stringify([body.layout.nodes.map((n) => [n.id, n.type, n.x, n.y]), body.layout.edges.map((e) => [e.from, e.port, e.to])]);
    if (key !== state.graphKey) {
      state.graphKey = key;
      drawGraph(body.layout);
      fillFilter(body.nodes);
    }
    state.nodes = new Map(body.nodes.map((n) => [n.id, n]));
    body.nodes.forEach(updateNode);
  }

  // The node's line in the text being edited (which may differ from the
  // deployed one), else the line the engine knows.
  function selectNode(id) {
    const escaped = id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`^\\s*(-\\s*)?\\{?\\s*id:\\s*["']?${escaped}["']?\\s*(,|}|$|#)`);
    const index = textarea.value.split("\n").findIndex((line) => pattern.test(line));
    if (index >= 0) return goToLine(index + 1);
    const info = state.nodes.get(id);
    if (info && info.line > 0) goToLine(info.line);
  }

  async function pollInfo() {
    try {
      await refreshInfo();
    } catch (error) {
      console.warn("info refresh failed", error);
    }
    setTimeout(pollInfo, 1000);
  }

  // --------------------------------------------------------------- debug
  const debugList = document.getElementById("debug-list");
  const debugCount = document.getElementById("debug-count");

  function debugEntry(event) {
    const shown = { time: event.time, node: event.node, msg: event.msg };
    const entry = el("li", {
      class: "debug-entry", "data-node": event.node, "data-msgid": event.msgid,
      title: "click to trace this message",
      onclick: () => showTrace(event.msgid),
    },
    el("div", { class: "debug-head" },
      el("span", { class: "time" }, event.time),
      el("span", { class: "flow" }, event.flow === flow ? "" : event.flow),
      el("span", { class: "node" }, event.node),
      el("span", { class: "msgid" }, event.msgid)),
    el("pre", { class: "debug-msg" }, JSON.stringify(shown, null, 1)));
    if (state.filter && event.node !== state.filter) entry.hidden = true;
    return entry;
  }

  // Entries wait here until the next animation frame, so a burst of
  // batches costs one DOM update; only the newest MAX_DEBUG are kept.
  let pending = [];
  let renderScheduled = false;

  function addDebug(event) {
    pending.push(event);
    if (pending.length > MAX_DEBUG) pending.splice(0, pending.length - MAX_DEBUG);
    if (!renderScheduled) {
      renderScheduled = true;
      requestAnimationFrame(renderDebug);
    }
  }

  function renderDebug() {
    renderScheduled = false;
    const fragment = document.createDocumentFragment();
    for (let i = pending.length - 1; i >= 0; i--) fragment.append(debugEntry(pending[i]));
    pending = [];
    debugList.prepend(fragment);
    while (debugList.childElementCount > MAX_DEBUG) debugList.lastElementChild.remove();
    debugCount.textContent = debugList.childElementCount;
  }

  function applyFilter() {
    for (const entry of debugList.children) entry.hidden = Boolean(state.filter) && entry.dataset.node !== state.filter;
  }

  function connectDebug() {
    const conn = document.getElementById("debug-conn");
    const path = state.scope === "all" ? "/api/debug" : "/api/debug?flow=" + encodeURIComponent(flow);
    const socket = new WebSocket(wsUrl(path));
    state.socket = socket;
    socket.addEventListener("open", () => { conn.textContent = "live"; conn.className = "ok"; });
    socket.addEventListener("message", (message) => {
      let frame;
      try { frame = JSON.parse(message.data); } catch (_) { return; }
      if (frame.type !== "batch") return;
      for (const s of frame.status || []) applyStatus(s.node, s.status);
      if (state.paused) {
        state.skipped += (frame.debug || []).length + (frame.skipped || 0);
      } else {
        state.skipped += frame.skipped || 0;
        for (const event of frame.debug || []) addDebug(event);
      }
      document.getElementById("debug-skipped").textContent = fmtNumber(state.skipped);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== state.socket) return; // replaced on purpose (scope change)
      conn.textContent = "disconnected, retrying…";
      conn.className = "error";
      if (event.code === 1008 || event.code === 4401) Runnel.askToken().then(connectDebug);
      else setTimeout(connectDebug, 1000);
    });
  }

  document.getElementById("pause-btn").addEventListener("click", (event) => {
    state.paused = !state.paused;
    event.target.textContent = state.paused ? "Resume" : "Pause";
    event.target.classList.toggle("active", state.paused);
  });
  document.getElementById("clear-btn").addEventListener("click", () => {
    pending = [];
    debugList.replaceChildren();
    state.skipped = 0;
    document.getElementById("debug-skipped").textContent = "0";
    debugCount.textContent = "0";
  });
  document.getElementById("debug-filter").addEventListener("change", (event) => {
    state.filter = event.target.value;
    applyFilter();
  });
  document.getElementById("debug-scope").addEventListener("change", (event) => {
    state.scope = event.target.value;
    const old = state.socket;
    state.socket = null;
    if (old) old.close();
    pending = [];
    debugList.replaceChildren();
    debugCount.textContent = "0";
    connectDebug();
  });

  // --------------------------------------------------------------- trace
  const traceResult = document.getElementById("trace-result");

  function clearHighlight() {
    graph.querySelectorAll(".on-path").forEach((n) => n.classList.remove("on-path"));
  }

  function highlightTrace(trace) {
    clearHighlight();
    const hops = trace.hops || [];
    hops.forEach((hop) => {
      const g = graph.querySelector(`g.node[data-node="${CSS.escape(hop.node)}"]`);
      if (g) g.classList.add("on-path");
    });
    for (let i = 0; i + 1 < hops.length; i++) {
      for (const port of hops[i].ports.length ? hops[i].ports : [0]) {
        const sel = `path.edge[data-from="${CSS.escape(hops[i].node)}"][data-to="${CSS.escape(hops[i + 1].node)}"][data-port="${port}"]`;
        graph.querySelectorAll(sel).forEach((p) => p.classList.add("on-path"));
      }
    }
  }

  function micros(us) {
    if (us === undefined || us === null) return "";
    return us >= 1000 ? (us / 1000).toFixed(2) + " ms" : us + " µs";
  }

  async function showTrace(msgid) {
    document.getElementById("trace-input").value = msgid;
    traceResult.replaceChildren(el("p", { class: "muted" }, "loading…"));
    const { ok, body } = await apiJson("/api/traces/" + encodeURIComponent(msgid.trim()));
    if (!ok || !body) {
      state.trace = null;
      clearHighlight();
      traceResult.replaceChildren(el("p", { class: "error" }, (body && body.error) || "no trace"));
      return;
    }
    state.trace = body;
    highlightTrace(body);
    const derived = new Set(body.hops.map((h) => h.msgid)).size > 1; // show ids only if they change
    const rows = body.hops.map((hop, i) => el("tr", { class: "hop" + (hop.error ? " error" : ""), "data-node": hop.node },
      el("td", { class: "num" }, i + 1),
      el("td", {}, hop.node),
      el("td", { class: "num" }, hop.ports.length ? hop.ports.join(",") : (hop.error ? "error" : "—")),
      el("td", {}, (hop.received || hop.left || "").replace(/^.*T/, "")),
      el("td", { class: "num" }, micros(hop.micros)),
      derived ? el("td", { class: "mono" }, hop.msgid) : null));
    const finished = body.finished
      ? el("p", { class: body.finished.errored ? "error" : "muted" }, "finished " + body.finished.time.replace(/^.*T/, "") + (body.finished.errored ? " with an error" : ""))
      : el("p", { class: "muted" }, "not finished yet");
    const errors = body.hops.filter((h) => h.error).map((h) => el("p", { class: "error" }, h.node + ": " + h.error));
    traceResult.replaceChildren(
      el("p", {}, "message ", el("code", {}, body.msgid), " in flow ", el("code", {}, body.flow || "?")),
      el("table", { class: "hops" },
        el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, "node"), el("th", {}, "port"), el("th", {}, "at"), el("th", {}, "time in node"), derived ? el("th", {}, "_msgid") : null)),
        el("tbody", {}, rows)),
      ...errors, finished);
  }

  document.getElementById("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = document.getElementById("trace-input").value.trim();
    if (id) showTrace(id);
  });

  // ---------------------------------------------------------------- start
  loadYaml().then(renderGutter);
  pollInfo();
  connectDebug();
})();
