/* Models: each name's versions side by side (production marked), a holdout metric across versions, and for
   admin tokens promote and rollback buttons behind a confirmation. */
"use strict";
(() => {
  const { el, json, post, may, kv, when, plot, showError, clearError, confirmAction } = imgq;
  const box = document.getElementById("models");
  let admin = false;

  async function allPages(url, key) {
    const rows = [];
    while (url) { const page = await json(url); rows.push(...page[key]); url = page.next; }
    return rows;
  }

  function versionCard(model, v) {
    const production = v.aliases.includes("production");
    const lineage = v.lineage || {};
    const promote = admin && !production ? el("button", { type: "button", class: "promote", dataset: { version: v.version },
      onclick: async () => {
        if (!(await confirmAction(`Make ${v.ref} the production version of ${model.name}?`))) return;
        try { await post(`/api/v1/models/${encodeURIComponent(model.name)}/aliases/production`, { version: v.version });
              clearError(); render(); } catch (err) { showError(err); }
      } }, "Promote to production") : null;
    return el("div", { class: `version${production ? " production" : ""}`, dataset: { ref: v.ref } },
      el("h3", {}, el("span", { text: v.ref }), " ", production ? el("span", { class: "badge", text: "production" }) : null),
      kv({ created: when(v.created_at), aliases: v.aliases.join(", ") || "–", task: v.task,
           parent: lineage.parent || lineage.parent_version || null, description: v.description,
           "holdout metrics": lineage.holdout_metrics || null }),
      promote);
  }

  function metricPlot(holder, versions) {
    const metrics = new Set();
    for (const v of versions) for (const [k, x] of Object.entries((v.lineage || {}).holdout_metrics || {})) if (typeof x === "number" && k !== "n") metrics.add(k);
    if (!metrics.size) return;
    const x = versions.map((v) => v.version);
    plot(holder, "holdout metrics across versions", x, [...metrics].map((m) => ({
      label: m, values: versions.map((v) => ((v.lineage || {}).holdout_metrics || {})[m] ?? null) })), { xLabel: "version", width: 420, height: 220 });
  }

  async function section(model) {
    const versions = await allPages(`/api/v1/models/${encodeURIComponent(model.name)}/versions?limit=100`, "versions");
    const rollback = admin ? el("button", { type: "button", class: "rollback", onclick: async () => {
      if (!(await confirmAction(`Roll ${model.name} back to its previous production version?`))) return;
      try { await post(`/api/v1/models/${encodeURIComponent(model.name)}/rollback`); clearError(); render(); }
      catch (err) { showError(err); }
    } }, "Roll back production") : null;
    const plots = el("div", { class: "plots" });
    const sec = el("section", { class: "card model", dataset: { model: model.name } },
      el("h2", {}, el("span", { text: model.name }), ` · ${model.versions} versions · production: ${model.production ?? "none"} `, rollback),
      plots, el("div", { class: "versions" }, versions.map((v) => versionCard(model, v))));
    box.append(sec);
    metricPlot(plots, versions);
  }

  async function render() {
    try {
      const models = await allPages("/api/v1/models?limit=100", "models");
      box.replaceChildren();
      if (!models.length) box.append(el("p", { class: "hint", text: "no models yet: import one with imgq models import" }));
      for (const m of models) await section(m);
      box.dataset.ready = "1";
    } catch (err) { showError(err); }
  }

  (async () => {
    try { admin = await may("admin"); } catch (err) { return; }
    render();
  })();
})();
