"""A synthetic product catalog: JPEGs of varied size and colour, a few broken files, and a CSV manifest.

Used by `imgq demo`, the tests and the benchmarks; nothing is downloaded.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BROKEN = {
    "broken-truncated.jpg": "truncated",
    "broken-not-an-image.jpg": "text",
    "broken-empty.jpg": "empty",
}


def product_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A plain background with a few coloured shapes: cheap to make, realistic to decode."""
    background = tuple(int(v) for v in rng.integers(120, 256, 3))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        x1, y1 = x0 + int(rng.integers(10, width // 2 + 11)), y0 + int(rng.integers(10, height // 2 + 11))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return img


def write_catalog(folder: Path, n: int, *, size: tuple[int, int] = (600, 800), jitter: float = 0.25,
                  broken: bool = True, seed: int = 0, quality: int = 85) -> Path:
    """Write `n` JPEGs (about `size`, width x height) plus broken files; returns the manifest CSV path.

    The manifest has columns id, image (relative to the manifest) and pageviews.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w = max(16, int(size[0] * (1 + rng.uniform(-jitter, jitter))))
        h = max(16, int(size[1] * (1 + rng.uniform(-jitter, jitter))))
        name = f"sku-{i:06d}.jpg"
        product_photo(rng, w, h).save(folder / name, "JPEG", quality=quality)
        rows.append((f"sku-{i:06d}", name, int(rng.lognormal(5, 1.5))))
    if broken:
        good = (folder / rows[0][1]).read_bytes() if rows else b"\xff\xd8\xff"
        for name, kind in BROKEN.items():
            data = {"truncated": good[: len(good) // 2], "text": b"<html>404 not found</html>",
                    "empty": b""}[kind]
            (folder / name).write_bytes(data)
            rows.append((name.removesuffix(".jpg"), name, 0))
    manifest = folder / "items.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "pageviews"])
        writer.writerows(rows)
    return manifest
