"""A training run's decoded pixels on the worker's local disk, read back by index, so that the run's memory does not
grow with its dataset.

`prepare` (worker/training/data.py) writes each split's images once, as they come out of the decoded-image cache, into
a `PixelFile`: one fixed-size record of uint8 HxWx3 pixels per item, nothing else. The training pipeline then reads
each batch of an epoch's permutation with `pread` (worker/training/fitting.py), evaluation reads slices in order.
What is hot stays in the kernel's page cache, not in the process: a run of 50,000 images holds a batch or two of
pixels, not 50,000 (benchmarks/train_memory.py measures it). Because any item can be read at any time, an epoch is a
full permutation of the split, as when the pixels were held in memory, not the approximation of a bounded shuffle
buffer, and a run resumed elsewhere sees the same order.

`workspace` is an attempt's folder for its files, locked while the attempt lives (flock: a killed process releases
it); an attempt that starts removes the folders nobody holds any more, so a killed run leaves nothing for long.

Invariants: records are written in item order and never change; a reader only opens a file its writer closed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shared.core.config import Settings
from shared.core.paths import path_inside

LOCK = ".lock"


class PixelFile:
    """Read-only uint8 images of one shape, indexable like an (N, H, W, 3) array: `f[i]`, `f[a:b]`, `f[[i, j]]`."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, image_shape: tuple[int, int, int], count: int):
        self.path, self.image_shape, self.count = Path(path), tuple(image_shape), int(count)
        self.record = int(np.prod(self.image_shape))
        self._fd: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.image_shape)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.count)
            if step == 1:
                return self._read_run(start, max(stop - start, 0))
            return self.take(np.arange(start, stop, step))
        return self.take(np.asarray(key))

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, self.count, 256):
            yield from self[start:start + 256]

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The images at `indices` (any order, repeats allowed), read straight into one array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -self.count or indices.max() >= self.count):
            raise IndexError(f"index out of range for {self.count} images")
        indices = np.where(indices < 0, indices + self.count, indices)
        out = np.empty((len(indices), *self.image_shape), np.uint8)
        fd = self._open()
        for row, index in enumerate(indices):
            self._fill(fd, out[row], int(index) * self.record)
        return out

    def _read_run(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.image_shape), np.uint8)
        if count:
            self._fill(self._open(), out, start * self.record)
        return out

    def _fill(self, fd: int, target: np.ndarray, offset: int) -> None:
        view, done = memoryview(target).cast("B"), 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.path} ends before its record at byte {offset + done}")
            done += got

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)  # pread at explicit offsets: one fd serves every thread
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


class PixelWriter:
    """Appends uint8 images of one shape to a new file; `finish()` gives the PixelFile that reads them."""

    def __init__(self, path: Path, image_shape: tuple[int, int, int]):
        self.path, self.image_shape, self.count = Path(path), tuple(image_shape), 0
        self._fh = open(self.path, "wb")

    def append(self, image: np.ndarray) -> int:
        """Writes `image`; returns its index."""
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.image_shape}, got {image.dtype} {image.shape}")
        self._fh.write(memoryview(np.ascontiguousarray(image)).cast("B"))
        self.count += 1
        return self.count - 1

    def finish(self) -> PixelFile:
        self._fh.close()
        return PixelFile(self.path, self.image_shape, self.count)


@contextlib.contextmanager
def workspace(settings: Settings, job_id: str, attempt: int | None) -> Iterator[Path]:
    """The attempt's folder for its pixel files, locked while the attempt lives, removed when it ends; folders left
    by killed runs (their lock free) are removed first."""
    root = path_inside(settings.data_dir, "train-pixels")
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    folder = root / f"{job_id}-attempt-{attempt or 0}"
    shutil.rmtree(folder, ignore_errors=True)
    new = root / f".new-{uuid.uuid4().hex}"  # locked before it takes its name: no one sees it free
    new.mkdir()
    with open(new / LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(new, folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def remove_abandoned(root: Path) -> list[str]:
    """Removes the folders under `root` whose lock no live process holds; returns their names."""
    removed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            fd = os.open(folder / LOCK, os.O_RDWR)
        except FileNotFoundError:
            continue  # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live attempt's
        else:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        finally:
            os.close(fd)
    return removed
