#!/usr/bin/env python
"""Realistic embedding vectors for the similar-search benchmark: a CNN's pooled features over photo crops.

Synthetic clusters of near-orthogonal centres are easier to search than CNN embeddings, which are post-ReLU (all
components >= 0), share a high baseline similarity and overlap. This script makes such vectors, once, and caches them:

  - photos: the photo-like catalog of benchmarks/photo_catalog.py (--photos ~600x800 JPEGs, made once);
  - categories: one per size in --sizes (default 1,000, 10,000 and 100,000 vectors), each owning a share of the
    photos in proportion to its size; every vector of a category is a crop of one of its photos;
  - crops: a random box of 25-100 % of the photo's area (aspect 3:4 to 4:3), maybe flipped, resized to --input
    pixels square; --queries crops per category are held out as queries (so a query's near neighbours are other
    crops of the same photos, as when a user sends another picture of a product);
  - model: Keras MobileNetV2 at --input, randomly initialised (seeded; no weights are downloaded), global average
    pooling of its last ReLU6 block: 1,280 non-negative components, L2-normalised.

Usage: .venv/bin/python benchmarks/cnn_vectors.py [--sizes 1000,10000,100000] [--queries 200] [--input 128]

Writes benchmarks/.cache/vectors/<name>.npz (vectors float32, category int16, query bool, photo int32) and prints
its path; a file of the same parameters is reused. The similar-search benchmark runs this in a process of its own,
so that TensorFlow's and FAISS's thread pools never share one.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py, however this file is run
import common
import photo_catalog
from PIL import Image

VERSION = 1  # of the recipe: a change of it never reuses an old file
BATCH = 256


def parse_args(argv=None):
    p = common.new_parser(__doc__)
    p.add_argument("--sizes", default="1000,10000,100000", help="vectors per category (one category per size)")
    p.add_argument("--queries", type=int, default=200, help="held-out query crops per category")
    p.add_argument("--photos", type=int, default=2000, help="photos the crops come from")
    p.add_argument("--input", type=int, default=128, help="the model's input side in pixels")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.queries < 1 or args.photos < len(args.sizes):
        p.error("sizes and queries must be positive, and there must be a photo per category at least")
    return args


def cache_path(sizes: list[int], queries: int, photos: int, side: int) -> Path:
    name = f"cnn-mobilenetv2-{side}px-{'-'.join(map(str, sizes))}-q{queries}-p{photos}-v{VERSION}.npz"
    return common.CACHE_DIR / "vectors" / name


def photos_per_category(sizes: list[int], photos: int) -> list[np.ndarray]:
    """Photo numbers of each category: shares in proportion to the sizes, at least one each."""
    counts = np.maximum(1, np.floor(np.asarray(sizes) / sum(sizes) * photos).astype(int))
    counts[int(np.argmax(counts))] -= counts.sum() - photos
    edges = np.concatenate([[0], np.cumsum(counts)])
    return [np.arange(edges[c], edges[c + 1]) for c in range(len(sizes))]


def crop(rng: np.random.Generator, photo: Image.Image, side: int) -> np.ndarray:
    w, h = photo.size
    area = rng.uniform(0.25, 1.0) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(np.sqrt(area * aspect))), min(h, int(np.sqrt(area / aspect)))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = photo.resize((side, side), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch), reducing_gap=2.0)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.uint8)


def crop_plan(sizes: list[int], queries: int, owners: list[np.ndarray], seed: int = 7):
    """(photo, category, query) of every crop, photo by photo: each category's crops spread evenly over its photos,
    and `queries` of them, drawn at random, held out."""
    rng = np.random.default_rng(seed)
    photo, category, query = [], [], []
    for c, (size, mine) in enumerate(zip(sizes, owners)):
        total = size + queries
        per_photo = np.full(len(mine), total // len(mine))
        per_photo[: total % len(mine)] += 1
        held = np.zeros(total, dtype=bool)
        held[rng.choice(total, queries, replace=False)] = True
        photo.append(np.repeat(mine, per_photo))
        category.append(np.full(total, c, dtype=np.int16))
        query.append(held)
    photo, category, query = np.concatenate(photo), np.concatenate(category), np.concatenate(query)
    order = np.argsort(photo, kind="stable")  # photo by photo: each JPEG is decoded once
    return photo[order].astype(np.int32), category[order], query[order]


def main() -> int:
    args = parse_args()
    out = cache_path(args.sizes, args.queries, args.photos, args.input)
    if out.exists():
        common.log(f"vectors: reusing {out.relative_to(common.ROOT)}")
        print(out)
        return 0
    photo_catalog.ensure_photo_catalog(args.photos)
    rows = photo_catalog.photo_rows()[: args.photos]
    photo, category, query = crop_plan(args.sizes, args.queries, photos_per_category(args.sizes, args.photos))

    import tensorflow as tf

    tf.keras.utils.set_random_seed(20261207)
    model = tf.keras.applications.MobileNetV2(input_shape=(args.input, args.input, 3), include_top=False,
                                              weights=None, pooling="avg")
    embed = tf.function(lambda x: model(tf.keras.applications.mobilenet_v2.preprocess_input(tf.cast(x, tf.float32)),
                                        training=False), jit_compile=False)
    dim = int(model.output_shape[-1])
    vectors = np.empty((len(photo), dim), dtype=np.float32)
    common.log(f"vectors: {len(photo)} crops of {args.photos} photos at {args.input}px through a random MobileNetV2 "
               f"({dim} dimensions), categories of {args.sizes} + {args.queries} queries each")
    t0, pending, done, current = time.perf_counter(), [], 0, (-1, None)
    for i, p in enumerate(photo):
        if p != current[0]:
            with Image.open(photo_catalog.PHOTO_DIR / rows[p][1]) as img:
                current = (p, img.convert("RGB"))
        pending.append(crop(np.random.default_rng([VERSION, i]), current[1], args.input))
        if len(pending) == BATCH or i == len(photo) - 1:
            vectors[done:done + len(pending)] = embed(np.stack(pending)).numpy()
            done += len(pending)
            pending = []
            if done % (BATCH * 40) == 0 or done == len(photo):
                rate = done / (time.perf_counter() - t0)
                common.log(f"vectors: {done}/{len(photo)} ({rate:.0f} crops/s)")
    if (vectors < 0).any():
        raise SystemExit("a pooled ReLU6 feature was negative: not the model this script expects")
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.npz")
    np.savez(partial, vectors=vectors, category=category, query=query, photo=photo, sizes=np.asarray(args.sizes))
    partial.rename(out)
    common.log(f"vectors: wrote {out.relative_to(common.ROOT)} in {time.perf_counter() - t0:.0f}s")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
