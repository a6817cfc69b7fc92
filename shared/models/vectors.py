"""Embedding vectors as stored and compared: float32 little-endian bytes in `embeddings.vector`, and L2
normalisation. Plain numpy; the worker writes vectors with these functions, index and query code read them back.

Invariants: `vectors_from_bytes(vector_bytes(v), dim)` gives `v` back exactly (as float32); a normalised row has
norm 1 within float32 rounding. A row whose norm is zero (or so small it cannot be scaled) has no direction: it is
not normalised but reported, and embed jobs make it an item error rather than store a vector no cosine can compare.
"""
from __future__ import annotations

import numpy as np

DTYPE = np.dtype("<f4")  # float32, little-endian, whatever the machine's byte order
MIN_NORM = 1e-12  # below it a row counts as the zero vector (float32 cannot scale it to norm 1 faithfully)


def vector_bytes(vector: np.ndarray) -> bytes:
    """One vector as stored: its values as float32 little-endian, `dim` * 4 bytes."""
    return np.asarray(vector, dtype=DTYPE).reshape(-1).tobytes()


def vectors_from_bytes(blobs: list[bytes], dim: int) -> np.ndarray:
    """Stored vectors back as a float32 array (n, dim); a blob of the wrong length is a ValueError."""
    out = np.empty((len(blobs), dim), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if len(blob) != dim * DTYPE.itemsize:
            raise ValueError(f"a stored vector holds {len(blob)} bytes, not {dim} float32 values")
        out[i] = np.frombuffer(blob, dtype=DTYPE)
    return out


def dim_of(blob: bytes) -> int:
    return len(blob) // DTYPE.itemsize


def l2_normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit L2 norm (computed in float64), and a mask of the rows that could be: a zero (or
    non-finite) row is returned unchanged with False in the mask."""
    rows = np.asarray(vectors, dtype=np.float64)
    with np.errstate(all="ignore"):
        norms = np.sqrt(np.sum(rows * rows, axis=1))
        ok = np.isfinite(norms) & (norms > MIN_NORM)
        scaled = np.where(ok[:, None], rows / np.where(ok, norms, 1.0)[:, None], rows)
    return scaled.astype(np.float32), ok
