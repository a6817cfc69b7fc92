#!/usr/bin/env python
"""End-to-end latency of similar-image search by image over HTTP: a client uploads a JPEG to POST /api/v1/similar
(multipart, the part `image`, with a category), the web front has a worker embed it (the Celery `queries` queue) and
searches the catalog's index.

One run, one stack (`imgq serve` + `imgq worker --cpu` + `imgq maintenance`, LocalStack's defaults, on PostgreSQL +
Redis by default), in named phases:

  1. catalog: --images photo-like JPEGs of about 600x800 (benchmarks/photo_catalog.py, made once and cached), each
     given one of --categories categories (row i gets category i mod n);
  2. model: Keras MobileNetV2(weights=None, include_top=False, pooling="avg") at --input pixels square, randomly
     initialised (seeded; nothing is downloaded), pixels in [-1, 1]; its pooled 1,280 values are the embedding.
     Imported over HTTP as an embedding model (POST /api/v1/models, as a client would);
  3. embed + index: an embed job over the catalog's manifest (with its category column), then an index build
     (POST /api/v1/catalogs/<catalog>/indexes, --index-kind, default what the product picks); both waited for;
  4. queries: crops of catalog photos (70-95 % of each side, at a random offset), rescaled to 50-100 % and
     re-encoded as JPEG of quality 60-85, so no query is byte-identical to a catalog file; each names its photo's
     category. Made before the clock, in memory;
  5. latency: for each --clients setting, that many threads, each with its own requests.Session, send --queries
     queries in all (the same queries for every setting, dealt round-robin), after --warmup untimed queries once
     per run (the model and the index loaded) and one untimed query per session (its connection open). A query's
     latency is from the POST to its answer read; q/s is the answered queries over the setting's wall time.
     Latency figures count answered queries (200) only; the others are reported as failed.

Everything (the clients, the web front, the worker, PostgreSQL and Redis) shares this machine: with 2 cores, 10 clients
measure queueing behind one worker process as much as anything. On the embedded backend (SQLite and kombu's
filesystem broker, when PostgreSQL or Redis does not answer) the worker polls the broker every IMGQ_BROKER_POLL
(0.2 s), which sets a floor of about that per query and holds one worker near 5 queries per second.

As a check that the answers mean something, the report gives how often the query's source photo is the first hit
and among the first --k (random weights: expect it often, not always). No targets: the issue gives none for latency.

    python benchmarks/similar_http.py            # 2,000 images, 200 queries per setting, 1 and 10 clients
    python benchmarks/similar_http.py --quick    # 200 images, 50 queries per setting, to check it works

Results: benchmarks/results/similar_http-<timestamp>.json/.md and similar_http-latest.json (benchmarks/common.py).
"""
from __future__ import annotations

import io
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import requests
from common import (
    ROOT,
    BenchRun,
    CpuWatch,
    add_backend_args,
    add_run_args,
    log,
    md_row,
    md_table_head,
    new_parser,
    parse_ts,
    print_summary,
    wait_final,
    wait_for_quiet,
)
from photo_catalog import PHOTO_DIR, ensure_photo_catalog, photo_rows
from PIL import Image

from shared.core.vocab import IndexKind

CATALOG = "bench-photos"
MODEL_NAME = "bench-mobilenetv2-embed"
SEED = 20261207


def parse_args(argv=None):
    p = new_parser(__doc__)
    p.add_argument("--images", type=int, default=2000, help="photos in the catalog")
    p.add_argument("--categories", type=int, default=3, help="categories of the catalog (row i gets i mod n)")
    p.add_argument("--input", type=int, default=128, help="the embedding model's input side in pixels")
    p.add_argument("--index-kind", choices=get_args(IndexKind), default="auto", help="the index build's params.kind")
    p.add_argument("--queries", type=int, default=200, help="timed queries per setting, all clients together")
    p.add_argument("--clients", default="1,10", help="comma-separated numbers of concurrent clients")
    p.add_argument("--warmup", type=int, default=5, help="untimed queries once, before the first setting")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--quick", action="store_true", help="200 images, 50 queries per setting")
    add_backend_args(p)
    add_run_args(p)
    # a Redis database no test or other benchmark uses: the backend flushes it first and last
    p.set_defaults(redis_url="redis://127.0.0.1:6379/15")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.queries = 200, 50
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1 or args.queries < max(args.clients) or args.categories < 1:
        p.error("clients must be positive, with at least one query per client, and categories at least 1")
    return args


