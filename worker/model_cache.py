"""Models kept in memory by a worker process: loaded once, reused by every task (a small LRU). The embedders cut
from a model (worker/embedding.py) are kept with it, one per layer, and leave memory with it."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from functools import partial

import numpy as np

from shared.core.config import Settings
from shared.core.tables import ModelVersion
from shared.images.imaging import Preprocessing
from shared.models.model_inspect import load_keras_safely
from shared.services.model_files import sha256_file, version_file
from shared.services.model_registry import signature_of
from worker import metrics, pixel_scaling

log = logging.getLogger(__name__)


class LoadedModel:
    """A Keras model ready for batched inference through one traced tf.function."""

    def __init__(self, version: ModelVersion, model):
        from worker.device import configure_tensorflow

        tf = configure_tensorflow()
        self.version_id = version.id
        self.ref = f"{version.name}@{version.version}"
        self.signature = signature_of(version)
        self.preprocessing = Preprocessing(height=version.input_height, width=version.input_width,
                                           resize_mode=version.resize_mode, pixel_scale=version.pixel_scale)
        self.model = model
        self.predict = traced_predict(tf, model, self.preprocessing)
        self._embedders: dict = {}
        self._embedders_lock = threading.Lock()

    def embedder(self, layer: str | None):
        """This model read at `layer` (None: its output), built on first use and kept."""
        with self._embedders_lock:
            if layer not in self._embedders:
                from worker.embedding import Embedder

                self._embedders[layer] = Embedder(self, layer)
            return self._embedders[layer]



def traced_predict(tf, model, prep: Preprocessing):
    """`predict(batch)` through traced tf.functions: a float32 batch is the model's input as it is; a uint8 batch is
    pixels (load_for_model(scaled=False)) that the function scales as training does (worker/pixel_scaling.py)
    before the model, in TensorFlow's threads rather than the decoders'."""
    shape = [None, prep.height, prep.width, 3]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)], reduce_retracing=True)
    def infer(x):
        return model(x, training=False)

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)], reduce_retracing=True)
    def infer_pixels(pixels):
        return model(pixel_scaling.scale_pixels_tf(pixels, prep.pixel_scale), training=False)

    def predict(batch: np.ndarray) -> np.ndarray:
        if batch.dtype == np.uint8:
            return infer_pixels(batch).numpy()
        return infer(batch.astype(np.float32, copy=False)).numpy()

    return predict


def load(version: ModelVersion, settings: Settings | None = None) -> LoadedModel:
    """The version's model from its file: in place in a local model store, else this machine's copy of the object
    (downloaded once, checked against its hash: shared/services/model_files.py; `settings` say where)."""
    path = version_file(version, settings)
    if not path.is_file():
        raise FileNotFoundError(f"model file of {version.name}@{version.version} is missing: {path}")
    if sha256_file(path) != version.sha256:
        raise ValueError(f"model file of {version.name}@{version.version} does not match its checksum")
    from worker.device import configure_tensorflow

    configure_tensorflow()
    return LoadedModel(version, load_keras_safely(str(path)))


class ModelCache:
    def __init__(self, capacity: int, loader=None, settings: Settings | None = None):
        self.capacity = capacity
        self._loader = loader or partial(load, settings=settings)
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, version: ModelVersion) -> LoadedModel:
        with self._lock:
            model = self._models.get(version.id)
            if model is not None:
                self._models.move_to_end(version.id)
                metrics.cache_hit()
                return model
            log.info("loading model %s@%s", version.name, version.version)
            started = time.perf_counter()
            model = self._loader(version)
            metrics.loaded(time.perf_counter() - started)
            self.loads += 1
            self._models[version.id] = model
            while len(self._models) > self.capacity:
                evicted_id, _ = self._models.popitem(last=False)
                log.info("evicted model version id %s from memory", evicted_id)
            return model

    def __contains__(self, version_id: int) -> bool:
        return version_id in self._models
