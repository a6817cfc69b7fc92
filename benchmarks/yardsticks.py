"""What score_throughput.py measures imgq against, all in the benchmark's own process:

  tfdata_tuned   the yardstick: the best single-process tf.data script a good engineer writes, in two resize
                 variants (antialiased, as imgq's Pillow path is, and TensorFlow's plain bilinear): read_file ->
                 decode_jpeg with DCT scaling -> resize -> rounded to uint8 -> batch -> prefetch, maps with
                 AUTOTUNE and deterministic=False; uint8 batches go into a tf.function that casts, scales and runs
                 the model (as imgq's worker does). The dataset is built and the function traced before the clock
                 starts; the caller repeats the file list so a run lasts long enough to see past TensorFlow's
                 fast and slow spells.
                 (It replaces a plain script that fed float batches from a bilinear resize: an easier mark.)
  naive_loop     per image: shared.images.imaging.load_for_model (Pillow) + keras `model.predict(x[None])`.
  model_alone    worker.model_cache.LoadedModel.predict (the worker's tf.function) on pre-decoded batches.
  decode_alone   shared.images.imaging.load_for_model over bytes already in memory, in a thread pool of the worker's
                 decode thread count.
  score_items    worker.scoring.score_items in this process with no database and no queue (no-op writes):
                 imgq's pipeline without the job machinery around it.
"""
from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import log

RATIOS = (1, 2, 4, 8)


def _decode_scaled(data, size: int):
    """decode_jpeg at the largest ratio whose decoded image is still >= size on both sides."""
    import tensorflow as tf

    shape = tf.io.extract_jpeg_shape(data)
    side = tf.minimum(shape[0], shape[1])
    # ceil(side / r) >= size  <=>  side > (size - 1) * r; the thresholds grow with r, so count the ratios that fit
    index = tf.add_n([tf.cast(side > (size - 1) * r, tf.int32) for r in RATIOS[1:]])
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in RATIOS]
    return tf.switch_case(index, branches)


def _scale(x, pixel_scale: str):
    if pixel_scale == "unit":
        return x / 255.0
    if pixel_scale == "symmetric":
        return x / 127.5 - 1.0
    return x


def traced_uint8_infer(model, size: int, pixel_scale: str):
    """uint8 batches of size x size x 3 -> cast, the model's pixel scaling and `model(x)`, in one traced function."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
    def infer(x):
        return model(_scale(tf.cast(x, tf.float32), pixel_scale), training=False)

    infer(tf.zeros([2, size, size, 3], tf.uint8))
    return infer


def tuned_dataset(ids: list[str], paths: list[str], size: int, batch_size: int, antialias: bool):
    """The tuned script's input pipeline: (ids, uint8 batches)."""
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE

    def load(item_id, path):
        image = _decode_scaled(tf.io.read_file(path), size)
        x = tf.image.resize(image, (size, size), method="bilinear", antialias=antialias)
        return item_id, tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)

    return (tf.data.Dataset.from_tensor_slices((ids, paths))
            .map(load, num_parallel_calls=autotune, deterministic=False)
            .batch(batch_size)
            .prefetch(autotune))


def tfdata_tuned(infer, ids: list[str], paths: list[Path], size: int, out_csv: Path, batch_size: int,
                 antialias: bool) -> dict:
    """One run of the tuned script over `paths` (repeat them to make a run long): images/s, built before the clock."""
    ds = tuned_dataset(ids, [str(p) for p in paths], size, batch_size, antialias)
    rows = 0
    t0 = time.perf_counter()
    with open(out_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "score"])
        for batch_ids, x in ds:
            y = infer(x).numpy()
            writer.writerows(zip((i.decode() for i in batch_ids.numpy()), y[:, 0].tolist()))
            rows += len(y)
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(rows / elapsed, 1), "images": rows, "seconds": round(elapsed, 3),
            "variant": "antialias" if antialias else "bilinear"}