# --------------------------------------------------------------------------- phase 1-3: catalog, model, index


def catalog_manifest(folder: Path, n: int, categories: int) -> tuple[str, list[dict]]:
    """A manifest (id, image as an absolute path, category) of the first `n` catalog photos in the run's own folder;
    returns its name (relative to that data root) and the items."""
    items = [{"id": row[0], "path": PHOTO_DIR / row[1], "category": f"category-{i % categories}"}
             for i, row in enumerate(photo_rows()[:n])]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "catalog.csv"
    path.write_text("id,image,category\n" + "".join(f"{it['id']},{it['path']},{it['category']}\n" for it in items))
    return path.name, items


def build_model(side: int, folder: Path) -> tuple[Path, dict]:
    """A randomly initialised MobileNetV2 with global average pooling, saved as .keras; returns (path, description)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(side, side, 3), include_top=False,
                                           pooling="avg")
    path = folder / f"{MODEL_NAME}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    info = {"name": MODEL_NAME, "label": "MobileNetV2, random weights", "input": side,
            "builder": "keras.applications.MobileNetV2(weights=None, include_top=False, pooling='avg')",
            "pixel_scale": "symmetric", "dim": int(model.output.shape[-1]), "params": int(model.count_params()),
            "file_mb": round(path.stat().st_size / 2**20, 1)}
    return path, info


def finished(http, stack, resp, what: str, timeout: float) -> dict:
    """The job a 202 `resp` started, once final; raises unless it succeeded with no failed item."""
    if resp.status_code != 202:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:500]}")
    job = wait_final(http, stack, resp.json()["id"], timeout=timeout, what=what, log_phases=True)
    if job["status"] != "succeeded" or (job.get("progress") or {}).get("failed"):
        raise RuntimeError(f"{what} {job['id']}: {job['status']}, {job.get('progress')}, {job.get('error')}")
    return job


def import_model(http, stack, path: Path, info: dict) -> str:
    """POST the model file as an embedding model; returns its registry reference name@version."""
    fields = {"name": MODEL_NAME, "task": "embedding", "input_size": str(info["input"]),
              "pixel_scale": info["pixel_scale"], "description": f"similar_http benchmark: untrained {info['builder']}"}
    with open(path, "rb") as fh:
        resp = http.post(stack.url("/api/v1/models"), data=fields, files={"file": (path.name, fh)}, timeout=300)
    job = finished(http, stack, resp, "model import", 600)
    return job["model"]["result"]


def embed_and_index(http, stack, manifest: str, n: int, index_kind: str) -> dict:
    """The embed job over the catalog, then the index build; returns what they took and what was built."""
    t0 = time.time()
    resp = http.post(stack.url("/api/v1/jobs/embed"), json={
        "model": MODEL_NAME, "catalog": CATALOG, "manifest": manifest, "category_column": "category"}, timeout=120)
    job = finished(http, stack, resp, "embed job", 3600)
    embed_s = (parse_ts(job.get("finished_at")) or time.time()) - t0
    if job["progress"]["done"] != n:
        raise RuntimeError(f"embed job {job['id']}: {job['progress']['done']} of {n} items embedded")
    t0 = time.time()
    resp = http.post(stack.url(f"/api/v1/catalogs/{CATALOG}/indexes"), json={"params": {"kind": index_kind}},
                     timeout=120)
    job = finished(http, stack, resp, "index job", 1800)
    index_s = (parse_ts(job.get("finished_at")) or time.time()) - t0
    log(f"embedded {n} images in {embed_s:.1f}s, index built in {index_s:.1f}s")
    return {"embed_seconds": round(embed_s, 2), "embed_items_per_s": round(n / embed_s, 1),
            "index_seconds": round(index_s, 2), "index": job["index"]["built"]}


# --------------------------------------------------------------------------- phase 4: queries


@dataclass(frozen=True)
class Query:
    jpeg: bytes
    category: str
    source: str  # the catalog item it was cut from


def make_query(rng: np.random.Generator, item: dict) -> Query:
    """A crop of the item's photo (70-95 % of each side), rescaled to 50-100 % and re-encoded at quality 60-85."""
    with Image.open(item["path"]) as img:
        img = img.convert("RGB")
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = rng.uniform(0.5, 1.0)
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((max(8, int(cw * scale)), max(8, int(ch * scale))),
                                                       Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=int(rng.integers(60, 86)))
    return Query(buf.getvalue(), item["category"], item["id"])


