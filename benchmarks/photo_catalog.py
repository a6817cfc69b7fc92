"""A catalog of photo-like JPEGs for the score benchmark, made from the photos bundled with scikit-learn
(china.jpg, flower.jpg) and, when importable, scikit-image's colour photos (astronaut, coffee, chelsea, rocket,
the stereo motorcycle pair). Nothing is downloaded.

Each image is a random crop of one photo, rescaled to about 600x800 (portrait or landscape, +-15 %), maybe
flipped, colour-jittered (brightness, contrast, saturation, white balance), sharpened and given mild sensor-like
noise, then saved as a JPEG of quality 85-92 (about a third progressive): every file differs and decodes like a
real photo (several times the bytes per pixel of the flat synthetic catalog, none of its large flat areas).

Invariants: image i depends only on (SEED, i), so the first k images of any catalog are the same and a bigger
catalog serves every smaller run; the folder name carries a version, so a change of recipe never reuses old files.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from common import CACHE_DIR, ROOT, log
from PIL import Image, ImageEnhance, ImageFilter

PHOTO_DIR = CACHE_DIR / "catalogs" / "photos-600x800-v1"
SEED = 20261126
SIZE = (600, 800)  # width x height of a portrait image; landscape ones are (800, 600)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def source_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array of every bundled colour photo available here."""
    from sklearn.datasets import load_sample_images

    bundle = load_sample_images()
    out = {Path(f).stem: img for f, img in zip(bundle.filenames, bundle.images)}
    try:
        import skimage.data as skdata
    except ImportError:
        return out
    for name in SKIMAGE_PHOTOS:
        try:
            out[name] = getattr(skdata, name)()
        except Exception:  # a photo this version does not bundle (it would have to be downloaded)
            continue
    try:
        left, right, _ = skdata.stereo_motorcycle()
        out["motorcycle_left"], out["motorcycle_right"] = left, right
    except Exception:
        pass
    return {k: np.ascontiguousarray(v[..., :3]) for k, v in out.items() if v.ndim == 3 and v.shape[2] >= 3}


def photo_like(rng: np.random.Generator, source: Image.Image) -> Image.Image:
    """One new ~600x800 image from `source` (see the module docstring for the recipe)."""
    portrait = rng.random() < 0.6
    base_w, base_h = SIZE if portrait else SIZE[::-1]
    w = int(base_w * rng.uniform(0.85, 1.15))
    h = int(base_h * rng.uniform(0.85, 1.15))
    sw, sh = source.size
    fit = min(sw / w, sh / h)  # the largest crop of the target's aspect ratio that fits in the source
    side = fit * np.sqrt(rng.uniform(0.45, 1.0))  # crop area 45-100 % of that
    cw, ch = max(8, int(w * side)), max(8, int(h * side))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    img = source.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
    # the upscale softens the crop: sharpen back to camera-like detail, then add sensor-like noise
    img = img.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(1.0, 2.0)),
                                             percent=int(rng.integers(60, 130)), threshold=2))
    pixels = np.asarray(img, dtype=np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)  # white balance
    pixels += rng.normal(0.0, rng.uniform(1.5, 4.0), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_photo_catalog(folder: Path, n: int) -> dict:
    """Write images 0..n-1 and items.csv (id, image, pageviews); returns the catalog's description."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = {k: Image.fromarray(v, "RGB") for k, v in sorted(source_photos().items())}
    names = list(photos)
    rows, sizes, total_bytes, progressive = [], [], 0, 0
    for i in range(n):
        rng = np.random.default_rng([SEED, i])
        source = names[int(rng.integers(0, len(names)))]
        img = photo_like(rng, photos[source])
        quality, prog = int(rng.integers(85, 93)), bool(rng.random() < 0.35)
        name = f"photo-{i:06d}.jpg"
        img.save(folder / name, "JPEG", quality=quality, progressive=prog)
        rows.append((f"photo-{i:06d}", name, int(rng.lognormal(5, 1.5))))
        sizes.append(img.size)
        total_bytes += (folder / name).stat().st_size
        progressive += prog
    with open(folder / "items.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "pageviews"])
        writer.writerows(rows)
    pixels = sum(w * h for w, h in sizes)
    return {"images": n, "seed": SEED, "sources": names, "progressive": progressive,
            "mean_kb": round(total_bytes / n / 1024, 1), "bits_per_pixel": round(8 * total_bytes / pixels, 2),
            "min_side": min(min(s) for s in sizes), "max_side": max(max(s) for s in sizes)}


def ensure_photo_catalog(n: int) -> dict:
    """At least `n` photo-like JPEGs in PHOTO_DIR, made once and reused; returns the catalog's description."""
    marker = PHOTO_DIR / "catalog.json"
    if marker.exists() and (PHOTO_DIR / "items.csv").exists():
        try:
            info = json.loads(marker.read_text())
            if int(info["images"]) >= n:
                log(f"catalog: reusing {info['images']} photo-like JPEGs in {PHOTO_DIR.relative_to(ROOT)}")
                return info
        except (ValueError, KeyError):
            pass
    log(f"catalog: writing {n} photo-like JPEGs of about {SIZE[0]}x{SIZE[1]} to {PHOTO_DIR.relative_to(ROOT)} (once)")
    t0 = time.perf_counter()
    marker.unlink(missing_ok=True)
    info = write_photo_catalog(PHOTO_DIR, n)
    marker.write_text(json.dumps(info))
    log(f"catalog: done in {time.perf_counter() - t0:.1f}s ({info['mean_kb']} KB per image, "
        f"{info['bits_per_pixel']} bits/pixel, {info['progressive']} progressive, from {', '.join(info['sources'])})")
    return info


def photo_rows() -> list[list[str]]:
    """The catalog's rows (id, image relative to PHOTO_DIR, pageviews)."""
    with open(PHOTO_DIR / "items.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]
