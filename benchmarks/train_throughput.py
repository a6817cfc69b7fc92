#!/usr/bin/env python
"""Training throughput benchmark: how close does a real imgq train job come to a bare `model.fit`?

One run measures, on this machine:

  (a) images/s of a real train job: `imgq serve` + `imgq worker --cpu` (LocalStack), a train request
      POSTed to /api/v1/jobs/train (VGG, input 60, regression on the catalog's page views with
      target_transform log1p, batch 64, N epochs) on photo-like JPEGs (--catalog). Throughput comes from
      the job's own per-epoch `seconds` in GET /api/v1/jobs/<id>/epochs: train images per epoch / epoch
      seconds, epoch 1 excluded (it includes tracing). The job's wall time (POST -> finished_at) is
      reported too, with where it went (queue + claim, process start + data + epoch 1, epochs, evaluation
      + registration);
  (b) a bare `model.fit` in this process on the same tensors held in memory, through the job's own phase functions
      on (a)'s request: its Preprocessing (worker.training.run.preprocessing_for: 60x60 stretch, "raw"), its
      data (worker.training.data.prepare: the same split, uint8 pixels from the decoded-image cache the jobs
      filled, read from its pixel files into arrays, where the job reads them from the files a batch at a time),
      its model, tf.data pipelines (shuffle, batch, scale per batch, prefetch) and compilation
      (worker.training.fitting: new_model, make_datasets, plan_phases, fit), with no database, heartbeat,
      checkpoints or per-batch callback; timed the same way (on_epoch_begin -> on_epoch_end, which includes
      the validation pass, epoch 1 excluded);
  (extra) the same bare fit with a no-op `on_train_batch_end` callback: the job's EpochRecorder overrides
      that hook, which by itself turns off Keras' asynchronous batch callbacks and converts the logs to
      Python after every step; this separates that cost from the rest of the job's overhead;
  (c) the decoding a nightly fine-tune does on its second run: a second train job on the same data with
      base {"version": "<name>"}; its data stats (decode_seconds, cache_hits, cache_misses, load_seconds,
      from GET /api/v1/jobs/<id>, key "data") next to the first run's;
  (d) the whole job against a whole bare script: (a)'s wall time from the POST to finished_at (queue + claim,
      the training process's start, data loading with decoding and cache writes, model build, every epoch
      with its checkpoint and metrics row, holdout evaluation, registration) against benchmarks/bare_train.py
      run as a child process doing the same work with none of the service (start, read the manifest, decode
      the images in the same number of threads, the same split, model, pipeline and epochs, evaluate on the
      holdout, save the model file), timed from its start to its exit; reported as the ratio of rates, train
      images x epochs / wall seconds (the job's over the script's), with both breakdowns.

Targets (reported as met / not met, never asserted): (a)/(b) >= 0.9; the fine-tune's second run decodes
nothing (cache_misses == 0, i.e. all hits); (d) >= 0.9.

Results: printed, and written to benchmarks/results/train_throughput-<timestamp>.json/.md and
benchmarks/results/train_throughput-latest.json. The photo-like catalog is benchmarks/photo_catalog.py's (`--catalog
flat`: the synthetic one score_throughput.py uses)
(benchmarks/.cache/catalogs/, made once and reused); the decoded-image cache lives in the run's temporary
IMGQ_HOME, so the first job always starts cold.

    python benchmarks/train_throughput.py            # full run (2,000 images, 5 epochs; ~2 min on 2 idle cores)
    python benchmarks/train_throughput.py --quick    # smaller, to check it works
    python benchmarks/train_throughput.py --backend embedded   # SQLite + filesystem broker

What the benchmarks share (backend, environment, LocalStack, CPU accounting, results files) is in
benchmarks/common.py; its Backend says what the postgres backend creates and drops.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
import common
import photo_catalog
from common import (
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
    write_manifest,
)

MODEL_NAME = "bench-train-vgg60"
ARCHITECTURE = "vgg"
INPUT_SIZE = 60
WIDTH = 16

TARGETS = {
    "job_vs_bare_fit": (">=", 0.9),
    "fine_tune_cache_misses": ("<=", 0),
    "whole_job_vs_bare_script": (">=", 0.9),  # issue 20: the whole job, every phase kept, at 5 epochs
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a smaller run to check the benchmark works (300 images, 3 epochs)")
    p.add_argument("--images", type=int, help="catalog images in the dataset (default 2000; --quick 300)")
    p.add_argument("--epochs", type=int, help="epochs per train job and for the bare fit (default 5; --quick 3)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the jobs and the bare fit")
    p.add_argument("--catalog", choices=("photos", "flat"), default="photos",
                   help="photos: photo-like ~600x800 JPEGs (benchmarks/photo_catalog.py, the default); flat: the "
                        "synthetic catalog of score_throughput.py, whose large flat areas decode faster")
    add_backend_args(p)
    p.add_argument("--no-fine-tune", action="store_true", help="skip (c), the second (fine-tune) job")
    p.add_argument("--no-bare-script", action="store_true", help="skip (d), the whole bare script")
    p.add_argument("--no-extra", action="store_true",
                   help="skip the extra bare fit with a per-batch callback (what the job's EpochRecorder costs Keras)")
    p.add_argument("--job-timeout", type=float, default=900.0, help="seconds to wait for each train job")
    add_run_args(p)
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (300 if q else 2000)
    args.epochs = args.epochs or (3 if q else 5)
    if args.images < 50:
        p.error("--images must be at least 50 (the validation split must not be empty)")
    if args.epochs < 2:
        p.error("--epochs must be at least 2 (epoch 1 is excluded from the throughput)")
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    return args


# --------------------------------------------------------------------------- dataset


def dataset_ref(manifest_rel: str) -> dict:
    return {"path": manifest_rel, "image_column": "image", "id_column": "id", "target_columns": ["pageviews"]}


def train_body(manifest_rel: str, args) -> dict:
    """(a): a new VGG regressor. Resize mode and pixel scale are left to the job (run.preprocessing_for)."""
    return {"model": MODEL_NAME, "task": "regression", "dataset": dataset_ref(manifest_rel),
            "base": {"architecture": ARCHITECTURE, "width": WIDTH}, "input_size": INPUT_SIZE,
            "target_transform": "log1p", "batch_size": args.batch_size, "epochs": args.epochs, "seed": 0}


def fine_tune_body(manifest_rel: str, args) -> dict:
    """(c): the nightly fine-tune: same name, same data, base = the production version of the name."""
    return {"model": MODEL_NAME, "task": "regression", "dataset": dataset_ref(manifest_rel),
            "base": {"version": MODEL_NAME}, "target_transform": "log1p", "batch_size": args.batch_size,
            "epochs": args.epochs, "seed": 0}


# --------------------------------------------------------------------------- train jobs over HTTP


def epoch_created_at(job_id: str) -> dict[int, float]:
    """When each epoch's metrics row was written (TrainMetric.created_at), for the wall-time breakdown."""
    from sqlalchemy import select

    from shared.core.db import session_scope
    from shared.core.tables import TrainMetric

    with session_scope() as s:
        return {e: parse_ts(t) for e, t in s.execute(
            select(TrainMetric.epoch, TrainMetric.created_at).where(TrainMetric.job_id == job_id))}


