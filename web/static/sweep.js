/* One sweep: the comparison table (a row per grid point) and a holdout metric over the grid. */
"use strict";
(() => {
  const { el, json, num, plot, every, showError } = imgq;
  const id = imgq.data.sweepId;
  const select = document.getElementById("metric");
  let sweep = null;

  function metrics(runs) {
    const names = new Set();
    for (const r of runs) for (const [k, v] of Object.entries(r.holdout_metrics || {})) if (typeof v === "number" && k !== "n") names.add(k);
    return [...names];
  }

  function draw() {
    const params = Object.keys(sweep.grid).sort();
    const names = metrics(sweep.runs);
    if (select.options.length !== names.length) select.replaceChildren(...names.map((n) => el("option", { text: n })));
    const metric = select.value || names[0];
    document.getElementById("grid").textContent = `grid: ${JSON.stringify(sweep.grid)}`;
    const thead = document.querySelector("#runs thead");
    thead.replaceChildren(el("tr", {}, el("th", { text: "job" }), params.map((p) => el("th", { text: p })),
      el("th", { text: "status" }), names.map((n) => el("th", { text: n })), el("th", { text: "version" })));
    document.querySelector("#runs tbody").replaceChildren(...sweep.runs.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(r.job_id)}`, text: r.job_id.slice(0, 8) })),
      params.map((p) => el("td", { text: JSON.stringify(r.params[p]) })), el("td", { text: r.status }),
      names.map((n) => el("td", { text: num((r.holdout_metrics || {})[n], 4) })), el("td", { text: r.version || "–" }))));
    const box = document.getElementById("sweep-plot");
    box.replaceChildren();
    if (!metric) return;
    const numeric = params.length === 1 && sweep.runs.every((r) => typeof r.params[params[0]] === "number");
    const runs = numeric ? [...sweep.runs].sort((a, b) => a.params[params[0]] - b.params[params[0]]) : sweep.runs;
    const x = numeric ? runs.map((r) => r.params[params[0]]) : runs.map((_, i) => i + 1);
    plot(box, `${metric} over the grid`, x, [{ label: metric, values: runs.map((r) => (r.holdout_metrics || {})[metric] ?? null) }],
         { xLabel: numeric ? params[0] : "run (row of the table)", bars: !numeric });
  }
  select.addEventListener("change", draw);

  every(5000, async () => {
    sweep = await json(`/api/v1/sweeps/${encodeURIComponent(id)}`);
    draw();
    return sweep.runs.some((r) => ["queued", "running"].includes(r.status));
  });
})();