def naive_loop(model, paths: list[Path], prep, max_pixels: int) -> dict:
    from shared.images.imaging import load_for_model

    def one(path):
        x, _ = load_for_model(path.read_bytes(), prep, max_pixels=max_pixels)
        return model.predict(x[None], verbose=0)

    for p in paths[:3]:  # builds keras' predict function
        one(p)
    t0 = time.perf_counter()
    for p in paths:
        one(p)
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(len(paths) / elapsed, 2), "images": len(paths), "seconds": round(elapsed, 3)}


def decode_alone(blobs: list[bytes], prep, threads: int, max_pixels: int) -> tuple[dict, list]:
    """Images/s of load_for_model over `blobs` in `threads` threads, as the worker decodes (uint8 pixels, scaled by
    the model's tf.function); also returns the arrays."""
    from shared.images.imaging import load_for_model

    def one(data):
        return load_for_model(data, prep, max_pixels=max_pixels, scaled=False)[0]

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bench-decode") as pool:
        list(pool.map(one, blobs[: min(len(blobs), 32)]))  # warm up
        t0 = time.perf_counter()
        arrays = list(pool.map(one, blobs))
        elapsed = time.perf_counter() - t0
    return {"images_per_s": round(len(blobs) / elapsed, 1), "images": len(blobs), "threads": threads,
            "seconds": round(elapsed, 3)}, arrays


def model_alone(loaded, inputs, batch_size: int, seconds: float, rounds: int = 3) -> dict:
    """Images/s of LoadedModel.predict on one pre-decoded batch (uint8 pixels, as the worker gives it): best of
    `rounds` timed rounds."""
    import numpy as np

    reps = -(-batch_size // len(inputs))
    batch = np.ascontiguousarray(np.concatenate([inputs] * reps)[:batch_size])
    for _ in range(3):  # trace + warm up
        loaded.predict(batch)
    rates = []
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            loaded.predict(batch)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / rounds and n >= 3:
                break
        rates.append(n * batch_size / elapsed)
    return {"images_per_s": round(max(rates), 1), "batch_size": batch_size,
            "rounds": [round(r, 1) for r in rates]}


def score_items_in_process(loaded, items: list[tuple[str, str]], roots: tuple[Path, ...], s) -> dict:
    """worker.scoring.score_items with no database and no queue (the writes only count the ok results)."""
    from worker.scoring import ScoreOptions, score_items

    opts = ScoreOptions(roots=roots, batch_size=s.batch_size, max_pixels=s.max_image_pixels,
                        max_bytes=s.max_image_bytes, threads=s.decode_threads, use_cache=False)
    count = [0]

    def write(results, cache_rows):
        count[0] += sum(r["status"] == "ok" for r in results)

    score_items(items[: 2 * s.batch_size], loaded, opts, lambda h: {}, write)  # warm up
    count[0] = 0
    t0 = time.perf_counter()
    score_items(items, loaded, opts, lambda h: {}, write)
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(count[0] / elapsed, 1), "images": count[0], "seconds": round(elapsed, 3)}


def single_figures(loaded, spec, rows, photo_dir: Path, s, n: int, model_seconds: float) -> dict:
    """Model alone, decode alone and score_items in-process for one model (one run each: they are cheap)."""
    import numpy as np

    out = {}
    blobs = [(photo_dir / r[1]).read_bytes() for r in rows[:n]]
    out["decode_alone"], arrays = decode_alone(blobs, loaded.preprocessing, s.decode_threads, s.max_image_pixels)
    out["model_alone"] = model_alone(loaded, np.stack(arrays[: s.batch_size]), s.batch_size, model_seconds)
    del blobs, arrays
    try:
        out["score_items"] = score_items_in_process(loaded, [(r[0], str(photo_dir / r[1])) for r in rows[:n]],
                                                    (photo_dir.parent,), s)
    except Exception as exc:  # the production API moved: the other figures still stand
        out["score_items"] = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"  {spec.key}: model alone {out['model_alone']['images_per_s']} img/s (batch {s.batch_size}), "
        f"decode alone {out['decode_alone']['images_per_s']} img/s ({s.decode_threads} threads), "
        f"score_items in-process {out['score_items'].get('images_per_s', out['score_items'].get('error'))}")
    return out
