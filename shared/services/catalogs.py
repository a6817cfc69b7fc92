"""Catalogs as clients see them: their embedding spaces and indexes, deleting items, items' thumbnails.

A catalog exists once an embed job wrote vectors for it. Deleting an item marks its vectors in every space
(`deleted_at`): queries leave it out from then on, the next index build purges it, and embedding it again brings
it back.
"""
from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.core import keyset
from shared.core.config import Settings
from shared.core.errors import InvalidRequest, NotFound
from shared.core.keyset import Key
from shared.core.names import check_name
from shared.core.tables import Embedding, Job, VectorIndex, utcnow
from shared.schemas.catalogs import MAX_DELETIONS
from shared.services import thumbnails
from shared.services.index_jobs import index_json

LATEST_INDEXES = 5  # index versions shown per space


def catalogs_page(session: Session, *, limit: int, after: Key | None = None) -> tuple[list[dict], Key | None]:
    """Catalogs by name (keyed by it), each as `catalog_json` describes it, and the key of the last one when more
    follow."""
    rows, next_key = keyset.page(session, select(Embedding.catalog).group_by(Embedding.catalog), (Embedding.catalog,),
                                 after=after, limit=limit, key_of=lambda row: (row[0],))
    return _describe(session, [row[0] for row in rows]), next_key


def catalog_json(session: Session, catalog: str) -> dict:
    """A catalog: its spaces (live and deleted items, when last embedded) and each space's latest index versions."""
    check_name(catalog, "catalog")
    found = _describe(session, [catalog])
    if not found:
        raise NotFound(f"no catalog {catalog} (no embed job wrote vectors for it)")
    return found[0]


def _describe(session: Session, catalogs: list[str]) -> list[dict]:
    """The named catalogs that have vectors, in the order given (the one serializer of a catalog)."""
    q = (select(Embedding.catalog, Embedding.space, func.count(), func.count(Embedding.deleted_at),
                func.max(Embedding.created_at))
         .where(Embedding.catalog.in_(catalogs))
         .group_by(Embedding.catalog, Embedding.space).order_by(Embedding.catalog, Embedding.space))
    out: dict[str, dict] = {}
    for catalog, space, total, deleted, last in session.execute(q):
        entry = out.setdefault(catalog, {"name": catalog, "spaces": [],
                                         "links": {"self": f"/api/v1/catalogs/{catalog}"}})
        indexes = session.scalars(select(VectorIndex).where(VectorIndex.catalog == catalog, VectorIndex.space == space)
                                  .order_by(VectorIndex.version.desc()).limit(LATEST_INDEXES))
        entry["spaces"].append({"space": space, "items": total - deleted, "deleted": deleted,
                                "last_embedded_at": None if last is None else last.isoformat(),
                                "indexes": [index_json(row) for row in indexes]})
    return [out[name] for name in catalogs if name in out]


def delete_items(session: Session, catalog: str, item_ids: list[str]) -> dict:
    """Mark the items deleted in every space of the catalog; returns how many were found and newly deleted."""
    check_name(catalog, "catalog")
    if not item_ids:
        raise InvalidRequest("ids must list at least one item id", field="ids")
    if len(item_ids) > MAX_DELETIONS:
        raise InvalidRequest(f"at most {MAX_DELETIONS} ids per request", field="ids")
    ids = sorted(set(item_ids))
    known = set(session.scalars(select(Embedding.item_id).where(Embedding.catalog == catalog,
                                                                Embedding.item_id.in_(ids))))
    newly = session.execute(update(Embedding).where(Embedding.catalog == catalog, Embedding.item_id.in_(ids),
                                                    Embedding.deleted_at.is_(None))
                            .values(deleted_at=utcnow())).rowcount
    return {"catalog": catalog, "requested": len(ids), "found": len(known),
            "unknown": [i for i in ids if i not in known][:100], "deleted_rows": newly}


def delete_item(session: Session, catalog: str, item_id: str) -> None:
    """Mark one item deleted in every space of the catalog (again: nothing changes); NotFound if it never had it."""
    if not delete_items(session, catalog, [item_id])["found"]:
        raise NotFound(f"catalog {catalog} has no item {item_id!r}")


def thumbnail(session: Session, settings: Settings, catalog: str, item_id: str, size: int) -> bytes:
    """A JPEG of the item's image, its longer edge at most `size` pixels (EXIF orientation applied), read from the
    data roots and the upload folder of the job that embedded it."""
    thumbnails.check_size(size)
    row = session.execute(select(Embedding.uri, Job.upload_folder).outerjoin(Job, Job.id == Embedding.job_id)
                          .where(Embedding.catalog == catalog, Embedding.item_id == item_id)
                          .order_by(Embedding.created_at.desc()).limit(1)).first()
    if row is None:
        raise NotFound(f"catalog {catalog} has no item {item_id!r}")
    return thumbnails.jpeg_of(settings, row.upload_folder, row.uri, item_id, size)
