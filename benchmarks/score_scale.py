#!/usr/bin/env python
"""Scale benchmark: a score job's cost must grow linearly with its size (issue 10, first part and "Memory and
scale").

One run, on this machine, with `imgq serve` + `imgq worker --cpu` (LocalStack) and the demo-size model
(worker.training.architectures.vgg_regressor(60), untrained, imported through shared.services.model_registry),
every job a manifest submitted over HTTP with "cache": false:

  (a) a small job (default 5,000 items) and a large one (default 100,000): images/s end to end (POST ->
      the job's finished_at), time from the POST to the 202, and the chunk time by tenth (the job's chunks
      read from the database afterwards, ordered by started_at, split into ten consecutive tenths: the
      median finished_at - started_at per tenth);
  (b) the sizes of results, job_items, chunks and score_cache after the large job (pg_total_relation_size,
      pg_relation_size, pg_indexes_size and each index), scaled to a million rows (PostgreSQL only);
  (c) the large manifest's submission as the web front sees it: the VmRSS of the web process tree
      (gunicorn master + workers) before the POST, its peak while the POST runs (sampled every 20 ms) and
      after the 202;
  (d) the large job's results CSV (GET /api/v1/jobs/<id>/results?format=csv) read with requests'
      stream=True: rows/s from the request to the last byte, median of --csv-runs reads;
  (e) a --million-item job (default 1,000,000) over the same photos with the score cache on, so bookkeeping,
      not the model, is the work (every photo is in the cache after (a)): the 202 and the web RSS (the manifest,
      over IMGQ_INLINE_MANIFEST_BYTES, is answered `preparing` and read into items by the maintenance worker),
      the seconds until its first chunk starts, items/s end to end and chunk time by tenth (flat), the database
      bytes each item adds (results, job_items, chunks), and the time and the web's peak RSS to export its results
      as CSV and as Parquet (GET /api/v1/jobs/<id>/results?format=csv|parquet, streamed);
  (f) the 202 of an --accept-rows manifest (default 10,000,000) and the web RSS, then --accept-wait seconds of
      the maintenance worker reading it (rows/s), after which the job is canceled, not scored.

Items reuse --files (default 2,000) distinct photo-size JPEGs (about 600x800, benchmarks/photo_catalog.py: crops
of the photos bundled with scikit-learn and scikit-image) under distinct item ids; they are made once under
benchmarks/.cache/catalogs/ and shared with score_throughput.py.

Targets (reported as met / not met, never asserted): chunk time last tenth / first tenth <= 1.2 (large
job), images/s large / small >= 0.9, large manifest's 202 < 3 s, web RSS growth < 50 MB (peak during the
submission), results CSV >= 50,000 rows/s, the 202 of the --million job and of the --accept-rows manifest < 1 s,
chunk time last / first tenth of the --million job <= 1.2.

    python benchmarks/score_scale.py            # 100,000 and 5,000 items, 1M cached, a 10M-row 202 (~20 min)
    python benchmarks/score_scale.py --quick    # 20,000 and 2,000 items, 100,000 cached, a 1M-row 202
    python benchmarks/score_scale.py --items 3000 --small 1000 --million 20000 --accept-rows 100000  # a check

Backend, environment, LocalStack and results files are benchmarks/common.py's; the photos, manifests and model
are scale_inputs.py's, the /proc probes (memory, CPU of this run's PostgreSQL backends) process_probes.py's.
Results go to benchmarks/results/score_scale-<timestamp>.json/.md and score_scale-latest.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
import common
from common import (
    BenchRun,
    add_backend_args,
    add_run_args,
    log,
    md_row,
    md_table_head,
    new_parser,
    parse_ts,
    print_summary,
    verdict,
    wait_for_quiet,
)
from process_probes import PeakRss, PhaseCpu, memory_kb, tree_pids
from scale_inputs import MODEL_NAME, PHOTO_SIZE, ensure_photos, items_manifest, register_model

TABLES = ("results", "job_items", "chunks", "score_cache")
MB = 1024 * 1024

TARGETS = {
    "chunk_last_vs_first_tenth": ("<=", 1.2),
    "large_vs_small_images_per_s": (">=", 0.9),
    "manifest_202_s": ("<", 3.0),
    "web_rss_growth_mb": ("<", 50.0),
    "csv_rows_per_s": (">=", 50000.0),
    "million_row_202_s": ("<", 1.0),  # the (e) job's 202: its manifest is read off the request thread
    "ten_million_row_202_s": ("<", 1.0),
    "million_chunk_last_vs_first_tenth": ("<=", 1.2),  # (e): items/s flat by tenth, bookkeeping as the work
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--items", type=int, help="items in the large job (default 100000; --quick 20000)")
    p.add_argument("--small", type=int, help="items in the small job (default 5000; --quick 2000)")
    p.add_argument("--quick", action="store_true", help="20,000 and 2,000 items")
    p.add_argument("--files", type=int, default=2000, help="distinct photo-size JPEGs the items reuse (default 2000)")
    p.add_argument("--csv-runs", type=int, default=3, help="reads of the large job's results CSV (median)")
    p.add_argument("--million", type=int,
                   help="items in the cached job (e) (default 1,000,000; --quick 100,000; 0 skips it)")
    p.add_argument("--accept-rows", type=int,
                   help="rows of the manifest (f) whose 202 is timed, read for up to --accept-wait s, then canceled "
                        "(default 10,000,000; --quick 1,000,000; 0 skips it)")
    p.add_argument("--accept-wait", type=float, default=60.0, help="seconds (f) lets the manifest be read (60)")
    p.add_argument("--job-timeout", type=float, help="seconds to wait for each job (default max(600, items/20))")
    add_backend_args(p)
    add_run_args(p)
    args = p.parse_args(argv)
    args.items = args.items or (20000 if args.quick else 100000)
    args.small = args.small or (2000 if args.quick else 5000)
    if args.million is None:
        args.million = 100_000 if args.quick else 1_000_000
    if args.accept_rows is None:
        args.accept_rows = 1_000_000 if args.quick else 10_000_000
    args.images = args.items  # what common.BenchRun logs and records
    if min(args.items, args.small, args.files, args.csv_runs) < 1:
        p.error("--items, --small, --files and --csv-runs must be positive")
    return args


# --------------------------------------------------------------------------- a job, end to end


def submit(http, stack, manifest_rel: str, cache: bool = False) -> dict:
    """POST the manifest job, sampling the web tree's memory meanwhile; the 202's body and timings."""
    sampler = PeakRss(stack.web.pid)
    sampler.start()
    t_submit = time.time()
    resp = http.post(stack.url("/api/v1/jobs/score"), timeout=300,
                     json={"model": MODEL_NAME, "manifest": manifest_rel, "id_column": "id", "image_column": "image",
                           "cache": cache})
    t_accepted = time.time()
    web = sampler.stop()
    if resp.status_code != 202:
        raise RuntimeError(f"submit failed: {resp.status_code} {resp.text[:500]}")
    return {"job": resp.json(), "t_submit": t_submit, "accepted_s": round(t_accepted - t_submit, 3), "web": web}


def wait_done(http, stack, job_id: str, timeout: float, every: float = 60.0) -> dict:
    """Poll the job once a second until it is final, logging its progress every `every` s."""
    deadline, last_log = time.time() + timeout, time.time()
    while True:
        job = http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=60).json()
        if job["status"] not in ("preparing", "queued", "running"):
            return job
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s: {job.get('progress')}")
        if any(p.poll() is not None for p in stack.processes()):
            raise RuntimeError(f"a process of the stack exited; logs in {stack.log_dir}")
        if time.time() - last_log >= every:
            p = job["progress"]
            log(f"    job {job_id[:8]}: {p['done']}/{p['total']} done, {p['images_per_second']} images/s so far")
            last_log = time.time()
        time.sleep(1.0)


def chunk_spans(job_id: str) -> list[tuple[float, float, int]]:
    """(started_at, finished_at, item_count) of the job's finished chunks, by started_at."""
    from sqlalchemy import select

    from shared.core.db import session_scope
    from shared.core.tables import Chunk

    with session_scope() as s:
        rows = s.execute(select(Chunk.started_at, Chunk.finished_at, Chunk.item_count)
                         .where(Chunk.job_id == job_id)).all()
    return sorted((parse_ts(a), parse_ts(b), n) for a, b, n in rows if a is not None and b is not None)


