"""Paths that stay inside their roots: user-given paths read from the data roots (`resolve_inside`), objects read from
the data roots that are URI prefixes (`object_inside`: `s3://bucket/prefix/`), and every file written by name
(`path_inside`: model store, uploads, checkpoints, training logs).

Local paths are compared after symlinks and '..' are resolved, so neither a link nor a dotted name can step outside;
an object key holding '.' or '..' is refused, and its bucket and key must start with an allowed prefix.
"""
from __future__ import annotations

import os
import re
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


# URI prefixes a data root (or the model store, uploads, exports) may name, read through fsspec
# (shared/images/object_store.py): s3fs for s3://, adlfs for az:// and abfs:// (Azure Blob Storage), gcsfs for gs://
OBJECT_SCHEMES = ("s3", "az", "abfs", "gs", "gcs")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def is_object_uri(uri: str) -> bool:
    """Whether `uri` names an object in a store (`s3://bucket/key`) rather than a local file."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() in OBJECT_SCHEMES


def object_root(raw: str) -> str:
    """A data root that is a URI prefix, normalised to `s3://bucket/` or `s3://bucket/folder/.../` (a prefix is a
    folder: `s3://b/2026` allows `s3://b/2026/x.jpg`, never `s3://b/2026-old/x.jpg`); ValueError if unusable."""
    scheme, _, rest = raw.partition("://")
    if scheme.lower() not in OBJECT_SCHEMES:
        raise ValueError(f"{raw!r}: only {', '.join(s + '://' for s in OBJECT_SCHEMES)} URI prefixes are supported")
    missing = missing_library(scheme.lower())
    if missing:
        raise ValueError(f"{raw!r}: {missing}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{raw!r}: {bucket!r} is not a bucket name")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") or "\x00" in p for p in parts):
        raise ValueError(f"{raw!r}: a prefix may not hold '.' or '..'")
    return f"{scheme.lower()}://{bucket}/" + "".join(p + "/" for p in parts)


def missing_library(scheme: str) -> str | None:
    """What to install for a scheme whose fsspec implementation is not there (e.g. "Install adlfs to access ...");
    None when it is. Looked up without importing it."""
    import importlib.util

    from fsspec.registry import known_implementations

    known = known_implementations.get(scheme)
    if known is None:
        return f"no fsspec implementation of {scheme}://"
    if importlib.util.find_spec(known["class"].split(".")[0]) is None:
        return known.get("err") or f"install the fsspec implementation of {scheme}://"
    return None


def object_inside(prefixes: tuple[str, ...], uri: str) -> str:
    """`uri` (`s3://bucket/key`), proven to lie under one of the allowed `prefixes` (from `object_root`); else
    OutsideDataRoots, with the same reason as a local path outside the data roots. A key holding a '.' or '..'
    segment is refused outright: S3 keeps such names literally, but proxies and other stores collapse them."""
    if not uri or "\x00" in uri:
        raise OutsideDataRoots("empty or invalid path")
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not key or key.endswith("/"):
        raise OutsideDataRoots(f"not an object (no key, or a folder): {uri}")
    if any(part in (".", "..") for part in key.split("/")):
        raise OutsideDataRoots(f"invalid path ('.' or '..' in the key): {uri}")
    normal = f"{scheme.lower()}://{bucket}/{key}"
    if any(normal.startswith(prefix) for prefix in prefixes):
        return normal
    raise OutsideDataRoots(f"path outside the data roots: {uri}")


def split_roots(raw: str) -> list[str]:
    """IMGQ_DATA_ROOTS's entries: separated by os.pathsep (':'), which also follows a URI's scheme, so an entry
    that is a bare scheme name (`s3`, or any other, refused later) followed by one starting with '//' is one URI
    (`s3://bucket/prefix`). A local folder cannot be written as `name:` + `//...`; nobody needs to."""
    pieces, entries = raw.split(os.pathsep), []
    i = 0
    while i < len(pieces):
        piece = pieces[i].strip()
        if _SCHEME.fullmatch(piece) and i + 1 < len(pieces) and pieces[i + 1].startswith("//"):
            entries.append(f"{piece}:{pieces[i + 1].strip()}")
            i += 2
            continue
        if piece:
            entries.append(piece)
        i += 1
    return entries
