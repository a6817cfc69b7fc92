"""An on-disk cache of decoded, resized images, so that training never decodes the same photo twice.

Entries are keyed by the content hash (sha256) of the file's bytes and by a key of the preprocessing
(height, width, resize mode, pad value, plus the cache format and the Pillow version, whose resampling
decides the pixels). Pixel scaling is applied after loading, so models that differ only in ``pixel_scale``
share entries. Each entry is one uncompressed ``.npz`` holding the uint8 input and its Geometry,
at ``<folder>/<preprocessing key>/<hash[:2]>/<hash>.npz``; it is written to a temporary file and renamed
into place, so a concurrent reader never sees half an entry. An unreadable entry counts as a miss and is
rewritten. Images that cannot be decoded are remembered too (their reason), except "too many pixels",
which depends on the limit.

Reading the file's bytes to hash them happens on every load; decoding happens only on a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import PIL

from shared.core.paths import is_object_uri
from shared.images.imaging import Geometry, ImageError, Preprocessing, load_for_model, read_and_hash, scale_pixels
from shared.images.item_reads import Places, read_item

CACHE_FORMAT = 1
_GEOMETRY_FIELDS = ("orig_width", "orig_height", "scale_x", "scale_y", "pad_x", "pad_y", "input_width", "input_height")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    decode_seconds: float = 0.0  # time spent decoding on misses
    corrupt: int = 0  # entries that could not be read (counted in misses too)
    errors: int = 0  # loads that raised ImageError (unreadable file, or a decode error new or remembered)

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "decode_seconds": self.decode_seconds,
                "corrupt": self.corrupt, "errors": self.errors}


def preprocessing_key(prep: Preprocessing) -> str:
    """What decides the cached pixels: size, resize mode, pad value, cache format, Pillow version."""
    described = {"height": prep.height, "width": prep.width, "resize_mode": prep.resize_mode,
                 "pad_value": prep.pad_value, "format": CACHE_FORMAT, "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


class DecodedImageCache:
    """Decoded model inputs on disk; thread-safe, and safe to share between processes."""

    def __init__(self, folder: Path, prep: Preprocessing, *, max_pixels: int, max_bytes: int | None = None,
                 places: Places | None = None):
        self.prep = prep
        self.places = places  # where an object-store uri (s3://...) is read from; None: local files only
        self.max_pixels = int(max_pixels)
        self.max_bytes = max_bytes
        self.key = preprocessing_key(prep)
        self.folder = Path(folder) / self.key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._raw = replace(prep, pixel_scale="raw")  # float32 0..255 integers: exactly the uint8 canvas
        self.stats = CacheStats()
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- public

    def entry_path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.npz"

    def load(self, path: str | Path, *, pixels: bool = False) -> tuple[np.ndarray, Geometry, str]:
        """(float32 HxWx3 input exactly as shared.images.imaging.load_for_model gives it, its Geometry, content hash).
        With `pixels`, the uint8 canvas instead (4 times smaller; shared.images.imaging.scale_pixels makes the input).

        Raises :class:`ImageError` for a file that cannot be read or decoded.
        """
        digest = None
        try:
            if isinstance(path, str) and is_object_uri(path) and self.places is not None:
                data, digest = read_item(path, self.places, self.max_bytes or 2 ** 62)
            else:
                data, digest = read_and_hash(Path(path), max_bytes=self.max_bytes)
            array, geometry = self._load_hashed(data, digest)
            if not pixels:
                array = scale_pixels(array.astype(np.float32), self.prep.pixel_scale)
        except ImageError as exc:
            self._count(errors=1)
            exc.content_hash = digest  # load_many reports it with the reason
            raise
        return array, geometry, digest

    def _load_hashed(self, data: bytes, digest: str) -> tuple[np.ndarray, Geometry]:
        """(uint8 pixels, geometry) from the cache, or decoded and stored."""
        entry = self.entry_path(digest)
        cached = self._read_entry(entry)
        if cached is not None:
            self._count(hits=1)
            pixels, geometry, error = cached
            if error is not None:
                raise ImageError(error)
            if geometry.orig_width * geometry.orig_height > self.max_pixels:
                raise ImageError(f"too many pixels: {geometry.orig_width}x{geometry.orig_height} = "
                                 f"{geometry.orig_width * geometry.orig_height} > limit {self.max_pixels}")
            return pixels, geometry

        started = time.perf_counter()
        try:
            raw, geometry = load_for_model(data, self._raw, max_pixels=self.max_pixels)
        except ImageError as exc:
            self._count(misses=1, decode_seconds=time.perf_counter() - started)
            if not str(exc).startswith("too many pixels"):
                self._write_entry(entry, error=str(exc))
            raise
        self._count(misses=1, decode_seconds=time.perf_counter() - started)
        pixels = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
        self._write_entry(entry, pixels=pixels, geometry=geometry)
        return pixels, geometry

    def load_many(self, paths: Iterable[str | Path], threads: int, *, pixels: bool = False
                  ) -> list[tuple[np.ndarray | None, Geometry | None, str | None, str | None]]:
        """[(input, geometry, content hash, None) or (None, None, hash or None, error reason)] in order."""
        paths = list(paths)

        def one(path):
            if path is None:
                return None, None, None, "no image path"
            try:
                array, geometry, digest = self.load(path, pixels=pixels)
                return array, geometry, digest, None
            except ImageError as exc:
                return None, None, getattr(exc, "content_hash", None), str(exc)

        if threads <= 1 or len(paths) <= 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(one, paths))

    # -------------------------------------------------------------------------------------------- internals

    def _count(self, hits: int = 0, misses: int = 0, decode_seconds: float = 0.0, corrupt: int = 0,
               errors: int = 0) -> None:
        with self._lock:
            self.stats.hits += hits
            self.stats.misses += misses
            self.stats.decode_seconds += decode_seconds
            self.stats.corrupt += corrupt
            self.stats.errors += errors

    def _read_entry(self, entry: Path) -> tuple[np.ndarray | None, Geometry | None, str | None] | None:
        """(pixels, geometry, None) or (None, None, error reason); None when absent or unreadable."""
        try:
            with open(entry, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
                if "error" in npz.files:
                    return None, None, str(npz["error"][()])
                pixels = npz["pixels"]
                values = npz["geometry"]
        except FileNotFoundError:
            return None
        except Exception:  # truncated, garbage, wrong keys: a miss, rewritten below
            self._count(corrupt=1)
            return None
        if (pixels.dtype != np.uint8 or pixels.shape != (self.prep.height, self.prep.width, 3)
                or values.shape != (len(_GEOMETRY_FIELDS),) or not np.all(np.isfinite(values))):
            self._count(corrupt=1)
            return None
        v = values.tolist()
        geometry = Geometry(orig_width=int(v[0]), orig_height=int(v[1]), scale_x=v[2], scale_y=v[3],
                            pad_x=v[4], pad_y=v[5], input_width=int(v[6]), input_height=int(v[7]))
        if (geometry.input_width, geometry.input_height) != (self.prep.width, self.prep.height):
            self._count(corrupt=1)
            return None
        return pixels, geometry, None

    def _write_entry(self, entry: Path, *, pixels: np.ndarray | None = None, geometry: Geometry | None = None,
                     error: str | None = None) -> None:
        """Atomically: a temporary file in the same folder, then os.replace. Failing to write is not fatal."""
        if error is not None:
            arrays = {"error": np.asarray(error)}
        else:
            arrays = {"pixels": pixels,
                      "geometry": np.asarray([float(getattr(geometry, f)) for f in _GEOMETRY_FIELDS])}
        tmp = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=entry.parent)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, entry)
            tmp = None
        except OSError:
            pass  # a full or read-only disk makes the cache useless, not the load wrong
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
