"""Thumbnails of the images a job read or a catalog holds: small JPEGs, read only from where the job may read.

Invariants: the image path is the item's own stored uri, read by `shared/images/item_reads.read_item` from the data
roots (folders and object-store prefixes) and the job's own upload folder (never another job's uploads:
`Settings.readable_roots`, `readable_object_roots`), so neither '..', an absolute path elsewhere, another bucket
nor a symlink leads out.
A job's thumbnails are cached under `<IMGQ_HOME>/thumbnails/<job id>/`, named by a hash of (item id, size): a cached
file is written whole (temporary name, then rename) and never changes, since an item's uri never does.
"""
from __future__ import annotations

import hashlib
import io
import os

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.errors import InvalidRequest, NotFound
from shared.core.paths import path_inside
from shared.core.tables import JobItem
from shared.images.imaging import ImageError
from shared.images.item_reads import Places, read_item
from shared.schemas.catalogs import THUMBNAIL_SIZES
from shared.services.jobs import get_job


def check_size(size: int) -> None:
    if not THUMBNAIL_SIZES[0] <= size <= THUMBNAIL_SIZES[1]:
        raise InvalidRequest(f"size must be between {THUMBNAIL_SIZES[0]} and {THUMBNAIL_SIZES[1]}", field="size")


def jpeg_of(settings: Settings, upload_folder: str | None, uri: str, item_id: str, size: int) -> bytes:
    """A JPEG of the image at `uri` (inside the data roots or the item's job's own `upload_folder`), its longer edge
    at most `size` pixels, EXIF orientation applied; NotFound when the path leads outside them or the file is
    missing or not an image."""
    from PIL import Image, ImageOps

    try:
        places = Places.of(settings, upload_folder)
        data, _ = read_item(uri, places, settings.max_image_bytes, shown=item_id)
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size))
            out = io.BytesIO()
            img.convert("RGB").save(out, "JPEG", quality=85)
    except (ImageError, OSError) as exc:
        raise NotFound(f"the image of item {item_id!r} cannot be read: {exc}") from None
    return out.getvalue()


def job_item_thumbnail(session: Session, settings: Settings, job_id: str, item_id: str, size: int) -> bytes:
    """The thumbnail of one item of a score or embed job, from the cache or made and cached."""
    check_size(size)
    job = get_job(session, job_id)
    uri = session.scalar(select(JobItem.uri).where(JobItem.job_id == job.id, JobItem.item_id == item_id))
    if uri is None:
        raise NotFound(f"job {job_id} has no item {item_id!r}")
    key = hashlib.sha256(f"{size}\x00{item_id}".encode()).hexdigest()
    cached = path_inside(settings.data_dir / "thumbnails", job.id, f"{key}.jpg")
    if cached.exists():
        return cached.read_bytes()
    data = jpeg_of(settings, job.upload_folder, uri, item_id, size)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{key}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, cached)
    return data
