#!/usr/bin/env python
"""What validating answers against their response models costs: GET /api/v1/jobs/<id>/results?limit=1000 (a full
page of a classification job's results, five classes) and GET /api/v1/jobs?limit=100, through the app factory on the
embedded default (a SQLite file), as handlers answer today (web/http.respond: the response model validates the
service's dict and pydantic writes it as JSON) and as they answered before (the peer: `jsonify` of the same dict,
swapped in for `respond` in the handlers' module, nothing else changed). Requests alternate between the two, after a
warm-up; the median of each is reported, with the validation alone timed on the same body.

    python benchmarks/response_validation.py [--repeats 30]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import git_commit, git_dirty, log, machine, new_parser, wait_for_quiet, write_report  # noqa: E402

CLASSES = ("cat", "dog", "bird", "fish", "horse")


def seed(results: int, jobs: int) -> str:
    """A model, a classification job with `results` results, and `jobs` more jobs; returns the first job's id."""
    from shared.core.db import session_scope
    from shared.core.states import JobKind, JobStatus
    from shared.core.tables import Job, ModelVersion, Result

    with session_scope() as session:
        version = ModelVersion(name="animals", version=1, task="classification", input_height=32, input_width=32,
                               resize_mode="stretch", pixel_scale="unit", output_names=None, class_names=list(CLASSES),
                               target_transform={"kind": "none"}, path="/nowhere.keras", sha256="0" * 64,
                               size_bytes=1)
        session.add(version)
        session.flush()
        ids = [str(uuid.uuid4()) for _ in range(jobs + 1)]
        for job_id in ids:
            session.add(Job(id=job_id, kind=JobKind.SCORE, status=JobStatus.SUCCEEDED, model_version_id=version.id,
                            model_ref="animals", source={"type": "items", "count": results}, use_cache=True,
                            total_items=results, done_items=results, failed_items=0, cached_items=0, total_chunks=4))
        session.flush()
        session.add_all(Result(job_id=ids[0], item_id=f"item-{i:06d}", status="ok", from_cache=False,
                               content_hash=f"{i:064x}", outputs={"label": CLASSES[i % 5], "confidence": 0.6,
                                                                  **{f"p:{c}": 0.1 for c in CLASSES}})
                        for i in range(results))
    return ids[0]


def timed(client, url: str) -> float:
    t0 = time.perf_counter()
    resp = client.get(url)
    elapsed = time.perf_counter() - t0
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return elapsed


def measure(client, url: str, model, repeats: int) -> dict:
    """Median seconds of the request with `respond` and with the peer, alternating; and of the validation alone."""
    from flask import jsonify

    import web.api_jobs
    from web.http import respond

    def peer(_model, body, status=200, **headers):
        response = jsonify(body)
        response.status_code = status
        response.headers.update(headers)
        return response

    body = client.get(url).json
    validating, plain, alone = [], [], []
    for i in range(repeats + 3):
        web.api_jobs.respond = respond
        a = timed(client, url)
        web.api_jobs.respond = peer
        b = timed(client, url)
        t0 = time.perf_counter()
        model.model_validate(body).model_dump_json(exclude_unset=True)
        c = time.perf_counter() - t0
        if i >= 3:  # warm-up
            validating.append(a), plain.append(b), alone.append(c)
    web.api_jobs.respond = respond
    with_ms, without_ms = statistics.median(validating) * 1000, statistics.median(plain) * 1000
    return {"url": url, "with_validation_ms": round(with_ms, 2), "jsonify_only_ms": round(without_ms, 2),
            "validation_alone_ms": round(statistics.median(alone) * 1000, 2),
            "added_pct": round(100 * (with_ms - without_ms) / without_ms, 1)}


def main(argv=None) -> None:
    p = new_parser(__doc__)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--wait-idle", type=float, default=60.0)
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="imgq-bench-"))
    os.environ.update({"IMGQ_HOME": str(home / "home"), "IMGQ_DATA_ROOTS": str(home / "data"),
                       "DATABASE_URL": f"sqlite:///{home / 'imgq.db'}", "IMGQ_AUTH": "off", "BROKER_URL": ""})
    from shared.core.config import get_settings
    from shared.core.migrate import upgrade
    from shared.schemas.responses.jobs import JobsPage, ResultsPage
    from web.app import create_app

    upgrade(os.environ["DATABASE_URL"])
    client = create_app(get_settings()).test_client()
    job_id = seed(results=1000, jobs=100)
    quiet = wait_for_quiet(args.wait_idle)
    log("timing")
    rows = [measure(client, f"/api/v1/jobs/{job_id}/results?limit=1000", ResultsPage, args.repeats),
            measure(client, "/api/v1/jobs?limit=100", JobsPage, args.repeats)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {"machine": machine(), "backend": "embedded (SQLite file)", "commit": git_commit(),
              "dirty": git_dirty(), "repeats": args.repeats, **quiet, "rows": rows}
    lines = [f"# response_validation — {stamp}", "",
             f"{report['machine'].get('cpu_model', '?')}, {report['machine']['cpus']} CPUs, backend "
             f"{report['backend']}, commit {report['commit']}, median of {args.repeats} alternating requests, "
             f"other processes' CPU at start {quiet['background_cpu_pct_at_start']:.0f} %",
             *([f"working tree differs from the commit in: {', '.join(report['dirty'])}"] if report["dirty"] else []),
             "", "| request | respond (validated) ms | jsonify only ms | validation alone ms | added |",
             "|---|---:|---:|---:|---:|",
             *[f"| {r['url'].split('/api/v1')[1].replace(job_id, '<id>')} | {r['with_validation_ms']} | "
               f"{r['jsonify_only_ms']} | {r['validation_alone_ms']} | {r['added_pct']} % |" for r in rows], ""]
    print("\n".join(lines))
    write_report("response_validation", report, stamp, "\n".join(lines))


if __name__ == "__main__":
    main()
