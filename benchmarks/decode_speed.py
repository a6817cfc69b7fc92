"""Decode + resize speed of JPEG photos: shared.images.imaging.load_for_model with Pillow alone and with its fast
JPEG path (simplejpeg), against a bare simplejpeg + preprocess loop and TensorFlow's decoder.

Usage: .venv/bin/python benchmarks/decode_speed.py [--images 300] [--repeats 3] [--no-tf] [--quick]

Phases:
  1. photos: ~600x800 JPEGs made in memory from the photos shipped with scikit-learn and scikit-image (random
     crops, rescales and flips; quality 88-92; a quarter progressive, a quarter with an EXIF orientation 2-8,
     a few greyscale). Nothing is downloaded.
  2. agreement: the fast path's model inputs and Geometry against the Pillow path's, for every photo and
     target (max |difference| in 0..1 units, and how many are bit-identical); TensorFlow's for comparison.
  3. speed: images/s for targets 60, 128 and 224 (stretch and letterbox) with 1 and 2 threads, median of the
     repeats. Columns:
       pillow        load_for_model(..., fast_jpeg=False): the path before the fast decoder
       fast          load_for_model(...): Pillow opens, simplejpeg decodes JPEG pixels
       simplejpeg    bare bound: simplejpeg.decode_jpeg at the draft scale + preprocess (no EXIF, no checks)
       tf            tf.io.decode_jpeg(ratio=..., INTEGER_ACCURATE) + tf.image.resize(antialias) + /255,
                     eagerly, per image, as a decode thread would call it (its ratio precomputed, no EXIF)
  4. GIL: 224 stretch with 2 threads while another Python thread keeps the GIL busy half the time; how fast
     each decoder goes, and how much of its work the busy thread still gets done.

Results: benchmarks/results/decode_speed-<timestamp>.json and .md (commit, machine, versions). Never asserts.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
import common

TARGETS = [(side, mode) for side in (60, 128, 224) for mode in ("stretch", "letterbox")]
MAX_PIXELS = 10**8


# --------------------------------------------------------------------------- 1. photos


def source_photos() -> list[np.ndarray]:
    """The photos shipped with scikit-learn and scikit-image (uint8 HxWx3 or HxW), skipping any missing."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "camera", "moon"):
        try:
            photos.append(np.asarray(getattr(skdata, name)()))
        except (ImportError, OSError, ValueError) as exc:  # missing here (fetching would download it): skip
            common.log(f"  skipping skimage.data.{name}: {type(exc).__name__}")
    return photos


