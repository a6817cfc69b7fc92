#!/usr/bin/env python
"""Similar-image search benchmark: build time, queries per second, latency and recall@10 of shared.search's vector
indexes (exact, IVF, HNSW) on synthetic embeddings and on a CNN's pooled features,
and the category filter done two ways.

Usage: .venv/bin/python benchmarks/similar_search.py [--n 100000] [--dim 1280|2048] [--datasets random,clustered,cnn]

Phases, per data set (each index is built, measured and dropped before the next, so at most the vectors and one
index are in memory: 2 x n x dim x 4 bytes):
  1. data: n vectors and --queries held-out queries, L2-normalised float32, with one of --categories categories
     each, drawn at random. `random`: uniform on the sphere, the worst case (no structure: the true neighbours are
     barely nearer than any other vector). `clustered`: --clusters gaussian clusters, each a random centre plus a
     32-dimensional gaussian (norm about 1) plus isotropic noise (norm about 0.5): nearest neighbours that mean
     something. `cnn`: a CNN's pooled features over photo crops (benchmarks/cnn_vectors.py, made once in a process
     of its own and cached): post-ReLU, all components >= 0, a high similarity between any two vectors and
     categories that overlap, as real image embeddings are; one category per --cnn-sizes (default about 1k, 10k and
     100k vectors) with --cnn-queries held-out crops each, and phases 2 and 3 run on each category by itself (what a
     per-category sub-index sees); --n, --dim, --queries and --categories do not apply to it.
  2. indexes: CatalogIndex.build with BuildParams(kind=...) for exact, ivf and hnsw (the defaults, or the --nlist,
     --nprobe, --hnsw-m, --ef-construction, --ef-search given): build seconds; recall@10 against the exact index on
     every query; CatalogIndex.search timed one query per call and --batch queries per call (queries per second,
     p50 and p95 latency per call, for --seconds each). The row marked auto is what BuildParams() picks for n.
     Exact search is also timed with its BLAS path forced for batches (FAISS takes it from queries x dimension >=
     faiss.cvar.distance_compute_blas_threshold: 128,000 by default, 10,240 as shared/search/vector_index.py sets
     it, so 8 queries of 1,280) and on one thread for single queries; the faster exact
     figure is the baseline of the speed ratios.
  3. sweep: recall@10 and single-query speed of the built IVF and HNSW at other nprobe / efSearch (FAISS search
     parameters on the same index, as CatalogIndex passes them), to choose the defaults.
  4. category filter, each query with one category: per-category sub-indexes (CatalogIndex.build with the
     categories and BuildParams(): what production does) against one global index of each kind searched with a FAISS
     IDSelectorBitmap of the category (faiss.SearchParameters(sel=...)); recall@10 against brute force within the
     category, single queries and batches of --batch same-category queries.

Targets (reported as met / not met, never asserted), per data set, for the auto index of n vectors: recall@10 >= 0.95
at >= 10x the queries per second of the faster exact search, single queries and batches.

Results: printed, and written to benchmarks/results/similar_search-<timestamp>.json/.md and similar_search-latest.json
(commit, machine, FAISS version). FAISS uses as many OpenMP threads as there are cores.
"""
from __future__ import annotations

import gc
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
import common

from shared.search.vector_index import BuildParams, CatalogIndex, resolve_kind

K = 10
KINDS = ("exact", "ivf", "hnsw")
TARGETS = {"recall_at_10": (">=", 0.95), "single_qps_vs_exact": (">=", 10.0), "batch_qps_vs_exact": (">=", 10.0)}


def parse_args(argv=None):
    p = common.new_parser(__doc__)
    p.add_argument("--n", type=int, default=100_000, help="vectors per data set (default 100000)")
    p.add_argument("--dim", type=int, default=1280, help="dimension (default 1280; 2048 for the bigger models)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (recall is over all of them)")
    p.add_argument("--datasets", default="random,clustered,cnn")
    p.add_argument("--cnn-sizes", default="1000,10000,100000", help="vectors per category of the cnn data set")
    p.add_argument("--cnn-queries", type=int, default=200, help="held-out query crops per cnn category")
    p.add_argument("--clusters", type=int, default=200)
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--batch", type=int, default=64, help="queries per call in the batch figures")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per speed figure")
    p.add_argument("--nprobes", default="4,8,16,32,64,128", help="IVF nprobe values of the sweep")
    p.add_argument("--efs", default="16,32,64,128,256", help="HNSW efSearch values of the sweep")
    for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"BuildParams.{name} (default: its default)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS OpenMP threads (default: cores)")
    p.add_argument("--wait-idle", type=float, default=60.0)
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(args.datasets) - {"random", "clustered", "cnn"} or min(args.n, args.queries, args.categories,
                                                                  args.batch) < 1:
        p.error("datasets are random, clustered and/or cnn; counts must be positive")
    args.overrides = {k: getattr(args, k) for k in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search")
                      if getattr(args, k) is not None}
    return args


