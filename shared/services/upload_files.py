"""Where uploaded item files live: a folder of IMGQ_UPLOAD_DIR (the default, a local folder every process that
reads them must share), or a prefix of an object store when IMGQ_UPLOAD_DIR is an `s3://bucket/prefix/` URI, so that
workers on other machines read a job's uploads as they read any object (shared/images/item_reads.py).

An upload's folder is named by a uuid: `<upload dir>/<folder>/` or `<prefix><folder>/`. A file is streamed there as
it arrives (hashed on the way), never held whole in memory: to a temporary name first, then renamed to the name its
bytes decide (a rename is a server-side copy in a store), so a name never points at half a file. With a store the web
front's disk holds nothing of it. Only the job that took an upload may read its folder (Settings.readable_places).
"""
from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from shared.core.config import Settings
from shared.core.paths import path_inside
from shared.services.store_files import remove_prefix, store_call

_BLOCK = 1 << 20


def folder_uri(settings: Settings, folder: str) -> str:
    """The folder's place: a local path, or `<prefix><folder>/` in the store."""
    if settings.upload_store_uri is not None:
        return f"{settings.upload_store_uri}{folder}/"
    return str(path_inside(settings.upload_dir, folder))


def file_uri(settings: Settings, folder: str, stored: str) -> str:
    """A stored file's uri: its path in the local folder, or its object's URI."""
    if settings.upload_store_uri is not None:
        return folder_uri(settings, folder) + stored
    return str(path_inside(settings.upload_dir, folder, stored))


def make_folder(settings: Settings, folder: str) -> None:
    """Create a local folder (a store has no folders: its objects make it)."""
    if settings.upload_store_uri is None:
        path_inside(settings.upload_dir, folder).mkdir(parents=True, exist_ok=True)


def write(settings: Settings, folder: str, stream: BinaryIO, name_for: Callable[[str], str]) -> tuple[str, int, str]:
    """The stream stored in `folder` under `name_for(its sha256)`: (its uri, size, sha256)."""
    if settings.upload_store_uri is None:
        return _write_local(path_inside(settings.upload_dir, folder), stream, name_for)
    base = folder_uri(settings, folder)
    part = f"{base}.part-{uuid.uuid4().hex}"
    digest, size = hashlib.sha256(), 0

    def upload(fs):
        nonlocal size
        with fs.open(part, "wb") as out:  # s3fs sends 5 MiB parts as they fill: memory stays small
            for block in iter(lambda: stream.read(_BLOCK), b""):
                digest.update(block)
                size += len(block)
                out.write(block)

    try:
        store_call(settings, part, upload, "upload", retry=False)  # the stream is read once: a failure is the request's
        sha = digest.hexdigest()
        final = base + name_for(sha)
        store_call(settings, final, lambda fs: fs.mv(part, final))
    finally:
        remove(settings, [part])  # what a failed upload left (closing a cut-off stream commits what it had), if any
    return final, size, sha


def _write_local(folder: Path, stream: BinaryIO, name_for: Callable[[str], str]) -> tuple[str, int, str]:
    digest, size = hashlib.sha256(), 0
    tmp = path_inside(folder, f".part-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as out:
            for block in iter(lambda: stream.read(_BLOCK), b""):
                digest.update(block)
                size += len(block)
                out.write(block)
        sha = digest.hexdigest()
        final = path_inside(folder, name_for(sha))
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return str(final), size, sha


def remove(settings: Settings, uris: list[str]) -> None:
    """Remove these files (paths or URIs), those already gone included."""
    local = [u for u in uris if "://" not in u]
    for path in local:
        Path(path).unlink(missing_ok=True)
    remote = [u for u in uris if "://" in u]
    if remote:
        try:
            store_call(settings, remote[0], lambda fs: fs.rm(remote))
        except FileNotFoundError:
            pass


def remove_folder(settings: Settings, folder: str) -> None:
    """Remove the folder and everything in it (gone already: nothing to do)."""
    if settings.upload_store_uri is None:
        shutil.rmtree(path_inside(settings.upload_dir, folder), ignore_errors=True)
        return
    remove_prefix(settings, folder_uri(settings, folder))


def folder_names(settings: Settings) -> list[str]:
    """Every upload folder's name (in a store: one delimited listing of the prefix, not of every file)."""
    if settings.upload_store_uri is None:
        root = settings.upload_dir
        return [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    prefix = settings.upload_store_uri
    try:
        listed = store_call(settings, prefix, lambda fs: fs.ls(prefix, detail=True, refresh=True))
    except FileNotFoundError:
        return []
    return [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in listed if entry.get("type") == "directory"]


def last_written(settings: Settings, folder: str) -> float:
    """When the folder was last written to (epoch seconds): a local folder's mtime, the newest object's time."""
    if settings.upload_store_uri is None:
        return path_inside(settings.upload_dir, folder).stat().st_mtime
    prefix = folder_uri(settings, folder)
    found = store_call(settings, prefix, lambda fs: fs.find(prefix, detail=True))
    times = [info["LastModified"].timestamp() for info in found.values() if info.get("LastModified") is not None]
    return max(times, default=time.time())
