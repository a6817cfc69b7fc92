#!/usr/bin/env python
"""Score-job throughput benchmark: how close does a real imgq score job come to a plain tf.data script?

One run compares, on this machine, the same photo-like JPEGs (about 600x800, benchmarks/photo_catalog.py)
scored by three models (benchmarks/bench_models.py: the demo VGG, a seed-size VGG of ~1.36 GFLOP per image
and MobileNetV3Small at 224x224), each registered through shared.services.model_registry:

  naive     the naive loop: per image Pillow decode (shared.images.imaging.load_for_model) + keras
            `model.predict(x[None])`, in this process, on a subset;
  celery    a naive one-task-per-image Celery set-up (benchmarks/naive_celery.py: one solo worker process
            that loads the model once and scores one image per task), one task per image, on a subset;
  tfdata_aa, tfdata_bl
            the yardstick, the best single-process tf.data script (benchmarks/yardsticks.tfdata_tuned): decode_jpeg
            with DCT scaling, resize (antialiased, or plain bilinear), uint8 batches into a traced function that
            casts, scales and runs the model, CSV out; dataset built and function traced before the clock. imgq
            is compared with the faster of the two variants (by median), reported as the column `tfdata`;
  postgres  a real imgq score job: `imgq serve` + `imgq worker --cpu` (LocalStack) on PostgreSQL + Redis, a
            manifest job submitted over HTTP with cache=false, timed from the POST to the job's finished_at;
  embedded  the same on imgq's embedded default (SQLite + the filesystem broker), a second stack started
            beside the first in the same run.

Every run but the naive ones scores the model's images `passes` times over (distinct ids, score cache off), so
each lasts at least `--min-seconds` (default 20) at the yardstick's speed, measured once before the rounds:
TensorFlow on 2 cores swings between fast and slow spells of several seconds. Each column is measured `--repeats`
times (default 5), interleaved (every column of every model in each round,
so a slow spell of TensorFlow or of the machine hits them alike), and reported as the median with the
minimum and maximum as its spread. Also per model, one run each: the model alone on pre-decoded batches
(worker.model_cache.LoadedModel.predict), decoding alone (load_for_model in the worker's thread count) and
worker.scoring.score_items in-process with no database or queue. And, on the first stack with the demo model:
  (e) the worker pool process's RSS over consecutive small jobs (peak flat);
  (f) the latency of GET /api/v1/jobs/<id> while a job runs.

Targets (reported as met / not met, never asserted), per model: postgres / tfdata >= 0.9 (medians and best runs),
embedded / tfdata >= 0.7, postgres / naive >= 10; RSS growth over the memory jobs < 5 %; p95 of GET
/api/v1/jobs/<id> < 20 ms. (These ratios replace the former (c) / min(model alone, decode alone) >= 0.8.)

Results: printed, and written to benchmarks/results/score_throughput-<timestamp>.json/.md and
benchmarks/results/score_throughput-latest.json, stamped with the commit (and files changed since), the
machine and the backends. The photo catalog is made once under benchmarks/.cache/catalogs/ and reused.

    python benchmarks/score_throughput.py            # full run (~20 min on 2 cores)
    python benchmarks/score_throughput.py --quick    # everything small, to check it works (~3 min)
    python benchmarks/score_throughput.py --backend embedded   # the embedded stack only

The backend, the run's environment, LocalStack, CPU accounting and the results files are benchmarks/common.py's
(shared with train_throughput.py): the postgres backend, the default when 127.0.0.1:5432 and Redis answer,
creates a fresh database imgq_bench_<pid> and drops it at the end; this benchmark's Redis databases (13 for
imgq's broker, 14 for the naive Celery app, unless given) are flushed first and last.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, however this file is run
from bench_models import MODELS, build_and_save, register
from common import (
    BenchRun,
    CpuWatch,
    add_backend_args,
    add_run_args,
    log,
    machine,
    new_parser,
    print_summary,
    wait_for_quiet,
    write_manifest,
)
from photo_catalog import PHOTO_DIR, ensure_photo_catalog, photo_rows
from score_report import markdown, summarise_columns
from score_stacks import Stack, embedded_env, prepare_embedded, run_job, run_latency, run_memory, start_stack, warm
from yardsticks import naive_loop, single_figures, tfdata_tuned, traced_uint8_infer

COLUMNS = ("naive", "celery", "tfdata_aa", "tfdata_bl", "postgres", "embedded")
YARDSTICKS = {"tfdata_aa": True, "tfdata_bl": False}  # column -> antialias
COLUMN_TITLES = {"naive": "naive loop", "celery": "naive Celery", "tfdata_aa": "tf.data, antialiased",
                 "tfdata_bl": "tf.data, bilinear", "tfdata": "tf.data, faster variant",
                 "postgres": "imgq PostgreSQL", "embedded": "imgq embedded"}
TARGETS = {
    "postgres_vs_tfdata": (">=", 0.9),
    "embedded_vs_tfdata": (">=", 0.7),
    "postgres_best_vs_tfdata_best": (">=", 0.9),  # the same targets on each column's fastest run
    "embedded_best_vs_tfdata_best": (">=", 0.7),
    "postgres_vs_naive": (">=", 10.0),
    "worker_rss_growth_pct": ("<", 5.0),
    "job_get_p95_ms": ("<", 20.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = new_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="everything small, to check the benchmark works")
    p.add_argument("--images", type=int, help="images per job and tf.data run, demo VGG (default 2000; --quick 300)")
    p.add_argument("--heavy-images", type=int,
                   help="images per job and tf.data run, seed-size VGG and MobileNet (default 500; --quick 100)")
    p.add_argument("--naive-images", type=int, help="images in the naive loop (default 100; --quick 20)")
    p.add_argument("--celery-images", type=int,
                   help="images (tasks) in the naive Celery run, demo VGG (default 300; --quick 30)")
    p.add_argument("--celery-heavy-images", type=int,
                   help="images (tasks) in the naive Celery run, the heavier models (default 100; --quick 20)")
    p.add_argument("--repeats", type=int, help="runs of every column, median reported (default 5; --quick 2)")
    p.add_argument("--min-seconds", type=float,
                   help="each run lasts at least this long at the yardstick's speed (default 20; --quick 2)")
    p.add_argument("--models", default="demo_vgg,seed_vgg,mobilenet", help="which models (comma-separated)")
    p.add_argument("--columns", default=",".join(COLUMNS), help="which columns (comma-separated)")
    add_backend_args(p)
    p.set_defaults(redis_url="redis://127.0.0.1:6379/13")
    p.add_argument("--celery-url", default="redis://127.0.0.1:6379/14",
                   help="Redis database of the naive Celery app (flushed first and last)")
    p.add_argument("--memory-jobs", type=int, help="consecutive jobs for (e) (default 20; --quick 4)")
    p.add_argument("--memory-job-images", type=int, help="images per memory job (default 200; --quick 64)")
    p.add_argument("--latency-requests", type=int,
                   help="minimum GET /jobs/<id> samples while a job runs for (f) (default 300; --quick 50)")
    add_run_args(p)
    args = p.parse_args(argv)
    q = args.quick
    args.images = args.images or (300 if q else 2000)
    args.heavy_images = args.heavy_images or (100 if q else 500)
    args.naive_images = args.naive_images or (20 if q else 100)
    args.celery_images = args.celery_images or (30 if q else 300)
    args.celery_heavy_images = args.celery_heavy_images or (20 if q else 100)
    args.repeats = max(1, args.repeats or (2 if q else 5))
    args.min_seconds = args.min_seconds if args.min_seconds is not None else (2.0 if q else 20.0)
    args.memory_jobs = args.memory_jobs or (4 if q else 20)
    args.memory_job_images = args.memory_job_images or (64 if q else 200)
    args.latency_requests = args.latency_requests or (50 if q else 300)
    args.model_seconds = 1.0 if q else 3.0  # timed seconds of the model-alone figure
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}: choose from {', '.join(MODELS)}")
    for c in args.columns:
        if c not in COLUMNS:
            p.error(f"unknown column {c!r}: choose from {', '.join(COLUMNS)}")
    if min(args.images, args.heavy_images, args.naive_images, args.celery_images, args.memory_job_images) < 1:
        p.error("image counts must be positive")
    return args


def images_for(args, key: str, column: str = "tfdata") -> int:
    """The images a column scores for a model: the naive loop and Celery a subset, the heavier models fewer."""
    if column == "naive":
        return args.naive_images
    if column == "celery":
        return args.celery_images if key == "demo_vgg" else args.celery_heavy_images
    return args.images if key == "demo_vgg" else args.heavy_images


class ScoreBench:
    """One run's state: settings, models, stacks, the naive Celery worker, and the figures so far."""

    def __init__(self, args, bench: BenchRun, report: dict):
        self.args, self.bench, self.report = args, bench, report
        self.s = None
        self.rows: list[list[str]] = []
        self.specs, self.keras, self.paths, self.loaded = {}, {}, {}, {}
        self.stacks: dict = {}  # label -> score_stacks.Stack
        self.embedded_home: Path | None = None
        self.embedded_settings = None
        self.celery = None
        self.infer = {}
        self.passes: dict[str, int] = {}  # model key -> times its images are scored over in one run
        self.runs: dict = {}  # model key -> column -> list of run dicts

    def manifest(self, name: str, rows: list[list[str]]) -> str:
        return write_manifest(self.bench.manifest_dir, name, rows, catalog_dir=PHOTO_DIR)

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        args = self.args
        self.s = s = self.bench.setup_backend()
        self.report["run"] = self.bench.describe({"models": args.models, "repeats": args.repeats}, {
            "machine": machine(),
            "settings": {"batch_size": s.batch_size, "decode_threads": s.decode_threads,
                         "chunk_size": s.chunk_size, "model_cache_size": s.model_cache_size},
            "imgq_preload": os.environ.get("IMGQ_PRELOAD", "(unset: 1)"),
            # (f) polls one job as fast as it answers: the per-token limit (1200/min by default) must not shape it
            "imgq_rate_limit": os.environ.setdefault("IMGQ_RATE_LIMIT", "100000 per minute"),
        }, s)
        self.report["run"]["quiet"] = wait_for_quiet(args.wait_idle)
        need = max(max(images_for(args, key, col) for key in args.models for col in COLUMNS), args.memory_job_images)
        self.report["run"]["catalog"] = ensure_photo_catalog(need)
        self.rows = photo_rows()
        if self.bench.backend_kind == "postgres" and "embedded" in args.columns:
            self.embedded_home = Path(tempfile.mkdtemp(prefix="imgq-bench-embedded-"))
            self.embedded_settings = prepare_embedded(self.embedded_home)
            self.report["run"]["embedded_database"] = self.embedded_settings.database_url.split("@")[-1]

    def prepare_models(self) -> None:
        """Build, save and register every model (in each stack's database); keep it loaded here too."""
        targets = [(self.s.database_url, self.s.model_store)]
        if self.embedded_settings is not None:
            targets.append((self.embedded_settings.database_url, self.embedded_settings.model_store))
        self.report["models"] = {}
        for key in self.args.models:
            spec = self.specs[key] = MODELS[key]
            model, path, info = build_and_save(spec, self.bench.home / "bench-models")
            versions = register(spec, path, targets)
            self.keras[key], self.paths[key] = model, path
            from worker.model_cache import LoadedModel

            self.loaded[key] = LoadedModel(versions[0], model)
            self.report["models"][key] = {**info, "images": images_for(self.args, key)}
            log(f"model {key}: {spec.builder}, {spec.input_size}x{spec.input_size}, pixel_scale {spec.pixel_scale}, "
                f"{info['gflop_per_image']} GFLOP per image (computed), {info['params']:,} parameters")
        import tensorflow as tf

        self.report["run"]["tensorflow"] = tf.__version__

    def single_figures(self) -> None:
        log("model alone, decode alone and score_items in-process (one run each):")
        for key in self.args.models:
            w = CpuWatch()
            figures = single_figures(self.loaded[key], self.specs[key], self.rows, PHOTO_DIR, self.s,
                                     images_for(self.args, key), self.args.model_seconds)
            self.report["models"][key]["parts"] = {**figures, "cpu": w.stop()}

    def start_services(self) -> None:
        """The naive Celery worker, the stacks, and a warm-up of every model on each."""
        cols = self.args.columns
        if "celery" in cols:
            os.environ["NAIVE_CELERY_URL"] = self.args.celery_url
            from naive_celery import NaiveCelery  # here: the module reads NAIVE_CELERY_URL when imported

            self.celery = NaiveCelery(self.bench.home / "logs" / "naive-celery.log")
            self.celery.start()
        t0 = time.perf_counter()
        if "postgres" in cols or "embedded" in cols:
            local, _, _ = self.bench.start_stack()
            self.stacks[self.bench.backend_kind] = Stack(self.bench.backend_kind, local, self.s.database_url)
        if self.embedded_home is not None:
            self.stacks["embedded"] = start_stack("embedded", embedded_env(self.embedded_home), self.embedded_home,
                                                  self.embedded_settings.database_url)
        warm_rows = self.rows[: 2 * self.s.batch_size]
        warm_manifest = self.manifest("bench-warm", warm_rows)
        for stack in self.stacks.values():
            for key in self.args.models:
                warm(stack, self.specs[key].name, warm_manifest)
        if self.celery is not None:
            for key in self.args.models:
                spec = self.specs[key]
                self.celery.run(self.photo_paths(4), self.paths[key], spec.input_size, spec.pixel_scale)
        log(f"stacks {', '.join(self.stacks)}{' and the naive Celery worker' if self.celery else ''} up and warm "
            f"in {time.perf_counter() - t0:.1f}s")

    def photo_paths(self, n: int) -> list[Path]:
        return [PHOTO_DIR / r[1] for r in self.rows[:n]]

    # ------------------------------------------------------------------ the columns

    def repeated_rows(self, key: str) -> list[list[str]]:
        """The model's images, `passes` times over, each time under other ids."""
        rows = self.rows[: images_for(self.args, key)]
        passes = self.passes.get(key, 1)
        return [[f"{r[0]}-p{p}" if passes > 1 else r[0], *r[1:]] for p in range(passes) for r in rows]

    def yardstick(self, key: str, column: str, round_no: int) -> dict:
        spec = self.specs[key]
        if key not in self.infer:
            self.infer[key] = traced_uint8_infer(self.keras[key], spec.input_size, spec.pixel_scale)
        out_csv = self.bench.home / "tfdata" / f"{key}-{column}-{round_no}.csv"
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        rows = self.repeated_rows(key)
        return tfdata_tuned(self.infer[key], [r[0] for r in rows], [PHOTO_DIR / r[1] for r in rows],
                            spec.input_size, out_csv, self.s.batch_size, YARDSTICKS[column])

    def calibrate(self) -> None:
        """Passes per model: enough that a yardstick run lasts --min-seconds (its first run also warms it up)."""
        for key in self.args.models:
            self.passes[key] = 1
            probe = self.yardstick(key, "tfdata_bl", -1)
            seconds_per_pass = probe["seconds"]
            self.passes[key] = max(1, -(-int(self.args.min_seconds * 1000) // max(1, int(seconds_per_pass * 1000))))
            self.report["models"][key]["passes"] = self.passes[key]
            log(f"  {key}: one pass {seconds_per_pass:.2f}s ({probe['images_per_s']} img/s): "
                f"{self.passes[key]} passes per run")

    def measure(self, key: str, column: str, round_no: int) -> dict | None:
        spec, n = self.specs[key], images_for(self.args, key)
        if column in YARDSTICKS:
            return self.yardstick(key, column, round_no)
        if column == "naive":
            return naive_loop(self.keras[key], self.photo_paths(images_for(self.args, key, column)),
                              self.loaded[key].preprocessing, self.s.max_image_pixels)
        if column == "celery":
            if self.celery is None:
                return None
            n = images_for(self.args, key, column)
            return self.celery.run(self.photo_paths(n), self.paths[key], spec.input_size, spec.pixel_scale,
                                   timeout=max(600.0, 2.0 * n))
        stack = self.stacks.get(column)
        if stack is None:
            return None
        rows = self.repeated_rows(key)
        manifest = self.manifest(f"bench-{key}-{len(rows)}", rows)
        return run_job(stack, spec.name, manifest, len(rows), timeout=max(300.0, len(rows) / 2))

    def faster_yardstick(self) -> None:
        """Column `tfdata`: the runs of the faster variant (by median) of each model, which imgq is compared with."""
        for key, columns in self.runs.items():
            variants = {c: _median([r["images_per_s"] for r in columns[c]]) for c in YARDSTICKS if columns.get(c)}
            if variants:
                faster = max(variants, key=lambda c: variants[c] or 0)
                columns["tfdata"] = columns[faster]
                self.report["models"][key]["yardstick"] = COLUMN_TITLES[faster]

    def rounds(self) -> None:
        for r in range(self.args.repeats):
            log(f"round {r + 1}/{self.args.repeats}")
            for key in self.args.models:
                for column in self.args.columns:
                    w = CpuWatch()
                    try:
                        run = self.measure(key, column, r)
                    except Exception as exc:  # one failed measurement must not cost the run's other figures
                        log(f"  {key:<9} {COLUMN_TITLES[column]:<16} failed: {type(exc).__name__}: {exc}")
                        self.report["errors"].append(f"{key} {column} round {r + 1}: {type(exc).__name__}: {exc}")
                        continue
                    if run is None:
                        continue
                    run["cpu"] = w.stop()
                    self.runs.setdefault(key, {}).setdefault(column, []).append(run)
                    log(f"  {key:<9} {COLUMN_TITLES[column]:<16} {run['images_per_s']} img/s "
                        f"({run['images']} images, {run['seconds']:.2f}s; others' CPU "
                        f"{run['cpu']['background_cpu_pct']:.0f} %)" + _breakdown_text(run))

    def memory_and_latency(self) -> None:
        """(e) and (f) on the first stack, with the first model (the demo VGG by default)."""
        if not self.stacks:
            return
        stack = next(iter(self.stacks.values()))
        key = self.args.models[0]
        name, a = self.specs[key].name, self.args
        t0 = time.perf_counter()
        for label in list(self.stacks)[1:]:  # the other stack would only add noise now
            self.stacks.pop(label).local.stop()
        if self.celery is not None:
            self.celery.stop()
            self.celery = None
        log(f"other stack and naive Celery worker stopped in {time.perf_counter() - t0:.1f}s")
        rate = _median([x["images_per_s"] for x in self.runs.get(key, {}).get(stack.label, [])]) or 100.0
        n_latency = max(images_for(a, key), int(rate * a.latency_requests * 0.03))
        reps = -(-n_latency // len(self.rows))
        manifest = self.manifest(f"bench-latency-{n_latency}", [[f"{r[0]}-{k}", r[1], r[2]] for k in range(reps)
                                                                for r in self.rows][:n_latency])
        w = CpuWatch()
        self.report["latency"] = run_latency(stack, name, manifest, n_latency, a.latency_requests,
                                             max(300.0, n_latency / 5))
        self.report["latency"].update(cpu=w.stop(), stack=stack.label, model=key)
        w = CpuWatch()
        self.report["memory"] = run_memory(stack, name, self.manifest, self.rows, a.memory_jobs, a.memory_job_images,
                                           timeout=max(120.0, a.memory_job_images / 2))
        self.report["memory"].update(cpu=w.stop(), stack=stack.label, model=key)

    def stop(self) -> None:
        """Everything but the BenchRun's own stack (BenchRun.measuring stops that one)."""
        if self.celery is not None:
            self.celery.stop()
        for stack in self.stacks.values():
            if stack.local is not self.bench.stack:
                stack.local.stop()

    def remove_embedded_home(self) -> None:
        """As BenchRun.close does for its IMGQ_HOME: kept with --keep or after an error."""
        if self.embedded_home is None:
            return
        if self.bench.ok and not self.args.keep:
            shutil.rmtree(self.embedded_home, ignore_errors=True)
        else:
            log(f"embedded IMGQ_HOME kept: {self.embedded_home}")


def _breakdown_text(run: dict) -> str:
    b = run.get("breakdown")
    if not b:
        return ""
    return (f"; {b['before_first_chunk_s']:.2f}s before the first chunk, {b['inside_chunks_s']:.2f}s in "
            f"{b['chunks']} chunks, {b['between_chunks_s']:.2f}s between, {b['after_last_chunk_s']}s after")


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    args = parse_args(argv)
    bench = BenchRun("score_throughput", args, "imgq-bench-",
                     detail=f" (demo VGG; {args.heavy_images} for the heavier models), "
                            f"models {', '.join(args.models)}, {args.repeats} repeats")
    report: dict = {"errors": []}
    failed_early = bench.describe({"models": args.models, "repeats": args.repeats}, {"settings": {}})
    run = ScoreBench(args, bench, report)
    with bench.measuring(report, failed_early):
        try:
            run.setup()
            run.prepare_models()
            run.single_figures()
            run.start_services()
            run.calibrate()
            run.rounds()
            run.faster_yardstick()
            run.memory_and_latency()
        except KeyboardInterrupt:  # still stop everything, drop the database and write what was measured
            raise RuntimeError("interrupted") from None
        finally:
            run.stop()
    summarise_columns(report, run.runs, TARGETS)

    text = markdown(report, (*COLUMNS, "tfdata"), COLUMN_TITLES)
    print_summary(text, report.get("targets", {}))
    bench.write_report(report, text)
    run.remove_embedded_home()
    return bench.close()


if __name__ == "__main__":
    sys.exit(main())