def make_queries(items: list[dict], n: int) -> list[Query]:
    rng = np.random.default_rng(SEED)
    picks = rng.choice(len(items), size=n, replace=n > len(items))
    return [make_query(rng, items[int(i)]) for i in picks]


# --------------------------------------------------------------------------- phase 5: latency


def new_session(stack) -> requests.Session:
    """A client of its own, with the stack's admin token (when auth is on)."""
    session = requests.Session()
    session.headers.update({k: v for k, v in stack.http.headers.items() if k == "Authorization"})
    return session


def ask(session: requests.Session, stack, query: Query, k: int) -> tuple[float, requests.Response]:
    """One query: seconds from the POST to the answer read, and the response."""
    t0 = time.perf_counter()
    resp = session.post(stack.url("/api/v1/similar"), data={"catalog": CATALOG, "k": str(k),
                                                            "category": query.category},
                        files={"image": ("query.jpg", query.jpeg, "image/jpeg")}, timeout=120)
    return time.perf_counter() - t0, resp


def client(session, stack, queries: list[Query], k: int, start: threading.Barrier, out: list) -> None:
    """One client thread: wait for the others, then send its queries one after the other."""
    start.wait()
    for query in queries:
        try:
            seconds, resp = ask(session, stack, query, k)
        except requests.RequestException as exc:
            out.append({"status": None, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        if resp.status_code != 200:
            out.append({"status": resp.status_code, "seconds": seconds, "error": resp.text[:300]})
            continue
        ids = [hit["id"] for hit in resp.json()["results"]]
        out.append({"status": 200, "seconds": seconds, "top": ids[:1] == [query.source], "in_k": query.source in ids,
                    "hits": len(ids)})


def measure(stack, queries: list[Query], clients: int, k: int) -> dict:
    """`clients` threads with a session each share `queries` (round-robin); one untimed query per session first."""
    sessions = [new_session(stack) for _ in range(clients)]
    for session in sessions:
        ask(session, stack, queries[0], k)
    outs: list[list] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(sessions[c], stack, queries[c::clients], k, start, outs[c]))
               for c in range(clients)]
    for t in threads:
        t.start()
    watch = CpuWatch()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = watch.stop()
    for session in sessions:
        session.close()
    return summarise([r for out in outs for r in out], clients, wall, cpu)


def summarise(results: list[dict], clients: int, wall: float, cpu: dict) -> dict:
    ok = [r for r in results if r["status"] == 200]
    ms = np.array([1000 * r["seconds"] for r in ok]) if ok else np.array([np.nan])
    failed = [r for r in results if r["status"] != 200]
    return {"clients": clients, "queries": len(results), "answered": len(ok), "failed": len(failed),
            "failures": [f"{r['status']}: {r['error']}" for r in failed[:5]],
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1), "mean_ms": round(float(ms.mean()), 1),
            "queries_per_s": round(len(ok) / wall, 2), "wall_s": round(wall, 2),
            "source_first": round(sum(r["top"] for r in ok) / len(ok), 3) if ok else None,
            "source_in_k": round(sum(r["in_k"] for r in ok) / len(ok), 3) if ok else None,
            "mean_hits": round(sum(r["hits"] for r in ok) / len(ok), 2) if ok else None, "cpu": cpu}


def warm_up(stack, queries: list[Query], k: int) -> list[float]:
    """Untimed queries, one after the other: the worker's model and the web front's index loaded; their seconds."""
    session = new_session(stack)
    seconds = []
    for query in queries:
        took, resp = ask(session, stack, query, k)
        if resp.status_code != 200:
            raise RuntimeError(f"a warm-up query failed: HTTP {resp.status_code}: {resp.text[:500]}")
        seconds.append(round(took, 3))
    session.close()
    return seconds


# --------------------------------------------------------------------------- orchestration and report


