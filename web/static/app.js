/* The dashboard's common code: the token (sessionStorage, sent as a bearer header), fetch of the same-origin API,
   elements built with textContent only (never innerHTML: ids, reasons and names are user-supplied), plots. */
"use strict";
const imgq = (() => {
  const KEY = "imgq.token";
  let mePromise = null;

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") e.textContent = String(v);
      else if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : String(c));  // strings become text nodes
    }
    return e;
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function toLogin() {
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function api(path, opts = {}) {
    const headers = new Headers(opts.headers || {});
    const token = sessionStorage.getItem(KEY);
    if (token) headers.set("Authorization", "Bearer " + token);
    headers.set("Accept", headers.get("Accept") || "application/json");
    const resp = await fetch(path, { ...opts, headers, credentials: "omit", cache: "no-store" });
    if (resp.status === 401 && !opts.noRedirect) {
      sessionStorage.removeItem(KEY);
      toLogin();
      throw new ApiError(401, null);
    }
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    return resp;
  }
  const json = async (path, opts) => (await api(path, opts)).json();
  const post = (path, body) => json(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify(body || {}) });

  function me() {
    mePromise = mePromise || json("/api/v1/tokens/me");
    return mePromise;
  }
  async function may(scope) {
    const who = await me();
    return who.scopes.includes(scope) || who.scopes.includes("admin");
  }

  function showError(err) {
    const box = document.getElementById("error");
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
  }
  function clearError() { document.getElementById("error").hidden = true; }

  function confirmAction(text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  /* an image from the API (it needs the bearer header, so not a plain src) */
  async function loadImage(img, url) {
    try {
      const blob = await (await api(url, { headers: { Accept: "image/*" } })).blob();
      img.src = URL.createObjectURL(blob);
      await img.decode().catch(() => {});
    } catch (err) {
      img.alt = "no thumbnail";
    }
    return img;
  }

  async function download(url, filename) {
    const blob = await (await api(url, { headers: { Accept: "*/*" } })).blob();
    const a = el("a", { href: URL.createObjectURL(blob), download: filename });
    document.body.append(a);
    a.click();
    a.remove();
  }

  /* call fn now and every `ms` while it returns true (and the page is visible) */
  function every(ms, fn) {
    let timer = null;
    const tick = async () => {
      let again = true;
      try { again = await fn(); } catch (err) { showError(err); }
      if (again !== false) timer = setTimeout(tick, document.hidden ? ms * 4 : ms);
    };
    tick();
    return () => clearTimeout(timer);
  }

  const num = (v, digits = 3) => (v === null || v === undefined ? "–" :
    typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(digits)) : String(v));
  function secs(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

  function bar(fraction, status, label) {
    const pct = Math.max(0, Math.min(100, 100 * (fraction || 0)));
    const fill = el("div", { class: "fill" });
    fill.style.width = pct.toFixed(1) + "%";
    return el("div", { class: `bar ${status || ""}`, role: "progressbar", "aria-valuemin": 0,
                       "aria-valuemax": 100, "aria-valuenow": pct.toFixed(1) },
              fill, el("span", { class: "label", text: label || `${pct.toFixed(0)} %` }));
  }

  /* nested JSON as a definition list; every value as text */
  function kv(obj) {
    if (obj === null || obj === undefined) return el("p", { class: "hint", text: "–" });
    if (typeof obj !== "object") return document.createTextNode(num(obj, 4));
    if (Array.isArray(obj)) {
      if (obj.every((x) => x === null || typeof x !== "object")) return document.createTextNode(obj.map((x) => num(x, 4)).join(", "));
      return el("ol", {}, obj.map((x) => el("li", {}, kv(x))));
    }
    return el("dl", { class: "kv" }, Object.entries(obj).map(([k, v]) => [el("dt", { text: k }), el("dd", {}, kv(v))]));
  }

  /* a uPlot chart in `box`; series: [{label, values}], x: numbers (ascending); opts.bars: bars; opts.scatter: the
     first series as points alone, the others as lines */
  function plot(box, title, x, series, opts = {}) {
    const colors = ["#3b82f6", "#f97316", "#16a34a", "#a855f7", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];
    const holder = el("div", { class: "plot", dataset: { title } });
    box.append(holder);
    const chart = new uPlot({
      title, width: opts.width || 460, height: opts.height || 260,
      scales: { x: { time: false } },
      series: [{ label: opts.xLabel || "x" }, ...series.map((s, i) => ({
        label: s.label, stroke: colors[i % colors.length], width: 2,
        ...(opts.bars ? { paths: uPlot.paths.bars({ size: [0.9] }), fill: colors[i % colors.length] + "66" } : {}),
        ...(opts.scatter && i === 0 ? { paths: () => null, points: { show: true, size: 5, fill: colors[0] } }
                                    : { points: { show: !opts.bars } }) }))],
      axes: [{ label: opts.xLabel || "" }, {}],
    }, [x, ...series.map((s) => s.values)], holder);
    holder.dataset.points = String(x.length);
    return {
      update(newX, newSeries) {
        chart.setData([newX, ...newSeries.map((s) => s.values)]);
        holder.dataset.points = String(newX.length);
      },
      chart, holder,
    };
  }

  function histogram(values, bins = 20) {
    const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v));
    if (!finite.length) return { x: [], counts: [] };
    let lo = Math.min(...finite), hi = Math.max(...finite);
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    const width = (hi - lo) / bins;
    const counts = new Array(bins).fill(0);
    for (const v of finite) counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
    return { x: counts.map((_, i) => lo + (i + 0.5) * width), counts };
  }

  async function header() {
    const signOut = document.getElementById("sign-out");
    signOut.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.assign("/login"); });
    try {
      const who = await me();
      document.getElementById("who").textContent = `${who.name} (${who.scopes.join(", ")})`;
      signOut.hidden = false;
    } catch (err) {
      if (err.status !== 401) showError(err);
    }
  }

  const KEY_NAME = KEY;
  return { el, api, json, post, me, may, showError, clearError, confirmAction, loadImage, download, every,
           num, secs, when, bar, kv, plot, histogram, header, ApiError, KEY: KEY_NAME,
           data: document.body.dataset };
})();
if (document.body.dataset.page !== "login") imgq.header();