# --------------------------------------------------------------------------- 1. data


def normalise_rows(x: np.ndarray) -> np.ndarray:
    for start in range(0, len(x), 8192):  # in place, in blocks: no second full-size array
        block = x[start:start + 8192]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return x


def make_data(kind: str, n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """n L2-normalised float32 vectors (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    if kind == "clustered":
        x *= 0.5 / np.sqrt(dim)  # the isotropic noise
        centres = normalise_rows(rng.standard_normal((clusters, dim), dtype=np.float32))
        label = rng.integers(0, clusters, n)
        for c in range(clusters):
            rows = np.flatnonzero(label == c)
            basis = rng.standard_normal((32, dim), dtype=np.float32) / np.sqrt(dim)
            x[rows] += centres[c] + rng.standard_normal((len(rows), 32), dtype=np.float32) / np.sqrt(32) @ basis
    return normalise_rows(x)


def filtered_truth(base: np.ndarray, members: list[np.ndarray], queries: np.ndarray, qcat: np.ndarray) -> np.ndarray:
    """The exact top K (global row numbers) of each query within its category, by brute force."""
    truth = np.empty((len(queries), K), dtype=np.int64)
    for c, rows in enumerate(members):
        mine = np.flatnonzero(qcat == c)
        if len(mine):
            scores = queries[mine] @ base[rows].T
            truth[mine] = rows[np.argsort(-scores, axis=1)[:, :K]]
    return truth


# --------------------------------------------------------------------------- measuring


def recall(found, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(map(int, f)) & set(t.tolist())) / K for f, t in zip(found, truth)])), 4)


def ids_of(hits) -> list[list[int]]:
    return [[int(hit.item_id) for hit in row] for row in hits]


def timed(call, batches: list, seconds: float) -> dict:
    """Call `call(batch)` over `batches` (cycling) for about `seconds`: queries per second, latency per call."""
    call(batches[0])  # warm
    latencies, queries, watch = [], 0, common.CpuWatch()
    t0 = time.perf_counter()
    for batch in itertools.cycle(batches):
        t = time.perf_counter()
        call(batch)
        latencies.append(time.perf_counter() - t)
        queries += len(batch[-1]) if isinstance(batch, tuple) else len(batch)
        if time.perf_counter() - t0 >= seconds and len(latencies) >= 3:
            break
    wall = time.perf_counter() - t0
    cpu = watch.stop()
    ms = np.percentile(latencies, [50, 95]) * 1e3
    return {"qps": round(queries / wall, 1), "p50_ms": round(float(ms[0]), 3), "p95_ms": round(float(ms[1]), 3),
            "calls": len(latencies), "our_cpu_pct": cpu["our_cpu_pct"], "background_cpu_pct": cpu["background_cpu_pct"]}


def batches_of(queries: np.ndarray, size: int) -> list[np.ndarray]:
    return [queries[i:i + size] for i in range(0, len(queries) - size + 1, size)] or [queries]


def speed(call, queries: np.ndarray, args) -> dict:
    singles = [queries[i:i + 1] for i in range(len(queries))]
    return {"single": timed(call, singles, args.seconds), "batch": timed(call, batches_of(queries, args.batch),
                                                                         args.seconds)}


def exact_alternatives(index: CatalogIndex, queries: np.ndarray, args) -> dict:
    """How fast exact search could be, for a fair baseline: batches with FAISS's BLAS path forced (FAISS takes it
    from queries x dimension >= faiss.cvar.distance_compute_blas_threshold, which imgq lowers to 10,240), and single
    queries on one OpenMP thread (FAISS splits one query's scan across threads, which waits on a busy machine)."""
    call = lambda q: index.search(q, K)  # noqa: E731
    default = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        batch = timed(call, batches_of(queries, args.batch), args.seconds)
    finally:
        faiss.cvar.distance_compute_blas_threshold = default
    faiss.omp_set_num_threads(1)
    try:
        single = timed(call, [queries[i:i + 1] for i in range(len(queries))], args.seconds)
    finally:
        faiss.omp_set_num_threads(args.threads)
    return {"batch_blas": batch, "single_one_thread": single}


# --------------------------------------------------------------------------- 2. and 3. indexes and sweeps


def build(ids, cats, base, params: BuildParams) -> tuple[CatalogIndex, float]:
    t0 = time.perf_counter()
    index = CatalogIndex.build(ids, cats, base, params)
    return index, round(time.perf_counter() - t0, 2)


def sweep(index: CatalogIndex, kind: str, queries: np.ndarray, truth: np.ndarray, args) -> list[dict]:
    """Recall and single-query speed of the built index at other nprobe / efSearch values."""
    faiss_index, rows = index.faiss_index(None), []
    if kind == "ivf":
        values = [v for v in map(int, args.nprobes.split(",")) if v <= faiss_index.nlist]
        make = lambda v: faiss.SearchParametersIVF(nprobe=v)  # noqa: E731
    else:
        values = list(map(int, args.efs.split(",")))
        make = lambda v: faiss.SearchParametersHNSW(efSearch=max(v, K))  # noqa: E731
    for v in values:
        params = make(v)
        found = faiss_index.search(queries, K, params=params)[1]
        singles = [queries[i:i + 1] for i in range(len(queries))]
        single = timed(lambda q, p=params: faiss_index.search(q, K, params=p), singles, args.seconds / 2)
        rows.append({"setting": f"{'nprobe' if kind == 'ivf' else 'efSearch'} {v}", "value": v,
                     "recall_at_10": recall(found, truth), "single_qps": single["qps"], "p95_ms": single["p95_ms"]})
        common.log(f"    {kind} {rows[-1]['setting']}: recall@10 {rows[-1]['recall_at_10']}, {single['qps']:.0f} q/s")
    return rows


def describe_kind(index: CatalogIndex, params: BuildParams) -> str:
    sub = index.describe()["categories"][0]
    if sub["kind"] == "ivf":
        return f"nlist {sub['nlist']}, nprobe {params.nprobe}"
    if sub["kind"] == "hnsw":
        return f"M {params.hnsw_m}, efConstruction {params.ef_construction}, efSearch {params.ef_search}"
    return "flat"


# --------------------------------------------------------------------------- 4. category filter


def global_filtered(index: CatalogIndex, kind: str, params: BuildParams, selectors: list, queries, qcat, truth,
                    args) -> dict:
    """One global FAISS index searched with an IDSelectorBitmap of each query's category."""
    faiss_index = index.faiss_index(None)

    def search_params(c: int):
        if kind == "ivf":
            return faiss.SearchParametersIVF(sel=selectors[c], nprobe=params.nprobe)
        if kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selectors[c], efSearch=params.ef_search)
        return faiss.SearchParameters(sel=selectors[c])

    found = np.vstack([faiss_index.search(queries[i:i + 1], K, params=search_params(c))[1]
                       for i, c in enumerate(qcat)])
    call = lambda cq: faiss_index.search(cq[1], K, params=search_params(cq[0]))  # noqa: E731
    return {"design": "global + IDSelector", "kind": kind, "recall_at_10": recall(found, truth),
            **filtered_speed(call, queries, qcat, args)}