def by_tenth(spans: list[tuple[float, float, int]]) -> list[dict]:
    """Ten consecutive groups of chunks (sizes differing by at most one): median, mean and max chunk seconds,
    and images/s over the group's wall span."""
    out, start = [], 0
    for k in range(10):
        size = len(spans) // 10 + (1 if k < len(spans) % 10 else 0)
        group, start = spans[start:start + size], start + size
        if not group:
            continue
        seconds = [b - a for a, b, _ in group]
        wall = max(b for _, b, _ in group) - group[0][0]
        out.append({"tenth": k + 1, "chunks": len(group), "median_s": round(statistics.median(seconds), 3),
                    "mean_s": round(statistics.fmean(seconds), 3), "max_s": round(max(seconds), 3),
                    "images_per_s": round(sum(n for *_, n in group) / wall, 1) if wall > 0 else None})
    return out


def run_job(http, stack, manifest_rel: str, n: int, timeout: float, label: str, cache: bool = False) -> dict:
    w = PhaseCpu()
    sent = submit(http, stack, manifest_rel, cache)
    job_id = sent["job"]["id"]
    log(f"{label}: job {job_id}, {n} items in {sent['job']['chunks']['total']} chunks; 202 after "
        f"{sent['accepted_s']:.2f}s, web RSS {sent['web']['rss_before_mb']} -> peak {sent['web']['rss_peak_mb']} MB")
    final = wait_done(http, stack, job_id, timeout)
    p = final["progress"]
    seconds = (parse_ts(final["timings"]["finished_at"]) or time.time()) - sent["t_submit"]
    tenths = by_tenth(chunk_spans(job_id))
    first, last = (tenths[0]["median_s"], tenths[-1]["median_s"]) if tenths else (None, None)
    out = {"job_id": job_id, "t_submit": sent["t_submit"], "status_at_202": sent["job"]["status"],
           "status": final["status"], "items": n, "succeeded": p["succeeded"], "failed": p["failed"],
           "chunks": final["chunks"]["total"], "accepted_s": sent["accepted_s"], "web": sent["web"],
           "seconds_submit_to_finished": round(seconds, 2),
           "images_per_s": round(p["succeeded"] / seconds, 1) if seconds > 0 and p["succeeded"] else None,
           "tenths": tenths, "last_vs_first_tenth": round(last / first, 3) if first else None,
           "worker_tree": {k: round(v / 1024, 1) for k, v in memory_kb(tree_pids(stack.worker.pid)).items()},
           "cpu": w.stop()}
    log(f"{label}: {final['status']}, {p['succeeded']} scored, {p['failed']} failed in {seconds:.1f}s = "
        f"{out['images_per_s']} images/s; median chunk s by tenth {[t['median_s'] for t in tenths]}")
    if final["status"] != "succeeded" or p["failed"]:
        raise RuntimeError(f"{label}: job {job_id} ended {final['status']} with {p['failed']} failed items: "
                           f"{final.get('error')}")
    return out


