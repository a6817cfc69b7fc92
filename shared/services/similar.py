"""Similar-image queries: the nearest catalog items to an item or an image, within a category.

A query names a catalog (and, when it has several, the embedding space); its vector is the stored vector of an item
(`item_id`), or a worker's embedding of an image (`image_uri` under the data roots, or image bytes). The web front
and the CLI never load TensorFlow: image queries go to the `queries` queue, where a worker holding the model embeds
them (and classifies them when the query asks for `category_from`), and the caller waits at most
IMGQ_QUERY_TIMEOUT seconds for the answer (503 when no worker gave it).

The index searched is the highest version of the (catalog, space), loaded once per server by its IndexHolder and
swapped for a newer version on the first query that sees one; queries already running finish on the old one.
Deleted items are excluded at query time (one lookup among the candidates), so a deletion counts at once.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, NotFound, ServiceUnavailable, Unprocessable
from shared.core.logs import current_context
from shared.core.tables import Embedding, Job, VectorIndex
from shared.schemas.catalogs import SimilarQuery
from shared.search.index_holder import IndexHolder
from shared.search.vector_index import CatalogIndex, Hit
from shared.services import index_store, model_registry
from shared.services.index_jobs import latest

log = logging.getLogger(__name__)


@dataclass
class _Resolved:
    index_row: VectorIndex
    vector: list[float] | None = None  # an item's stored vector
    item_category: str | None = None
    classifier: str | None = None  # "name@version" of category_from


def _load_index(settings: Settings, key, version: int) -> CatalogIndex:
    catalog, space = key
    with session_scope() as session:
        path = session.scalar(select(VectorIndex.path).where(
            VectorIndex.catalog == catalog, VectorIndex.space == space, VectorIndex.version == version))
    if path is None:
        raise NotFound(f"index version {version} of catalog {catalog} is gone")
    log.info("loading index of catalog %s, space %s, version %s", catalog, space, version)
    return CatalogIndex.load(index_store.local_folder(settings, path))


def new_holder(settings: Settings) -> IndexHolder:
    """The loaded indexes of one server (the web app keeps one; the CLI makes one per command); a version in the
    object store is read through this machine's cache (shared/services/index_store.py)."""
    return IndexHolder(partial(_load_index, settings))


def current_index(session: Session, catalog: str, space: str | None) -> VectorIndex:
    """The index a query searches: the highest version in the space named, or in the catalog's most recently
    built space."""
    if space is not None:
        row = latest(session, catalog, space)
    else:
        row = session.scalar(select(VectorIndex).where(VectorIndex.catalog == catalog)
                             .order_by(VectorIndex.created_at.desc(), VectorIndex.version.desc()).limit(1))
    if row is None:
        where = f" in space {space!r}" if space else ""
        raise NotFound(f"catalog {catalog} has no index{where}; build one (POST /api/v1/catalogs/{catalog}/indexes)",
                       field="catalog")
    session.expunge(row)
    return row


def _item_vector(session: Session, q: SimilarQuery, space: str) -> tuple[list[float], str | None]:
    import numpy as np

    row = session.execute(select(Embedding.vector, Embedding.category).where(
        Embedding.catalog == q.catalog, Embedding.space == space, Embedding.item_id == q.item_id,
        Embedding.deleted_at.is_(None))).first()
    if row is None:
        raise NotFound(f"catalog {q.catalog} has no item {q.item_id!r} in space {space!r} (never embedded, or "
                       "deleted)", field="item_id")
    return np.frombuffer(row.vector, dtype="<f4").tolist(), row.category


def _classifier(session: Session, ref: str) -> str:
    version = model_registry.resolve(session, ref)
    if version.task != "classification":
        raise InvalidRequest(f"category_from names {version.name}@{version.version}, a {version.task} model; it "
                             "must be a classification model whose labels are the catalog's categories",
                             field="category_from")
    return f"{version.name}@{version.version}"


def _resolve(session: Session, q: SimilarQuery) -> _Resolved:
    row = current_index(session, q.catalog, q.space)
    resolved = _Resolved(row)
    if q.item_id is not None:
        resolved.vector, resolved.item_category = _item_vector(session, q, row.space)
    if q.category_from is not None:
        resolved.classifier = _classifier(session, q.category_from)
    return resolved


def _image_of(q: SimilarQuery, session: Session) -> dict:
    """What the worker reads for a query that needs one: the image's bytes, or its path under the data roots."""
    if q.image_base64 is not None:
        return {"data": q.image_base64}
    if q.image_uri is not None:
        return {"uri": q.image_uri}
    row = session.execute(select(Embedding.uri, Job.upload_folder).outerjoin(Job, Job.id == Embedding.job_id)
                          .where(Embedding.catalog == q.catalog, Embedding.item_id == q.item_id).limit(1)).first()
    return {"uri": row.uri, "folder": row.upload_folder}  # an uploaded item is read in its job's upload folder