def main(argv=None) -> int:
    args = parse_args(argv)
    run = BenchRun("similar_http", args, "imgq-bench-similar-http-",
                   f", MobileNetV2 {args.input}px, {args.queries} queries per setting, clients {args.clients}")
    report: dict = {"errors": [], "settings": []}
    with run.measuring(report, run.describe({}, {})):
        catalog_info = ensure_photo_catalog(args.images)
        manifest, items = catalog_manifest(run.manifest_dir, args.images, args.categories)
        log(f"making {args.warmup + args.queries} query images (crops, rescaled, re-encoded)")
        queries = make_queries(items, args.warmup + args.queries)
        s = run.setup_backend()
        model_path, model_info = build_model(args.input, run.home / "bench-models")
        stack, http, _ = run.start_stack()
        model_info["registered"] = import_model(http, stack, model_path, model_info)
        setup = embed_and_index(http, stack, manifest, args.images, args.index_kind)
        report["run"] = run.describe(
            {"model": model_info, "categories": args.categories, "k": args.k},
            {"catalog": {"folder": str(PHOTO_DIR.relative_to(ROOT)), **catalog_info},
             "queries": {"per_setting": args.queries, "warmup": args.warmup,
                         "mean_kb": round(sum(len(q.jpeg) for q in queries) / len(queries) / 1024, 1),
                         "recipe": "crop 70-95 % of each side, rescale 50-100 %, JPEG quality 60-85"},
             "stack": {"web_processes": stack.web_workers, "worker_args": list(stack.worker_args) or "defaults"}}, s)
        report["setup"] = setup
        wait_for_quiet(args.wait_idle)
        report["warmup_seconds"] = warm_up(stack, queries[:args.warmup], args.k)
        for clients in args.clients:
            result = measure(stack, queries[args.warmup:], clients, args.k)
            report["settings"].append(result)
            log(f"{clients} client(s): {result['answered']} answered, {result['failed']} failed, p50 "
                f"{result['p50_ms']} ms, p95 {result['p95_ms']} ms, max {result['max_ms']} ms, "
                f"{result['queries_per_s']} q/s")
    text = markdown(report)
    run.write_report(report, text)
    print_summary(text, {})
    return run.close()


def index_label(index: dict) -> str:
    """The index's params.kind and the kinds its per-category sub-indexes got, e.g. "auto (3 exact sub-indexes)"."""
    params = index.get("params") or {}
    kinds = [c.get("kind") for c in (params.get("built") or {}).get("categories") or []]
    built = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds), key=str))
    return f"{params.get('kind', '?')}" + (f" ({built} sub-indexes)" if kinds else "")


def markdown(report: dict) -> str:
    run = report.get("run", {})
    model = run.get("model") or {}
    setup = report.get("setup") or {}
    index = setup.get("index") or {}
    lines = [f"# similar_http {run.get('timestamp', '?')}", "",
             f"commit {run.get('git_commit')}, backend {run.get('backend')}, catalog {run.get('images')} photo-like "
             f"JPEGs in {run.get('categories')} categories, model {model.get('label', '?')} (input "
             f"{model.get('input', '?')}x{model.get('input', '?')}, {model.get('dim', '?')} dimensions), index "
             f"{index_label(index)} of {index.get('items', '?')} vectors, k {run.get('k')}, {run.get('cpus')} CPUs "
             "shared by the clients and the whole stack",
             *md_table_head(run)]
    if setup:
        lines.append(md_row({}, "embed job: images/s (POST to finished)", f"{setup['embed_items_per_s']:,.1f}"))
        lines.append(md_row({}, "index build: seconds (POST to finished)", f"{setup['index_seconds']:,.1f}"))
    if report.get("warmup_seconds"):
        lines.append(md_row({}, "warm-up queries: seconds each", ", ".join(map(str, report["warmup_seconds"]))))
    for r in report.get("settings", []):
        lines.append(md_row({}, f"{r['clients']} client(s): source photo first / in top k",
                            f"{r['source_first']} / {r['source_in_k']}"))
    lines += ["", "| clients | queries | failed | p50 ms | p95 ms | max ms | q/s | other processes' CPU |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.get("settings", []):
        lines.append(f"| {r['clients']} | {r['queries']} | {r['failed']} | {r['p50_ms']:,.1f} | {r['p95_ms']:,.1f} | "
                     f"{r['max_ms']:,.1f} | {r['queries_per_s']:,.2f} | {r['cpu']['background_cpu_pct']:.0f} % |")
    failures = [f for r in report.get("settings", []) for f in r["failures"]]
    if failures:
        lines += ["", "failed queries (first few):", *[f"- {f}" for f in failures]]
    if report.get("errors"):
        lines += ["", "errors:", *[f"- {e}" for e in report["errors"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