def epoch_rate(train_images: int, seconds: list[float]) -> dict:
    """Images/s from per-epoch seconds, epoch 1 excluded: total over epochs 2..N, plus the per-epoch figures."""
    later = seconds[1:]
    out = {"train_images_per_epoch": train_images, "epoch_seconds": [round(x, 3) for x in seconds],
           "epoch1_seconds": round(seconds[0], 3) if seconds else None}
    if not later or train_images <= 0:
        out["images_per_s"] = None
        return out
    rates = [train_images / x for x in later if x > 0]
    out.update(images_per_s=round(train_images * len(later) / sum(later), 1),
               per_epoch_images_per_s=[round(r, 1) for r in rates],
               median_epoch_images_per_s=round(statistics.median(rates), 1),
               best_epoch_images_per_s=round(max(rates), 1),
               epoch1_extra_seconds=round(seconds[0] - statistics.median(later), 3))
    return out


def run_train_job(http, stack, body: dict, label: str, timeout: float) -> dict:
    t_submit = time.time()
    resp = http.post(stack.url("/api/v1/jobs/train"), json=body, timeout=120)
    t_accepted = time.time()
    if resp.status_code != 202:
        raise RuntimeError(f"{label}: train submit failed: {resp.status_code} {resp.text[:800]}")
    job_id = resp.json()["id"]
    log(f"{label}: job {job_id} accepted (POST took {1000 * (t_accepted - t_submit):.0f} ms)")
    # polled once a second: the poll itself must not cost the training CPU
    final = wait_final(http, stack, job_id, timeout, poll=1.0, what="train job", log_phases=True)
    t_seen = time.time()
    metrics = http.get(stack.url(f"/api/v1/jobs/{job_id}/epochs"), timeout=30).json()
    epochs = metrics.get("epochs") or []
    data = final.get("data") or {}
    out = {"job_id": job_id, "status": final["status"], "error": final.get("error"),
           "model": final.get("model"), "data": data, "holdout_metrics": final.get("holdout_metrics"),
           "attempts": (final.get("progress") or {}).get("attempts"),
           "submit_http_ms": round(1000 * (t_accepted - t_submit), 1), "epochs": epochs}
    if final["status"] != "succeeded":
        tail = ""
        logf = Path(os.environ["IMGQ_HOME"]) / "train-logs" / f"{job_id}.log"
        if logf.exists():
            tail = logf.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{label}: train job {job_id} ended {final['status']}: {final.get('error')}\n{tail}")

    train_n = int((data.get("split_sizes") or {}).get("train") or 0)
    out["throughput"] = epoch_rate(train_n, [float(e["seconds"]) for e in sorted(epochs, key=lambda e: e["epoch"])])
    started = parse_ts(final["timings"]["started_at"])
    finished = parse_ts(final["timings"]["finished_at"])
    end = finished or t_seen
    out["wall_seconds"] = round(end - t_submit, 3)
    out["wall_images_per_s"] = round(train_n * len(epochs) / (end - t_submit), 1) if train_n else None
    created = epoch_created_at(job_id)
    if started and created:
        first, last = created[min(created)], created[max(created)]
        ep = out["throughput"]["epoch_seconds"]
        load = float(data.get("load_seconds") or 0.0)
        out["breakdown"] = {
            "submit_to_started_s": round(started - t_submit, 3),  # queue + claim by the worker
            # process start (python, TF, keras imports), data load, model build, epoch 1 (tracing), checkpoint
            "started_to_epoch1_written_s": round(first - started, 3),
            "of_which_load_data_s": round(load, 3),
            "of_which_epoch1_s": ep[0] if ep else None,
            "of_which_rest_s": round(first - started - load - (ep[0] if ep else 0.0), 3),
            "epoch1_to_last_epoch_written_s": round(last - first, 3),
            "of_which_epoch_seconds_s": round(sum(ep[1:]), 3),  # the rest: checkpoint saves + DB writes
            "last_epoch_to_finished_s": round(end - last, 3),  # evaluation on the holdout + registration
        }
    tp = out["throughput"]
    log(f"{label}: {final['status']} in {out['wall_seconds']:.1f}s wall; {tp['images_per_s']} images/s over epochs "
        f"2..{len(epochs)} ({train_n} train images/epoch, epoch seconds {tp['epoch_seconds']})")
    shown = ("load_seconds", "decode_seconds", "cache_hits", "cache_misses", "split_sizes")
    log(f"{label}: data {json.dumps({k: data.get(k) for k in shown})}")
    if "breakdown" in out:
        log(f"{label}: wall breakdown {json.dumps(out['breakdown'])}")
    return out


