"""Files of a saved CatalogIndex (shared/search/vector_index.py): written durably (fsync'd before the manifest
that makes them count) and put in place by a rename, so a reader finds a whole index or none."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import faiss


def write_sub(folder: Path, n: int, sub) -> dict:
    """One category's FAISS index and id list, as files in `folder`; returns its manifest entry."""
    index_name, ids_name = f"sub-{n:04d}.faiss", f"sub-{n:04d}.ids.json"
    faiss.write_index(sub.index, str(folder / index_name))
    fsync(folder / index_name)
    write_synced(folder / ids_name, json.dumps(sub.ids))
    return {"category": sub.category, "kind": sub.kind, "size": sub.size, "index": index_name, "ids": ids_name}


def write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Put the complete folder `tmp` where `folder` is (or is not yet)."""
    if not folder.exists():
        os.rename(tmp, folder)
    else:
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:12]}")
        os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    fsync(folder.parent)