def embed_on_worker(settings: Settings, space: str, images: list[dict], classifier: str | None) -> dict:
    """Ask a worker that holds the model to embed (and classify) `images`; wait at most IMGQ_QUERY_TIMEOUT s."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from shared.core.celery_app import EMBED_QUERY_TASK, QUERY_QUEUE, app

    timeout = settings.query_timeout
    try:
        # argsrepr: Celery's logs and events show the image count, never the images; the header carries the web
        # request's id onto the worker's lines (worker/task_logs.py)
        pending = app.send_task(EMBED_QUERY_TASK, args=[space, images, classifier], queue=QUERY_QUEUE,
                                expires=timeout, argsrepr=repr([space, f"<{len(images)} images>", classifier]),
                                headers={"imgq_request_id": current_context().get("request_id")})
    except Exception as exc:
        log.warning("could not send a query to the %s queue: %s", QUERY_QUEUE, exc)
        raise ServiceUnavailable("the message broker is unavailable, so no worker can embed the query image; "
                                 "retry later", reason="broker") from None
    try:
        return pending.get(timeout=timeout, interval=0.05)
    except CeleryTimeout:
        raise ServiceUnavailable(
            f"no worker embedded the query image within {timeout:g} s (IMGQ_QUERY_TIMEOUT): is a worker consuming "
            f"the '{QUERY_QUEUE}' queue running?", reason="no embedder") from None
    except Exception as exc:  # the task raised on the worker (a model file is missing, say): say so, not a 500
        log.warning("embedding a query on a worker failed: %s: %s", type(exc).__name__, exc)
        models = space + (f" and {classifier}" if classifier else "")
        raise ServiceUnavailable(f"the worker could not embed the query image with {models} "
                                 f"({type(exc).__name__}; the worker's log says more)",
                                 reason="embedder failed") from None  # its text may hold server paths
    finally:
        try:
            pending.forget()  # the answer was read (or is no longer wanted): drop it from the result backend
        except Exception:
            pass


def _deleted_among(catalog: str, space: str):
    def deleted(candidates: list[str]) -> set[str]:
        if not candidates:
            return set()
        with session_scope() as session:
            return set(session.scalars(select(Embedding.item_id).where(
                Embedding.catalog == catalog, Embedding.space == space, Embedding.item_id.in_(candidates),
                Embedding.deleted_at.is_not(None))))
    return deleted


def thumbnail_url(catalog: str, item_id: str) -> str:
    from urllib.parse import quote

    return f"/api/v1/catalogs/{catalog}/items/{quote(item_id, safe='')}/thumbnail"


def _hit_json(catalog: str, hit: Hit) -> dict:
    return {"id": hit.item_id, "score": round(float(hit.score), 6), "category": hit.category,
            "thumbnail": thumbnail_url(catalog, hit.item_id)}


def search(settings: Settings, queries: list[SimilarQuery], holder: IndexHolder) -> list[dict]:
    """Answer each query (a batch shares one worker round trip per embedding space). Raises for the first query
    that cannot be answered (a 4xx), or ServiceUnavailable when image queries find no worker."""
    import numpy as np

    with session_scope() as session:
        resolved = [_resolve(session, q) for q in queries]
        needs_worker = [i for i, (q, r) in enumerate(zip(queries, resolved))
                        if r.vector is None or r.classifier is not None]
        images = {i: _image_of(queries[i], session) for i in needs_worker}
    by_call: dict[tuple[str, str | None], list[int]] = {}
    for i in needs_worker:
        by_call.setdefault((resolved[i].index_row.space, resolved[i].classifier), []).append(i)
    embedded: dict[int, dict] = {}
    for (space, classifier), members in by_call.items():
        answer = embed_on_worker(settings, space, [images[i] for i in members], classifier)
        for n, i in enumerate(members):
            if answer["errors"][n]:
                raise Unprocessable(f"query {i}: {answer['errors'][n]}", field="image", query=i)
            embedded[i] = {"vector": answer["vectors"][n], "class": (answer.get("classes") or [None] * len(members))[n]}
    out = []
    for i, (q, r) in enumerate(zip(queries, resolved)):
        row = r.index_row
        vector = r.vector if r.vector is not None else embedded[i]["vector"]
        category, described = _category(q, r, embedded.get(i))
        index = holder.get((row.catalog, row.space), row.version)
        exclude = _deleted_among(row.catalog, row.space)
        if q.item_id is not None:  # "more like this" leaves the item itself out
            def exclude(candidates, _deleted=exclude, _self=q.item_id):
                return _deleted(candidates) | ({_self} & set(candidates))
        query = np.asarray([vector], dtype=np.float32)
        if query.shape[1] != index.dim:
            raise Unprocessable(f"query {i}: the query vector has {query.shape[1]} values, the index {index.dim}")
        hits = index.search(query, q.k, category=category, exclude=exclude)[0]
        out.append({"catalog": row.catalog, "space": row.space, "index_version": row.version, "k": q.k,
                    "query": _query_json(q), "category": described,
                    "results": [_hit_json(row.catalog, h) for h in hits]})
    return out


def _category(q: SimilarQuery, r: _Resolved, embedded: dict | None) -> tuple[str | None, dict | None]:
    """The category to filter by and how it was chosen: the caller's, the classifier's, or the query item's own."""
    if q.category is not None:
        return q.category, {"value": q.category, "source": "request"}
    if r.classifier is not None:
        predicted = embedded["class"]
        return predicted["label"], {"value": predicted["label"], "source": "model", "model": r.classifier,
                                    "confidence": round(float(predicted["confidence"]), 6)}
    if q.item_id is not None and r.item_category is not None:
        return r.item_category, {"value": r.item_category, "source": "item"}
    return None, None


def _query_json(q: SimilarQuery) -> dict:
    if q.item_id is not None:
        return {"item_id": q.item_id}
    if q.image_uri is not None:
        return {"image_uri": q.image_uri}
    return {"image": "uploaded", "bytes": len(base64.b64decode(q.image_base64, validate=False))}


def encode_image(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
