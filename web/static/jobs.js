/* Jobs: a filtered list whose rows (progress, rate, ETA, status) refresh in place every 1.5 s. */
"use strict";
(() => {
  const { el, json, post, may, bar, num, secs, when, every, showError, clearError, confirmAction } = imgq;
  const form = document.getElementById("filters");
  const tbody = document.querySelector("#jobs tbody");
  const more = document.getElementById("more");
  const params = new URLSearchParams(location.search);
  for (const name of ["kind", "status", "model"]) form.elements[name].value = params.get(name) || "";
  let limit = 50;
  let canWrite = false;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const name of ["kind", "status", "model"]) if (form.elements[name].value) q.set(name, form.elements[name].value);
    history.replaceState(null, "", "?" + q.toString());
    refresh();
  });
  more.addEventListener("click", () => { limit += 50; refresh(); });

  function progressOf(job) {
    const p = job.progress || {};
    if (job.kind === "train") {
      const frac = job.status === "succeeded" ? 1 : (p.epochs ? (p.epoch || 0) / p.epochs : 0);
      return { frac, label: `epoch ${p.epoch || 0}/${p.epochs || "?"}`, failed: null, rate: null, eta: p.eta_seconds };
    }
    if (job.status === "preparing") {  // a large manifest being read into items: how far it is
      return { frac: 0, label: `${p.rows_read} rows read`, failed: null, rate: null, eta: null };
    }
    if (p.total !== undefined) {
      return { frac: p.total ? p.done / p.total : 0, label: `${p.done}/${p.total}`, failed: p.failed,
               rate: p.images_per_second, eta: p.eta_seconds };
    }
    return { frac: ["succeeded", "failed"].includes(job.status) ? 1 : 0, label: job.status, failed: null };
  }

  function row(job) {
    const p = progressOf(job);
    const model = job.model ? (job.model.ref || job.model.result || job.model.name || job.model.requested) : "";
    const open = ["preparing", "queued", "running"].includes(job.status);
    const cancel = open && canWrite ? el("button", { type: "button", class: "cancel", onclick: async () => {
      if (!(await confirmAction(`Cancel job ${job.id}?`))) return;
      try { await post(`/api/v1/jobs/${encodeURIComponent(job.id)}/cancel`); clearError(); refresh(); }
      catch (err) { showError(err); }
    } }, "Cancel") : "";
    return el("tr", { dataset: { job: job.id, status: job.status } },
      el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: job.id.slice(0, 8) })),
      el("td", { text: job.kind }),
      el("td", {}, el("span", { class: `status ${job.status}`, text: job.status })),
      el("td", { text: model || "" }),
      el("td", {}, bar(p.frac, job.status, p.label)),
      el("td", { text: num(p.failed) }),
      el("td", { text: num(p.rate) }),
      el("td", { text: secs(p.eta) }),
      el("td", { text: when(job.timings && job.timings.created_at) }),
      el("td", {}, cancel));
  }

  async function refresh() {
    const q = new URLSearchParams(location.search);
    q.set("limit", String(limit));
    const page = await json("/api/v1/jobs?" + q.toString());
    tbody.replaceChildren(...page.jobs.map(row));
    more.hidden = !page.next;
    if (!page.jobs.length) tbody.append(el("tr", {}, el("td", { colspan: 10, class: "hint", text: "no jobs" })));
    return true;
  }

  (async () => {
    try { canWrite = (await may("score")) || (await may("train")); } catch (err) { /* 401: redirected */ }
    every(1500, refresh);
  })();
})();
