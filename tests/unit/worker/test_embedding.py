"""Embedding through the scoring pipeline (worker/embedding.py, worker/scoring.score_items): real images, real
Keras models, no database. Vectors must equal a Keras sub-model's predict on the same preprocessed tensors."""
import keras
import numpy as np
import pytest
from keras import layers

from shared.core.tables import ModelVersion
from shared.images.imaging import Preprocessing, load_for_model
from shared.models.keras_config import layer_before_head, layer_graph
from shared.models.vectors import vectors_from_bytes
from shared.services.model_registry import sha256_file
from tests.helpers import tiny_cnn, write_jpeg
from worker.embedding import VectorOutputs
from worker.model_cache import load
from worker.scoring import ScoreOptions, score_items


def version(file, task="classification", **kw):
    fields = dict(id=11, name="m", version=2, task=task, input_height=32, input_width=32, resize_mode="stretch",
                  pixel_scale="unit", output_names=None, class_names=["a", "b", "c"],
                  target_transform={"kind": "none"}, path=str(file), sha256=sha256_file(file), size_bytes=1)
    fields.update(kw)
    return ModelVersion(**fields)


@pytest.fixture(scope="module")
def classifier(model_files):
    return load(version(model_files["classification"]))


def photos(root, n):
    return [(f"sku-{i:02d}", str(write_jpeg(root / f"{i}.jpg", size=(40 + 5 * i, 70 - 2 * i), seed=i)))
            for i in range(n)]


def embed(items, model, root, *, normalize=True, cache=None, batch_size=4):
    written = []
    opts = ScoreOptions(roots=(root,), batch_size=batch_size, max_pixels=10**7, max_bytes=10**7, threads=2)
    score_items(items, model, opts, lambda hashes: {h: cache[h] for h in hashes if h in (cache or {})},
                lambda results, cache_rows: written.append((results, cache_rows)), VectorOutputs(normalize))
    return written


def expected(keras_model, layer, items, normalize=True):
    """What a Keras sub-model to `layer` says of the same preprocessed tensors."""
    sub = keras.Model(keras_model.inputs, keras_model.get_layer(layer).output) if layer else keras_model
    x = np.stack([load_for_model(open(uri, "rb").read(), Preprocessing(32, 32), max_pixels=10**7)[0]
                  for _, uri in items])
    out = sub.predict(x, verbose=0)
    return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out


def vectors(written, dim):
    results = {r["item_id"]: r for batch, _ in written for r in batch}
    return results, {i: vectors_from_bytes([r["vector"]], dim)[0] for i, r in results.items() if r["status"] == "ok"}


@pytest.mark.parametrize("normalize", [True, False])
def test_vectors_at_the_layer_before_the_head_equal_the_keras_sub_model(tmp_path, classifier, model_files,
                                                                        normalize):
    layer = layer_before_head(layer_graph(model_files["classification"]))
    embedder = classifier.embedder(layer)
    assert embedder is classifier.embedder(layer)  # built once per (version, layer), kept with the model
    items = photos(tmp_path, 7)
    written = embed(items, embedder, tmp_path, normalize=normalize)
    assert len(written) == 2 and all(cache_rows == [] for _, cache_rows in written)
    results, got = vectors(written, embedder.dim)
    assert embedder.dim == 8 and all(r["outputs"] == {"dim": 8} for r in results.values())
    want = expected(keras.models.load_model(model_files["classification"]), layer, items, normalize)
    np.testing.assert_allclose(np.stack([got[i] for i, _ in items]), want, atol=1e-5)
    if normalize:
        np.testing.assert_allclose([np.linalg.norm(v) for v in got.values()], 1.0, atol=1e-5)


def test_an_embedding_model_is_read_at_its_output(tmp_path):
    embedder_file = tmp_path / "embedder.keras"
    tiny_cnn(32, 6, seed=3).save(embedder_file)
    model = load(version(embedder_file, task="embedding", class_names=None))
    items = photos(tmp_path, 3)
    embedder = model.embedder(None)
    _, got = vectors(embed(items, embedder, tmp_path), embedder.dim)
    assert embedder.dim == 6
    want = expected(keras.models.load_model(embedder_file), None, items)
    np.testing.assert_allclose(np.stack([got[i] for i, _ in items]), want, atol=1e-5)


