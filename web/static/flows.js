// runnel editor: the flows list, refreshed every second with message rates.
"use strict";

(() => {
  const { apiJson, el, fmtNumber } = Runnel;
  const previous = new Map(); // flow -> {sent, at}

  async function refresh() {
    const { ok, body } = await apiJson("/api/flows");
    const tbody = document.querySelector("#flows tbody");
    if (!ok || !body) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "error" }, (body && body.error) || "cannot load flows")));
      return;
    }
    const now = performance.now();
    const rows = body.flows.map((flow) => {
      let rate = "";
      if (flow.running) {
        const last = previous.get(flow.name);
        if (last && now > last.at && flow.sent >= last.sent) {
          rate = fmtNumber(((flow.sent - last.sent) * 1000) / (now - last.at));
        }
        previous.set(flow.name, { sent: flow.sent, at: now });
      }
      return el("tr", { dataset: { flow: flow.name } },
        el("td", {}, el("a", { href: "/flows/" + encodeURIComponent(flow.name) }, flow.name)),
        el("td", { class: "muted" }, flow.description || ""),
        el("td", {}, el("span", { class: "pill " + (flow.running ? "ok" : "off") }, flow.running ? "running" : "stopped")),
        el("td", { class: "num" }, flow.running ? flow.nodes : ""),
        el("td", { class: "num" }, flow.running ? flow.in_flight : ""),
        el("td", { class: "num rate" }, rate),
        el("td", { class: "num" }, flow.running ? fmtNumber(flow.sent) : ""),
        el("td", { class: "num" + (flow.errors ? " error" : "") }, flow.running ? fmtNumber(flow.errors) : ""),
        el("td", { class: "num" }, flow.running ? fmtNumber(flow.dropped) : ""));
    });
    if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no flows")));
    tbody.replaceChildren(...rows);
  }

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      console.warn("refresh failed", error);
    }
    setTimeout(loop, 1000);
  }
  loop();
})();
