#!/usr/bin/env python
"""Score-job throughput benchmark: how close does a real imgq job come to the hardware's limits?

One run measures, on this machine:

  (a) raw model throughput on pre-decoded tensors through worker.model_cache.LoadedModel.predict
      (the tf.function the worker uses) for batch sizes 16/32/64/128;
  (b) decode+resize throughput alone: shared.imaging.load_for_model over the catalog's bytes (already
      in memory) in a ThreadPoolExecutor with the worker's thread count (settings().decode_threads);
  (c) end-to-end images/s of a real score job: `imgq serve` + `imgq worker --cpu` (LocalStack), a
      manifest job submitted over HTTP with cache=false, timed from the POST to the job's finished_at;
  (d) the naive loop: per image decode + keras `model.predict(x[None])`;
  (e) the worker pool process's memory (VmRSS/VmHWM) over consecutive small score jobs;
  (f) latency of GET /api/v1/jobs/<id> while a job runs.

Targets (reported as met / not met, never asserted): (c)/min(a,b) >= 0.8, (c)/(d) >= 10,
RSS growth over the memory jobs < 5 %, p95 of GET /api/v1/jobs/<id> < 20 ms.

Results: printed, and written to benchmarks/results/score_throughput-<timestamp>.json/.md and
benchmarks/results/score_throughput-latest.json. The JPEG catalog is made once under
benchmarks/.cache/ and reused.

    python benchmarks/score_throughput.py            # full run (2,000 images; ~5-10 min on 2 cores)
    python benchmarks/score_throughput.py --quick    # smaller, to check it works
    python benchmarks/score_throughput.py --backend embedded   # SQLite + filesystem broker

The backend, the run's environment, LocalStack, CPU accounting and the results files are
benchmarks/common.py's (shared with train_throughput.py): the postgres backend, the default when
127.0.0.1:5432 and Redis answer, creates a fresh database imgq_bench_<pid> and drops it at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
from common import (CATALOG_DIR, BenchRun, CpuWatch, add_backend_args, add_run_args, catalog_rows, child_pids,
                    ensure_catalog, log, md_row, md_table_head, new_parser, parse_ts, print_summary, verdict,
                    wait_final, wait_for_quiet, write_manifest)

MODEL_NAME = "bench-vgg60"
INPUT_SIZE = 60

TARGETS = {
    "e2e_vs_min_ab": (">=", 0.8),
    "e2e_vs_naive": (">=", 10.0),
    "worker_rss_growth_pct": ("<", 5.0),
    "job_get_p95_ms": ("<", 20.0),
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a smaller run to check the benchmark works (300 images, 5 memory jobs)")
    p.add_argument("--images", type=int, help="catalog images in the end-to-end job (default 2000; --quick 300)")
    add_backend_args(p)
    p.add_argument("--batch-sizes", default="16,32,64,128", help="batch sizes for (a)")
    p.add_argument("--naive-images", type=int, help="images in the naive loop (d) (default 200; --quick 60)")
    p.add_argument("--memory-jobs", type=int, help="consecutive jobs for (e) (default 20; --quick 5)")
    p.add_argument("--memory-job-images", type=int, help="images per memory job (default 200; --quick 100)")
    p.add_argument("--latency-requests", type=int,
                   help="minimum GET /jobs/<id> samples while a job runs for (f) (default 300; --quick 100)")
    p.add_argument("--e2e-runs", type=int, help="score jobs timed for (c), median reported (default 5; --quick 2)")
    add_run_args(p)
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (300 if q else 2000)
    args.naive_images = args.naive_images or (60 if q else 200)
    args.memory_jobs = args.memory_jobs or (5 if q else 20)
    args.memory_job_images = args.memory_job_images or (100 if q else 200)
    args.latency_requests = args.latency_requests or (100 if q else 300)
    args.e2e_runs = max(1, args.e2e_runs or (2 if q else 5))
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.model_seconds = 1.5 if q else 4.0  # timed seconds per batch size in (a)
    if args.images < 1 or args.memory_job_images < 1:
        p.error("--images and --memory-job-images must be positive")
    return args


# --------------------------------------------------------------------------- manifests


MANIFEST_DIR: Path | None = None  # set in main(): a data root inside the run's temporary IMGQ_HOME


def subset_manifest(name: str, rows: list[list[str]]) -> str:
    """Write a manifest of `rows` (absolute image paths into the catalog) in the run's own manifest folder,
    so the cached catalog is never modified; returns its path relative to that data root."""
    assert MANIFEST_DIR is not None
    return write_manifest(MANIFEST_DIR, name, rows)


# --------------------------------------------------------------------------- model


def register_model(store: Path):
    """Build vgg_regressor(60), save it, import it as MODEL_NAME (production). Returns (keras model, version)."""
    from shared import model_registry as registry
    from shared.architectures import vgg_regressor
    from shared.db import session_scope

    model = vgg_regressor(INPUT_SIZE)
    path = store.parent / "bench" / f"vgg_regressor_{INPUT_SIZE}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    sig = registry.Signature(task="regression", input_height=INPUT_SIZE, input_width=INPUT_SIZE,
                             output_names=["pageviews"], target_transform={"kind": "log1p"})
    with session_scope() as session:
        version = registry.import_model(session, path, MODEL_NAME, sig, store, promote=True,
                                        description="score_throughput benchmark: untrained VGG-style regressor")
        session.flush()
        session.expunge(version)
    return model, version


# --------------------------------------------------------------------------- (a) (b) (d)


def bench_model(loaded, inputs, batch_sizes: list[int], seconds: float, rounds: int = 3) -> dict:
    """Images/s per batch size: best of `rounds` rounds, the batch sizes interleaved in each round,
    so a burst of load from elsewhere on the machine does not sink one batch size alone."""
    import numpy as np

    batches = {}
    for bs in batch_sizes:
        reps = -(-bs // len(inputs))
        batches[bs] = np.ascontiguousarray(np.concatenate([inputs] * reps)[:bs], dtype=np.float32)
        for _ in range(5):  # trace + warm up
            loaded.predict(batches[bs])
    measured: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
    for _ in range(rounds):
        for bs, batch in batches.items():
            n_batches, t0 = 0, time.perf_counter()
            while True:
                loaded.predict(batch)
                n_batches += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds / rounds and n_batches >= 5:
                    break
            measured[bs].append(n_batches * bs / elapsed)
    out = {}
    for bs, rates in measured.items():
        out[bs] = round(max(rates), 1)
        log(f"(a) batch {bs:>4}: {out[bs]:8.1f} images/s (rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    return out


def bench_pipeline(loaded, rows: list[list[str]], s) -> dict:
    """Extra: worker.scoring.score_items in this process with no database and no queue (no-op callbacks).

    Separates the decode/predict pipeline from the job machinery around it (claim, DB writes, broker)."""
    from worker.scoring import ScoreOptions, score_items

    items = [(r[0], str(CATALOG_DIR / r[1])) for r in rows]
    opts = ScoreOptions(roots=(CATALOG_DIR.parent,), batch_size=s.batch_size, max_pixels=s.max_image_pixels,
                        max_bytes=s.max_image_bytes, threads=s.decode_threads, use_cache=False)
    count = [0]

    def write(results, cache_rows):
        count[0] += sum(r["status"] == "ok" for r in results)

    score_items(items[: 2 * s.batch_size], loaded, opts, lambda h: {}, write)  # warm up
    count[0] = 0
    t0 = time.perf_counter()
    score_items(items, loaded, opts, lambda h: {}, write)
    elapsed = time.perf_counter() - t0
    rate = count[0] / elapsed
    log(f"(extra) score_items in-process, no DB/queue: {rate:.1f} images/s ({count[0]} ok in {elapsed:.2f}s)")
    return {"images_per_s": round(rate, 1), "images": count[0], "seconds": round(elapsed, 3)}


def bench_decode(blobs: list[bytes], prep, threads: int, max_pixels: int) -> dict:
    from shared.imaging import load_for_model

    def one(data):
        return load_for_model(data, prep, max_pixels=max_pixels)[0]

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-decode") as pool:
        list(pool.map(one, blobs[: min(len(blobs), 64)]))  # warm up
        t0 = time.perf_counter()
        arrays = list(pool.map(one, blobs))
        elapsed = time.perf_counter() - t0
    rate = len(blobs) / elapsed
    log(f"(b) decode+resize: {rate:.1f} images/s ({len(blobs)} images, {threads} threads, {elapsed:.2f}s)")
    return {"images_per_s": round(rate, 1), "images": len(blobs), "threads": threads,
            "seconds": round(elapsed, 3), "arrays": arrays}


def bench_naive(model, paths: list[Path], prep, max_pixels: int) -> dict:
    from shared.imaging import load_for_model

    def one(path):
        x, _ = load_for_model(path.read_bytes(), prep, max_pixels=max_pixels)
        return model.predict(x[None], verbose=0)

    for p in paths[:3]:  # builds keras' predict function
        one(p)
    t0 = time.perf_counter()
    for p in paths:
        one(p)
    elapsed = time.perf_counter() - t0
    rate = len(paths) / elapsed
    log(f"(d) naive loop: {rate:.1f} images/s ({len(paths)} images, {elapsed:.2f}s)")
    return {"images_per_s": round(rate, 2), "images": len(paths), "seconds": round(elapsed, 3)}


# --------------------------------------------------------------------------- processes (/proc or psutil)


def _status_kb(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Name"):
                out[key] = value.strip() if key == "Name" else int(value.split()[0])
    except OSError:
        pass
    return out


def _uses_tensorflow(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return any("tensorflow" in line for line in fh)
    except OSError:
        return False


def worker_children(worker_pid: int) -> list[dict]:
    """The `imgq worker` process's children: the prefork pool process(es) and, with -B, the beat process."""
    out = []
    for pid in child_pids(worker_pid):
        st = _status_kb(pid)
        if not st:
            continue
        out.append({"pid": pid, "name": st.get("Name"), "rss_kb": st.get("VmRSS"), "hwm_kb": st.get("VmHWM"),
                    "pool": _uses_tensorflow(pid)})
    return out


