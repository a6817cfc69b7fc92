/* Similar images: upload a query image, pick a catalog (and category), see the top k with scores. */
"use strict";
(() => {
  const { el, json, api, loadImage, showError, clearError } = imgq;
  const form = document.getElementById("similar-form");
  const catalog = document.getElementById("catalog");

  (async () => {
    try {
      const page = await json("/api/v1/catalogs?limit=1000");
      catalog.replaceChildren(...page.catalogs.map((c) => el("option", { value: c.name, text: c.name })));
      if (!page.catalogs.length) showError("no catalogs yet: embed one first (POST /api/v1/jobs/embed)");
    } catch (err) { showError(err); }
  })();

  document.getElementById("image").addEventListener("change", (event) => {
    const file = event.target.files[0];
    const box = document.getElementById("query-preview");
    box.replaceChildren();
    if (file) box.append(el("div", { class: "thumb" }, el("img", { src: URL.createObjectURL(file), alt: "query" }), "query"));
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData();
    body.append("image", document.getElementById("image").files[0]);
    body.append("catalog", catalog.value);
    body.append("k", document.getElementById("k").value || "8");
    const category = document.getElementById("category").value.trim();
    if (category) body.append("category", category);
    const hits = document.getElementById("hits");
    hits.replaceChildren(el("p", { class: "hint", text: "searching…" }));
    try {
      const answer = await (await api("/api/v1/similar", { method: "POST", body })).json();
      clearError();
      document.getElementById("answer-note").textContent =
        `${answer.results.length} of k=${answer.k} from ${answer.catalog} (space ${answer.space}, index v${answer.index_version})`;
      const cards = answer.results.map((h) => {
        const img = el("img", { alt: h.id, width: 140, height: 140 });
        loadImage(img, h.thumbnail + "?size=160");
        return el("div", { class: "thumb hit", dataset: { item: h.id } }, img, el("div", { text: h.id }),
                  el("div", { text: `score ${h.score.toFixed(4)}${h.category ? " · " + h.category : ""}` }));
      });
      hits.replaceChildren(...cards);
      hits.dataset.count = String(cards.length);
    } catch (err) { hits.replaceChildren(); showError(err); }
  });
})();