def test_a_sequential_model_embeds_at_a_named_layer(tmp_path):
    keras.utils.set_random_seed(1)
    seq = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(4, 3, activation="relu", name="conv"),
                            layers.GlobalAveragePooling2D(name="pool"), layers.Dropout(0.5, name="drop"),
                            layers.Dense(6, name="features"), layers.Dense(2, name="head")])
    seq.save(tmp_path / "seq.keras")
    model = load(version(tmp_path / "seq.keras", task="regression", class_names=None, output_names=["a", "b"]))
    items = photos(tmp_path, 5)
    for layer in ("features", layer_before_head(layer_graph(tmp_path / "seq.keras"))):
        embedder = model.embedder(layer)
        _, got = vectors(embed(items, embedder, tmp_path), embedder.dim)
        np.testing.assert_allclose(np.stack([got[i] for i, _ in items]), expected(seq, layer, items), atol=1e-5)


def layer_of(model, kind: str) -> str:
    """The name of the model's first layer of a Keras class (layer names depend on what was built before)."""
    return next(layer.name for layer in model.model.layers if type(layer).__name__ == kind)


@pytest.mark.parametrize("kind, text", [(None, "has no layer 'nope'; its layers are"),
                                        ("Conv2D", "outputs (None, 30, 30, 4); an embedding is one vector"),
                                        ("InputLayer", "is the input of m@2")])
def test_a_layer_that_is_missing_or_not_one_vector_per_image_is_refused(classifier, kind, text):
    with pytest.raises(ValueError) as err:
        classifier.embedder(layer_of(classifier, kind) if kind else "nope")
    assert text in str(err.value)


def test_cached_vectors_are_copied_and_not_predicted_again(tmp_path, classifier, model_files):
    embedder = classifier.embedder(layer_of(classifier, "GlobalAveragePooling2D"))
    items = photos(tmp_path, 5)
    first, _ = vectors(embed(items, embedder, tmp_path), embedder.dim)
    cache = {r["content_hash"]: r["vector"] for r in first.values()}
    write_jpeg(tmp_path / "0.jpg", size=(33, 33), seed=77)  # one photo changed
    second, _ = vectors(embed(items, embedder, tmp_path, cache=cache), embedder.dim)
    assert [i for i, r in sorted(second.items()) if not r.get("from_cache")] == ["sku-00"]
    assert all(second[i]["vector"] == first[i]["vector"] and second[i]["outputs"] == {"dim": 8}
               for i in second if i != "sku-00")


class _Rows:
    """A model whose rows are given: zero, non-finite and ordinary vectors."""

    def __init__(self, real, rows):
        self.preprocessing, self.version_id, self.signature, self.rows = (real.preprocessing, real.version_id,
                                                                          real.signature, rows)

    def predict(self, batch):
        return self.rows[: len(batch)]


def test_zero_and_non_finite_vectors_are_item_errors_and_raw_zero_vectors_are_kept(tmp_path, classifier):
    rows = np.array([[0, 0, 0], [np.nan, 1, 0], [1, 2, 2], [np.inf, 0, 0]], dtype=np.float32)
    items = photos(tmp_path, 4)
    results, got = vectors(embed(items, _Rows(classifier, rows), tmp_path), 3)
    assert [results[i]["status"] for i, _ in items] == ["error", "error", "ok", "error"]
    assert "zero vector" in results["sku-00"]["error"] and "not finite" in results["sku-01"]["error"]
    np.testing.assert_allclose(got["sku-02"], [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    raw, got = vectors(embed(items, _Rows(classifier, rows), tmp_path, normalize=False), 3)
    assert [raw[i]["status"] for i, _ in items] == ["ok", "error", "ok", "error"]
    assert got["sku-00"].tolist() == [0, 0, 0] and got["sku-02"].tolist() == [1, 2, 2]
