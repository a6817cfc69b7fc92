"""Paths that stay inside their roots: user-given paths read from the data roots (`resolve_inside`), and every
file written by name (`path_inside`: model store, uploads, checkpoints, training logs).

Both resolve symlinks and '..' before they compare, so neither a link nor a dotted name can step outside.
"""
from __future__ import annotations

import os
from pathlib import Path

from shared.core.errors import OutsideRoot


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
            if _exists(real, uri):
                return real
            inside = inside or real
        elif os.path.lexists(candidate):  # exists, but a link or '..' leads out of the roots
            raise OutsideDataRoots(f"path outside the data roots: {uri}")
    if inside is not None:
        return inside  # inside a root but missing: the caller reports "file not found"
    raise OutsideDataRoots(f"path outside the data roots: {uri}")


def _exists(path: Path, uri: str) -> bool:
    """Whether `path` exists; a path the file system cannot even look up (a name over its length limit, a folder it
    may not search) is refused, named as the client gave it (`Path.exists` raises for those, not False)."""
    try:
        return path.exists()
    except OSError as exc:
        raise OutsideDataRoots(f"cannot look up {uri[:200]!r}: {exc.strerror or exc}") from None


def path_inside(root: Path, *parts: str) -> Path:
    """`root/part/...`, resolved, proven to lie inside `root` (also resolved); else OutsideRoot.

    Each part is one path component: empty parts, '.', '..', separators and NUL bytes are refused before
    anything is resolved, and the resolved result must still be inside the root (a symlink on the way out
    is refused too). The caller creates folders and writes files at the returned path.
    """
    real_root = Path(root).resolve()
    for part in parts:
        if not isinstance(part, str) or part in ("", ".", "..") or "\x00" in part or "/" in part \
                or (os.altsep and os.altsep in part):
            raise OutsideRoot(f"{part!r} cannot name a file or folder inside {real_root.name!r}")
    dest = real_root.joinpath(*parts).resolve()
    if parts and real_root not in dest.parents:
        raise OutsideRoot(f"{'/'.join(parts)!r} leads outside {real_root.name!r}")
    return dest