def version_signature(http, stack, name: str) -> list[dict]:
    try:
        body = http.get(stack.url(f"/api/v1/models/{name}/versions"), timeout=30).json()
    except Exception as exc:  # informative only
        return [{"error": str(exc)}]
    keep = ("version", "input_height", "input_width", "resize_mode", "pixel_scale", "target_transform", "aliases")
    return [{k: v.get(k) for k in keep if k in v} for v in body.get("versions", [])]


# --------------------------------------------------------------------------- (b) bare model.fit


def bare_fit(manifest_rel: str, args, s, with_batch_hook: bool = True) -> dict:
    """(a)'s request through the job's own phase functions, in this process and with none of the service: its
    preprocessing (worker.training.run.preprocessing_for), its data load through the decoded-image cache the jobs
    filled (worker.training.data.prepare), its model, pipelines, compilation and fit (worker.training.fitting:
    new_model, make_datasets, plan_phases, fit); no database, heartbeat, checkpoints or per-batch callback."""
    from worker.device import configure_tensorflow

    configure_tensorflow()
    import keras

    from shared.schemas.training import TrainRequest
    from worker.training import data as training_data
    from worker.training import fitting
    from worker.training.run import preprocessing_for

    req = TrainRequest.model_validate(train_body(manifest_rel, args))
    prep = preprocessing_for(req, None)
    with tempfile.TemporaryDirectory(prefix="bare-fit-pixels-") as pixels:
        data = training_data.prepare(req, s, prep, folder=Path(pixels))  # every entry is in the jobs' cache: all hits
        for split in data.splits.values():
            split.x = split.x[:]  # in memory: the bare fit's tensors, where the job reads its pixel files
    stats, train = data.stats, data.splits["train"]
    log(f"(b) data: {len(train.ids)} train / {len(data.splits['validation'].ids)} validation tensors "
        f"({train.x.dtype}) in {stats['load_seconds']:.2f}s (cache hits {stats['cache_hits']}, "
        f"misses {stats['cache_misses']})")

    class EpochTimer(keras.callbacks.Callback):  # the job's EpochRecorder times the same span
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.logs: list[dict] = []
            self._t = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.monotonic() - self._t)
            self.logs.append({k: float(v) for k, v in (logs or {}).items()})

    class BatchHook(keras.callbacks.Callback):
        """Does what EpochRecorder.on_train_batch_end costs Keras without its work: merely overriding the
        hook turns off Keras' asynchronous batch callbacks and converts the logs to Python every step."""

        def on_train_batch_end(self, batch, logs=None):
            time.monotonic()

    def fit_once(label: str, batch_hook: bool) -> dict:
        fitting.seed(req.seed)
        model = fitting.new_model(req, None, data, prep, s)
        timer = EpochTimer()
        w = CpuWatch()
        t0 = time.perf_counter()
        fitting.fit(model, req, fitting.plan_phases(req, learned_weights=False), fitting.make_datasets(req, data, prep),
                    [timer, *([BatchHook()] if batch_hook else [])],
                    steps=fitting.steps_per_epoch(len(train.ids), req.batch_size), start_epoch=0)
        losses = [e["loss"] for e in timer.logs]
        out = {"throughput": epoch_rate(len(train.ids), timer.seconds),
               "fit_seconds": round(time.perf_counter() - t0, 3), "cpu": w.stop(),
               "loss_per_epoch": losses, "final_loss": round(losses[-1], 4),
               "final_val_loss": round(timer.logs[-1]["val_loss"], 4), "params": int(model.count_params())}
        tp = out["throughput"]
        log(f"{label}: {tp['images_per_s']} images/s over epochs 2..{args.epochs} "
            f"(epoch seconds {tp['epoch_seconds']})")
        return out

    out = fit_once("(b) bare model.fit", batch_hook=False)
    out.update(load_seconds=stats["load_seconds"],
               cache={"hits": stats["cache_hits"], "misses": stats["cache_misses"],
                      "decode_seconds": stats["decode_seconds"]},
               split_sizes=stats["split_sizes"],
               preprocessing={"height": prep.height, "width": prep.width, "resize_mode": prep.resize_mode,
                              "pixel_scale": prep.pixel_scale},
               tensor_dtype=str(train.x.dtype))
    if with_batch_hook:
        out["with_batch_hook"] = fit_once("(extra) bare model.fit + a no-op on_train_batch_end", batch_hook=True)
    return out


