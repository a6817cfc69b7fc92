"""Index versions where every machine finds them: with an object-store model store (IMGQ_MODEL_STORE=s3://...), an
index job uploads the folder it saved (shared/search/vector_index.py) to `<store>indexes/<catalog>/<space>/<run>/`
and the version records that URI; a process that searches it (a web front) or extends it (the maintenance worker)
reads it through this machine's cache, IMGQ_MODEL_CACHE_DIR/indexes/<hash of the URI>/, downloaded once.

Invariants:
- The folder's files go up first, then `checksums.json` (each file's sha256 and size), last: a folder in the store
  without it is incomplete, and never registered (the upload comes before the version's row).
- A download lands in a temporary folder, is checked file by file against `checksums.json`, and is then renamed to
  its cache name: a cached folder is whole and verified, and is never downloaded again (a version's files never
  change). Processes of one machine share the cache under a lock file per folder.
- With a local model store nothing moves: the version's path is its folder, read in place.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from shared.core.config import Settings
from shared.core.paths import is_object_uri
from shared.services.model_files import sha256_file
from shared.services.store_files import locked, remove_prefix, store_call

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"


def publish(settings: Settings, folder: Path) -> str:
    """What the version records as its path: `folder` itself with a local store; else the URI of its copy in the
    store (uploaded whole, checksums last), the local folder then removed."""
    if settings.model_store_uri is None:
        return str(folder)
    relative = folder.relative_to(settings.model_store).as_posix()  # indexes/<catalog>/<space>/<run>
    prefix = f"{settings.model_store_uri}{relative}/"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    sums = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files}
    for p in files:
        store_call(settings, prefix + p.name, lambda fs, p=p: fs.put_file(str(p), prefix + p.name))
    body = json.dumps(sums).encode()
    store_call(settings, prefix + CHECKSUMS, lambda fs: fs.pipe_file(prefix + CHECKSUMS, body))
    shutil.rmtree(folder, ignore_errors=True)
    log.info("index folder stored at %s (%d files)", prefix, len(files))
    return prefix


def discard(settings: Settings, path: str) -> None:
    """Remove a published folder no version records (its job was final by the time it was built)."""
    if is_object_uri(path):
        remove_prefix(settings, path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def local_folder(settings: Settings, path: str) -> Path:
    """A local folder holding the version's index files: the folder itself, or this machine's verified copy."""
    if not is_object_uri(path):
        return Path(path)
    cache = settings.model_cache_dir / "indexes"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(path.encode()).hexdigest()[:32]
    copy = cache / key
    with locked(cache / f"{key}.lock"):
        if copy.is_dir():
            return copy
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key}-"))
        try:
            sums = json.loads(store_call(settings, path + CHECKSUMS, lambda fs: fs.cat_file(path + CHECKSUMS),
                                         what="index version"))
            for name, expected in sums.items():
                if Path(name).name != name or name.startswith("."):
                    raise ValueError(f"{path}: {CHECKSUMS} names a file outside the folder: {name!r}")
                store_call(settings, path + name, lambda fs, n=name: fs.get_file(path + n, str(tmp / n)),
                           what="index version")
                if sha256_file(tmp / name) != expected["sha256"]:
                    raise ValueError(f"{path}{name} does not match its checksum")
            os.replace(tmp, copy)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("index %s downloaded into the cache (%d files)", path, len(sums))
    return copy
