"""What score_scale.py scores: photo-size JPEGs (benchmarks/photo_catalog.py, made once and shared with the other
benchmarks), manifests of many items over them, and the demo-size model registered through the public registry.

The JPEGs are about 600x800, cut from the photos bundled with scikit-learn and scikit-image, each distinct; they
live under benchmarks/.cache/catalogs/, inside a data root of every benchmark run.
"""
from __future__ import annotations

import csv
from pathlib import Path

from photo_catalog import PHOTO_DIR, SIZE, ensure_photo_catalog, photo_rows

MODEL_NAME = "bench-scale-vgg60"
INPUT_SIZE = 60
PHOTO_SIZE = SIZE  # width x height of a portrait photo; landscape ones are the other way round


def ensure_photos(n: int) -> tuple[list[str], dict]:
    """Absolute paths of `n` distinct photo-size JPEGs (made once; a larger catalog serves a smaller run), and the
    catalog's description (mean kB, bits per pixel, sides)."""
    info = ensure_photo_catalog(n)
    return [str(PHOTO_DIR / image) for _, image, _ in photo_rows()[:n]], info


def items_manifest(folder: Path, name: str, n: int, photos: list[str]) -> str:
    """A CSV manifest of `n` items with distinct ids cycling over `photos`; its path relative to `folder`. Written
    a million rows at a time, so a 10-million-row manifest costs no more memory than a small one."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image"])
        for start in range(0, n, 1_000_000):
            stop = min(n, start + 1_000_000)
            writer.writerows((f"{name}-{k:08d}", photos[k % len(photos)]) for k in range(start, stop))
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
