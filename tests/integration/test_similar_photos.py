"""Similar-image search end to end on real photos (bundled with scikit-image and scikit-learn, nothing downloaded),
through real processes: the web front, a Celery worker that embeds, the maintenance worker that builds indexes, on
PostgreSQL and Redis.

The embedding model is built here: random convolution features with left-right symmetric kernels, averaged and maxed
over the image (so nearly invariant to flips, crops and rescales, as a trained backbone's pooled features are),
standardised on the catalog; the classification model used by `category_from` is a soft nearest-neighbour head on the
same features (its rows are probabilities: a softmax over the catalog photos, summed per category).
"""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from tests.helpers import REDIS_BASE, create_pg_database, drop_pg_database, import_model_http, make_stack

SIZE = 96
SCENES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "clock", "coins", "moon")
SCIENCE = ("hubble_deep_field", "immunohistochemistry", "retina", "cell")
TEXTURES = ("brick", "grass", "gravel", "page", "text", "colorwheel", "logo")
LATE = ("china", "flower")  # scikit-learn's two photos: embedded after the first index build (a delta adds them)
FACES = 30


def _photos() -> dict:
    """name -> (PIL image, category)."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    def rgb(a):
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        return Image.fromarray(a[..., :3].astype(np.uint8))

    out = {}
    for category, names in (("scene", SCENES), ("science", SCIENCE), ("texture", TEXTURES)):
        for name in names:
            out[name] = (rgb(getattr(skimage.data, name)()), category)
    for name, image in zip(LATE, load_sample_images().images):
        out[name] = (rgb(image), "scene")
    for i, face in enumerate(skimage.data.lfw_subset()[:FACES]):
        out[f"face-{i:02d}"] = (rgb(face * 255).resize((100, 100)), "face")
    return out


def _variants(image):
    """Crops, a flip, a rescale and a recompression of one photo."""
    from PIL import ImageOps

    w, h = image.size
    yield "centre crop", image.crop((int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h)))
    yield "offset crop", image.crop((int(0.15 * w), int(0.05 * h), w, int(0.9 * h)))
    yield "mirror", ImageOps.mirror(image)
    yield "half size", image.resize((w // 2, h // 2))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=25)
    yield "JPEG quality 25", buf.getvalue()


def _jpeg(image_or_bytes) -> bytes:
    if isinstance(image_or_bytes, bytes):
        return image_or_bytes
    buf = io.BytesIO()
    image_or_bytes.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _models(photos: dict, folder):
    """(embedding model file, category model file, category names) built on the catalog's photos."""
    import keras
    from keras import initializers, layers

    from shared.images.imaging import Preprocessing, load_for_model

    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    colour = layers.Conv2D(128, 1, activation="relu", kernel_initializer=initializers.RandomNormal(stddev=0.5, seed=1),
                           bias_initializer=initializers.RandomUniform(-0.1, 0.1, seed=2))(inputs)
    x, pooled = inputs, [layers.GlobalAveragePooling2D()(colour)]
    for n, (filters, kernel) in enumerate(((128, 5), (128, 3), (256, 3))):
        x = layers.Conv2D(filters, kernel, strides=2, activation="relu",
                          kernel_initializer=initializers.HeNormal(seed=10 + n),
                          bias_initializer=initializers.RandomUniform(-0.1, 0.1, seed=20 + n))(x)
        pooled += [layers.GlobalAveragePooling2D()(x), layers.GlobalMaxPooling2D()(x)]
    features = keras.Model(inputs, layers.Concatenate()(pooled))
    for layer in features.layers:  # left-right symmetric kernels: a mirrored photo has (nearly) the same features
        if isinstance(layer, layers.Conv2D):
            w, b = layer.get_weights()
            layer.set_weights([(w + w[:, ::-1]) / 2, b])
    prep = Preprocessing(SIZE, SIZE)
    x = np.stack([load_for_model(_jpeg(img), prep, max_pixels=10**8)[0] for img, _ in photos.values()])
    f = features.predict(x, verbose=0)
    mean, scale = f.mean(axis=0), f.std(axis=0) + 1e-3
    standardise = layers.Dense(f.shape[1], name="standardise")
    embedder = keras.Model(inputs, standardise(features(inputs)))
    standardise.set_weights([np.diag(1 / scale).astype(np.float32), (-mean / scale).astype(np.float32)])
    e = embedder.predict(x, verbose=0)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    categories = sorted({c for _, c in photos.values()})
    onehot = np.array([[c == name for name in categories] for _, c in photos.values()], dtype=np.float32)
    # a soft nearest-neighbour classifier: similarity to each catalog photo, softmax, summed per category
    similarity = layers.Dense(len(photos), use_bias=False, name="similarity")
    per_category = layers.Dense(len(categories), use_bias=False, name="category")
    classifier = keras.Model(inputs, per_category(layers.Softmax()(similarity(
        layers.UnitNormalization()(embedder(inputs))))))
    similarity.set_weights([(30 * e.T).astype(np.float32)])
    per_category.set_weights([onehot])
    embedder.save(folder / "embedder.keras")
    classifier.save(folder / "categories.keras")
    return folder / "embedder.keras", folder / "categories.keras", categories


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, photos):
    """A stack of its own (its worker is killed and restarted here), with the catalog's files and both models
    imported, and the catalog (all but the late photos) embedded and indexed."""
    import redis

    from shared.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("similar")
    url = create_pg_database()
    upgrade(url)
    broker = f"{REDIS_BASE}/10"
    redis.Redis.from_url(broker).ping()
    stack = make_stack(tmp, {"DATABASE_URL": url, "BROKER_URL": broker, "IMGQ_QUERY_TIMEOUT": "6",
                             "IMGQ_BROKER_PREFIX": f"imgq-similar-{uuid.uuid4().hex[:8]}:"})
    (stack.data / "catalog").mkdir()
    rows = []
    for name, (image, category) in photos.items():
        (stack.data / "catalog" / f"{name}.jpg").write_bytes(_jpeg(image))
        rows.append({"id": name, "image": f"catalog/{name}.jpg", "category": category})
    table = pd.DataFrame(rows)
    table[~table.id.isin(LATE)].to_csv(stack.data / "catalog.csv", index=False)
    table[table.id.isin(LATE)].to_csv(stack.data / "late.csv", index=False)
    embedder_file, classifier_file, categories = _models(photos, tmp)
    stack.categories = categories
    stack.start()
    try:
        import_model_http(stack, embedder_file, "photo-embedder", task="embedding", input_size=str(SIZE))
        import_model_http(stack, classifier_file, "photo-category", task="classification", input_size=str(SIZE),
                          class_names=",".join(categories))
        embed(stack, "catalog.csv")
        stack.first_index = build(stack, {"params": {"kind": "hnsw"}})
        yield stack
    finally:
        stack.stop()
        from shared.core.db import engine_for

        engine_for(url).dispose()
        drop_pg_database(url)


