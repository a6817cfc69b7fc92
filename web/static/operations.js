/* Operations: readiness (/readyz), the workers seen recently (/api/v1/workers), queue figures and the sweeper's last
   run (from /metrics), every 5 s. */
"use strict";
(() => {
  const { el, api, json, kv, secs, when, every } = imgq;

  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      const m = line.match(/^(imgq_[a-z_]+)(\{([^}]*)\})?\s+(\S+)$/);
      if (!m) continue;
      const labels = {};
      for (const pair of (m[3] || "").matchAll(/(\w+)="([^"]*)"/g)) labels[pair[1]] = pair[2];
      out.push({ name: m[1], labels, value: Number(m[4]) });
    }
    return out;
  }

  async function showWorkers() {
    const rows = [];
    for (let url = "/api/v1/workers?seen_within=300&limit=1000"; url && rows.length < 5000;) {
      const page = await json(url);
      rows.push(...page.workers);
      url = page.next;
    }
    const head = ["name", "role", "queues", "host", "pid", "started", "last seen", "running now"];
    const box = document.getElementById("workers");
    box.dataset.count = String(rows.length);
    box.replaceChildren(rows.length ? el("table", { class: "grid" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.map((w) => el("tr", { dataset: { worker: w.name } },
        el("td", { text: w.name }), el("td", { text: w.role }), el("td", { text: w.queues.join(", ") }),
        el("td", { text: w.hostname }), el("td", { text: w.pid }), el("td", { text: when(w.started_at) }),
        el("td", { text: `${secs(Math.max(0, Date.now() - Date.parse(w.last_seen_at)) / 1000)} ago` }),
        el("td", {}, w.current_jobs.length ? w.current_jobs.flatMap((id) =>
          [el("a", { href: `/jobs/${encodeURIComponent(id)}`, text: id.slice(0, 8), class: "current-job" }), " "]) : "–")))))
      : el("p", { class: "hint", text: "no worker reported itself in the last 5 minutes: start `imgq worker`" }));
  }

  async function refresh() {
    const ready = await fetch("/readyz", { cache: "no-store" }).then((r) => r.json()).catch((e) => ({ ready: false, problems: [String(e)] }));
    document.getElementById("ready").replaceChildren(
      el("p", { id: "ready-state", class: `status ${ready.ready ? "succeeded" : "failed"}`, text: ready.ready ? "ready" : "not ready" }),
      kv(ready));
    await showWorkers();
    const metrics = parseMetrics(await (await api("/metrics", { headers: { Accept: "text/plain" } })).text());
    const jobs = metrics.filter((m) => m.name === "imgq_jobs" && m.value > 0);
    const chunks = metrics.filter((m) => m.name === "imgq_chunks");
    const remaining = metrics.find((m) => m.name === "imgq_items_remaining");
    document.getElementById("queues").replaceChildren(
      el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", { text: "kind" }), el("th", { text: "status" }), el("th", { text: "jobs" }))),
        el("tbody", {}, jobs.map((m) => el("tr", {}, el("td", { text: m.labels.kind }), el("td", { text: m.labels.status }), el("td", { text: m.value }))))),
      kv({ "chunks of open jobs": Object.fromEntries(chunks.map((m) => [m.labels.state, m.value])),
           "items not yet scored": remaining ? remaining.value : null }));
    const last = metrics.find((m) => m.name === "imgq_sweeper_last_run_timestamp_seconds");
    document.getElementById("sweeper").replaceChildren(kv(last && last.value > 0 ? {
      "last run": new Date(last.value * 1000).toLocaleString(), ago: secs(Date.now() / 1000 - last.value) } : { "last run": "never" }));
    return true;
  }
  every(5000, refresh);
})();
