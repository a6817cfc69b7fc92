"""imgq's own measurements for score_throughput.py, on running stacks (shared.tools.local_stack.LocalStack):

  run_job      one score job submitted over HTTP (cache off), timed from the POST to the job's finished_at,
               with where its time went from the chunk rows (before the first chunk, inside, between, after);
  run_memory   the worker pool process's RSS and peak RSS over consecutive small jobs;
  run_latency  GET /api/v1/jobs/<id> latency while jobs run.

A Stack is one LocalStack and the database URL its rows are read from (two stacks, PostgreSQL + Redis and the
embedded SQLite + filesystem broker, run side by side in one benchmark run). The embedded stack gets its own
IMGQ_HOME; its empty DATABASE_URL and BROKER_URL select imgq's defaults.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from common import child_pids, log, parse_ts, wait_final


@dataclass
class Stack:
    label: str  # "postgres" | "embedded"
    local: object  # shared.tools.local_stack.LocalStack
    db_url: str

    @property
    def http(self):
        return self.local.http


def embedded_env(home: Path) -> dict:
    """Environment overrides for an embedded stack in `home` (LocalStack layers them over os.environ)."""
    return {"IMGQ_HOME": str(home), "DATABASE_URL": "", "BROKER_URL": "", "IMGQ_MODEL_STORE": ""}


def prepare_embedded(home: Path):
    """Settings of an embedded installation in `home`, its folders made and its SQLite database migrated."""
    import os

    from shared.core.config import ensure_dirs, load_settings
    from shared.core.migrate import upgrade

    s = load_settings({**os.environ, **embedded_env(home)})
    ensure_dirs(s)
    upgrade(s.database_url)
    return s


def start_stack(label: str, env: dict, home: Path, db_url: str) -> Stack:
    from shared.tools.local_stack import LocalStack

    local = LocalStack(env, home / "logs")
    local.start(timeout=180)
    return Stack(label, local, db_url)


# --------------------------------------------------------------------------- one job


def submit(stack: Stack, model_name: str, manifest_rel: str) -> tuple[dict, float]:
    t0 = time.time()
    resp = stack.http.post(stack.local.url("/api/v1/jobs/score"), timeout=120,
                           json={"model": model_name, "manifest": manifest_rel, "id_column": "id",
                                 "image_column": "image", "cache": False})
    if resp.status_code != 202:
        raise RuntimeError(f"submit to {stack.label} failed: {resp.status_code} {resp.text[:500]}")
    return resp.json(), t0


def _utc(t) -> float | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def last_result_at(db_url: str, job_id: str) -> float | None:
    from sqlalchemy import func, select

    from shared.core.db import session_scope
    from shared.core.tables import Result

    with session_scope(db_url) as s:
        return _utc(s.scalar(select(func.max(Result.created_at)).where(Result.job_id == job_id)))


def chunk_breakdown(db_url: str, job_id: str, t_submit: float, finished: float | None) -> dict:
    """Where a job's wall time went, from its chunk rows: before the first chunk started, inside
    chunks, between chunks (queue + claim), and from the last chunk to the job's finished_at."""
    from sqlalchemy import select

    from shared.core.db import session_scope
    from shared.core.tables import Chunk

    with session_scope(db_url) as s:
        spans = sorted((_utc(a), _utc(b)) for a, b in s.execute(
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


def run_job(stack: Stack, model_name: str, manifest_rel: str, n: int, timeout: float) -> dict:
    """One score job of `n` images: images/s from the POST to the job's finished_at."""
    job, t_submit = submit(stack, model_name, manifest_rel)
    t_accepted = time.time()
    final = wait_final(stack.http, stack.local, job["id"], timeout, poll=0.1)
    t_seen = time.time()
    p = final["progress"]
    finished = parse_ts(final["timings"]["finished_at"])
    started = parse_ts(final["timings"]["started_at"])
    last_row = last_result_at(stack.db_url, job["id"])
    seconds = (finished or last_row or t_seen) - t_submit
    rate = p["succeeded"] / seconds if seconds > 0 else None
    return {
        "job_id": job["id"], "status": final["status"], "images": n, "succeeded": p["succeeded"],
        "failed": p["failed"], "chunks": final["chunks"]["total"],
        "submit_http_ms": round(1000 * (t_accepted - t_submit), 1),
        "seconds": round(seconds, 3),
        "seconds_submit_to_started": round(started - t_submit, 3) if started else None,
        "seconds_submit_to_last_result": round(last_row - t_submit, 3) if last_row else None,
        "images_per_s": round(rate, 1) if rate and p["succeeded"] == n else None,
        "job_reported_images_per_s": p["images_per_second"],
        "breakdown": chunk_breakdown(stack.db_url, job["id"], t_submit, finished),
    }


def warm(stack: Stack, model_name: str, manifest_rel: str) -> None:
    """A small job, so the worker has the model loaded and traced before any timed job."""
    job, _ = submit(stack, model_name, manifest_rel)
    final = wait_final(stack.http, stack.local, job["id"], timeout=600)
    if final["status"] != "succeeded":
        raise RuntimeError(f"warm-up job of {model_name} on {stack.label} ended {final['status']}")


# --------------------------------------------------------------------------- worker memory (/proc or psutil)


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
    """The `imgq worker` process's children: the prefork pool process(es)."""
    out = []
    for pid in child_pids(worker_pid):
        st = _status_kb(pid)
        if st:
            out.append({"pid": pid, "name": st.get("Name"), "rss_kb": st.get("VmRSS"), "hwm_kb": st.get("VmHWM"),
                        "pool": _uses_tensorflow(pid)})
    return out


def run_memory(stack: Stack, model_name: str, manifest, rows: list[list[str]], jobs: int, per_job: int,
               timeout: float) -> dict:
    """`jobs` consecutive jobs of `per_job` images (a sliding window over `rows`; `manifest(name, rows)`
    writes one); the pool process's RSS and peak after each."""
    series = []
    for k in range(jobs):
        start = (k * per_job) % len(rows)
        subset = (rows[start:] + rows[:start])[:per_job] if per_job <= len(rows) else \
            (rows * (-(-per_job // len(rows))))[:per_job]
        subset = [[f"{r[0]}-{i}", r[1], r[2]] for i, r in enumerate(subset)]  # ids unique even if rows repeat
        job, t0 = submit(stack, model_name, manifest(f"bench-mem-{k:02d}", subset))
        final = wait_final(stack.http, stack.local, job["id"], timeout, poll=0.2)
        elapsed = time.time() - t0
        kids = worker_children(stack.local.worker.pid)
        pool = [c for c in kids if c["pool"]] or kids
        rss, hwm = sum(c["rss_kb"] or 0 for c in pool), sum(c["hwm_kb"] or 0 for c in pool)
        series.append({"job": k + 1, "status": final["status"], "succeeded": final["progress"]["succeeded"],
                       "seconds": round(elapsed, 2), "pool_pids": [c["pid"] for c in pool],
                       "pool_rss_kb": rss, "pool_hwm_kb": hwm})
        log(f"(e) job {k + 1:>2}/{jobs}: {final['status']} {final['progress']['succeeded']}/{per_job} in "
            f"{elapsed:.1f}s; pool RSS {rss / 1024:.1f} MiB (peak {hwm / 1024:.1f} MiB)")
    first, last = series[0], series[-1]
    growth = 100.0 * (last["pool_rss_kb"] - first["pool_rss_kb"]) / first["pool_rss_kb"] if first["pool_rss_kb"] \
        else None
    return {
        "jobs": jobs, "images_per_job": per_job, "model": model_name,
        "rss_after_first_mib": round(first["pool_rss_kb"] / 1024, 1),
        "rss_after_last_mib": round(last["pool_rss_kb"] / 1024, 1),
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "peak_hwm_first_mib": round(first["pool_hwm_kb"] / 1024, 1),
        "peak_hwm_mib": round(max(s["pool_hwm_kb"] for s in series) / 1024, 1),
        "pool_pid_changed": len({tuple(s["pool_pids"]) for s in series}) > 1,
        "series": series,
    }


# --------------------------------------------------------------------------- GET latency


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


def _poll_until_done(stack: Stack, job_id: str, timeout: float, gap: float, running: list, queued: list,
                     statuses: dict) -> None:
    url = stack.local.url(f"/api/v1/jobs/{job_id}")
    deadline = time.time() + timeout
    while True:
        t0 = time.perf_counter()
        r = stack.http.get(url, timeout=30)
        dt = time.perf_counter() - t0
        status = r.json()["status"]
        statuses[status] = statuses.get(status, 0) + 1
        if status == "running":
            running.append(dt)
        elif status == "queued":
            queued.append(dt)
        else:
            return
        if time.time() > deadline:
            raise TimeoutError(f"latency job {job_id} did not finish in {timeout}s")
        time.sleep(gap)


def run_latency(stack: Stack, model_name: str, manifest_rel: str, n_items: int, min_requests: int,
                timeout: float, gap: float = 0.01, max_jobs: int = 5) -> dict:
    """Poll GET /api/v1/jobs/<id> in a loop while score jobs of the manifest run, until `min_requests`
    samples fell while a job was running (a further job is submitted if one ends too soon)."""
    running, queued, statuses, job_ids = [], [], {}, []
    for _ in range(max_jobs):
        job, _ = submit(stack, model_name, manifest_rel)
        job_ids.append(job["id"])
        _poll_until_done(stack, job["id"], timeout, gap, running, queued, statuses)
        if len(running) >= min_requests:
            break
    idle = []  # the same request with no job running, for comparison
    for _ in range(100):
        t0 = time.perf_counter()
        stack.http.get(stack.local.url(f"/api/v1/jobs/{job_ids[-1]}"), timeout=30).raise_for_status()
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