# --------------------------------------------------------------------------- (d) the whole bare script


def bare_script(manifest_rel: str, args, s, out_dir: Path) -> dict:
    """benchmarks/bare_train.py as a child process, timed from just before its start to its exit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bare_train.py"),
           "--roots", os.pathsep.join(str(r) for r in s.data_roots), "--manifest", manifest_rel,
           "--salt", MODEL_NAME, "--out", str(out_dir / "bare.keras"), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--input-size", str(INPUT_SIZE), "--architecture", ARCHITECTURE,
           "--width", str(WIDTH), "--threads", str(s.decode_threads), "--max-pixels", str(s.max_image_pixels)]
    w = CpuWatch()
    t_start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.job_timeout)
    t_exit = time.time()
    cpu = w.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"(d) bare script exited with code {proc.returncode}: {proc.stderr[-2000:]}")
    body = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = t_exit - t_start
    work = body["split_sizes"]["train"] * len(body["epoch_seconds"])  # train images x epochs
    phases = {"process_start": round(body["t0"] - t_start, 3), **body["phases_s"],
              "exit": round(t_exit - body["end"], 3)}
    out = {"wall_seconds": round(wall, 3), "images_x_epochs": work, "wall_images_per_s": round(work / wall, 1),
           "phases_s": phases, "throughput": epoch_rate(body["split_sizes"]["train"], body["epoch_seconds"]),
           "loss_per_epoch": body["loss_per_epoch"], "split_sizes": body["split_sizes"],
           "holdout_metrics": body["holdout_metrics"], "model_bytes": (out_dir / "bare.keras").stat().st_size,
           "cpu": cpu}
    log(f"(d) bare script: {wall:.1f}s start to exit ({out['wall_images_per_s']} img/s over all epochs); phases "
        f"{json.dumps(phases)}")
    return out


def whole_comparison(report: dict) -> dict | None:
    """(d): the whole job's rate (train images x epochs / POST -> finished_at) over the bare script's."""
    job, script = report.get("job") or {}, report.get("bare_script") or {}
    if not (job.get("wall_seconds") and script.get("wall_seconds") and job.get("throughput")):
        return None
    job_work = job["throughput"]["train_images_per_epoch"] * len(job.get("epochs") or [])
    job_rate = job_work / job["wall_seconds"]
    out = {"job_images_per_s": round(job_rate, 1), "bare_script_images_per_s": script["wall_images_per_s"],
           "ratio": round(job_rate / (script["images_x_epochs"] / script["wall_seconds"]), 3),
           "extra_seconds": round(job["wall_seconds"] - script["wall_seconds"], 2)}
    job_losses = [e.get("loss") for e in sorted(job.get("epochs") or [], key=lambda e: e["epoch"])]
    if job_losses and script.get("loss_per_epoch"):
        out["max_relative_loss_difference"] = max(abs(a - b) / max(abs(a), 1e-9)
                                                  for a, b in zip(job_losses, script["loss_per_epoch"]))
    out["holdout_mae"] = {"job": (job.get("holdout_metrics") or {}).get("mae"),
                          "bare_script": (script.get("holdout_metrics") or {}).get("mae")}
    return out


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    run = report["run"]
    a, b, c = report.get("job", {}), report.get("bare_fit", {}), report.get("fine_tune", {})
    t = report.get("targets", {})

    row = partial(md_row, t)
    lines = [
        f"# train_throughput — {run['timestamp']}",
        "",
        f"backend {run['backend']}, {run['cpus']} CPUs, {run['images']} images ({ARCHITECTURE} width {WIDTH}, "
        f"input {INPUT_SIZE}, batch {run['batch_size']}, {run['epochs']} epochs), commit {run.get('git_commit', '?')}"
        f"{' (quick)' if run['quick'] else ''}, total {run.get('seconds_total', '?')} s; catalog: "
        f"{(run.get('catalog') or {}).get('kind', 'flat')}",
    ]
    lines += md_table_head(run)
    if a.get("throughput"):
        tp = a["throughput"]
        lines.append(row(f"(a) train job, epochs 2..{run['epochs']} ({tp['train_images_per_epoch']} img/epoch)",
                         f"{tp['images_per_s']} img/s", a))
        lines.append(row("(a) epoch seconds (epoch 1 with tracing)",
                         ", ".join(f"{x:.2f}" for x in tp["epoch_seconds"])))
        lines.append(row("(a) job wall time, POST -> finished_at", f"{a['wall_seconds']:.1f} s "
                         f"({a['wall_images_per_s']} img/s over all epochs)"))
        if a.get("breakdown"):
            bd = a["breakdown"]
            lines.append(row("(a) wall: queue+claim / start+data+epoch 1 / epochs 2..N / eval+register",
                             f"{bd['submit_to_started_s']:.1f} / {bd['started_to_epoch1_written_s']:.1f} / "
                             f"{bd['epoch1_to_last_epoch_written_s']:.1f} / {bd['last_epoch_to_finished_s']:.1f} s"))
    if b.get("throughput"):
        tp = b["throughput"]
        lines.append(row(f"(b) bare model.fit, epochs 2..{run['epochs']}", f"{tp['images_per_s']} img/s", b))
        lines.append(row("(b) epoch seconds", ", ".join(f"{x:.2f}" for x in tp["epoch_seconds"])))
        hook = b.get("with_batch_hook", {})
        if hook.get("throughput"):
            lines.append(row("(extra) bare fit + no-op on_train_batch_end (as the job's recorder)",
                             f"{hook['throughput']['images_per_s']} img/s", hook))
    if "job_vs_bare_fit" in t:
        lines.append(row("(a) / (b)", t["job_vs_bare_fit"]["value"], None, "job_vs_bare_fit"))
    if "job_vs_bare_fit_best_epochs" in report:
        lines.append(row("(a) / (b), best epoch of each (less sensitive to bursts of load)",
                         report["job_vs_bare_fit_best_epochs"]))
    same = report.get("bare_fit_same_training_as_job")
    if same:
        lines.append(row("(b) trains exactly as (a): per-epoch losses agree",
                         f"{'yes' if same['same'] else 'NO'} "
                         f"(max rel. diff {same['max_relative_loss_difference']:.1e})"))
    first = a.get("data") or {}
    second = c.get("data") or {}
    if first:
        lines.append(row("(c) 1st run: decode s / hits / misses / load s",
                         f"{first.get('decode_seconds')} / {first.get('cache_hits')} / {first.get('cache_misses')} / "
                         f"{first.get('load_seconds')}"))
    if second:
        lines.append(row("(c) 2nd run (fine-tune): decode s / hits / misses / load s",
                         f"{second.get('decode_seconds')} / {second.get('cache_hits')} / "
                         f"{second.get('cache_misses')} / {second.get('load_seconds')}", c))
    if "fine_tune_cache_misses" in t:
        lines.append(row("(c) 2nd run cache misses", t["fine_tune_cache_misses"]["value"], None,
                         "fine_tune_cache_misses"))
    if c.get("throughput"):
        lines.append(row("(c) fine-tune job, epochs 2..N", f"{c['throughput']['images_per_s']} img/s, "
                         f"wall {c['wall_seconds']:.1f} s"))
    lines += markdown_whole(report, row)
    lines.append("")
    lines.append("decode_seconds is summed over the decode threads; load_seconds is the wall time of the job's "
                 "data load (read + hash every file, then decode or read the cache entry). Epoch seconds "
                 "(job and bare fit) run from on_epoch_begin to on_epoch_end and include the validation pass. "
                 "(d)'s rates are train images x epochs over the whole wall time: the job's from the POST to "
                 "finished_at, the bare script's from just before its process starts to its exit.")
    if report.get("notes"):
        lines += ["", "Notes:", *[f"- {x}" for x in report["notes"]]]
    if report.get("errors"):
        lines += ["", "Errors:", *[f"- {x.splitlines()[0] if x else x}" for x in report["errors"]]]
    return "\n".join(lines) + "\n"


def markdown_whole(report: dict, row) -> list[str]:
    """(d)'s rows: the bare script, its phases, and the whole job over it."""
    script, whole = report.get("bare_script") or {}, report.get("whole_job_vs_bare_script") or {}
    if not script:
        return []
    ph = script["phases_s"]
    lines = [row("(d) bare script, start -> exit", f"{script['wall_seconds']:.1f} s "
                 f"({script['wall_images_per_s']} img/s over all epochs)", script),
             row("(d) script: start / imports / data / build / fit / evaluate / save / exit",
                 " / ".join(f"{ph.get(k, 0):.1f}" for k in ("process_start", "imports", "data", "build", "fit",
                                                             "evaluate", "save", "exit")) + " s"),
             row("(d) script, epochs 2..N (as (b))", f"{script['throughput']['images_per_s']} img/s")]
    job_phases = ((report.get("job") or {}).get("data") or {}).get("phase_seconds")
    if job_phases:  # the training process's own account (worker/training/run.py PhaseClock)
        lines.append(row("(d) job's trainer: " + " / ".join(k.replace("_", " ") for k in job_phases),
                         " / ".join(f"{v:.1f}" for v in job_phases.values()) + " s"))
    if whole:
        lines.append(row("(d) whole job / whole bare script, img/s over all epochs",
                         f"{whole['ratio']} ({whole['job_images_per_s']} / {whole['bare_script_images_per_s']}; "
                         f"job {whole['extra_seconds']:+.1f} s)"))
        if "max_relative_loss_difference" in whole:
            mae = whole["holdout_mae"]
            maes = " / ".join("?" if v is None else f"{v:.4g}" for v in (mae["job"], mae["bare_script"]))
            lines.append(row("(d) trains as (a): max rel. diff of epoch losses; holdout MAE job / script",
                             f"{whole['max_relative_loss_difference']:.1e}; {maes}"))
    return lines


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = BenchRun("train_throughput", args, "imgq-bench-train-",
                     detail=f", {args.epochs} epochs, batch {args.batch_size}")
    report: dict = {"errors": [], "notes": []}
    failed_early = bench.describe({"epochs": args.epochs, "batch_size": args.batch_size}, {})
    with bench.measuring(report, failed_early):
        s = bench.setup_backend()
        report["run"] = bench.describe({
            "epochs": args.epochs, "batch_size": args.batch_size, "model": MODEL_NAME,
            "architecture": ARCHITECTURE, "width": WIDTH, "input_size": INPUT_SIZE,
        }, {"decode_threads": s.decode_threads}, s)
        if hasattr(common, "machine"):
            report["run"]["machine"] = common.machine()
        report["run"]["quiet"] = wait_for_quiet(args.wait_idle)
        if args.catalog == "photos":
            report["run"]["catalog"] = {"kind": "photos", **photo_catalog.ensure_photo_catalog(args.images)}
            rows, folder = photo_catalog.photo_rows()[: args.images], photo_catalog.PHOTO_DIR
        else:
            ensure_catalog(args.images)
            report["run"]["catalog"] = {"kind": "flat"}
            rows, folder = catalog_rows()[: args.images], common.CATALOG_DIR
        manifest = write_manifest(bench.manifest_dir, f"train-{args.images}", rows, folder)

        # ---- the real stack: (a) then (c)
        stack, http, t0 = bench.start_stack()
        log(f"stack up (web + worker) in {time.perf_counter() - t0:.1f}s")

        w = CpuWatch()
        report["job"] = run_train_job(http, stack, train_body(manifest, args), "(a)", args.job_timeout)
        report["job"]["cpu"] = w.stop()
        if not args.no_fine_tune:
            w = CpuWatch()
            report["fine_tune"] = run_train_job(http, stack, fine_tune_body(manifest, args), "(c)", args.job_timeout)
            report["fine_tune"]["cpu"] = w.stop()
        report["versions"] = version_signature(http, stack, MODEL_NAME)
        stack.stop()  # (b) and (d) get the machine to themselves, as the job had (an idle web front and worker aside)

        if not args.no_bare_script:  # (d) first: the page cache aside, it starts as cold as the job did
            report["bare_script"] = bare_script(manifest, args, s, bench.home / "bare-script")
        # ---- (b) the bare fit, on the cached tensors the jobs left behind
        report["bare_fit"] = bare_fit(manifest, args, s, with_batch_hook=not args.no_extra)

    # ---- ratios, checks and targets (figures only: a missed target never fails the run)
    targets = {}
    a_rate = report.get("job", {}).get("throughput", {}).get("images_per_s")
    b_rate = report.get("bare_fit", {}).get("throughput", {}).get("images_per_s")
    if a_rate and b_rate:
        targets["job_vs_bare_fit"] = verdict(TARGETS, "job_vs_bare_fit", round(a_rate / b_rate, 3))
        a_med = report["job"]["throughput"].get("median_epoch_images_per_s")
        b_med = report["bare_fit"]["throughput"].get("median_epoch_images_per_s")
        if a_med and b_med:
            report["job_vs_bare_fit_median_epochs"] = round(a_med / b_med, 3)
    first = report.get("job", {}).get("data") or {}
    second = report.get("fine_tune", {}).get("data") or {}
    if second:
        targets["fine_tune_cache_misses"] = verdict(TARGETS, "fine_tune_cache_misses", second.get("cache_misses"))
        report["fine_tune_vs_first"] = {
            k: {"first": first.get(k), "second": second.get(k),
                "ratio": round(second[k] / first[k], 4) if first.get(k) and second.get(k) is not None else None}
            for k in ("decode_seconds", "load_seconds", "cache_hits", "cache_misses")}
    job_sizes = (first or {}).get("split_sizes")
    bare_sizes = report.get("bare_fit", {}).get("split_sizes")
    if job_sizes and bare_sizes and job_sizes != bare_sizes:
        report["notes"].append(f"split sizes differ: job {job_sizes}, bare fit {bare_sizes}")
    bare_cache = report.get("bare_fit", {}).get("cache") or {}
    if bare_cache.get("misses"):
        report["notes"].append(f"the bare fit missed the job's cache {bare_cache['misses']} times: its preprocessing "
                               "key differs from the job's")
    job_losses = [e.get("loss") for e in sorted(report.get("job", {}).get("epochs") or [], key=lambda e: e["epoch"])]
    bare_losses = report.get("bare_fit", {}).get("loss_per_epoch")
    if job_losses and bare_losses:
        # same model, seeds, tensors and shuffling: the losses should agree to float32 round-off
        diff = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(job_losses, bare_losses))
        report["bare_fit_same_training_as_job"] = {"max_relative_loss_difference": diff,
                                                   "same": len(job_losses) == len(bare_losses) and diff < 1e-3}
        if not report["bare_fit_same_training_as_job"]["same"]:
            report["notes"].append(f"the bare fit's per-epoch losses differ from the job's (max relative difference "
                                   f"{diff:.2e}): it may not train on the same tensors")
    if a_rate and b_rate:
        a_best = report["job"]["throughput"].get("best_epoch_images_per_s")
        b_best = report["bare_fit"]["throughput"].get("best_epoch_images_per_s")
        if a_best and b_best:
            report["job_vs_bare_fit_best_epochs"] = round(a_best / b_best, 3)
    for label, part in (("(a)", report.get("job")), ("(b)", report.get("bare_fit")), ("(d)", report.get("bare_script")),
                        ("(extra)", (report.get("bare_fit") or {}).get("with_batch_hook")),
                        ("(c)", report.get("fine_tune"))):
        bg = ((part or {}).get("cpu") or {}).get("background_cpu_pct")
        if bg is not None and bg >= 20:
            report["notes"].append(f"other processes used {bg:.0f} % of the machine during {label}: its figures are "
                                   "low and noisy, and ratios across phases unreliable")
    report["whole_job_vs_bare_script"] = whole_comparison(report)
    diff = (report["whole_job_vs_bare_script"] or {}).get("max_relative_loss_difference")
    if diff is not None and diff >= 1e-3:
        report["notes"].append(f"the bare script's per-epoch losses differ from the job's (max relative difference "
                               f"{diff:.2e}): it may not train on the same tensors")
    whole_ratio = (report["whole_job_vs_bare_script"] or {}).get("ratio")
    if whole_ratio is not None:
        targets["whole_job_vs_bare_script"] = verdict(TARGETS, "whole_job_vs_bare_script", whole_ratio)
    report["targets"] = targets

    text = markdown(report)
    print_summary(text, targets)
    bench.write_report(report, text)
    return bench.close()


if __name__ == "__main__":
    sys.exit(main())
