"""Embedding with a loaded model: the sub-model that reads one layer, and what the scoring pipeline
(worker/scoring.score_items) makes of its rows for an embed job.

- `Embedder`: the model cut at a layer (None: the model's own output, for a model registered with task
  `embedding`), run through one traced tf.function like worker/model_cache.LoadedModel. Built once per
  (version, layer) and kept with its LoadedModel (`LoadedModel.embedder`), so it leaves memory with it.
  The layer must be a top-level layer whose output is (batch, n); anything else is a ValueError whose message
  the job's failure reason repeats.
- `VectorOutputs`: each row becomes an item's vector, as stored (float32 little-endian bytes,
  shared/models/vectors.py), L2-normalised unless the space is `~raw`. A row that is not finite, or (normalised)
  whose norm is zero, is that item's error: a zero vector has no direction, and no cosine could compare it.
  Cache hits come from the catalog embeddings of the same space (worker/embedding_store.lookup_vectors) and are
  copied as they are; no cache row is written, the embeddings table is the cache.
"""
from __future__ import annotations

import numpy as np

from shared.models.vectors import dim_of, l2_normalize, vector_bytes
from worker.model_cache import traced_predict


class Embedder:
    """A LoadedModel read at `layer`: `predict(batch)` gives float32 (n, dim) as the layer outputs them."""

    def __init__(self, loaded, layer: str | None):
        from worker.device import configure_tensorflow

        tf = configure_tensorflow()
        import keras

        self.version_id, self.ref, self.layer = loaded.version_id, loaded.ref, layer
        self.signature, self.preprocessing = loaded.signature, loaded.preprocessing
        model = loaded.model
        self.model = model if layer is None else keras.Model(model.inputs, _layer_output(model, layer, self.ref))
        shape = tuple(self.model.outputs[0].shape) if len(self.model.outputs) == 1 else None
        if shape is None or len(shape) != 2 or shape[1] is None:
            where = f"layer {layer!r}" if layer else "the model"
            raise ValueError(f"{where} of {self.ref} outputs {shape or 'several tensors'}; an embedding is one "
                             "vector per image, (batch, n): name a pooling, flatten or dense layer")
        self.dim = int(shape[1])
        self.predict_rows = traced_predict(tf, self.model, loaded.preprocessing)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Rows of the layer, float32 (n, dim), for a float32 model input or uint8 pixels (see traced_predict)."""
        return np.asarray(self.predict_rows(batch), dtype=np.float32)


def _layer_output(model, layer: str, ref: str):
    """The output tensor of a top-level layer that is not an input (as shared/models/keras_config.py lists them)."""
    names = [known.name for known in model.layers if type(known).__name__ != "InputLayer"]
    if layer not in names:
        if any(known.name == layer for known in model.layers):
            raise ValueError(f"layer {layer!r} is the input of {ref}, not an embedding")
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(f"model {ref} has no layer {layer!r}; its layers are {shown}")
    return model.get_layer(layer).output


class VectorOutputs:
    """An embed job's reading of the model's rows (see the module docstring)."""

    def __init__(self, normalize: bool = True):
        self.normalize = normalize

    def cached(self, vector: bytes) -> dict:
        return {"vector": bytes(vector), "outputs": {"dim": dim_of(vector)}}

    def predicted(self, raw: np.ndarray, geometries: list) -> list[dict]:
        rows = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
        finite = np.isfinite(rows).all(axis=1)
        usable = finite
        if self.normalize:
            rows, usable = l2_normalize(rows)
            usable &= finite
        dim = rows.shape[1]
        out = []
        for row, ok, is_finite in zip(rows, usable, finite):
            if ok:
                out.append({"status": "ok", "vector": vector_bytes(row), "outputs": {"dim": dim}})
            elif not is_finite:
                out.append({"status": "error", "error": "the embedding is not finite (NaN or infinity)"})
            else:
                out.append({"status": "error", "error": "the embedding is the zero vector: it has no direction to "
                                                        "normalise or compare"})
        return out

    def cache_row(self, digest: str, result: dict) -> dict | None:
        return None
