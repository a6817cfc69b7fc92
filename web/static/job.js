/* One job: a score or embed job's progress, results with thumbnails, failed items and score histograms; a train
   job's curves per epoch (gaining points while it runs), hyperparameters, holdout metrics, gate, shadow diff and
   lineage. Polls while the job is open. */
"use strict";
(() => {
  const { el, json, bar, num, secs, when, every, kv, plot, histogram, loadImage, download, showError } = imgq;
  const jobId = imgq.data.jobId;
  const base = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
  const OPEN = ["preparing", "queued", "running"];
  const summary = document.getElementById("summary");

  function showSummary(job, progress) {
    const model = job.model || {};
    summary.replaceChildren(
      el("p", {}, el("span", { class: `status ${job.status}`, id: "job-status", text: job.status }), " ",
         el("strong", { text: job.kind }), " job ", el("code", { text: job.id })),
      el("div", { id: "progress" }, progress),
      kv({ model: model.ref || model.result || model.name || model.requested || null,
           created: when(job.timings.created_at), elapsed: secs(job.timings.elapsed_seconds),
           ...(job.error ? { error: job.error } : {}) }));
    document.getElementById("title").textContent = `${job.kind} job ${job.id.slice(0, 8)}`;
  }

  /* ---------------------------------------------------------------- score and embed jobs */
  function scoreProgress(job) {
    const p = job.progress;
    if (job.status === "preparing") {  // its manifest is being read into items; the total is not known yet
      return [bar(0, job.status, `preparing: ${p.rows_read} rows read`)];
    }
    return [bar(p.total ? p.done / p.total : 0, job.status, `${p.done}/${p.total} (${num(p.percent)} %)`),
            el("p", { text: `succeeded ${p.succeeded}, failed ${p.failed}, from cache ${p.from_cache}, ` +
                            `${num(p.images_per_second)} images/s, ETA ${secs(p.eta_seconds)}` })];
  }

  function outputsText(outputs) {
    if (!outputs) return "";
    if ("label" in outputs) return `${outputs.label} (${num(outputs.confidence)})`;
    return Object.entries(outputs).map(([k, v]) => `${k}: ${num(v)}`).join(", ");
  }

  function keypointsOf(outputs) {
    const pts = [];
    for (const [k, v] of Object.entries(outputs || {})) {
      if (k.endsWith("_x") && typeof outputs[k.slice(0, -2) + "_y"] === "number") pts.push([v, outputs[k.slice(0, -2) + "_y"]]);
    }
    return pts;
  }

  async function thumbCard(job, result) {
    const img = el("img", { alt: result.id, width: 140, height: 140 });
    const card = el("div", { class: "thumb", dataset: { item: result.id } }, img,
                    el("div", { class: "item-id", text: result.id }),
                    el("div", { text: result.status === "error" ? `error: ${result.error}` : outputsText(result.outputs) }));
    await loadImage(img, `${base}/items/${encodeURIComponent(result.id)}/thumbnail?size=160`);
    const pts = job.model && job.model.task === "keypoints" ? keypointsOf(result.outputs) : [];
    if (pts.length && img.naturalWidth) {  // points in the image's pixels, drawn over the thumbnail
      const canvas = el("canvas", { width: img.naturalWidth, height: img.naturalHeight });
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      ctx.fillStyle = "#ff2d55";
      const scale = img.naturalWidth / Math.max(1, ...pts.map(([x]) => x), img.naturalWidth);
      for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(x * scale, y * scale, 3, 0, 2 * Math.PI); ctx.fill(); }
      img.replaceWith(canvas);
    }
    return card;
  }

  async function allResults(limit = 2000) {
    const rows = [];
    let url = `${base}/results?limit=500&status=ok`;
    while (url && rows.length < limit) {
      const page = await json(url);
      rows.push(...page.results);
      url = page.next;
    }
    return rows;
  }

  async function showScores(job) {
    const preview = await json(`${base}/results?limit=24`);
    const cards = await Promise.all(preview.results.map((r) => thumbCard(job, r)));
    document.getElementById("results").replaceChildren(...cards);
    const failed = await json(`${base}/results?limit=100&status=error`);
    const tbody = document.querySelector("#failed tbody");
    tbody.replaceChildren(...failed.results.map((r) => el("tr", { dataset: { item: r.id } },
      el("td", { text: r.id }), el("td", { text: r.error || "" }))));
    if (!failed.results.length) tbody.append(el("tr", {}, el("td", { colspan: 2, class: "hint", text: "none" })));
    const rows = await allResults();
    const box = document.getElementById("histograms");
    box.replaceChildren();
    const names = new Set();
    for (const r of rows) for (const [k, v] of Object.entries(r.outputs || {})) if (typeof v === "number") names.add(k);
    const probs = [...names].filter((n) => n.startsWith("p:"));
    if (probs.length) {  // a classifier: one histogram per class of that class's probability
      const series = probs.map((n) => ({ label: n.slice(2), values: histogram(rows.map((r) => r.outputs[n]), 20).counts }));
      const x = Array.from({ length: 20 }, (_, i) => (i + 0.5) / 20);
      plot(box, `class probabilities (${rows.length} items)`, x, series, { bars: false, xLabel: "probability" });
    } else {
      for (const n of names) {
        const h = histogram(rows.map((r) => r.outputs[n]));
        plot(box, `${n} (${rows.length} items)`, h.x, [{ label: "items", values: h.counts }], { bars: true, xLabel: n });
      }
    }
  }

  function watchScore(job) {
    document.getElementById("score").hidden = false;
    for (const format of ["csv", "parquet"]) {
      document.getElementById(format).addEventListener("click", () =>
        download(`${base}/results?format=${format}`, `${jobId}.${format}`).catch(showError));
    }
    let shown = false;
    every(1500, async () => {
      const now = await json(base);
      showSummary(now, scoreProgress(now));
      if (!OPEN.includes(now.status) && !shown) { shown = true; await showScores(now); }
      return OPEN.includes(now.status);
    });
    if (OPEN.includes(job.status)) showScores(job).catch(showError);  // a first look while it runs
  }

  /* ---------------------------------------------------------------- train jobs */
  function trainProgress(job) {
    const p = job.progress;
    const frac = job.status === "succeeded" ? 1 : (p.epochs ? (p.epoch || 0) / p.epochs : 0);
    return [bar(frac, job.status, `epoch ${p.epoch || 0}/${p.epochs || "?"}`),
            el("p", { text: `phase ${p.phase || "–"}, step ${num(p.step)}/${num(p.steps_per_epoch)}, ` +
                            `ETA ${secs(p.eta_seconds)}, attempts ${num(p.attempts)}` })];
  }

  const charts = {};
  function showCurves(epochs) {
    const box = document.getElementById("curves");
    const keys = new Set();
    for (const e of epochs) for (const k of Object.keys(e)) if (!["epoch", "seconds"].includes(k) && !k.startsWith("val_")) keys.add(k);
    const x = epochs.map((e) => e.epoch);
    for (const k of keys) {
      const series = [{ label: `train ${k}`, values: epochs.map((e) => e[k] ?? null) },
                      { label: `validation ${k}`, values: epochs.map((e) => e["val_" + k] ?? null) }];
      if (charts[k]) charts[k].update(x, series);
      else charts[k] = plot(box, k, x, series, { xLabel: "epoch" });
    }
    box.dataset.epochs = String(epochs.length);
    if (!epochs.length && !box.querySelector(".hint")) box.append(el("p", { class: "hint", text: "no finished epoch yet" }));
    if (epochs.length) box.querySelectorAll(".hint").forEach((n) => n.remove());
  }

  /* production's answer against the candidate's on the shadow sample: a scatter (regression, keypoints: the first
     output) or a confusion table (classifiers), the figures, and the largest changes */
  function showShadow(shadow) {
    const box = document.getElementById("shadow");
    if (!shadow) { box.replaceChildren(el("p", { class: "hint", text: "no shadow diff (no production version to compare with)" })); return; }
    const { largest_changes: largest, changed, pairs, confusion, ...rest } = shadow;
    const list = largest || changed || [];
    const figure = el("div", { id: "shadow-plot", class: "plots" });
    box.replaceChildren(figure, kv(rest), el("h3", { text: largest ? "Largest changes" : "Changed answers" }),
      el("table", { id: "shadow-changes", class: "grid" },
        el("thead", {}, el("tr", {}, el("th", { text: "item" }), el("th", { text: "production" }), el("th", { text: "candidate" }))),
        el("tbody", {}, list.slice(0, 20).map((c) => el("tr", {}, el("td", { text: c.id }),
          el("td", { text: num(c.production) }), el("td", { text: num(c.candidate) }))))));
    if (pairs && pairs.production.length) {
      const order = pairs.production.map((_, i) => i).sort((i, j) => pairs.production[i] - pairs.production[j]);
      const x = order.map((i) => pairs.production[i]);
      plot(figure, "candidate against production (first output)", x,
           [{ label: "candidate", values: order.map((i) => pairs.candidate[i]) }, { label: "no change", values: x }],
           { xLabel: "production", scatter: true });
    } else if (confusion) {
      const classes = [...new Set([...Object.keys(confusion), ...Object.values(confusion).flatMap(Object.keys)])].sort();
      figure.append(el("table", { id: "shadow-confusion", class: "grid" },
        el("caption", { text: "items by production's class (rows) and the candidate's (columns)" }),
        el("thead", {}, el("tr", {}, el("th", { text: "production \\ candidate" }), classes.map((c) => el("th", { text: c })))),
        el("tbody", {}, classes.map((p) => el("tr", {}, el("th", { text: p }), classes.map((c) =>
          el("td", { class: p === c ? "same" : "", text: (confusion[p] || {})[c] || 0 })))))));
    }
  }

  async function showTrainDetails(job) {
    const req = job.request || {};
    const { dataset, ...hyper } = req;
    document.getElementById("hyper").replaceChildren(kv(hyper));
    document.getElementById("holdout").replaceChildren(kv(job.holdout_metrics));
    const cmp = job.comparison || {};
    const gate = cmp.gate ? { decision: cmp.gate.decision, reason: cmp.gate.reason, production: cmp.production,
                              candidate: cmp.candidate_metrics, "production metrics": cmp.production_metrics } : null;
    document.getElementById("gate").replaceChildren(gate ? kv(gate) : el("p", { class: "hint", text: "not decided yet" }));
    showShadow(cmp.shadow);
    const lineage = { parent: job.model.parent, result: job.model.result, dataset, data: job.data };
    if (job.model.result) {
      const [name, version] = job.model.result.split("@");
      const v = await json(`/api/v1/models/${encodeURIComponent(name)}/versions/${version}`).catch(() => null);
      if (v) lineage.version = v.lineage;
    }
    document.getElementById("lineage").replaceChildren(kv(lineage));
  }

  function watchTrain() {
    document.getElementById("train").hidden = false;
    let details = false;
    every(2000, async () => {
      const now = await json(base);
      showSummary(now, trainProgress(now));
      const epochs = await json(`${base}/epochs`);
      showCurves(epochs.epochs);
      const open = OPEN.includes(now.status);
      if (!details || !open) await showTrainDetails(now);
      details = true;
      return open;
    });
  }

  (async () => {
    try {
      const job = await json(base);
      if (job.kind === "train") watchTrain(job);
      else if (job.progress && job.progress.total !== undefined) watchScore(job);
      else {
        showSummary(job, []);
        document.getElementById("other").hidden = false;
        document.getElementById("details").replaceChildren(kv(job));
      }
    } catch (err) {
      showError(err);
    }
  })();
})();
