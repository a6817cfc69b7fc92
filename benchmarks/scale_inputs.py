"""What score_scale.py scores: photo-like JPEGs (made once, reused), manifests of many items over them, and the
demo-size model registered through the public registry.

The JPEGs are ~200x260 textured scenes (a smooth colour field, soft-edged objects, texture at two scales and
sensor grain), so that they decode like photos rather than like flat shapes; they live under
benchmarks/.cache/catalogs/, inside a data root of every benchmark run.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from common import CATALOG_DIR, log

MODEL_NAME = "bench-scale-vgg60"
INPUT_SIZE = 60
PHOTO_SIZE = (200, 260)  # width x height
PHOTO_DIR = CATALOG_DIR.parent / f"scale-photos-{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}"


def scene(rng, width: int, height: int):
    """A textured scene: a smooth colour field, a few soft-edged objects, texture at two scales and grain."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.fromarray(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8), "RGB").resize((width, height),
                                                                                          Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(-20, width)), int(rng.integers(-20, height))
        box = [x0, y0, x0 + int(rng.integers(15, width // 2)), y0 + int(rng.integers(15, height // 2))]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.7, 1.8))))
    pixels = np.asarray(img, dtype=np.float32)
    for cell, amplitude in ((12, rng.uniform(8, 16)), (2, rng.uniform(5, 10))):
        coarse = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
        texture = np.asarray(Image.fromarray(coarse, "F").resize((width, height), Image.BILINEAR))
        pixels += amplitude * texture[..., None]
    pixels += rng.normal(0, 3, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def ensure_photos(n: int) -> list[str]:
    """Absolute paths of `n` photo-like JPEGs (made once, seeded; a larger set serves a smaller run)."""
    import numpy as np

    marker = PHOTO_DIR / "photos.json"
    have = json.loads(marker.read_text()).get("files", 0) if marker.exists() else 0
    if have < n:
        log(f"photos: writing {n} JPEGs of about {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} to {PHOTO_DIR} (once)")
        PHOTO_DIR.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(10)
        for i in range(n):
            w, h = (int(v * rng.uniform(0.9, 1.1)) for v in PHOTO_SIZE)
            scene(rng, w, h).save(PHOTO_DIR / f"photo-{i:05d}.jpg", "JPEG", quality=85)
        marker.write_text(json.dumps({"files": n, "size": PHOTO_SIZE, "seed": 10}))
    return [str(PHOTO_DIR / f"photo-{i:05d}.jpg") for i in range(n)]


def items_manifest(folder: Path, name: str, n: int, photos: list[str]) -> str:
    """A CSV manifest of `n` items with distinct ids cycling over `photos`; its path relative to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image"])
        writer.writerows((f"{name}-{k:07d}", photos[k % len(photos)]) for k in range(n))
    return path.name


def register_model(store: Path) -> None:
    """vgg_regressor(60) saved and imported as MODEL_NAME (production): pixels in [0, 1], log1p page views."""
    from shared.core.db import session_scope
    from shared.services import model_registry as registry
    from worker.training.architectures import vgg_regressor

    path = store.parent / "bench" / f"vgg_regressor_{INPUT_SIZE}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    vgg_regressor(INPUT_SIZE).save(path)
    sig = registry.Signature(task="regression", input_height=INPUT_SIZE, input_width=INPUT_SIZE, pixel_scale="unit",
                             output_names=["pageviews"], target_transform={"kind": "log1p"})
    with session_scope() as session:
        registry.import_model(session, path, MODEL_NAME, sig, store, promote=True,
                              description="score_scale benchmark: untrained VGG-style regressor")