def filtered_speed(call, queries, qcat, args) -> dict:
    """Speed of `call((category, queries))`: one query per call, and batches of same-category queries."""
    singles = [(int(c), queries[i:i + 1]) for i, c in enumerate(qcat)]
    batches = []
    for c in np.unique(qcat):
        mine = queries[qcat == c]
        batches += [(int(c), mine[i:i + args.batch]) for i in range(0, len(mine), args.batch)]
    batches = [b for b in batches if len(b[1]) == args.batch] or batches
    return {"single": timed(call, singles, args.seconds), "batch": timed(call, batches, args.seconds)}


def per_category(base, ids, cats, names, queries, qcat, truth, args) -> dict:
    """What production does: CatalogIndex.build with the categories (auto: a sub-index each), search by category."""
    index, seconds = build(ids, cats, base, BuildParams(**args.overrides))
    kinds = sorted({sub["kind"] for sub in index.describe()["categories"]})
    found = [index.search(queries[i:i + 1], K, category=names[c])[0] for i, c in enumerate(qcat)]
    call = lambda cq: index.search(cq[1], K, category=names[cq[0]])  # noqa: E731
    return {"design": "per-category sub-indexes", "kind": f"auto ({', '.join(kinds)})", "build_s": seconds,
            "recall_at_10": recall(ids_of(found), truth), **filtered_speed(call, queries, qcat, args)}


