#!/usr/bin/env python
"""Training memory benchmark: does a train job's peak memory stay flat as its dataset grows?

One run trains the same small model, in a real train job (`imgq serve` + `imgq worker --cpu`, LocalStack, a
request POSTed to /api/v1/jobs/train), on datasets of increasing size (default 10,000 and 50,000 images), and
reads, for each, the training process's peak resident memory (its VmHWM, which the job records as
`data.peak_rss_bytes`), the time it spent decoding into its pixel files (`data.load_seconds`) and its training
images/s (the job's per-epoch seconds; epoch 1 included when there is only one).

The images are small JPEGs (`--photo-size`, default 128x128, made once in benchmarks/.cache/catalogs/), read at
input `--input-size` (default 96): their decoded pixels alone are `images x 96 x 96 x 3` bytes, 1.4 GB at 50,000,
which a run holding its dataset in memory would add to its peak. The figure printed next to each size says how much
that would be.

Target (reported as met / not met, never asserted): the peak at the largest size is at most 1.2 times the peak at
the smallest (issue 18: "must not grow more than 20 %"). The training throughput against a bare `model.fit` on
in-memory tensors is benchmarks/train_throughput.py's (a)/(b).

    python benchmarks/train_memory.py                    # 10,000 and 50,000 images, 2 epochs
    python benchmarks/train_memory.py --quick            # 1,000 and 5,000 images, to check it works

Results: printed, and written to benchmarks/results/train_memory-<timestamp>.json/.md (and -latest.json).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
from common import (
    CACHE_DIR,
    BenchRun,
    CpuWatch,
    add_backend_args,
    add_run_args,
    log,
    md_row,
    md_table_head,
    new_parser,
    print_summary,
    verdict,
    wait_final,
    wait_for_quiet,
    write_manifest,
)

MODEL_NAME = "bench-train-memory"
TARGETS = {"peak_rss_growth": ("<=", 1.2)}


def parse_args(argv=None):
    p = new_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="1,000 and 5,000 images, to check the benchmark works")
    p.add_argument("--sizes", help="dataset sizes, comma-separated (default 10000,50000; --quick 1000,5000)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--input-size", type=int, default=96)
    p.add_argument("--photo-size", type=int, default=128, help="the JPEGs' width and height (about: jittered)")
    p.add_argument("--job-timeout", type=float, default=3600.0)
    add_backend_args(p)
    add_run_args(p)
    args = p.parse_args(argv)
    args.sizes = [int(n) for n in (args.sizes or ("1000,5000" if args.quick else "10000,50000")).split(",")]
    args.images = max(args.sizes)  # what BenchRun reports
    if min(args.sizes) < 100:
        p.error("each size must be at least 100 images")
    return args


def small_catalog(n: int, size: int) -> Path:
    """At least `n` JPEGs of about size x size, made once and reused (the first k are the same in any catalog)."""
    from shared.images.synthetic import write_catalog

    folder = CACHE_DIR / "catalogs" / f"catalog-{size}x{size}"
    marker = folder / "catalog.json"
    if marker.exists() and json.loads(marker.read_text())["images"] >= n:
        log(f"catalog: reusing {folder}")
        return folder
    log(f"catalog: writing {n} JPEGs of about {size}x{size} to {folder} (once)")
    t0 = time.perf_counter()
    marker.unlink(missing_ok=True)
    write_catalog(folder, n, size=(size, size), broken=False)
    marker.write_text(json.dumps({"images": n, "size": [size, size], "seed": 0}))
    log(f"catalog: done in {time.perf_counter() - t0:.1f}s")
    return folder


def train_body(manifest: str, n: int, args) -> dict:
    return {"model": f"{MODEL_NAME}-{n}", "task": "regression",
            "dataset": {"path": manifest, "image_column": "image", "id_column": "id", "target_columns": ["pageviews"]},
            "base": {"architecture": "vgg", "width": 8}, "input_size": args.input_size, "target_transform": "log1p",
            "batch_size": args.batch_size, "epochs": args.epochs, "seed": 0}


def run_size(http, stack, manifest: str, n: int, args) -> dict:
    watch = CpuWatch()
    resp = http.post(stack.url("/api/v1/jobs/train"), json=train_body(manifest, n, args), timeout=120)
    if resp.status_code != 202:
        raise RuntimeError(f"{n} images: train submit failed: {resp.status_code} {resp.text[:800]}")
    job_id = resp.json()["id"]
    log(f"{n} images: train job {job_id}")
    final = wait_final(http, stack, job_id, args.job_timeout, poll=1.0, what="train job", log_phases=True)
    if final["status"] != "succeeded":
        raise RuntimeError(f"{n} images: train job {job_id} ended {final['status']}: {final.get('error')}")
    data = final.get("data") or {}
    epochs = http.get(stack.url(f"/api/v1/jobs/{job_id}/epochs"), timeout=30).json().get("epochs") or []
    seconds = [e["seconds"] for e in sorted(epochs, key=lambda e: e["epoch"])]
    train_images = (data.get("split_sizes") or {}).get("train", 0)
    timed = seconds[1:] or seconds  # epoch 1 includes tracing: left out when there are others
    pixel_bytes = n * args.input_size * args.input_size * 3
    out = {"job_id": job_id, "images": n, "peak_rss_bytes": data.get("peak_rss_bytes"),
           "pixels_in_memory_would_be_bytes": pixel_bytes, "load_seconds": data.get("load_seconds"),
           "split_sizes": data.get("split_sizes"), "epoch_seconds": seconds,
           "train_images_per_s": round(train_images * len(timed) / sum(timed), 1) if timed else None,
           "cpu": watch.stop()}
    log(f"{n} images: peak RSS {out['peak_rss_bytes'] / 2**20:,.0f} MiB (its pixels alone would be "
        f"{pixel_bytes / 2**20:,.0f} MiB), {out['train_images_per_s']} train images/s")
    return out


def markdown(report: dict) -> str:
    run = report["run"]
    lines = [f"# train_memory {run['timestamp']} (commit {run.get('git_commit')}, backend {run['backend']})", "",
             f"VGG width 8 at input {run['input_size']}, batch {run['batch_size']}, {run['epochs']} epochs, "
             f"JPEGs of about {run['photo_size']}x{run['photo_size']}", *md_table_head(run)]
    for part in report.get("sizes", []):
        n = f"{part['images']:,}"
        lines.append(md_row({}, f"{n} images: peak RSS of the training process",
                            f"{part['peak_rss_bytes'] / 2**20:,.0f} MiB", part))
        lines.append(md_row({}, f"{n} images: their decoded pixels (what holding them in memory would add)",
                            f"{part['pixels_in_memory_would_be_bytes'] / 2**20:,.0f} MiB"))
        lines.append(md_row({}, f"{n} images: decoding into pixel files", f"{part['load_seconds']} s"))
        lines.append(md_row({}, f"{n} images: train images/s", part["train_images_per_s"]))
    if "peak_rss_growth" in report["targets"]:
        lines.append(md_row(report["targets"], "peak RSS, largest size / smallest",
                            report["targets"]["peak_rss_growth"]["value"], target_key="peak_rss_growth"))
    lines += [f"- {note}" for note in report.get("notes", [])] + [f"- error: {e}" for e in report.get("errors", [])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = BenchRun("train_memory", args, "imgq-bench-train-memory-",
                     detail=f" at most; sizes {args.sizes}, {args.epochs} epochs")
    report: dict = {"errors": [], "notes": [], "sizes": [], "targets": {}}
    head = {"sizes": args.sizes, "epochs": args.epochs, "batch_size": args.batch_size,
            "input_size": args.input_size, "photo_size": args.photo_size}
    with bench.measuring(report, bench.describe(head, {})):
        s = bench.setup_backend()
        report["run"] = bench.describe(head, {"decode_threads": s.decode_threads}, s)
        report["run"]["quiet"] = wait_for_quiet(args.wait_idle)
        catalog = small_catalog(max(args.sizes), args.photo_size)
        rows = [line.split(",") for line in (catalog / "items.csv").read_text().splitlines()[1:]]
        stack, http, _ = bench.start_stack()
        for n in args.sizes:
            manifest = write_manifest(bench.manifest_dir, f"memory-{n}", rows[:n], catalog_dir=catalog)
            report["sizes"].append(run_size(http, stack, manifest, n, args))
    peaks = [p["peak_rss_bytes"] for p in report["sizes"] if p.get("peak_rss_bytes")]
    if len(peaks) == len(args.sizes) >= 2:
        report["targets"]["peak_rss_growth"] = verdict(TARGETS, "peak_rss_growth", round(peaks[-1] / peaks[0], 3))
    for part in report["sizes"]:
        if part["cpu"].get("background_cpu_pct", 0) >= 20:
            report["notes"].append(f"other processes used {part['cpu']['background_cpu_pct']:.0f} % of the machine "
                                   f"during the {part['images']:,}-image job: its speed figures are low and noisy")
    text = markdown(report)
    print_summary(text, report["targets"])
    bench.write_report(report, text)
    return bench.close()


if __name__ == "__main__":
    sys.exit(main())
