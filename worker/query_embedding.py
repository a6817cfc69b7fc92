"""A similar-image query's images embedded by the models a worker holds, while the client waits.

Plain function, no Celery: `embed_images` reads each image (bytes sent with the query, or a path under the data
roots), preprocesses it as the embedding space's model expects, embeds the batch with one call (the same Embedder an
embed job uses, so a query vector and the catalog's vectors come from the same computation), L2-normalises unless
the space is `~raw`, and classifies the batch with the `category_from` model when the query asks for one. One item's
bad image is that item's error; the others are answered.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.images.imaging import ImageError, load_for_model
from shared.images.item_reads import Places, read_item
from shared.models.embedding_space import parse_space
from shared.models.outputs import interpret
from shared.models.vectors import l2_normalize
from shared.services import model_registry
from worker.model_cache import ModelCache


def _version(ref: str):
    with session_scope() as session:
        version = model_registry.resolve(session, ref)
        session.expunge(version)
    return version


def _image_bytes(image: dict, settings: Settings) -> bytes:
    if "data" in image:
        try:
            return base64.b64decode(image["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ImageError("the query image is not valid base64") from None
    places = Places.of(settings, image.get("folder"))
    return bytes(read_item(image["uri"], places, settings.max_image_bytes)[0])


def _inputs(datas: list[bytes | None], prep, settings: Settings, errors: list) -> tuple[list[int], np.ndarray | None]:
    rows, arrays = [], []
    for i, data in enumerate(datas):
        if data is None:
            continue
        try:
            arrays.append(load_for_model(data, prep, max_pixels=settings.max_image_pixels,
                                         fast_jpeg=settings.fast_jpeg)[0])
            rows.append(i)
        except ImageError as exc:
            errors[i] = str(exc)
    return rows, (np.stack(arrays) if arrays else None)


def embed_images(space: str, images: list[dict], classifier: str | None, *, models: ModelCache,
                 settings: Settings) -> dict:
    """{"vectors": [list of floats | None], "errors": [str | None], "classes": [{"label", "confidence"} | None]},
    one entry per image, in order."""
    parsed = parse_space(space)
    embedder = models.get(_version(parsed.model_ref)).embedder(parsed.layer)
    n = len(images)
    errors: list[str | None] = [None] * n
    datas: list[bytes | None] = []
    for i, image in enumerate(images):
        try:
            datas.append(_image_bytes(image, settings))
        except ImageError as exc:
            errors[i] = str(exc)
            datas.append(None)
    vectors: list[list[float] | None] = [None] * n
    rows, batch = _inputs(datas, embedder.preprocessing, settings, errors)
    if batch is not None:
        raw = embedder.predict(batch)
        usable = np.isfinite(raw).all(axis=1)
        if parsed.normalize:
            raw, unit = l2_normalize(raw)
            usable &= unit
        for row, vector, ok in zip(rows, raw, usable):
            if ok:
                vectors[row] = vector.astype(float).tolist()
            else:
                errors[row] = "the query image's embedding is zero or not finite: it has no direction to compare"
    classes: list[dict | None] = [None] * n
    if classifier is not None:
        classes = _classify(classifier, datas, errors, models, settings)
    return {"vectors": vectors, "errors": errors, "classes": classes}


def _classify(ref: str, datas: list[bytes | None], errors: list, models: ModelCache, settings: Settings) -> list:
    model = models.get(_version(ref))
    sig = model.signature
    classes: list[dict | None] = [None] * len(datas)
    live = [d if errors[i] is None else None for i, d in enumerate(datas)]
    rows, batch = _inputs(live, model.preprocessing, settings, errors)
    if batch is None:
        return classes
    outputs = interpret(sig.task, model.predict(batch), output_names=sig.output_names, class_names=sig.class_names,
                        target_transform=sig.target_transform)
    for row, out in zip(rows, outputs):
        classes[row] = {"label": out["label"], "confidence": out["confidence"]}
    return classes
