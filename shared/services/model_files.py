"""Model version files where every machine finds them.

- IMGQ_MODEL_STORE a local folder (the default): a version's `path` is its file there, read in place (one machine,
  or a volume every process mounts), as always.
- IMGQ_MODEL_STORE an s3:// prefix: registering a version uploads its file to `<prefix><name>/<file name>` and
  records that URI as its `path`. A process that needs the file (a worker loading the model, the web front reading
  its layer names, training continuing from it) asks `local_file`, which downloads it once into this machine's cache
  (IMGQ_MODEL_CACHE_DIR) as `<sha256>.keras`, checks it against the version's sha256, and hands back that copy from
  then on, checked again at each use (hashing is cheap next to loading a model), never downloaded again while it is
  unchanged. The processes of one machine share the cache: a lock file per hash makes one of them download while the
  others wait, and a copy appears under its name only whole (written beside it, then renamed).

A missing or forbidden object is the version's fault (FileNotFoundError, PermissionError); a store that does not
answer (after IMGQ_S3_RETRIES tries with backoff) is `ObjectStoreUnavailable`, which a task treats as an outage:
its message goes back to the queue (worker/tasks.requeue_on_outage), the job does not fail.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from shared.core.paths import is_object_uri
from shared.services.store_files import locked, store_call

if TYPE_CHECKING:
    from shared.core.config import Settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _counters():
    """(downloads, bytes): made at the first download, so importing this module never imports prometheus_client
    before an entry point has chosen its multiprocess folder (shared/core/prometheus.py)."""
    from prometheus_client import Counter

    return (Counter("imgq_model_downloads_total", "Model version files this process downloaded from the object store "
                    "into its machine's model cache (IMGQ_MODEL_CACHE_DIR)"),
            Counter("imgq_model_downloaded_bytes_total", "Bytes of the model version files this process downloaded "
                    "into its machine's model cache"))


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_file(local: Path, sha256: str, settings: Settings, name: str) -> str:
    """What a version registered from `local` (already in the local model folder, named `<name>/<file>`, its
    content hash `sha256`) records as its path: `local` itself with a local store; else the URI it was uploaded to
    (`<prefix><name>/<file>`), and `local` becomes this machine's cached copy (nothing to download here later)."""
    if settings.model_store_uri is None:
        return str(local)
    uri = f"{settings.model_store_uri}{name}/{local.name}"
    size = local.stat().st_size
    store_call(settings, uri, lambda fs: fs.put_file(str(local), uri))
    settings.model_cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(settings.model_cache_dir / f"{sha256}.lock"):
        os.replace(local, settings.model_cache_dir / f"{sha256}.keras")
    log.info("model file stored at %s (%d bytes)", uri, size)
    return uri


def local_file(path: str, sha256: str, settings: Settings, shown: str) -> Path:
    """A local file holding the bytes a version registered (`path`, `sha256`; `shown`: `name@version`, for
    messages): the file itself with a local store, this machine's cached copy of the object otherwise."""
    if not is_object_uri(path):
        return Path(path)
    cache = settings.model_cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    copy = cache / f"{sha256}.keras"
    with locked(cache / f"{sha256}.lock"):
        if copy.is_file() and sha256_file(copy) == sha256:
            return copy
        fd, part = tempfile.mkstemp(dir=cache, prefix=f"{sha256[:12]}-", suffix=".part")
        os.close(fd)
        try:
            store_call(settings, path, lambda fs: fs.get_file(path, part), f"model file of {shown}")
            size = os.path.getsize(part)
            if sha256_file(part) != sha256:
                raise ValueError(f"model file of {shown} does not match its checksum (as downloaded from {path})")
            os.replace(part, copy)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
    downloads, downloaded_bytes = _counters()
    downloads.inc()
    downloaded_bytes.inc(size)
    log.info("model %s downloaded from %s into the model cache (%d bytes)", shown, path, size)
    return copy


def version_file(version, settings: Settings) -> Path:
    """`local_file` for a ModelVersion row."""
    return local_file(version.path, version.sha256, settings, f"{version.name}@{version.version}")
