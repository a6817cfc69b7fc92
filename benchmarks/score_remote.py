#!/usr/bin/env python
"""Score jobs reading their images from object storage and from image URLs, against the same job on local files.

One run, one stack (`imgq serve` + `imgq worker --cpu`, LocalStack, on PostgreSQL + Redis by default), the same
photo-like JPEGs (about 600x800, benchmarks/.cache/catalogs/, shared with score_throughput.py) named three ways:

  local   absolute paths in a local data root (the baseline);
  s3      `s3://bench-bucket/catalog/<file>` objects on a real S3 server on loopback (moto's server mode, a
          process of this run: tests/helpers.MotoS3), through IMGQ_DATA_ROOTS' URI prefix, IMGQ_READ_THREADS reads
          in flight;
  https   `https://127.0.0.1:<port>/<file>` on a TLS file server on loopback (tests/helpers.TlsFiles, a thread
          of this process), let through the address guard by IMGQ_WEB_ALLOW_NETWORKS for this run only.

Each is a manifest job with cache=false, timed from the POST to the job's finished_at, `--repeats` times
interleaved (local, s3, https in each round), reported as the median items/s with min and max. The servers run on
this same 2-core machine, so their own CPU (moto is Python, and decodes nothing but serves every byte; the TLS
server encrypts every byte) is taken from the worker's: a store on other machines costs the worker less. The
figure is what one worker gets here, not a property of S3.

Also measured: the S3 server's own ceiling, GETs/s of the same objects to a plain boto3 client in as many threads
with nothing else running, and s3 / that ceiling (how much of what the server gives the worker takes).

Targets (reported, never asserted): s3 / local >= 0.8 (issue 18); https / local is reported without a target.

    python benchmarks/score_remote.py             # 1,000 images, 3 rounds (~10 min on 2 cores)
    python benchmarks/score_remote.py --quick     # 200 images, 1 round, to check it works

Results: benchmarks/results/score_remote-<timestamp>.json/.md and score_remote-latest.json (benchmarks/common.py).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

from common import (
    CATALOG_DIR,
    ROOT,
    BenchRun,
    CpuWatch,
    add_backend_args,
    add_run_args,
    catalog_rows,
    ensure_catalog,
    log,
    md_row,
    md_table_head,
    new_parser,
    parse_ts,
    print_summary,
    verdict,
    wait_final,
    wait_for_quiet,
)

sys.path.insert(0, str(ROOT))

GOALS = {"s3_over_local": (">=", 0.8)}
BUCKET = "bench-bucket"
KINDS = ("local", "s3", "https")


def parse_args(argv=None):
    p = new_parser(__doc__)
    p.add_argument("--images", type=int, default=1000, help="distinct JPEGs per job")
    p.add_argument("--repeats", type=int, default=3, help="rounds (each runs the three jobs, interleaved)")
    p.add_argument("--model", default="demo_vgg", help="a key of benchmarks/bench_models.MODELS")
    p.add_argument("--read-threads", type=int, default=16, help="IMGQ_READ_THREADS of the worker")
    p.add_argument("--quick", action="store_true", help="200 images, one round")
    add_backend_args(p)
    add_run_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 200, 1
    return args


def write_manifest(folder: Path, name: str, rows: list[tuple[str, str]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    path.write_text("id,image\n" + "".join(f"{item_id},{uri}\n" for item_id, uri in rows))
    return path.name


def run_job(http, stack, manifest: str, model: str, n: int) -> dict:
    t0 = time.time()
    resp = http.post(stack.url("/api/v1/jobs/score"), json={"model": model, "manifest": manifest, "cache": False},
                     timeout=120)
    resp.raise_for_status()
    job = wait_final(http, stack, resp.json()["id"], timeout=1800)
    finished = parse_ts(job.get("finished_at")) or time.time()
    progress = job["progress"]
    if job["status"] != "succeeded" or progress["done"] != n or progress["failed"]:
        raise RuntimeError(f"job {job['id']}: {job['status']}, {progress}")
    seconds = finished - t0
    return {"seconds": round(seconds, 2), "items_per_s": round(n / seconds, 1)}


def server_ceiling(moto, files: list[str], threads: int) -> float:
    """GETs per second the S3 server answers for these objects to a plain boto3 client in `threads` threads, with
    nothing else running: the most any reader could get from it on this machine."""
    from concurrent.futures import ThreadPoolExecutor

    s3 = moto.client()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda f: s3.get_object(Bucket=BUCKET, Key=f"catalog/{f}")["Body"].read(), files))
    return round(len(files) / (time.perf_counter() - t0), 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    name = "score_remote" if args.model == "demo_vgg" else f"score_remote_{args.model}"  # one results series each
    run = BenchRun(name, args, "imgq-bench-remote-", f", model {args.model}, {args.repeats} rounds")
    report: dict = {"errors": [], "rounds": []}
    from tests.helpers import MotoS3, TlsFiles

    ensure_catalog(args.images)
    files = [row[1] for row in catalog_rows()[: args.images]]
    moto = MotoS3(run.home / "moto")
    tls = TlsFiles(CATALOG_DIR, run.home / "tls")
    os.environ.update({**moto.env, "IMGQ_READ_THREADS": str(args.read_threads), "SSL_CERT_FILE": str(tls.cert),
                       "IMGQ_WEB_ALLOW_NETWORKS": "127.0.0.1/32",
                       "IMGQ_DATA_ROOTS": os.pathsep.join([str(CATALOG_DIR.parent), str(run.manifest_dir),
                                                           f"s3://{BUCKET}/catalog/"])})
    with run.measuring(report, run.describe({"model": args.model}, {})):
        s = run.setup_backend()
        log(f"uploading {len(files)} JPEGs to the S3 server")
        moto.put_files(BUCKET, "catalog", {name: CATALOG_DIR / name for name in files})
        from bench_models import MODELS, build_and_save, register

        spec = MODELS[args.model]
        _, path, info = build_and_save(spec, run.home / "bench-models")
        register(spec, path, [(s.database_url, s.model_store)])
        stack, http, _ = run.start_stack()
        report["run"] = run.describe({"model": info, "read_threads": args.read_threads},
                                     {"s3_server": "moto_server (loopback, same machine)",
                                      "https_server": "tests/helpers.TlsFiles (loopback, same machine)"}, s)
        wait_for_quiet(args.wait_idle)
        warm = write_manifest(run.manifest_dir, "warm", [(f"warm-{i}", str(CATALOG_DIR / f)) for i, f in
                                                          enumerate(files[:64])])
        run_job(http, stack, warm, spec.name, 64)  # the model loaded and traced before the clock
        for round_no in range(args.repeats):
            timings = {}
            for kind in KINDS:
                uri = {"local": lambda f: str(CATALOG_DIR / f), "s3": lambda f: f"s3://{BUCKET}/catalog/{f}",
                       "https": lambda f: f"{tls.base}/{f}"}[kind]
                manifest = write_manifest(run.manifest_dir, f"{kind}-{round_no}",
                                          [(f"{kind}-{round_no}-{i}", uri(f)) for i, f in enumerate(files)])
                watch = CpuWatch()
                timings[kind] = {**run_job(http, stack, manifest, spec.name, len(files)), "cpu": watch.stop()}
                log(f"round {round_no + 1} {kind}: {timings[kind]['items_per_s']} items/s")
            report["rounds"].append(timings)
        medians = {k: statistics.median(r[k]["items_per_s"] for r in report["rounds"]) for k in KINDS}
        report["medians_items_per_s"] = medians
        report["s3_server_gets_per_s"] = server_ceiling(moto, files, args.read_threads)
        report["ratios"] = {"s3_over_local": round(medians["s3"] / medians["local"], 3),
                            "s3_over_server_ceiling": round(medians["s3"] / report["s3_server_gets_per_s"], 3),
                            "https_over_local": round(medians["https"] / medians["local"], 3)}
        report["targets"] = {"s3_over_local": verdict(GOALS, "s3_over_local", report["ratios"]["s3_over_local"])}
    moto.stop()
    tls.stop()
    text = markdown(report)
    run.write_report(report, text)
    print_summary(text, report.get("targets", {}))
    return run.close()


def markdown(report: dict) -> str:
    run = report.get("run", {})
    lines = [f"# score_remote {run.get('timestamp', '?')}", "",
             f"commit {run.get('git_commit')}, backend {run.get('backend')}, {run.get('images')} images per job, "
             f"model {(run.get('model') or {}).get('label', '?')}, IMGQ_READ_THREADS {run.get('read_threads')}",
             *md_table_head(run)]
    targets = report.get("targets", {})
    for kind in KINDS:
        values = [r[kind]["items_per_s"] for r in report.get("rounds", []) if kind in r]
        if values:
            lines.append(md_row(targets, f"{kind}: items/s, median (min-max) of {len(values)}",
                                f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})",
                                report["rounds"][-1][kind]))
    if report.get("s3_server_gets_per_s"):
        lines.append(md_row(targets, "the S3 server alone: GETs/s to boto3 in as many threads",
                            f"{report['s3_server_gets_per_s']:,.1f}"))
    for key, value in (report.get("ratios") or {}).items():
        lines.append(md_row(targets, key.replace("_", " "), f"{value:.2f}", None, key if key in targets else None))
    if report.get("errors"):
        lines += ["", "errors:", *[f"- {e}" for e in report["errors"]]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