def accept_only(http, stack, manifest_rel: str, rows: int, wait: float) -> dict:
    """(f) the 202 of a `rows`-row manifest and the web RSS meanwhile, then up to `wait` seconds of the maintenance
    worker reading it into items (rows read per second); the job is then canceled, its items never scored."""
    sent = submit(http, stack, manifest_rel)
    job_id, deadline = sent["job"]["id"], time.time() + wait
    log(f"(f) {rows:,} rows: 202 after {sent['accepted_s']:.2f}s with the job {sent['job']['status']}, web RSS "
        f"{sent['web']['rss_before_mb']} -> peak {sent['web']['rss_peak_mb']} MB")
    job = sent["job"]
    while job["status"] == "preparing" and time.time() < deadline:
        time.sleep(1.0)
        job = http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=60).json()
    seconds = time.time() - sent["t_submit"]
    read = job["progress"]["rows_read"] if job["status"] == "preparing" else rows
    http.post(stack.url(f"/api/v1/jobs/{job_id}/cancel"), timeout=60)
    log(f"(f) {rows:,} rows: {job['status']} after {seconds:.1f}s ({read:,} rows read); canceled")
    return {"job_id": job_id, "rows": rows, "status_at_202": sent["job"]["status"], "accepted_s": sent["accepted_s"],
            "web": sent["web"], "status_after": job["status"], "rows_read": read, "seconds": round(seconds, 1),
            "rows_per_s": round(read / seconds) if seconds > 0 else None}