# --------------------------------------------------------------------------- HTTP helpers


def submit(session, stack, manifest_rel: str) -> tuple[dict, float]:
    t0 = time.time()
    resp = session.post(stack.url("/api/v1/jobs/score"), timeout=120,
                        json={"model": MODEL_NAME, "manifest": manifest_rel, "id_column": "id",
                              "image_column": "image", "cache": False})
    if resp.status_code != 202:
        raise RuntimeError(f"submit failed: {resp.status_code} {resp.text[:500]}")
    return resp.json(), t0


def last_result_at(job_id: str) -> float | None:
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.tables import Result

    with session_scope() as s:
        t = s.scalar(select(func.max(Result.created_at)).where(Result.job_id == job_id))
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def chunk_breakdown(job_id: str, t_submit: float, finished: float | None) -> dict:
    """Where a job's wall time went, from its chunk rows: before the first chunk started, inside
    chunks, between chunks (queue + claim), and from the last chunk to the job's finished_at."""
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.tables import Chunk

    def ts(t):
        return None if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()

    with session_scope() as s:
        spans = sorted((ts(a), ts(b)) for a, b in s.execute(
            select(Chunk.started_at, Chunk.finished_at).where(Chunk.job_id == job_id)))
    spans = [(a, b) for a, b in spans if a is not None and b is not None]
    if not spans:
        return {}
    inside = sum(b - a for a, b in spans)
    between = sum(max(0.0, spans[i + 1][0] - spans[i][1]) for i in range(len(spans) - 1))
    return {"chunks": len(spans), "before_first_chunk_s": round(spans[0][0] - t_submit, 3),
            "inside_chunks_s": round(inside, 3), "between_chunks_s": round(between, 3),
            "after_last_chunk_s": round(finished - max(b for _, b in spans), 3) if finished else None,
            "mean_chunk_s": round(inside / len(spans), 3)}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_summary(samples_s: list[float]) -> dict:
    ms = [x * 1000 for x in samples_s]
    if not ms:
        return {"requests": 0}
    return {"requests": len(ms), "p50_ms": round(percentile(ms, 0.5), 2), "p95_ms": round(percentile(ms, 0.95), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(statistics.fmean(ms), 2)}


# --------------------------------------------------------------------------- stack phases


def run_e2e(session, stack, manifest_rel: str, n: int, timeout: float) -> dict:
    job, t_submit = submit(session, stack, manifest_rel)
    t_accepted = time.time()
    log(f"(c) job {job['id']}: {job['progress']['total']} items in {job['chunks']['total']} chunks "
        f"(POST took {1000 * (t_accepted - t_submit):.0f} ms)")
    final = wait_final(session, stack, job["id"], timeout)
    t_seen = time.time()
    p = final["progress"]
    finished = parse_ts(final["timings"]["finished_at"])
    started = parse_ts(final["timings"]["started_at"])
    last_row = last_result_at(job["id"])
    end = finished or last_row or t_seen
    seconds = end - t_submit
    rate = p["succeeded"] / seconds if seconds > 0 else None
    breakdown = chunk_breakdown(job["id"], t_submit, finished)
    log(f"(c) {final['status']}: {p['succeeded']} scored, {p['failed']} failed in {seconds:.2f}s "
        f"submit->finished_at = {rate:.1f} images/s (job's own rate since started_at: {p['images_per_second']})")
    if breakdown:
        log(f"    {breakdown['before_first_chunk_s']:.2f}s before the first chunk, {breakdown['inside_chunks_s']:.2f}s "
            f"in {breakdown['chunks']} chunks, {breakdown['between_chunks_s']:.2f}s between chunks, "
            f"{breakdown['after_last_chunk_s']}s after the last")
    return {
        "job_id": job["id"], "status": final["status"], "images": n, "succeeded": p["succeeded"],
        "failed": p["failed"], "from_cache": p["from_cache"], "chunks": final["chunks"]["total"],
        "submit_http_ms": round(1000 * (t_accepted - t_submit), 1),
        "seconds_submit_to_finished": round(seconds, 3),
        "seconds_submit_to_started": round(started - t_submit, 3) if started else None,
        "seconds_submit_to_last_result": round(last_row - t_submit, 3) if last_row else None,
        "seconds_submit_to_seen_final": round(t_seen - t_submit, 3),
        "images_per_s": round(rate, 1) if rate else None,
        "job_reported_images_per_s": p["images_per_second"],
        "breakdown": breakdown,
    }


def run_latency(session, stack, rows: list[list[str]], n_items: int, min_requests: int, timeout: float,
                gap: float = 0.01, max_jobs: int = 5) -> dict:
    """Poll GET /api/v1/jobs/<id> in a loop while score jobs run, until `min_requests` samples fell
    while a job was running (a further job is submitted if one ends too soon)."""
    reps = -(-n_items // len(rows))
    manifest = subset_manifest(f"bench-latency-{n_items}",
                               [[f"{r[0]}-{k}", r[1], r[2]] for k in range(reps) for r in rows][:n_items])
    running, queued, statuses, job_ids = [], [], {}, []
    for _ in range(max_jobs):
        job, _ = submit(session, stack, manifest)
        job_ids.append(job["id"])
        job_url = stack.url(f"/api/v1/jobs/{job['id']}")
        deadline = time.time() + timeout
        while True:
            t0 = time.perf_counter()
            r = session.get(job_url, timeout=30)
            dt = time.perf_counter() - t0
            status = r.json()["status"]
            statuses[status] = statuses.get(status, 0) + 1
            if status == "running":
                running.append(dt)
            elif status == "queued":
                queued.append(dt)
            else:
                break
            if time.time() > deadline:
                raise TimeoutError(f"latency job {job['id']} did not finish in {timeout}s")
            time.sleep(gap)
        if len(running) >= min_requests:
            break
    idle = []  # the same request with no job running, for comparison
    for _ in range(100):
        t0 = time.perf_counter()
        session.get(job_url, timeout=30).raise_for_status()
        idle.append(time.perf_counter() - t0)
        time.sleep(gap)
    out = {"job_ids": job_ids, "items_per_job": n_items, "poll_gap_ms": gap * 1000,
           "while_running": latency_summary(running), "while_queued": latency_summary(queued),
           "idle": latency_summary(idle), "responses_by_status": statuses}
    w = out["while_running"]
    if w["requests"] < min_requests:
        out["note"] = f"only {w['requests']} requests fell while a job was running (wanted {min_requests})"
    log(f"(f) GET /api/v1/jobs/<id> while running: {w.get('requests')} requests over {len(job_ids)} job(s), "
        f"p50 {w.get('p50_ms')} ms, p95 {w.get('p95_ms')} ms, max {w.get('max_ms')} ms; "
        f"idle p50 {out['idle'].get('p50_ms')} / p95 {out['idle'].get('p95_ms')} ms")
    return out


def run_memory(session, stack, rows: list[list[str]], jobs: int, per_job: int, timeout: float) -> dict:
    series = []
    for k in range(jobs):
        start = (k * per_job) % len(rows)
        subset = (rows[start:] + rows[:start])[:per_job] if per_job <= len(rows) else \
            (rows * (-(-per_job // len(rows))))[:per_job]
        # (if per_job > catalog, ids repeat: make them unique)
        subset = [[f"{r[0]}-{i}", r[1], r[2]] for i, r in enumerate(subset)]
        manifest = subset_manifest(f"bench-mem-{k:02d}", subset)
        job, t0 = submit(session, stack, manifest)
        final = wait_final(session, stack, job["id"], timeout, poll=0.2)
        elapsed = time.time() - t0
        kids = worker_children(stack.worker.pid)
        pool = [c for c in kids if c["pool"]] or kids
        rss = sum(c["rss_kb"] or 0 for c in pool)
        hwm = sum(c["hwm_kb"] or 0 for c in pool)
        series.append({"job": k + 1, "status": final["status"], "succeeded": final["progress"]["succeeded"],
                       "seconds": round(elapsed, 2), "pool_pids": [c["pid"] for c in pool],
                       "pool_rss_kb": rss, "pool_hwm_kb": hwm,
                       "main_rss_kb": _status_kb(stack.worker.pid).get("VmRSS"),
                       "children": kids})
        log(f"(e) job {k + 1:>2}/{jobs}: {final['status']} {final['progress']['succeeded']}/{per_job} in "
            f"{elapsed:.1f}s; pool RSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB) pids {[c['pid'] for c in pool]}")
    first, last = series[0], series[-1]
    growth = 100.0 * (last["pool_rss_kb"] - first["pool_rss_kb"]) / first["pool_rss_kb"] if first["pool_rss_kb"] else None
    return {
        "jobs": jobs, "images_per_job": per_job,
        "rss_after_first_mib": round(first["pool_rss_kb"] / 1024, 1),
        "rss_after_last_mib": round(last["pool_rss_kb"] / 1024, 1),
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "peak_hwm_mib": round(max(s["pool_hwm_kb"] for s in series) / 1024, 1),
        "pool_pid_changed": len({tuple(s["pool_pids"]) for s in series}) > 1,
        "memory_source": "psutil" if _has_psutil() else "/proc/<pid>/status",
        "series": series,
    }


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    a, b, c, d, e, f = (report.get(k, {}) for k in ("model", "decode", "e2e", "naive", "memory", "latency"))
    extra = report.get("pipeline_no_db", {})
    t = report.get("targets", {})
    run = report["run"]

    row = partial(md_row, t)
    settings = run.get("settings", {})
    lines = [
        f"# score_throughput — {run['timestamp']}",
        "",
        f"backend {run['backend']}, {run['cpus']} CPUs, images {run['images']}, "
        f"batch {settings.get('batch_size')}, decode threads {settings.get('decode_threads')}, "
        f"chunk {settings.get('chunk_size')}, commit {run.get('git_commit', '?')}"
        f"{' (quick)' if run['quick'] else ''}, total {run.get('seconds_total', '?')} s",
    ]
    lines += md_table_head(run)
    if a:
        lines.append(row(f"(a) model, best batch {a['best_batch_size']}", f"{a['best_images_per_s']:.1f} img/s", a))
        lines.append(row("(a) by batch size", ", ".join(f"{k}: {v:.0f}" for k, v in a["images_per_s"].items())))
    if b:
        lines.append(row(f"(b) decode+resize ({b['threads']} threads)", f"{b['images_per_s']:.1f} img/s", b))
    if c:
        lines.append(row(f"(c) end to end, {c['images']} images ({c.get('statistic', '1 job')})",
                         f"{c['images_per_s']} img/s", c))
    if extra:
        lines.append(row("(extra) score_items in-process, no DB/queue", f"{extra['images_per_s']:.1f} img/s", extra))
    if "serial_bound_images_per_s" in report:
        lines.append(row("(extra) serial bound 1/(1/a+1/b)", f"{report['serial_bound_images_per_s']:.1f} img/s"))
    if d:
        lines.append(row("(d) naive loop", f"{d['images_per_s']:.1f} img/s", d))
    if "e2e_vs_min_ab" in t:
        lines.append(row("(c) / min(a, b)", t["e2e_vs_min_ab"]["value"], None, "e2e_vs_min_ab"))
    if "e2e_vs_naive" in t:
        lines.append(row("(c) / (d)", t["e2e_vs_naive"]["value"], None, "e2e_vs_naive"))
    if e:
        lines.append(row(f"(e) pool RSS after job 1 / job {e['jobs']} (peak)",
                         f"{e['rss_after_first_mib']} / {e['rss_after_last_mib']} MiB ({e['peak_hwm_mib']})", e))
        lines.append(row("(e) RSS growth, %", e["rss_growth_pct"], None, "worker_rss_growth_pct"))
    if f:
        w = f["while_running"]
        lines.append(row(f"(f) GET job while running, p95 ms ({w.get('requests')} req)", w.get("p95_ms"), f,
                         "job_get_p95_ms"))
        lines.append(row("(f) p50 / max ms; idle p50 / p95 ms",
                         f"{w.get('p50_ms')} / {w.get('max_ms')}; {f['idle'].get('p50_ms')} / {f['idle'].get('p95_ms')}"))
    if report.get("errors"):
        lines += ["", "Errors:", *[f"- {x}" for x in report["errors"]]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = BenchRun("score_throughput", args, "imgq-bench-")
    global MANIFEST_DIR
    MANIFEST_DIR = bench.manifest_dir
    report: dict = {"errors": []}
    failed_early = bench.describe({}, {"settings": {"batch_size": "?", "decode_threads": "?", "chunk_size": "?"}})
    with bench.measuring(report, failed_early):
        s = bench.setup_backend()
        report["run"] = bench.describe({}, {
            "imgq_preload": os.environ.get("IMGQ_PRELOAD", "(unset: 1)"),
            "settings": {"batch_size": s.batch_size, "decode_threads": s.decode_threads,
                         "chunk_size": s.chunk_size, "model_cache_size": s.model_cache_size},
        }, s)

        report["run"]["quiet"] = wait_for_quiet(args.wait_idle)
        needed = max(args.images, args.naive_images, min(args.memory_job_images, args.images))
        ensure_catalog(needed)
        rows = catalog_rows()
        e2e_rows = rows[: args.images]

        log("registering the model (vgg_regressor(60)) ...")
        keras_model, version = register_model(s.model_store)
        import tensorflow as tf

        report["run"]["tensorflow"] = tf.__version__
        from worker.model_cache import LoadedModel

        loaded = LoadedModel(version, keras_model)
        prep = loaded.preprocessing

        # (b) first: its arrays feed (a) as real pre-decoded tensors
        blobs = [(CATALOG_DIR / r[1]).read_bytes() for r in e2e_rows]
        w = CpuWatch()
        b = bench_decode(blobs, prep, s.decode_threads, s.max_image_pixels)
        b["cpu"] = w.stop()
        arrays = b.pop("arrays")
        import numpy as np

        inputs = np.stack(arrays[: max(args.batch_sizes)])
        del blobs, arrays
        report["decode"] = b

        w = CpuWatch()
        a = bench_model(loaded, inputs, args.batch_sizes, args.model_seconds)
        best = max(a, key=a.get)
        report["model"] = {"images_per_s": a, "best_batch_size": best, "best_images_per_s": a[best],
                           "at_configured_batch_size": a.get(s.batch_size), "cpu": w.stop()}

        w = CpuWatch()
        report["pipeline_no_db"] = bench_pipeline(loaded, e2e_rows, s)
        report["pipeline_no_db"]["cpu"] = w.stop()

        w = CpuWatch()
        d = bench_naive(keras_model, [CATALOG_DIR / r[1] for r in rows[: args.naive_images]], prep,
                        s.max_image_pixels)
        d["cpu"] = w.stop()
        report["naive"] = d

        # ---- the real stack
        stack, http, t0 = bench.start_stack()
        warm_n = min(len(rows), 2 * s.batch_size)
        warm = subset_manifest(f"bench-warm-{warm_n}", rows[:warm_n])
        job, _ = submit(http, stack, warm)
        wait_final(http, stack, job["id"], timeout=300)
        log(f"stack up and warm (web + worker, a {warm_n}-image warm-up job) in {time.perf_counter() - t0:.1f}s")

        manifest = subset_manifest(f"bench-e2e-{args.images}", e2e_rows)
        job_timeout = max(300.0, args.images / 5)
        w = CpuWatch()
        runs = [run_e2e(http, stack, manifest, args.images, job_timeout) for _ in range(args.e2e_runs)]
        e2e_cpu = w.stop()
        runs_ok = [r for r in runs if r["images_per_s"]]
        median = sorted(runs_ok, key=lambda r: r["images_per_s"])[len(runs_ok) // 2]
        report["e2e"] = {**median, "statistic": f"median of {len(runs)} jobs",
                         "all_images_per_s": [r["images_per_s"] for r in runs], "runs": runs,
                         "cpu": e2e_cpu}
        log(f"(c) median of {len(runs)} jobs: {median['images_per_s']} images/s")

        # (f) needs a job that runs long enough for min_requests polls (~20 ms each)
        rate = median["images_per_s"] or 100.0
        n_latency = max(args.images, int(rate * args.latency_requests * 0.03))
        w = CpuWatch()
        report["latency"] = run_latency(http, stack, rows[: args.images], n_latency, args.latency_requests,
                                        max(300.0, n_latency / 5))
        report["latency"]["cpu"] = w.stop()
        w = CpuWatch()
        report["memory"] = run_memory(http, stack, rows, args.memory_jobs, args.memory_job_images,
                                      timeout=max(120.0, args.memory_job_images / 2))
        report["memory"]["cpu"] = w.stop()

    # ---- ratios and targets (figures only: a missed target never fails the run)
    targets = {}
    a_best = report.get("model", {}).get("best_images_per_s")
    b_rate = report.get("decode", {}).get("images_per_s")
    c_rate = report.get("e2e", {}).get("images_per_s")
    d_rate = report.get("naive", {}).get("images_per_s")
    if a_best and b_rate and c_rate:
        targets["e2e_vs_min_ab"] = verdict(TARGETS, "e2e_vs_min_ab", round(c_rate / min(a_best, b_rate), 3))
        # on a shared CPU the decoder and the model compete: the serial bound 1/(1/a + 1/b) is informative
        report["serial_bound_images_per_s"] = round(1 / (1 / a_best + 1 / b_rate), 1)
        report["e2e_vs_serial_bound"] = round(c_rate / report["serial_bound_images_per_s"], 3)
    if c_rate and d_rate:
        targets["e2e_vs_naive"] = verdict(TARGETS, "e2e_vs_naive", round(c_rate / d_rate, 2))
    if report.get("memory", {}).get("rss_growth_pct") is not None:
        targets["worker_rss_growth_pct"] = verdict(TARGETS, "worker_rss_growth_pct",
                                                   report["memory"]["rss_growth_pct"])
    if report.get("latency", {}).get("while_running", {}).get("p95_ms") is not None:
        targets["job_get_p95_ms"] = verdict(TARGETS, "job_get_p95_ms",
                                            report["latency"]["while_running"]["p95_ms"])
    report["targets"] = targets

    text = markdown(report)
    print_summary(text, targets)
    if "serial_bound_images_per_s" in report:
        print(f"  (info) serial bound 1/(1/a+1/b) = {report['serial_bound_images_per_s']} img/s; "
              f"(c) reaches {report['e2e_vs_serial_bound']:.2f} of it")
    bench.write_report(report, text)
    return bench.close()


if __name__ == "__main__":
    sys.exit(main())