# --------------------------------------------------------------------------- one data set


def run_dataset(name: str, args) -> dict:
    common.log(f"{name}: {args.n} x {args.dim} vectors, {args.queries} queries")
    data = make_data(name, args.n + args.queries, args.dim, args.clusters, seed=1 if name == "random" else 2)
    base, queries = data[:args.n], np.ascontiguousarray(data[args.n:])
    rng = np.random.default_rng(3)
    cat_of, qcat = rng.integers(0, args.categories, args.n), rng.integers(0, args.categories, args.queries)
    return evaluate(base, queries, cat_of, qcat, args, filters=True)


def run_cnn(args) -> dict[str, dict]:
    """The cnn data set: phases 2 and 3 on each category by itself, as its per-category sub-index sees it."""
    made = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "cnn_vectors.py"), "--sizes",
                           args.cnn_sizes, "--queries", str(args.cnn_queries)], stdout=subprocess.PIPE, text=True,
                          check=True)
    path = Path(made.stdout.strip().splitlines()[-1])
    with np.load(path) as data:
        vectors, category, query, sizes = data["vectors"], data["category"], data["query"], data["sizes"].tolist()
    out = {}
    for c, size in enumerate(sizes):
        base = np.ascontiguousarray(vectors[(category == c) & ~query])
        queries = np.ascontiguousarray(vectors[(category == c) & query])
        common.log(f"cnn, category of {size}: {len(base)} x {base.shape[1]} vectors, {len(queries)} queries")
        zeros = np.zeros(len(base), dtype=int), np.zeros(len(queries), dtype=int)
        out[f"cnn, category of {size:,}"] = {"distribution": distribution(base, queries),
                                              **evaluate(base, queries, *zeros, args, filters=False)}
    return out


def distribution(base: np.ndarray, queries: np.ndarray, pairs: int = 20_000) -> dict:
    """What makes real embeddings harder than synthetic ones: the similarity of any two vectors, and zeros."""
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, len(base), pairs), rng.integers(0, len(base), pairs)
    cosine = np.einsum("ij,ij->i", base[a], base[b])
    return {"random_pair_cosine_mean": round(float(cosine.mean()), 4),
            "random_pair_cosine_p5_p95": [round(float(x), 4) for x in np.percentile(cosine, [5, 95])],
            "zero_share": round(float(np.mean(base[:2000] == 0)), 4),
            "negative_share": round(float(np.mean(base[:2000] < 0)), 4),
            "file": "benchmarks/cnn_vectors.py", "queries": len(queries)}