def make_jpegs(n: int, seed: int = 0) -> list[dict]:
    """`n` photo-like JPEGs of about 600x800 (portrait or landscape), each {"data", "kind", "orientation"}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = source_photos()
    out = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (int(rng.integers(560, 641)), int(rng.integers(760, 841)))
        img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size if rng.random() < 0.5 else size[::-1],
                                                            Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.06:
            img = img.convert("L")
        progressive = bool(rng.random() < 0.25)
        orientation = int(rng.integers(2, 9)) if rng.random() < 0.25 else 1
        kwargs = {"quality": int(rng.integers(88, 93)), "progressive": progressive}
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif
        buf = io.BytesIO()
        img.save(buf, "JPEG", **kwargs)
        kind = ("grey" if img.mode == "L" else "colour") + (" progressive" if progressive else " baseline")
        out.append({"data": buf.getvalue(), "kind": kind, "orientation": orientation, "size": img.size})
    return out


# --------------------------------------------------------------------------- decoders


def pillow_decoder(prep):
    from shared.images.imaging import load_for_model

    return lambda photo: load_for_model(photo["data"], prep, max_pixels=MAX_PIXELS, fast_jpeg=False)[0]


def fast_decoder(prep):
    from shared.images.imaging import load_for_model

    return lambda photo: load_for_model(photo["data"], prep, max_pixels=MAX_PIXELS, fast_jpeg=True)[0]


def draft_scale(size: tuple[int, int], side: int) -> int:
    """The JPEG DCT scale denominator load_for_model's draft picks for a square `side` request."""
    scale = min(size[0] // side, size[1] // side)
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def bare_simplejpeg_decoder(prep):
    import simplejpeg
    from PIL import Image

    from shared.images.imaging import preprocess

    side = max(prep.width, prep.height)

    def run(photo):
        s = draft_scale(photo["size"], side)
        w, h = photo["size"]
        pixels = simplejpeg.decode_jpeg(photo["data"], colorspace="RGB", min_width=-(-w // s), min_height=-(-h // s))
        return preprocess(Image.fromarray(pixels), prep)[0]

    return run


def tf_decoder(prep):
    import tensorflow as tf

    side = max(prep.width, prep.height)

    def run(photo):
        x = tf.io.decode_jpeg(photo["data"], channels=3, ratio=draft_scale(photo["size"], side),
                              dct_method="INTEGER_ACCURATE")
        if prep.resize_mode == "stretch":
            x = tf.image.resize(x, (prep.height, prep.width), antialias=True)
        else:
            x = tf.image.resize_with_pad(x, prep.height, prep.width, antialias=True)
        return (x / 255.0).numpy()

    return run


def decoders(use_tf: bool) -> dict:
    found = {"pillow": pillow_decoder, "fast": fast_decoder, "simplejpeg": bare_simplejpeg_decoder}
    if use_tf:
        found["tf"] = tf_decoder
    return found


# --------------------------------------------------------------------------- 2. agreement


def agreement(photos: list[dict], use_tf: bool) -> dict:
    """Fast path vs Pillow path (inputs and Geometry) for every photo and target; TF vs Pillow for scale."""
    from shared.images.imaging import Preprocessing, decoder_counts, load_for_model

    before = decoder_counts()
    worst, identical, geometry_equal, total, tf_worst = 0.0, 0, 0, 0, 0.0
    tf_run = {t: tf_decoder(Preprocessing(t[0], t[0], resize_mode=t[1])) for t in TARGETS} if use_tf else {}
    for photo in photos:
        for side, mode in TARGETS:
            prep = Preprocessing(side, side, resize_mode=mode)
            slow, slow_geo = load_for_model(photo["data"], prep, max_pixels=MAX_PIXELS, fast_jpeg=False)
            fast, fast_geo = load_for_model(photo["data"], prep, max_pixels=MAX_PIXELS, fast_jpeg=True)
            diff = float(np.max(np.abs(fast - slow)))
            worst, total = max(worst, diff), total + 1
            identical += int(np.array_equal(fast, slow))
            geometry_equal += int(fast_geo == slow_geo)
            if tf_run and photo["orientation"] == 1 and mode == "stretch":  # TF ignores EXIF orientation
                tf_worst = max(tf_worst, float(np.max(np.abs(tf_run[(side, mode)](photo) - slow))))
    after = decoder_counts()
    counts = {k: after.get(k, 0) - before.get(k, 0) for k in ("fast_jpeg", "fast_jpeg_rejected", "pillow")}
    result = {"inputs_compared": total, "max_abs_diff_unit": worst, "bit_identical": identical,
              "geometry_equal": geometry_equal, "decoder_counts": counts}
    if tf_run:
        result["tf_vs_pillow_max_abs_diff_unit"] = round(tf_worst, 4)
    common.log(f"agreement: fast vs Pillow max |diff| {worst:g} over {total} inputs, {identical} bit-identical, "
               f"{geometry_equal} equal Geometry; decoders {counts}")
    return result


# --------------------------------------------------------------------------- 3. speed


def one_pass(pool: ThreadPoolExecutor, run, photos: list[dict]) -> tuple[float, float]:
    """(images/s, the process's CPU µs per image: steadier than images/s when other processes share the machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    list(pool.map(run, photos))
    return len(photos) / (time.perf_counter() - t0), (time.process_time() - c0) / len(photos) * 1e6


def rates(runs: dict, photos: list[dict], threads: int, repeats: int) -> dict:
    """Each decoder's median images/s and CPU µs per image over `repeats` passes, the decoders taking turns
    within each repeat so that a change in the machine's load hits them alike."""
    passes = {name: [] for name in runs}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for run in runs.values():
            list(pool.map(run, photos[:16]))  # warm up
        for _ in range(repeats):
            for name, run in runs.items():
                passes[name].append(one_pass(pool, run, photos))
    return {name: {"images_per_s": round(statistics.median(r for r, _ in got), 1),
                   "min": round(min(r for r, _ in got), 1), "max": round(max(r for r, _ in got), 1),
                   "cpu_us_per_image": round(statistics.median(c for _, c in got))}
            for name, got in passes.items()}


def speed(photos: list[dict], names: dict, thread_counts: list[int], repeats: int) -> list[dict]:
    from shared.images.imaging import Preprocessing

    rows = []
    for side, mode in TARGETS:
        prep = Preprocessing(side, side, resize_mode=mode)
        for threads in thread_counts:
            watch = common.CpuWatch()
            row = {"target": f"{side}x{side} {mode}", "threads": threads,
                   **rates({name: make(prep) for name, make in names.items()}, photos, threads, repeats)}
            row["background_cpu_pct"] = watch.stop()["background_cpu_pct"]
            rows.append(row)
            common.log("  " + row["target"] + f", {threads} thread(s): " + ", ".join(
                f"{name} {row[name]['images_per_s']:.0f}/s {row[name]['cpu_us_per_image']} µs" for name in names))
    return rows


# --------------------------------------------------------------------------- 4. GIL


class GilHog:
    """A Python thread that holds the GIL for ~0.5 ms, then sleeps ~0.5 ms, counting its loops."""

    def __init__(self):
        self.loops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            end = time.perf_counter() + 0.0005
            while time.perf_counter() < end:
                self.loops += 1
            time.sleep(0.0005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def gil_contention(photos: list[dict], names: dict, repeats: int) -> dict:
    from shared.images.imaging import Preprocessing

    prep = Preprocessing(224, 224)
    with GilHog() as alone:
        time.sleep(1.0)
    alone_per_s = alone.loops / 1.0
    out = {"target": "224x224 stretch", "threads": 2, "hog_loops_per_s_alone": round(alone_per_s)}
    for name, make in names.items():
        with GilHog() as hog:
            t0 = time.perf_counter()
            r = rates({name: make(prep)}, photos, 2, repeats)[name]
            hog_share = hog.loops / (time.perf_counter() - t0) / alone_per_s
        out[name] = {**r, "hog_progress_vs_alone": round(hog_share, 2)}
        common.log(f"  GIL busy: {name} {r['images_per_s']:.0f} img/s, the busy thread at {hog_share:.0%}")
    return out


# --------------------------------------------------------------------------- report


def versions() -> dict:
    import PIL
    import PIL.features
    import simplejpeg

    found = {"pillow": PIL.__version__, "pillow_libjpeg_turbo": PIL.features.version("libjpeg_turbo"),
             "simplejpeg": simplejpeg.__version__, "numpy": np.__version__}
    if "tensorflow" in sys.modules:
        found["tensorflow"] = sys.modules["tensorflow"].__version__
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(report: dict, names: dict) -> str:
    run, agree = report["run"], report["agreement"]
    lines = [f"# decode_speed — {run['timestamp']}", "",
             (f"{run['images']} photo-like JPEGs (~600x800, {run['kinds']}), {run['cpus']} CPUs ({run['cpu']}), "
              f"commit {run['git_commit']}, {run['repeats']} repeats (median img/s), total {run['seconds_total']} s"),
             f"versions: {', '.join(f'{k} {v}' for k, v in run['versions'].items())}"]
    if run.get("git_dirty"):
        lines.append(f"working tree differs from the commit in: {', '.join(run['git_dirty'])}")
    lines += ["", (f"fast path vs Pillow path: max |difference| {agree['max_abs_diff_unit']:g} (0..1 units) over "
                   f"{agree['inputs_compared']} model inputs, {agree['bit_identical']} bit-identical, "
                   f"{agree['geometry_equal']} with equal Geometry; decoders used {agree['decoder_counts']}")]
    if "tf_vs_pillow_max_abs_diff_unit" in agree:
        lines.append(f"TensorFlow vs Pillow (stretch, photos without EXIF orientation): max |difference| "
                     f"{agree['tf_vs_pillow_max_abs_diff_unit']:g}")
    lines += ["", "images/s (CPU µs per image, all threads), median of the repeats:", "",
              "| target | threads | " + " | ".join(names) + " | fast / pillow, CPU per image | other processes' CPU |",
              "|---|---:|" + "---:|" * (len(names) + 2)]
    for row in report["speed"]:
        cells = " | ".join(f"{row[n]['images_per_s']:.0f} ({row[n]['cpu_us_per_image']})" for n in names)
        ratio = row["fast"]["cpu_us_per_image"] / row["pillow"]["cpu_us_per_image"]
        lines.append(f"| {row['target']} | {row['threads']} | {cells} | {ratio:.2f} | "
                     f"{row['background_cpu_pct']:.0f} % |")
    gil = report.get("gil")
    if gil:
        lines += ["", f"With another Python thread holding the GIL half the time ({gil['target']}, 2 threads): "
                  + "; ".join(f"{n} {gil[n]['images_per_s']:.0f} img/s (busy thread at "
                              f"{gil[n]['hog_progress_vs_alone']:.0%} of its speed alone)" for n in names)]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = common.new_parser(__doc__)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--no-tf", action="store_true", help="leave TensorFlow out")
    p.add_argument("--no-gil", action="store_true", help="skip the GIL contention phase")
    p.add_argument("--quick", action="store_true", help="60 images, 1 repeat")
    p.add_argument("--wait-idle", type=float, default=30.0)
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats = min(args.images, 60), 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    t_start, stamp = time.time(), time.strftime("%Y%m%d-%H%M%S")

    common.log(f"decode_speed: making {args.images} photos")
    photos = make_jpegs(args.images)
    kinds = {k: sum(ph["kind"] == k for ph in photos) for k in sorted({ph["kind"] for ph in photos})}
    kinds["exif_orientation"] = sum(ph["orientation"] != 1 for ph in photos)
    names = decoders(not args.no_tf)
    quiet = common.wait_for_quiet(args.wait_idle)
    report = {"agreement": agreement(photos, not args.no_tf)}
    report["speed"] = speed(photos, names, [int(t) for t in args.threads.split(",")], args.repeats)
    if not args.no_gil:
        report["gil"] = gil_contention(photos, names, args.repeats)
    report["run"] = {"timestamp": stamp, "images": len(photos), "kinds": ", ".join(f"{v} {k}" for k, v in
                                                                                 kinds.items()),
                     "repeats": args.repeats, "cpus": os.cpu_count(), "cpu": cpu_model(),
                     "python": platform.python_version(), "versions": versions(), "git_commit": common.git_commit(),
                     "git_dirty": common.git_dirty(), **quiet, "seconds_total": round(time.time() - t_start, 1)}
    text = markdown(report, names)
    print()
    print(text)
    common.write_report("decode_speed", report, stamp, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