def million_job(http, stack, manifest_rel: str, n: int, timeout: float, export_runs: int) -> dict:
    """(e) an `n`-item job over the photos already scored, with the score cache on, so bookkeeping is the work: the
    202 and the web RSS, the time the job spends preparing, items/s by tenth, the database bytes each item adds
    (results, job_items, chunks), then its results exported as CSV and as Parquet (time and the web's peak RSS)."""
    from shared.core.db import session_scope

    with session_scope() as s:
        before = {t: relation_sizes(s, t) for t in TABLES}
    out = run_job(http, stack, manifest_rel, n, timeout, f"(e) {n:,} items, cache on", cache=True)
    with session_scope() as s:
        after = {t: relation_sizes(s, t) for t in TABLES}
    grown = {t: after[t]["total"] - before[t]["total"] for t in TABLES}
    out["database"] = {"bytes_per_item": round(sum(grown.values()) / n, 1),
                       "by_table_bytes_per_item": {t: round(b / n, 1) for t, b in grown.items()},
                       "mb_added": round(sum(grown.values()) / MB, 1)}
    log(f"(e) database: {out['database']['mb_added']} MB added, {out['database']['bytes_per_item']} bytes per item "
        f"({out['database']['by_table_bytes_per_item']})")
    spans = chunk_spans(out["job_id"])
    out["first_chunk_started_s"] = round(spans[0][0] - out["t_submit"], 1) if spans else None  # preparing + queue
    out["exports"] = {fmt: stream_export(http, stack, out["job_id"], fmt, export_runs) for fmt in ("csv", "parquet")}
    return out


# --------------------------------------------------------------------------- (b) table sizes, (d) results CSV


def relation_sizes(session, table: str) -> dict:
    """Rows and bytes of one table: total (with TOAST and indexes), heap, all indexes, and each index."""
    from sqlalchemy import text

    total, heap, indexes = session.execute(text(
        "SELECT pg_total_relation_size(CAST(:t AS regclass)), pg_relation_size(CAST(:t AS regclass)), "
        "pg_indexes_size(CAST(:t AS regclass))"), {"t": table}).one()
    each = dict(session.execute(text("SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
                                     "WHERE relname = :t ORDER BY indexrelname"), {"t": table}).all())
    return {"rows": session.scalar(text(f"SELECT count(*) FROM {table}")), "total": total, "heap": heap,
            "indexes": indexes, "each": each}


