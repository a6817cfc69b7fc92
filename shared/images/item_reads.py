"""An item's bytes and content hash, from wherever its uri says: a local file inside the data roots, or an object
under one of the data roots' URI prefixes (`s3://bucket/prefix/`).

Invariants: a uri is checked against the allowed places before anything is opened (`shared/core/paths`), for files
and objects alike, and every refusal or failed read of the item is an `ImageError` with the reason the client sees.
Only the object store being away is not the item's fault: `ObjectStoreUnavailable` (shared/images/object_store.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shared.core.config import Settings
from shared.core.paths import OutsideDataRoots, is_object_uri, object_inside, resolve_inside
from shared.images.https_items import FetchPolicy, fetch, is_web_url, parse_networks
from shared.images.imaging import ImageError, read_and_hash
from shared.images.object_store import StoreConfig, read_object


@dataclass(frozen=True)
class Places:
    """Where items may be read from: local folders, object-store prefixes read with `store`, and image URLs fetched
    under `web` (None: image URLs are off)."""
    roots: tuple[Path, ...]
    object_roots: tuple[str, ...] = ()
    store: StoreConfig = StoreConfig()
    web: FetchPolicy | None = None

    @classmethod
    def of(cls, settings: Settings, upload_folder: str | None = None) -> Places:
        """The places a process configured by `settings` reads from for a job: the data roots, and the job's own
        upload folder (a local folder or a store prefix, shared/services/upload_files.py) when it has one."""
        return cls(settings.readable_roots(upload_folder), settings.readable_object_roots(upload_folder),
                   StoreConfig.from_settings(settings), web_policy(settings))


def web_policy(settings: Settings) -> FetchPolicy | None:
    """How image URLs are fetched (IMGQ_WEB_*), or None when they are off."""
    if settings.web_items == "off":
        return None
    return FetchPolicy(timeout=settings.read_timeout, max_bytes=settings.max_image_bytes,
                       allow_http=settings.web_items == "http",
                       allowed_networks=parse_networks(settings.web_allow_networks), per_host=settings.web_per_host)


def read_item(uri: str, places: Places, max_bytes: int, deadline: float | None = None,
              shown: str | None = None) -> tuple[bytearray, str]:
    """The item's bytes and their sha256 hex, or an ImageError naming the problem (a file as `shown`, default the
    uri as the client gave it). `deadline` (time.monotonic()) bounds an object read's retries."""
    if is_web_url(uri):
        return _fetch_url(uri, places.web)
    try:
        if is_object_uri(uri):
            return read_object(places.store, object_inside(places.object_roots, uri), max_bytes=max_bytes,
                               deadline=deadline)
        path = resolve_inside(places.roots, uri)
    except OutsideDataRoots as exc:
        raise ImageError(str(exc)) from None
    return read_and_hash(path, max_bytes=max_bytes, shown=shown or uri)


def _fetch_url(uri: str, policy: FetchPolicy | None) -> tuple[bytearray, str]:
    if policy is None:
        raise ImageError("image URL refused: image URLs are off here (IMGQ_WEB_ITEMS=off)")
    data = fetch(uri, policy)
    return bytearray(data), hashlib.sha256(data).hexdigest()
