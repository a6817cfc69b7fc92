"""An item's bytes and content hash, from wherever its uri says: a local file inside the data roots, or an object
under one of the data roots' URI prefixes (`s3://bucket/prefix/`).

Invariants: a uri is checked against the allowed places before anything is opened (`shared/core/paths`), for files
and objects alike, and every refusal or failed read of the item is an `ImageError` with the reason the client sees.
Only the object store being away is not the item's fault: `ObjectStoreUnavailable` (shared/images/object_store.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.core.paths import OutsideDataRoots, is_object_uri, object_inside, resolve_inside
from shared.images.imaging import ImageError, read_and_hash
from shared.images.object_store import StoreConfig, read_object


@dataclass(frozen=True)
class Places:
    """Where items may be read from: local folders, and object-store prefixes read with `store`."""
    roots: tuple[Path, ...]
    object_roots: tuple[str, ...] = ()
    store: StoreConfig = StoreConfig()


def read_item(uri: str, places: Places, max_bytes: int, deadline: float | None = None,
              shown: str | None = None) -> tuple[bytearray, str]:
    """The item's bytes and their sha256 hex, or an ImageError naming the problem (a file as `shown`, default the
    uri as the client gave it). `deadline` (time.monotonic()) bounds an object read's retries."""
    try:
        if is_object_uri(uri):
            return read_object(places.store, object_inside(places.object_roots, uri), max_bytes=max_bytes,
                               deadline=deadline)
        path = resolve_inside(places.roots, uri)
    except OutsideDataRoots as exc:
        raise ImageError(str(exc)) from None
    return read_and_hash(path, max_bytes=max_bytes, shown=shown or uri)
