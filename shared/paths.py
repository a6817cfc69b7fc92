"""Resolving user-given paths strictly inside the configured data roots."""
from __future__ import annotations

import os
from pathlib import Path


class OutsideDataRoots(ValueError):
    pass


def resolve_inside(roots: tuple[Path, ...], uri: str) -> Path:
    """A relative path is tried under each root in turn; an absolute one must lie inside a root.

    Symlinks and '..' are resolved first, so neither can step outside.
    """
    if not uri or "\x00" in uri:
        raise OutsideDataRoots("empty or invalid path")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise OutsideDataRoots(f"only local paths inside the data roots are read, not {uri.split('://')[0]} URLs")
    given = Path(uri)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = None
    for candidate in candidates:
        real = candidate.resolve()
        if any(real == root or root in real.parents for root in roots):
            if real.exists():
                return real
            inside = inside or real
        elif os.path.lexists(candidate):  # exists, but a link or '..' leads out of the roots
            raise OutsideDataRoots(f"path outside the data roots: {uri}")
    if inside is not None:
        return inside  # inside a root but missing: the caller reports "file not found"
    raise OutsideDataRoots(f"path outside the data roots: {uri}")