def table_sizes() -> dict:
    """Each table's size, and scaled to a million results (PostgreSQL only). score_cache grows with distinct
    images, not with results: it is scaled by its own rows (one per result when every image differs)."""
    from shared.core.db import session_scope

    with session_scope() as s:
        if s.get_bind().dialect.name != "postgresql":
            return {}
        raw = {table: relation_sizes(s, table) for table in TABLES}
    tables = {}
    for table, r in raw.items():
        base = r["rows"] if table == "score_cache" else raw["results"]["rows"]
        per_m = (lambda b, base=base: round(b * 1e6 / base / MB, 1)) if base else (lambda b: None)
        tables[table] = {"rows": r["rows"], "total_mb": round(r["total"] / MB, 2), "heap_mb": round(r["heap"] / MB, 2),
                         "indexes_mb": round(r["indexes"] / MB, 2),
                         "index_mb": {k: round(v / MB, 2) for k, v in r["each"].items()},
                         "per_million_results_mb": {"total": per_m(r["total"]), "heap": per_m(r["heap"]),
                                                    "indexes": per_m(r["indexes"]),
                                                    **{k: per_m(v) for k, v in r["each"].items()}}}
        log(f"(b) {table}: {r['rows']} rows, {tables[table]['total_mb']} MB in all "
            f"({tables[table]['per_million_results_mb']['total']} MB per million results)")
    totals = [v["per_million_results_mb"]["total"] for v in tables.values()]
    return {"tables": tables, "per_million_results_total_mb": round(sum(t for t in totals if t), 1)}


def read_export_once(http, stack, job_id: str, fmt: str) -> dict:
    """GET the job's results as `fmt` with stream=True; rows counted from the body (CSV: its lines less the header;
    Parquet: the file's footer, the body written to a temporary file first)."""
    import tempfile

    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    first_byte, lines, size = None, 0, 0
    with tempfile.TemporaryFile() as body, http.get(stack.url(f"/api/v1/jobs/{job_id}/results"),
                                                    params={"format": fmt}, stream=True, timeout=600) as resp:
        resp.raise_for_status()
        for block in resp.iter_content(chunk_size=1 << 16):
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            size += len(block)
            if fmt == "csv":
                lines += block.count(b"\n")
            else:
                body.write(block)
        seconds = time.perf_counter() - t0
        if fmt == "parquet":
            body.seek(0)
            rows = pq.ParquetFile(body).metadata.num_rows
        else:
            rows = lines - 1
    return {"rows": rows, "mb": round(size / MB, 2), "seconds": round(seconds, 3),
            "first_byte_s": round(first_byte or seconds, 3), "rows_per_s": round(rows / seconds)}