def embed(stack, manifest: str) -> dict:
    r = stack.http.post(stack.url("/api/v1/jobs/embed"), json={
        "model": "photo-embedder", "catalog": "photos", "manifest": manifest, "category_column": "category"},
        timeout=30)
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=300)
    assert job["status"] == "succeeded" and job["progress"]["failed"] == 0, job
    return job


def build(stack, body: dict) -> dict:
    r = stack.http.post(stack.url("/api/v1/catalogs/photos/indexes"), json=body, timeout=30)
    assert r.status_code == 202, r.text
    job = stack.wait_job(r.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return job


def ask(stack, image, k: int = 5, **fields) -> dict:
    r = stack.http.post(stack.url("/api/v1/similar"), data={"catalog": "photos", "k": str(k), **fields},
                        files={"image": ("query.jpg", _jpeg(image))}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def top(answer: dict) -> list[str]:
    return [hit["id"] for hit in answer["results"]]


def test_crops_flips_rescales_and_recompressions_of_a_photo_find_that_photo_first(stack, photos):
    misses = []
    for name in (*SCENES, *SCIENCE, *TEXTURES):
        image = photos[name][0]
        for what, variant in _variants(image):
            answer = ask(stack, variant)
            if top(answer)[0] != name:
                misses.append((name, what, top(answer)[:3]))
    assert misses == []
    answer = ask(stack, photos["coffee"][0], k=3)
    assert answer["catalog"] == "photos" and answer["space"] == "photo-embedder@1" and answer["index_version"] >= 1
    hit = answer["results"][0]
    assert hit["id"] == "coffee" and hit["category"] == "scene" and hit["score"] > 0.99
    thumb = stack.http.get(stack.url(hit["thumbnail"]), timeout=30)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 160


def test_a_category_filter_never_returns_another_category(stack, photos):
    for name in ("astronaut", "retina", "brick", "face-03"):
        for category in stack.categories:
            answer = ask(stack, photos[name][0], k=10, category=category)
            assert answer["category"] == {"value": category, "source": "request"}
            assert answer["results"] and {hit["category"] for hit in answer["results"]} == {category}
            if category == photos[name][1]:
                assert top(answer)[0] == name


def test_category_from_a_classifier_says_which_category_it_used_and_how_sure(stack, photos):
    for name in ("chelsea", "hubble_deep_field", "gravel", "face-07"):
        answer = ask(stack, photos[name][0], k=4, category_from="photo-category")
        chosen = answer["category"]
        assert chosen["source"] == "model" and chosen["model"] == "photo-category@1"
        assert chosen["value"] == photos[name][1] and 0 < chosen["confidence"] <= 1
        assert {hit["category"] for hit in answer["results"]} == {chosen["value"]}
        assert top(answer)[0] == name


def test_a_batch_of_queries_is_one_request(stack, photos):
    queries = [{"catalog": "photos", "k": 3, "image_base64": base64.b64encode(_jpeg(photos[n][0])).decode()}
               for n in ("rocket", "cell", "text")]
    queries.append({"catalog": "photos", "k": 3, "image_uri": "catalog/moon.jpg"})
    queries.append({"catalog": "photos", "k": 3, "item_id": "coins"})
    r = stack.http.post(stack.url("/api/v1/similar/batch"), json={"queries": queries}, timeout=60)
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert [top(a)[0] for a in answers[:4]] == ["rocket", "cell", "text", "moon"]
    assert "coins" not in top(answers[4]) and answers[4]["category"] == {"value": "scene", "source": "item"}


def test_new_items_are_findable_after_a_delta_without_a_rebuild(stack, photos):
    before = ask(stack, photos["china"][0])
    assert "china" not in top(before)
    embed(stack, "late.csv")
    delta = build(stack, {"mode": "delta"})
    assert delta["index"]["mode"] == "delta" and delta["progress"]["total"] == len(LATE)
    assert delta["index"]["built"]["items"] == stack.first_index["index"]["built"]["items"] + len(LATE)
    for name in LATE:
        for what, variant in _variants(photos[name][0]):
            assert top(ask(stack, variant))[0] == name, what


def test_a_deleted_item_never_comes_back(stack, photos):
    assert top(ask(stack, photos["colorwheel"][0]))[0] == "colorwheel"
    r = stack.http.delete(stack.url("/api/v1/catalogs/photos/items/colorwheel"), timeout=30)
    assert r.status_code == 204 and r.content == b""
    assert "colorwheel" not in top(ask(stack, photos["colorwheel"][0], k=10))
    build(stack, {"mode": "delta"})
    assert "colorwheel" not in top(ask(stack, photos["colorwheel"][0], k=10))
    rebuilt = build(stack, {"params": {"kind": "exact"}})
    assert rebuilt["index"]["built"]["params"]["kind"] == "exact"
    assert "colorwheel" not in top(ask(stack, photos["colorwheel"][0], k=10))
    r = stack.http.post(stack.url("/api/v1/similar"), json={"catalog": "photos", "item_id": "colorwheel"}, timeout=30)
    assert r.status_code == 404


def test_the_index_survives_a_worker_restart_and_a_web_restart_and_a_dead_embedder_is_a_503(stack, photos):
    expected = top(ask(stack, photos["retina"][0], k=5))
    stack.kill_worker()
    started = time.monotonic()
    r = stack.http.post(stack.url("/api/v1/similar"), data={"catalog": "photos"},
                        files={"image": ("q.jpg", _jpeg(photos["retina"][0]))}, timeout=60)
    assert r.status_code == 503, r.text
    assert "no worker embedded the query image within 6 s" in r.json()["error"]["message"]
    assert 5 < time.monotonic() - started < 30
    by_item = stack.http.post(stack.url("/api/v1/similar"), json={"catalog": "photos", "item_id": "retina", "k": 4},
                              timeout=30)
    assert by_item.status_code == 200  # an item query needs no worker
    stack.start_worker()
    stack.kill_web()
    stack.start_web()
    stack.wait_healthy()
    deadline = time.monotonic() + 180
    while True:  # the new worker loads TensorFlow first
        try:
            r = stack.http.post(stack.url("/api/v1/similar"), data={"catalog": "photos", "k": "5"},
                                files={"image": ("q.jpg", _jpeg(photos["retina"][0]))}, timeout=60)
        except requests.RequestException:
            r = None
        if r is not None and r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text if r is not None else "no answer"
    assert top(r.json()) == expected


def test_the_cli_answers_like_the_api(stack, photos, tmp_path):
    query = tmp_path / "query.jpg"
    query.write_bytes(_jpeg(dict(_variants(photos["rocket"][0]))["mirror"]))
    remote = {**stack.env, "IMGQ_SERVER": stack.base, "IMGQ_TOKEN": stack.token or ""}  # over HTTP, as a laptop
    out = subprocess.run([sys.executable, "-m", "shared.tools.cli", "similar", str(query), "--catalog", "photos",
                          "--k", "3", "--json"], env=remote, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout)
    assert top(answer)[0] == "rocket" and len(answer["results"]) == 3
    out = subprocess.run([sys.executable, "-m", "shared.tools.cli", "similar", "nope", "--item", "--catalog",
                          "photos"], env=remote, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no item 'nope'" in out.stderr


def _bulk_catalog(stack, n: int, dim: int) -> None:
    """n random unit vectors written straight into the stack's database as catalog `bulk`, in the photo embedder's
    space (as an embed job would have left them), so that an index build takes long enough to be killed."""
    import psycopg

    from shared.models.vectors import vector_bytes

    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    url = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        job_id = conn.execute("SELECT job_id FROM embeddings WHERE catalog = 'photos' LIMIT 1").fetchone()[0]
        with conn.cursor().copy("COPY embeddings (catalog, space, item_id, uri, dim, vector, job_id, created_at) "
                                "FROM STDIN") as copy:
            for i, vector in enumerate(vectors):
                copy.write_row(("bulk", "photo-embedder@1", f"bulk-{i}", f"bulk/{i}.jpg", dim, vector_bytes(vector),
                                job_id, "2026-11-26T00:00:00Z"))


def test_an_index_build_killed_with_its_worker_is_sent_again_and_registers_one_version(stack):
    _bulk_catalog(stack, 60_000, 64)
    r = stack.http.post(stack.url("/api/v1/catalogs/bulk/indexes"),
                        json={"params": {"kind": "hnsw", "ef_construction": 300}}, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while True:  # kill -9 the maintenance worker once the build has added its first vectors
        job = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=30).json()
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        if job["status"] == "running" and 0 < job["progress"]["done"] < 60_000:
            break
        time.sleep(0.2)
    stack.kill_maintenance()
    time.sleep(1)
    assert stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=30).json()["status"] == "running"
    stack.start_maintenance()  # its sweeper sends the job again once its heartbeat is stale
    job = stack.wait_job(job_id, timeout=600)
    assert job["status"] == "succeeded", job
    assert job["index"]["version"] == 1 and job["index"]["built"]["items"] == 60_000
    listed = stack.http.get(stack.url("/api/v1/catalogs/bulk"), timeout=30).json()
    assert [i["version"] for s in listed["spaces"] for i in s["indexes"]] == [1]
    r = stack.http.post(stack.url("/api/v1/similar"), json={"catalog": "bulk", "item_id": "bulk-5", "k": 5},
                        timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_a_query_whose_model_fails_on_the_worker_is_a_503_saying_why(stack, photos, tmp_path):
    import psycopg

    from tests.helpers import tiny_cnn

    tiny_cnn(SIZE, len(stack.categories), "softmax").save(tmp_path / "gone.keras")
    import_model_http(stack, tmp_path / "gone.keras", "gone-classifier", task="classification",
                      input_size=str(SIZE), class_names=",".join(stack.categories))
    url = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        path = conn.execute("SELECT path FROM model_versions WHERE name = 'gone-classifier'").fetchone()[0]
    Path(path).unlink()  # the model store lost the file: the worker cannot load it
    r = stack.http.post(stack.url("/api/v1/similar"), data={"catalog": "photos", "category_from": "gone-classifier"},
                        files={"image": ("q.jpg", _jpeg(photos["coffee"][0]))}, timeout=60)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["reason"] == "embedder failed" and "gone-classifier@1" in error["message"]
    assert str(Path(path).parent) not in error["message"]  # no server path reaches the client
    assert top(ask(stack, photos["coffee"][0]))[0] == "coffee"  # the worker goes on answering other queries