def evaluate(base: np.ndarray, queries: np.ndarray, cat_of: np.ndarray, qcat: np.ndarray, args, filters: bool) -> dict:
    """Phases 2 and 3 on `base` and `queries`, and phase 4 over the categories `cat_of` / `qcat` when `filters`."""
    n, n_categories = len(base), int(cat_of.max()) + 1
    names = [f"category-{c:02d}" for c in range(n_categories)]
    ids, cats = [str(i) for i in range(n)], [names[c] for c in cat_of]
    if filters:
        members = [np.flatnonzero(cat_of == c) for c in range(n_categories)]
        selectors = [faiss.IDSelectorBitmap(np.packbits(cat_of == c, bitorder="little")) for c in range(n_categories)]
        ftruth = filtered_truth(base, members, queries, qcat)
    auto_kind = resolve_kind(n, BuildParams(**args.overrides))[0]
    out: dict = {"n": n, "dim": int(base.shape[1]), "queries": len(queries), "indexes": {}, "sweeps": {},
                 "filter": [], "auto_kind": auto_kind}
    truth = None
    for kind in KINDS:
        params = BuildParams(kind=kind, **args.overrides)
        if kind == "ivf" and resolve_kind(n, params)[0] == "exact":
            common.log(f"  ivf: {n} vectors leave no more lists than nprobe {params.nprobe}: it would be exact")
            continue
        index, seconds = build(ids, [None] * n, base, params)
        hits = index.search(queries, K)
        found = ids_of(hits)
        if kind == "exact":
            truth = np.asarray(found)
            out["exact_scores"] = {"top1_mean": round(float(np.mean([row[0].score for row in hits])), 4),
                                   "top10_mean": round(float(np.mean([row[-1].score for row in hits])), 4)}
        row = {"build_s": seconds, "detail": describe_kind(index, params), "recall_at_10": recall(found, truth),
               **speed(lambda q, index=index: index.search(q, K), queries, args)}
        common.log(f"  {kind}: built in {seconds}s ({row['detail']}), recall@10 {row['recall_at_10']}, "
                   f"{row['single']['qps']:.0f} q/s single, {row['batch']['qps']:.0f} q/s in batches")
        if kind == "exact":
            row.update(exact_alternatives(index, queries, args))
            common.log(f"  exact, BLAS forced: {row['batch_blas']['qps']:.0f} q/s in batches; one thread: "
                       f"{row['single_one_thread']['qps']:.0f} q/s single")
        out["indexes"][kind] = row
        if kind != "exact":
            out["sweeps"][kind] = sweep(index, kind, queries, truth, args)
        if filters:
            out["filter"].append(global_filtered(index, kind, params, selectors, queries, qcat, ftruth, args))
        del index
        gc.collect()
    if filters:
        out["filter"].insert(0, per_category(base, ids, cats, names, queries, qcat, ftruth, args))
    for row in out["filter"]:
        common.log(f"  filter, {row['design']} {row['kind']}: recall@10 {row['recall_at_10']}, "
                   f"{row['single']['qps']:.0f} q/s single, {row['batch']['qps']:.0f} q/s in batches")
    out["targets"] = targets(out, out["auto_kind"])
    out["targets_by_kind"] = {kind: targets(out, kind) for kind in ("ivf", "hnsw") if kind in out["indexes"]}
    return out


def targets(out: dict, kind: str) -> dict:
    """The `kind` index against the faster exact search (FAISS's defaults, or exact_alternatives)."""
    auto, exact_single, exact_batch = out["indexes"][kind], *fastest_exact(out["indexes"]["exact"])
    return {"recall_at_10": common.verdict(TARGETS, "recall_at_10", auto["recall_at_10"]),
            "single_qps_vs_exact": common.verdict(TARGETS, "single_qps_vs_exact",
                                                  round(auto["single"]["qps"] / exact_single, 1)),
            "batch_qps_vs_exact": common.verdict(TARGETS, "batch_qps_vs_exact",
                                                 round(auto["batch"]["qps"] / exact_batch, 1))}


def headline_targets(datasets: dict) -> dict:
    """Per data set, the targets of its default index; where that is exact (a small category), of HNSW instead."""
    out = {}
    for name, data in datasets.items():
        kind = data["auto_kind"] if data["auto_kind"] != "exact" else "hnsw"
        label = f"{name}, {kind}" + (" (default)" if kind == data["auto_kind"] else " (the default is exact here)")
        for key, verdict in data["targets_by_kind"].get(kind, {}).items():
            out[f"{label}: {key}"] = verdict
    return out