def stream_export(http, stack, job_id: str, fmt: str, runs: int) -> dict:
    """The median of `runs` reads of the job's results as `fmt`, and the web tree's peak RSS over them."""
    w = PhaseCpu()
    sampler = PeakRss(stack.web.pid)
    sampler.start()
    reads = [read_export_once(http, stack, job_id, fmt) for _ in range(runs)]
    web = sampler.stop()
    median = sorted(reads, key=lambda r: r["rows_per_s"])[len(reads) // 2]
    log(f"results {fmt}: {median['rows']} rows ({median['mb']} MB), {median['rows_per_s']} rows/s "
        f"(median of {runs}: {[r['rows_per_s'] for r in reads]}), first byte after {median['first_byte_s']}s; "
        f"web RSS peak {web['rss_peak_mb']} MB (+{web['peak_growth_mb']})")
    return {**median, "reads": reads, "statistic": f"median of {runs} reads", "web": web, "cpu": w.stop()}


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    run, t = report["run"], report.get("targets", {})
    small, large, csv_read = report.get("small", {}), report.get("large", {}), report.get("csv", {})
    row = partial(md_row, t)
    settings = run.get("settings", {})
    lines = [f"# score_scale — {run['timestamp']}", "",
             f"backend {run['backend']}, {run['cpus']} CPUs, {run.get('small_items')} and {run['images']} items over "
             f"{run.get('files')} JPEGs of ~{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} ({run.get('file_kb_mean')} kB mean), "
             f"model {MODEL_NAME}, cache off, chunk {settings.get('chunk_size')}, batch {settings.get('batch_size')}, "
             f"commit {run.get('git_commit', '?')}{' (quick)' if run['quick'] else ''}, "
             f"total {run.get('seconds_total', '?')} s"]
    lines += md_table_head(run)
    for part in (small, large):
        if part:
            lines.append(row(f"{part['items']:,} items: end to end", f"{part['images_per_s']} img/s "
                             f"({part['seconds_submit_to_finished']} s)", part))
            lines.append(row(f"{part['items']:,} items: 202 after", f"{part['accepted_s']} s", None,
                             "manifest_202_s" if part is large else None))
            lines.append(row(f"{part['items']:,} items: chunk time last / first tenth", part["last_vs_first_tenth"],
                             None, "chunk_last_vs_first_tenth" if part is large else None))
    if "large_vs_small_images_per_s" in t:
        lines.append(row("img/s large / small", t["large_vs_small_images_per_s"]["value"], None,
                         "large_vs_small_images_per_s"))
    if large:
        web = large["web"]
        lines.append(row(f"web RSS growth, {large['items']:,}-item submission (peak; retained after the 202), MB",
                         f"{web['peak_growth_mb']} ({web['retained_growth_mb']}) from {web['rss_before_mb']}",
                         None, "web_rss_growth_mb"))
        lines.append(row("worker tree RSS after small / large job, MB",
                         f"{small.get('worker_tree', {}).get('rss_kb')} / {large['worker_tree']['rss_kb']}"))
        lines.append(row("this database's PostgreSQL backends, CPU during small / large job, % of the machine",
                         f"{small.get('cpu', {}).get('database_cpu_pct')} / {large['cpu'].get('database_cpu_pct')}"))
    if csv_read:
        lines.append(row(f"results CSV streamed ({csv_read['rows']:,} rows, {csv_read['mb']} MB; "
                         f"{csv_read['statistic']})", f"{csv_read['rows_per_s']:,} rows/s", csv_read, "csv_rows_per_s"))
        lines.append(row("results CSV: first byte after; web RSS peak growth while read",
                         f"{csv_read['first_byte_s']} s; {csv_read['web']['peak_growth_mb']} MB"))
    million = report.get("million") or {}
    if million:
        n = f"{million['items']:,}"
        lines.append(row(f"(e) {n} items, cache on: 202 after (the job {million.get('status_at_202', 'preparing')})",
                         f"{million['accepted_s']} s", None, "million_row_202_s"))
        lines.append(row(f"(e) {n} items: web RSS growth (peak; retained after the 202), MB",
                         f"{million['web']['peak_growth_mb']} ({million['web']['retained_growth_mb']})"))
        lines.append(row(f"(e) {n} items: first chunk started after (preparing + queue)",
                         f"{million['first_chunk_started_s']} s"))
        lines.append(row(f"(e) {n} items: end to end", f"{million['images_per_s']} items/s "
                         f"({million['seconds_submit_to_finished']} s)", million))
        lines.append(row(f"(e) {n} items: chunk time last / first tenth", million["last_vs_first_tenth"], None,
                         "million_chunk_last_vs_first_tenth"))
        db = million["database"]
        lines.append(row("(e) database bytes per item (results, job_items, chunks, score_cache)",
                         f"{db['bytes_per_item']} ({', '.join(str(v) for v in db['by_table_bytes_per_item'].values())})"
                         f"; {db['mb_added']} MB in all"))
        for fmt, e in million["exports"].items():
            lines.append(row(f"(e) export as {fmt} ({e['rows']:,} rows, {e['mb']} MB)",
                             f"{e['seconds']} s, {e['rows_per_s']:,} rows/s; web RSS peak growth "
                             f"{e['web']['peak_growth_mb']} MB", e))
    accept = report.get("accept")
    if accept:
        lines.append(row(f"(f) {accept['rows']:,}-row manifest: 202 after (the job {accept['status_at_202']})",
                         f"{accept['accepted_s']} s", None, "ten_million_row_202_s"))
        lines.append(row(f"(f) {accept['rows']:,}-row manifest: web RSS growth (peak; retained after the 202), MB",
                         f"{accept['web']['peak_growth_mb']} ({accept['web']['retained_growth_mb']})"))
        lines.append(row(f"(f) {accept['rows']:,}-row manifest read by the maintenance worker",
                         f"{accept['rows_read']:,} rows in {accept['seconds']} s, {accept['rows_per_s']} rows/s "
                         f"(then {accept['status_after']}, canceled)"))
    lines += tenth_table(small, large, million) + size_table(report.get("table_sizes") or {})
    lines += ["", "Other processes' CPU leaves out this run's PostgreSQL backends (reported on their own row); the "
              "web RSS is the summed VmRSS of `imgq serve`'s gunicorn tree, sampled every 20 ms during the POST."]
    if report.get("notes"):
        lines += ["", "Notes:", *[f"- {x}" for x in report["notes"]]]
    if report.get("errors"):
        lines += ["", "Errors:", *[f"- {x.splitlines()[0] if x else x}" for x in report["errors"]]]
    return "\n".join(lines) + "\n"


def tenth_table(small: dict, large: dict, million: dict) -> list[str]:
    parts = [p for p in (small, large, million) if p.get("tenths")]
    if not parts:
        return []
    lines = ["", "Chunk seconds by tenth of the job (chunks ordered by started_at; median, and images/s over the "
             "tenth's wall span):", "",
             "| tenth | " + " | ".join(f"{p['items']:,}: median s | img/s" for p in parts) + " |",
             "|---:|" + "---:|---:|" * len(parts)]
    for k in range(10):
        cells = []
        for p in parts:
            tenth = next((x for x in p["tenths"] if x["tenth"] == k + 1), None)
            cells += [str(tenth["median_s"]), str(tenth["images_per_s"])] if tenth else ["", ""]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    return lines


def size_table(sizes: dict) -> list[str]:
    if not sizes:
        return []
    lines = ["", "Table sizes after the large job (MB), and scaled to a million results (score_cache, a row per "
             "distinct image content and model version, written even with cache off: to a million of its own rows):",
             "",
             "| table | rows | total | heap | indexes | total / 1e6 results | heap / 1e6 | indexes / 1e6 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for table, v in sizes["tables"].items():
        pm = v["per_million_results_mb"]
        lines.append(f"| {table} | {v['rows']:,} | {v['total_mb']} | {v['heap_mb']} | {v['indexes_mb']} | "
                     f"{pm['total']} | {pm['heap']} | {pm['indexes']} |")
    each = [f"{name} {mb}" for v in sizes["tables"].values() for name, mb in v["per_million_results_mb"].items()
            if name not in ("total", "heap", "indexes") and mb is not None]
    lines += ["", f"A million results take about {sizes['per_million_results_total_mb']} MB in these tables "
              "(every image distinct). Each index per million results, MB: " + ", ".join(each) + "."]
    return lines


def targets_of(report: dict) -> dict:
    small, large, csv_read = report.get("small", {}), report.get("large", {}), report.get("csv", {})
    out = {}
    if large.get("last_vs_first_tenth") is not None:
        out["chunk_last_vs_first_tenth"] = verdict(TARGETS, "chunk_last_vs_first_tenth", large["last_vs_first_tenth"])
    if large.get("images_per_s") and small.get("images_per_s"):
        out["large_vs_small_images_per_s"] = verdict(TARGETS, "large_vs_small_images_per_s",
                                                     round(large["images_per_s"] / small["images_per_s"], 3))
    if large:
        out["manifest_202_s"] = verdict(TARGETS, "manifest_202_s", large["accepted_s"])
        out["web_rss_growth_mb"] = verdict(TARGETS, "web_rss_growth_mb", large["web"]["peak_growth_mb"])
    if csv_read:
        out["csv_rows_per_s"] = verdict(TARGETS, "csv_rows_per_s", csv_read["rows_per_s"])
    million = report.get("million") or {}
    if million:
        out["million_row_202_s"] = verdict(TARGETS, "million_row_202_s", million["accepted_s"])
        if million.get("last_vs_first_tenth") is not None:
            out["million_chunk_last_vs_first_tenth"] = verdict(TARGETS, "million_chunk_last_vs_first_tenth",
                                                               million["last_vs_first_tenth"])
    if report.get("accept"):
        out["ten_million_row_202_s"] = verdict(TARGETS, "ten_million_row_202_s", report["accept"]["accepted_s"])
    return out


# --------------------------------------------------------------------------- main


def measure(bench: BenchRun, args, report: dict) -> None:
    s = bench.setup_backend()
    head = {"small_items": args.small, "files": args.files}
    report["run"] = bench.describe(head, {"settings": {"chunk_size": s.chunk_size, "batch_size": s.batch_size,
                                                       "decode_threads": s.decode_threads}}, s)
    if hasattr(common, "machine"):
        report["run"]["machine"] = common.machine()
    report["run"]["quiet"] = wait_for_quiet(args.wait_idle)
    photos, catalog = ensure_photos(args.files)
    report["run"]["file_kb_mean"] = round(statistics.fmean(Path(p).stat().st_size for p in photos) / 1024, 1)
    report["run"]["catalog"] = catalog
    manifests = {n: items_manifest(bench.manifest_dir, f"scale-{n}", n, photos) for n in (64, args.small, args.items)}
    log("registering the model (vgg_regressor(60)) ...")
    register_model(s.model_store)
    stack, http, t0 = bench.start_stack()
    report["run"]["web_pids"] = tree_pids(stack.web.pid)
    warm = run_job(http, stack, manifests[64], 64, 300, "warm-up")
    log(f"stack up and warm in {time.perf_counter() - t0:.1f}s (warm-up job {warm['seconds_submit_to_finished']}s)")
    timeout = args.job_timeout or max(600.0, args.items / 20)
    report["small"] = run_job(http, stack, manifests[args.small], args.small, timeout, f"(a) {args.small:,} items")
    report["large"] = run_job(http, stack, manifests[args.items], args.items, timeout, f"(a) {args.items:,} items")
    report["table_sizes"] = table_sizes()
    report["csv"] = stream_export(http, stack, report["large"]["job_id"], "csv", args.csv_runs)
    if args.million:
        manifest = items_manifest(bench.manifest_dir, f"million-{args.million}", args.million, photos)
        report["million"] = million_job(http, stack, manifest, args.million, max(1800.0, args.million / 200), 1)
    if args.accept_rows:
        t0 = time.perf_counter()
        manifest = items_manifest(bench.manifest_dir, f"accept-{args.accept_rows}", args.accept_rows, photos)
        log(f"(f) wrote the {args.accept_rows:,}-row manifest in {time.perf_counter() - t0:.0f}s")
        report["accept"] = accept_only(http, stack, manifest, args.accept_rows, args.accept_wait)


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = BenchRun("score_scale", args, "imgq-bench-scale-", detail=f" (and {args.small}), {args.files} files")
    report: dict = {"errors": [], "notes": []}
    with bench.measuring(report, bench.describe({"small_items": args.small, "files": args.files}, {})):
        measure(bench, args, report)
    for label in ("small", "large", "csv"):
        bg = ((report.get(label) or {}).get("cpu") or {}).get("background_cpu_pct")
        if bg is not None and bg >= 20:
            report["notes"].append(f"other processes used {bg:.0f} % of the machine during the {label} phase: its "
                                   "figures are low and noisy")
    report["targets"] = targets_of(report)
    text = markdown(report)
    print_summary(text, report["targets"])
    bench.write_report(report, text)
    return bench.close()


if __name__ == "__main__":
    sys.exit(main())
