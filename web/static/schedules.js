/* Schedules (next slot, past runs with their decisions) and sweeps (runs and the best by a holdout metric). */
"use strict";
(() => {
  const { el, json, when, showError } = imgq;
  const jobLink = (id) => (id ? el("a", { href: `/jobs/${encodeURIComponent(id)}`, text: id.slice(0, 8) }) : "–");

  async function schedules() {
    const page = await json("/api/v1/schedules?limit=100");
    const tbody = document.querySelector("#schedules tbody");
    tbody.replaceChildren(...page.schedules.map((s) => el("tr", { dataset: { schedule: s.id } },
      el("td", { text: s.name }), el("td", { text: s.model }), el("td", { text: `${s.cron} (${s.timezone})` }),
      el("td", { text: s.enabled ? "yes" : "no" }), el("td", { text: when(s.next_slot) }),
      el("td", {}, s.runs.length ? el("ul", {}, s.runs.slice(0, 5).map((r) => el("li", {}, `${when(r.slot)}: `, jobLink(r.job_id),
        ` ${r.decision || "pending"}${r.reason ? " — " + r.reason : ""}`))) : "none yet"))));
    if (!page.schedules.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "hint", text: "no schedules" })));
  }

  function best(runs) {
    let top = null;
    for (const r of runs) {
      const m = r.holdout_metrics || {};
      const score = m.accuracy ?? (m.mae !== undefined ? -m.mae : undefined);
      if (score !== undefined && (top === null || score > top.score)) top = { score, run: r };
    }
    return top ? `${top.run.version || top.run.job_id.slice(0, 8)} (${JSON.stringify(top.run.params)})` : "–";
  }

  async function sweeps() {
    const page = await json("/api/v1/sweeps?limit=50");
    const tbody = document.querySelector("#sweeps tbody");
    tbody.replaceChildren(...page.sweeps.map((s) => el("tr", { dataset: { sweep: s.id } },
      el("td", {}, el("a", { href: `/sweeps/${encodeURIComponent(s.id)}`, text: s.id.slice(0, 8) })),
      el("td", { text: when(s.created_at) }), el("td", { text: JSON.stringify(s.grid) }),
      el("td", { text: `${s.runs.filter((r) => r.status === "succeeded").length}/${s.runs.length} done` }),
      el("td", { text: best(s.runs) }))));
    if (!page.sweeps.length) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "hint", text: "no sweeps" })));
  }

  schedules().catch(showError);
  sweeps().catch(showError);
})();
