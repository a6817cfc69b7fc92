/* One sweep: the comparison table (a row per grid point) and a holdout metric over the grid: a line over one
   numeric parameter, a heatmap over two, bars by run otherwise. */
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
    if (params.length === 2) { box.append(heatmap(params, metric)); return; }
    const numeric = params.length === 1 && sweep.runs.every((r) => typeof r.params[params[0]] === "number");
    const runs = numeric ? [...sweep.runs].sort((a, b) => a.params[params[0]] - b.params[params[0]]) : sweep.runs;
    const x = numeric ? runs.map((r) => r.params[params[0]]) : runs.map((_, i) => i + 1);
    plot(box, `${metric} over the grid`, x, [{ label: metric, values: runs.map((r) => (r.holdout_metrics || {})[metric] ?? null) }],
         { xLabel: numeric ? params[0] : "run (row of the table)", bars: !numeric });
  }
  /* a table: the first parameter's values as rows, the second's as columns, each cell the metric of that grid
     point, shaded from the lowest value (light) to the highest (dark) */
  function heatmap([rowParam, colParam], metric) {
    const key = (v) => JSON.stringify(v);
    const values = (p) => [...new Map(sweep.runs.map((r) => [key(r.params[p]), r.params[p]])).values()]
      .sort((a, b) => (typeof a === "number" && typeof b === "number" ? a - b : key(a).localeCompare(key(b))));
    const rows = values(rowParam), cols = values(colParam);
    const cell = new Map(sweep.runs.map((r) => [`${key(r.params[rowParam])}|${key(r.params[colParam])}`,
                                                (r.holdout_metrics || {})[metric]]));
    const finite = [...cell.values()].filter((v) => typeof v === "number" && Number.isFinite(v));
    const lo = Math.min(...finite), hi = Math.max(...finite);
    const shade = (v) => (hi > lo ? (v - lo) / (hi - lo) : 0.5);
    return el("table", { id: "heatmap", class: "grid heatmap", dataset: { metric } },
      el("caption", { text: `${metric} over ${rowParam} (rows) and ${colParam} (columns)` }),
      el("thead", {}, el("tr", {}, el("th", { text: `${rowParam} \\ ${colParam}` }), cols.map((c) => el("th", { text: key(c) })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, el("th", { text: key(r) }), cols.map((c) => {
        const v = cell.get(`${key(r)}|${key(c)}`);
        const td = el("td", { text: num(v, 4), dataset: { row: key(r), col: key(c) } });
        if (typeof v === "number" && Number.isFinite(v)) {
          const t = shade(v);
          td.style.background = `rgba(59, 130, 246, ${(0.1 + 0.8 * t).toFixed(3)})`;
          td.style.color = t > 0.6 ? "#fff" : "";
        }
        return td;
      })))));
  }
  select.addEventListener("change", draw);

  every(5000, async () => {
    sweep = await json(`/api/v1/sweeps/${encodeURIComponent(id)}`);
    draw();
    return sweep.runs.some((r) => ["queued", "running"].includes(r.status));
  });
})();
