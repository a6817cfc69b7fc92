"""imgq's own files in an object store (model versions, checkpoints, uploads, index versions), as opposed to the
items it reads (shared/images/item_reads.py): one store call with the item reads' retries and backoff
(shared/images/object_store.retrying), whose missing or forbidden object is a file's error (FileNotFoundError,
PermissionError) rather than an item's; and a lock between the processes of one machine, for its caches.
"""
from __future__ import annotations

import contextlib
import fcntl
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from shared.images.imaging import ImageError
from shared.images.object_store import StoreConfig, retrying

if TYPE_CHECKING:
    from shared.core.config import Settings


def store_call(settings: Settings, uri: str, call, what: str = "the stored file", *, retry: bool = True):
    """`call(fs)` through object_store.retrying (backoff on 5xx, throttling, resets; `retry=False` for a call that
    cannot be repeated, such as one consuming a stream); a missing or forbidden object becomes FileNotFoundError or
    PermissionError naming `what` (ImageError is an item's error, not a file's); a store that stays away is
    ObjectStoreUnavailable, as for items."""
    config = StoreConfig.from_settings(settings)
    try:
        return retrying(config if retry else replace(config, retries=0), uri, None, call)
    except ImageError as exc:
        if str(exc).startswith("object not found"):
            raise FileNotFoundError(f"{what} is missing: {uri}") from None
        if str(exc).startswith("access denied"):
            raise PermissionError(f"{what}: access denied (403) to {uri}") from None
        raise OSError(f"{what}: {exc}") from None


def remove_prefix(settings: Settings, prefix: str) -> None:
    """Remove every object under `prefix` (a "folder" of the store); one already gone is not an error."""
    try:
        store_call(settings, prefix, lambda fs: fs.rm(prefix, recursive=True))
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def locked(lock_path: Path):
    """An exclusive lock between the processes of this machine (flock: released if the holder dies)."""
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