def fastest_exact(exact: dict) -> tuple[float, float]:
    """Exact queries per second, single and in batches: the faster of FAISS's defaults and exact_alternatives."""
    return (max(exact["single"]["qps"], exact["single_one_thread"]["qps"]),
            max(exact["batch"]["qps"], exact["batch_blas"]["qps"]))


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    run = report["run"]
    lines = [f"# similar_search — {run['timestamp']}", "",
             (f"{run['n']} vectors x {run['dim']} per synthetic data set, {run['queries']} held-out queries, "
              f"{run['categories']} categories; cnn categories of {run['cnn_sizes']} vectors with "
              f"{run['cnn_queries']} queries each; k={K}, batches of {run['batch']}; {run['cpus']} CPUs "
              f"({run['machine'].get('cpu_model')}), "
              f"FAISS {run['faiss']} with {run['omp_threads']} threads, commit {run['git_commit']}, "
              f"total {run['seconds_total']} s"),
             f"params: {run['params']}"]
    if run.get("git_dirty"):
        lines.append(f"working tree differs from the commit in: {', '.join(run['git_dirty'])}")
    for name, out in report["datasets"].items():
        e = out["indexes"]["exact"]
        exact_single, exact_batch = fastest_exact(e)
        lines += ["", f"## {name}", "", (f"{out['n']:,} x {out['dim']} vectors, {out['queries']} queries; exact "
                                         f"top-1 score {out['exact_scores']['top1_mean']}, 10th "
                                         f"{out['exact_scores']['top10_mean']} (means over the queries)")]
        if "distribution" in out:
            d = out["distribution"]
            lines.append(f"cosine of two random vectors: mean {d['random_pair_cosine_mean']}, 5th-95th percentile "
                         f"{d['random_pair_cosine_p5_p95']}; zero components {d['zero_share']:.1%}, negative "
                         f"{d['negative_share']:.1%}")
        lines += ["",
                  "| index | build s | recall@10 | single q/s | p50 ms | p95 ms | batch q/s | batch p50 ms | "
                  "batch p95 ms | q/s vs the faster exact (single, batch) | our CPU (single, batch) | "
                  "other processes' CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind, r in out["indexes"].items():
            s, b = r["single"], r["batch"]
            label = f"{kind}{' (auto)' if kind == out['auto_kind'] else ''}: {r['detail']}"
            lines.append(f"| {label} | {r['build_s']} | {r['recall_at_10']} | {s['qps']:.0f} | {s['p50_ms']:.2f} | "
                         f"{s['p95_ms']:.2f} | {b['qps']:.0f} | {b['p50_ms']:.1f} | {b['p95_ms']:.1f} | "
                         f"{s['qps'] / exact_single:.1f}x, {b['qps'] / exact_batch:.1f}x | "
                         f"{s['our_cpu_pct']:.0f} %, {b['our_cpu_pct']:.0f} % | "
                         f"{max(s['background_cpu_pct'], b['background_cpu_pct']):.0f} % |")
            if kind == "exact":
                s, b = r["single_one_thread"], r["batch_blas"]
                lines.append(f"| exact: flat, one thread (single), BLAS forced (batches) | | | {s['qps']:.0f} | "
                             f"{s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {b['qps']:.0f} | {b['p50_ms']:.1f} | "
                             f"{b['p95_ms']:.1f} | | {s['our_cpu_pct']:.0f} %, {b['our_cpu_pct']:.0f} % | "
                             f"{max(s['background_cpu_pct'], b['background_cpu_pct']):.0f} % |")
        lines += ["", "| sweep (same index) | recall@10 | single q/s | p95 ms |", "|---|---:|---:|---:|"]
        for kind, rows in out["sweeps"].items():
            lines += [f"| {kind} {r['setting']} | {r['recall_at_10']} | {r['single_qps']:.0f} | {r['p95_ms']:.2f} |"
                      for r in rows]
        if out["filter"]:
            lines += ["", "| category filter | index | recall@10 | single q/s | p50 ms | p95 ms | batch q/s | "
                      "batch p95 ms |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in out["filter"]:
            s, b = r["single"], r["batch"]
            lines.append(f"| {r['design']} | {r['kind']} | {r['recall_at_10']} | {s['qps']:.0f} | {s['p50_ms']:.2f} | "
                         f"{s['p95_ms']:.2f} | {b['qps']:.0f} | {b['p95_ms']:.1f} |")
        for kind, verdicts in out["targets_by_kind"].items():
            auto = " (auto)" if kind == out["auto_kind"] else ""
            lines += ["", f"targets, {kind}{auto}: " + "; ".join(
                f"{k} {v['value']} {v['target']}: {common.fmt_met(v)}" for k, v in verdicts.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    t_start, stamp = time.time(), time.strftime("%Y%m%d-%H%M%S")
    quiet = common.wait_for_quiet(args.wait_idle)
    datasets = {}
    for name in args.datasets:
        datasets.update(run_cnn(args) if name == "cnn" else {name: run_dataset(name, args)})
    report = {"datasets": datasets, "targets": headline_targets(datasets)}
    report["run"] = {"timestamp": stamp, "n": args.n, "dim": args.dim, "queries": args.queries, "batch": args.batch,
                     "categories": args.categories, "clusters": args.clusters, "seconds_per_figure": args.seconds,
                     "cnn_sizes": args.cnn_sizes, "cnn_queries": args.cnn_queries,
                     "params": BuildParams(**args.overrides).model_dump(), "cpus": os.cpu_count(),
                     "omp_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
                     "numpy": np.__version__, "python": platform.python_version(), "machine": common.machine(),
                     "git_commit": common.git_commit(), "git_dirty": common.git_dirty(), **quiet,
                     "seconds_total": round(time.time() - t_start, 1)}
    text = markdown(report)
    print()
    print(text)
    common.write_report("similar_search", report, stamp, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
