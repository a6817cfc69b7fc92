#!/usr/bin/env python
"""Did a change make scoring slower? The same score job on two commits, interleaved, in one run.

Each commit is checked out in a temporary git worktree and started as its own stack (web front, one CPU worker,
maintenance) through its own `imgq` CLI, on its own fresh PostgreSQL database and Redis database, with auth off.
The same photo-like catalog (benchmarks/photo_catalog.py) and the same untrained demo VGG are scored with
`"cache": false`, alternating A, B, A, B, ... so that a slow spell of the machine hits both alike; the report
gives each commit's median, min and max images/s (POST to `finished_at`) and the ratio B / A.

    python benchmarks/compare_commits.py 47d3ccd HEAD            # --images 2000 --repeats 4

Results: printed, and written to benchmarks/results/compare_commits-<timestamp>.json/.md. Never asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import redis
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from photo_catalog import PHOTO_DIR, ensure_photo_catalog, photo_rows  # noqa: E402

PG_ADMIN = os.environ.get("IMGQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("IMGQ_BENCH_REDIS", "redis://127.0.0.1:6379")
CLI_MODULES = ("shared.tools.cli", "shared.cli")  # where the CLI lives, newest layout first


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CommitStack:
    """One commit's checkout and its running processes."""

    def __init__(self, commit: str, label: str, work: Path, redis_db: int, catalog: Path, model_file: Path):
        self.label, self.work = label, work
        self.sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=REPO, check=True, capture_output=True,
                                  text=True).stdout.strip()
        self.tree = work / f"tree-{label}"
        subprocess.run(["git", "worktree", "add", "--detach", str(self.tree), self.sha], cwd=REPO, check=True,
                       capture_output=True)
        self.cli = next(m for m in CLI_MODULES if (self.tree / (m.replace(".", "/") + ".py")).exists())
        self.db_name = f"imgq_cmp_{label}_{os.getpid()}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.broker = f"{REDIS}/{redis_db}"
        redis.Redis.from_url(self.broker).flushdb()
        self.port = free_port()
        self.env = {**os.environ, "DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{self.db_name}",
                    "BROKER_URL": self.broker, "IMGQ_HOME": str(work / f"home-{label}"),
                    "IMGQ_DATA_ROOTS": str(catalog), "IMGQ_AUTH": "off", "IMGQ_RATE_LIMIT": "100000 per minute",
                    "PYTHONPATH": str(self.tree), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "CUDA_VISIBLE_DEVICES": ""}
        self.procs: list[subprocess.Popen] = []
        self.model_file = model_file

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", self.cli, *args], cwd=self.tree, env=self.env, check=True,
                              capture_output=True, text=True, **kw)

    def start(self) -> None:
        self._run("db", "upgrade")
        self._run("models", "import", str(self.model_file), "--name", "bench", "--task", "regression",
                  "--input-size", "60")
        logs = self.work / f"logs-{self.label}"
        logs.mkdir(exist_ok=True)
        for name, args in (("web", ["serve", "--port", str(self.port)]), ("worker", ["worker", "--cpu"]),
                           ("maintenance", ["maintenance", "--beat"])):
            out = open(logs / f"{name}.log", "ab")
            self.procs.append(subprocess.Popen([sys.executable, "-m", self.cli, *args], cwd=self.tree, env=self.env,
                                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError(f"{self.label}: the web front did not come up; logs in {logs}")

    def score(self, items: list[dict], timeout: float = 900) -> float:
        """Images/s of one job, from the POST to the job's finished_at."""
        started = time.time()
        resp = requests.post(f"http://127.0.0.1:{self.port}/api/v1/jobs/score",
                             json={"model": "bench", "items": items, "cache": False}, timeout=120)
        resp.raise_for_status()
        job_id = resp.json()["id"]
        while True:
            job = requests.get(f"http://127.0.0.1:{self.port}/api/v1/jobs/{job_id}", timeout=30).json()
            if job["status"] not in ("preparing", "queued", "running"):
                break
            if time.time() - started > timeout:
                raise TimeoutError(f"{self.label}: job {job_id} still {job['status']}")
            time.sleep(0.2)
        if job["status"] != "succeeded":
            raise RuntimeError(f"{self.label}: job {job_id} {job['status']}: {job.get('error')}")
        finished = datetime.fromisoformat(job["timings"]["finished_at"]).timestamp()
        return len(items) / (finished - started)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        redis.Redis.from_url(self.broker).flushdb()
        subprocess.run(["git", "worktree", "remove", "--force", str(self.tree)], cwd=REPO, capture_output=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    ensure_photo_catalog(args.images)
    catalog = PHOTO_DIR
    files = [row[1] for row in photo_rows()[: args.images]]
    work = Path(tempfile.mkdtemp(prefix="imgq-compare-"))
    sys.path.insert(0, str(REPO))
    from worker.training.architectures import vgg_regressor

    model_file = work / "vgg_regressor_60.keras"
    vgg_regressor(60).save(model_file)
    stacks = [CommitStack(args.before, "A", work, 12, catalog, model_file),
              CommitStack(args.after, "B", work, 10, catalog, model_file)]
    rates: dict[str, list[float]] = {"A": [], "B": []}
    t0 = time.time()
    try:
        for stack in stacks:
            log(f"starting {stack.label} = {stack.sha} ({stack.cli})")
            stack.start()
        for stack in stacks:  # warm up: preload, trace, first chunk
            stack.score([{"id": f"warm-{f}", "uri": f} for f in files[:256]])
        for rep in range(args.repeats):
            for stack in stacks:
                rate = stack.score([{"id": f"{rep}-{f}", "uri": f} for f in files])
                rates[stack.label].append(rate)
                log(f"{stack.label} ({stack.sha}) run {rep + 1}: {rate:.1f} images/s")
    finally:
        for stack in stacks:
            stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {label: {"commit": stack.sha, "median": round(statistics.median(rates[label]), 1),
                       "min": round(min(rates[label]), 1), "max": round(max(rates[label]), 1),
                       "runs": [round(r, 1) for r in rates[label]]}
               for label, stack in zip(("A", "B"), stacks)}
    ratio = round(summary["B"]["median"] / summary["A"]["median"], 3)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"timestamp": stamp, "images": len(files), "repeats": args.repeats, "cpus": os.cpu_count(),
              "model": "vgg_regressor(60), untrained, cache off, PostgreSQL + Redis, one CPU worker",
              "catalog": catalog.name, "results": summary, "b_over_a": ratio,
              "seconds": round(time.time() - t0, 1), "written_at": datetime.now(timezone.utc).isoformat()}
    md = [f"# compare_commits — {stamp}", "",
          f"{len(files)} photo-like JPEGs, {report['model']}, {os.cpu_count()} CPUs, runs interleaved A/B, "
          f"{args.repeats} each, total {report['seconds']} s", "",
          "| | commit | median img/s | min | max | runs |", "|---|---|---:|---:|---:|---|"]
    md += [f"| {k} | {v['commit']} | {v['median']} | {v['min']} | {v['max']} | {', '.join(map(str, v['runs']))} |"
           for k, v in summary.items()]
    md += ["", f"B / A (medians): **{ratio}**", ""]
    out = REPO / "benchmarks" / "results"
    (out / f"compare_commits-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"compare_commits-{stamp}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
