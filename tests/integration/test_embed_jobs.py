"""Embed jobs through real parts. In one process, on SQLite and PostgreSQL: HTTP through the app factory, chunks
run by worker.run_chunk with real Keras models, vectors checked against a Keras sub-model; retries, the cache,
cancel and the 4xx answers. Then end to end with a real worker process on PostgreSQL + Redis and on the embedded
default (SQLite + filesystem broker)."""
import csv
import io
import uuid
from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, update

from shared.core.db import session_scope
from shared.core.tables import Chunk, Embedding, Job, ModelVersion, Result
from shared.images.imaging import Preprocessing, load_for_model
from shared.models.keras_config import layer_before_head, layer_graph
from shared.models.vectors import vectors_from_bytes
from shared.services.model_registry import set_alias, sha256_file
from tests.helpers import authorized_client, import_model_http, tiny_cnn, write_jpeg
from web.app import create_app
from worker import embedding_store
from worker.model_cache import ModelCache
from worker.run_chunk import run_chunk
from worker.sweeper import sweep

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedder_file(tmp_path_factory):
    """A model registered with task `embedding`: its output (6 wide) is the vector."""
    path = tmp_path_factory.mktemp("embedder") / "embedder.keras"
    tiny_cnn(32, 6, seed=5).save(path)
    return path


def register(name: str, file, task: str, **kw) -> None:
    """A version row for a real file, as an import leaves it (without the import's inspection subprocess)."""
    with session_scope() as s:
        s.add(ModelVersion(name=name, version=1, task=task, input_height=32, input_width=32, resize_mode="stretch",
                           pixel_scale="unit", output_names=kw.get("output_names"), class_names=kw.get("class_names"),
                           target_transform={"kind": "none"}, path=str(file), sha256=sha256_file(file),
                           size_bytes=file.stat().st_size))
        s.flush()
        set_alias(s, name, "production", 1)


@pytest.fixture
def stack(configured, model_files, embedder_file):
    """A client on the app with small chunks, models registered, and the settings its worker runs with."""
    settings = replace(configured, chunk_size=4, batch_size=3, chain_seconds=0.0)
    register("category-model", model_files["classification"], "classification", class_names=["a", "b", "c"])
    register("catalog-embedder", embedder_file, "embedding")
    return authorized_client(create_app(settings)), settings


def photos(root, folder, n, seed=0):
    return [write_jpeg(root / folder / f"p{i:02d}.jpg", size=(40 + 3 * i, 50 - i), seed=seed + i) for i in range(n)]


def post_embed(client, body=None, expect=202, **kw):
    resp = client.post("/api/v1/jobs/embed", json=body, **kw) if body is not None else \
        client.post("/api/v1/jobs/embed", **kw)
    assert resp.status_code == expect, resp.json
    return resp.json


def run_job(job_id, settings, models=None):
    models = models or ModelCache(2)
    with session_scope() as s:
        n = s.get(Job, job_id).total_chunks
    return [run_chunk(job_id, no, worker="w", models=models, settings=settings) for no in range(n)]


def stored(catalog, space=None):
    with session_scope() as s:
        q = select(Embedding).where(Embedding.catalog == catalog)
        rows = s.scalars(q.where(Embedding.space == space) if space else q).all()
        return {r.item_id: r for r in rows}


def expected(file, layer, paths, normalize=True):
    """What Keras says of the same preprocessed tensors: the sub-model to `layer` (None: the model)."""
    model = keras.models.load_model(file)
    sub = keras.Model(model.inputs, model.get_layer(layer).output) if layer else model
    x = np.stack([load_for_model(p.read_bytes(), Preprocessing(32, 32), max_pixels=10**8)[0] for p in paths])
    out = sub.predict(x, verbose=0)
    return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out


def test_an_embed_job_stores_one_unit_vector_per_item_with_its_category(stack, configured, model_files):
    client, settings = stack
    root = configured.data_roots[0]
    paths = photos(root, "shop", 9)
    (root / "shop" / "text.jpg").write_text("not an image")
    items = [{"id": p.stem, "uri": f"shop/{p.name}", "category": "shoes" if i % 2 else "hats"}
             for i, p in enumerate(paths)]
    items += [{"id": "text", "uri": "shop/text.jpg", "category": "hats"}, {"id": "gone", "uri": "shop/none.jpg"}]
    job = post_embed(client, {"model": "category-model", "catalog": "products", "items": items, "cache": False})
    layer = layer_before_head(layer_graph(model_files["classification"]))
    assert (job["kind"], job["status"], job["chunks"]["total"]) == ("embed", "queued", 3)
    assert job["embedding"] == {"catalog": "products", "space": f"category-model@1#{layer}", "layer": layer,
                                "normalize": True, "dim": None}
    assert run_job(job["id"], settings) == ["done"] * 3
    job = client.get(f"/api/v1/jobs/{job['id']}").json
    assert job["status"] == "succeeded" and job["embedding"]["dim"] == 8
    assert (job["progress"]["total"], job["progress"]["done"], job["progress"]["failed"]) == (11, 11, 2)
    rows = stored("products")
    assert set(rows) == {p.stem for p in paths}
    assert all(r.space == job["embedding"]["space"] and r.dim == 8 and r.job_id == job["id"] for r in rows.values())
    assert {i: rows[i].category for i in ("p00", "p01")} == {"p00": "hats", "p01": "shoes"}
    got = vectors_from_bytes([rows[p.stem].vector for p in paths], 8)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected(model_files["classification"], layer, paths), atol=1e-5)
    results = {r["id"]: r for r in client.get(f"/api/v1/jobs/{job['id']}/results").json["results"]}
    assert results["p01"]["outputs"] == {"dim": 8} and results["p01"]["category"] == "shoes"
    assert "not an image" in results["text"]["error"] and results["text"]["category"] == "hats"
    assert "file not found" in results["gone"]["error"] and results["gone"]["category"] is None
    text = client.get(f"/api/v1/jobs/{job['id']}/results?format=csv").get_data(as_text=True)
    table = {r["id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert list(table["p00"]) == ["id", "status", "error", "from_cache", "category", "dim"]
    assert (table["p00"]["category"], table["p00"]["dim"], table["gone"]["status"]) == ("hats", "8", "error")


def test_an_embedding_models_manifest_job_reads_its_output_and_the_category_column(stack, configured,
                                                                                  embedder_file):
    client, settings = stack
    root = configured.data_roots[0]
    paths = photos(root, "crawl", 6, seed=40)
    pd.DataFrame({"sku": [p.stem for p in paths], "photo": [p.name for p in paths],
                  "category": ["a", "b", None, "a", "b", "a"]}).to_csv(root / "crawl" / "items.csv", index=False)
    job = post_embed(client, {"model": "catalog-embedder", "catalog": "shop.v2", "manifest": "crawl/items.csv",
                              "id_column": "sku", "image_column": "photo", "normalize": False})
    assert job["embedding"]["space"] == "catalog-embedder@1~raw" and job["embedding"]["layer"] is None
    assert job["source"]["category_column"] == "category"
    run_job(job["id"], settings)
    rows = stored("shop.v2")
    assert [rows[p.stem].category for p in paths] == ["a", "b", None, "a", "b", "a"]
    got = vectors_from_bytes([rows[p.stem].vector for p in paths], 6)
    np.testing.assert_allclose(got, expected(embedder_file, None, paths, normalize=False), atol=1e-5)


def test_a_second_job_over_the_same_photos_copies_their_vectors_from_the_cache(stack, configured):
    client, settings = stack
    paths = photos(configured.data_roots[0], "nightly", 6, seed=80)
    items = [{"id": p.stem, "uri": f"nightly/{p.name}"} for p in paths]
    first = post_embed(client, {"model": "catalog-embedder", "catalog": "monday", "items": items})
    run_job(first["id"], settings)
    write_jpeg(paths[0], size=(44, 44), seed=999)  # one photo changed since
    models = ModelCache(2)
    second = post_embed(client, {"model": "catalog-embedder", "catalog": "tuesday", "items": items})
    run_job(second["id"], settings, models)
    second = client.get(f"/api/v1/jobs/{second['id']}").json
    assert (second["progress"]["from_cache"], second["progress"]["succeeded"]) == (5, 6)
    monday, tuesday = stored("monday"), stored("tuesday")
    assert all(tuesday[p.stem].vector == monday[p.stem].vector for p in paths[1:])
    assert tuesday["p00"].vector != monday["p00"].vector
    third = post_embed(client, {"model": "catalog-embedder", "catalog": "tuesday", "items": items, "cache": False})
    run_job(third["id"], settings, models)
    assert client.get(f"/api/v1/jobs/{third['id']}").json["progress"]["from_cache"] == 0


def test_a_chunk_run_again_writes_and_counts_nothing_twice(stack, configured):
    client, settings = stack
    paths = photos(configured.data_roots[0], "again", 8, seed=120)
    job = post_embed(client, {"model": "catalog-embedder", "catalog": "again",
                              "items": [{"id": p.stem, "uri": f"again/{p.name}"} for p in paths]})
    run_job(job["id"], settings)
    before = {i: (r.vector, r.created_at) for i, r in stored("again").items()}
    with session_scope() as s:  # chunk 0's message delivered again, as if its first run never finished
        s.execute(update(Chunk).where(Chunk.job_id == job["id"], Chunk.chunk_no == 0)
                  .values(state="queued", attempts=0))
        s.execute(update(Job).where(Job.id == job["id"]).values(status="running", finished_at=None))
    assert run_chunk(job["id"], 0, worker="w2", models=ModelCache(1), settings=settings) == "done"
    after = client.get(f"/api/v1/jobs/{job['id']}").json
    assert (after["status"], after["progress"]["done"], after["progress"]["failed"]) == ("succeeded", 8, 0)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job["id"])) == 8
    assert {i: (r.vector, r.created_at) for i, r in stored("again").items()} == before  # untouched
    with session_scope() as s:  # a job whose last chunk finished but which was left open is closed by the sweeper
        s.execute(update(Job).where(Job.id == job["id"]).values(status="running", finished_at=None))
    assert sweep(settings, lambda job_id, nos: 0)["closed"] == 1
    assert client.get(f"/api/v1/jobs/{job['id']}").json["status"] == "succeeded"


def test_a_chunk_past_its_attempts_embeds_its_items_one_at_a_time(stack, configured):
    client, settings = stack
    paths = photos(configured.data_roots[0], "alone", 3, seed=140)
    job = post_embed(client, {"model": "catalog-embedder", "catalog": "alone",
                              "items": [{"id": p.stem, "uri": f"alone/{p.name}"} for p in paths]})
    with session_scope() as s:  # its workers died max_attempts times: the next attempt isolates its items
        s.execute(update(Chunk).where(Chunk.job_id == job["id"]).values(state="queued",
                                                                          attempts=settings.max_attempts))
    assert run_chunk(job["id"], 0, worker="w", models=ModelCache(1), settings=settings) == "done"
    job = client.get(f"/api/v1/jobs/{job['id']}").json
    assert (job["status"], job["progress"]["succeeded"]) == ("succeeded", 3)
    assert set(stored("alone")) == {p.stem for p in paths}


def test_the_later_job_keeps_an_item_and_a_late_write_of_an_earlier_job_does_not_undo_it(stack, configured):
    client, settings = stack
    root = configured.data_roots[0]
    write_jpeg(root / "x" / "old.jpg", seed=1), write_jpeg(root / "x" / "new.jpg", seed=2)
    old_photo = {"model": "catalog-embedder", "catalog": "c", "items": [{"id": "x", "uri": "x/old.jpg"}]}
    first = post_embed(client, old_photo)
    run_job(first["id"], settings)
    written = stored("c")["x"]
    late = [{"item_id": "x", "status": "ok", "content_hash": written.content_hash, "outputs": {"dim": 6},
             "vector": written.vector}]
    second = post_embed(client, {"model": "catalog-embedder", "catalog": "c",
                                 "items": [{"id": "x", "uri": "x/new.jpg", "category": "new"}]})
    run_job(second["id"], settings)
    kept = stored("c")["x"]
    assert (kept.job_id, kept.category, kept.uri) == (second["id"], "new", "x/new.jpg")
    with session_scope() as s:  # the first job's attempt comes back from the dead and writes its batch again
        assert embedding_store.record_embedded_batch(s, first["id"], first["embedding"], late) == 0
    assert stored("c")["x"].vector == kept.vector and stored("c")["x"].job_id == second["id"]
    with session_scope() as s:  # deleted since, then embedded again by a newer job: back, with its new vector
        s.execute(update(Embedding).values(deleted_at=kept.created_at))
    third = post_embed(client, old_photo)
    run_job(third["id"], settings)
    back = stored("c")["x"]
    assert back.deleted_at is None and back.job_id == third["id"] and back.uri == "x/old.jpg"


def test_cancel_stops_an_embed_job_before_its_next_chunk(stack, configured):
    client, settings = stack
    paths = photos(configured.data_roots[0], "cancel", 9, seed=160)
    job = post_embed(client, {"model": "catalog-embedder", "catalog": "cancel",
                              "items": [{"id": p.stem, "uri": f"cancel/{p.name}"} for p in paths]})
    assert run_chunk(job["id"], 0, worker="w", models=ModelCache(1), settings=settings) == "done"
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json["status"] == "canceled"
    assert run_chunk(job["id"], 1, worker="w", models=ModelCache(1), settings=settings) == "chunk already canceled"
    job = client.get(f"/api/v1/jobs/{job['id']}").json
    assert job["status"] == "canceled" and job["progress"]["done"] == 4 and job["chunks"]["canceled"] == 2
    assert len(stored("cancel")) == 4


def test_a_layer_the_worker_cannot_use_fails_the_job_with_the_reason(stack, configured, model_files):
    client, settings = stack
    write_jpeg(configured.data_roots[0] / "one.jpg")
    conv = next(layer for layer in layer_graph(model_files["classification"]).layers if layer.kind == "Conv2D")
    job = post_embed(client, {"model": "category-model", "catalog": "c", "layer": conv.name,
                              "items": [{"id": "one", "uri": "one.jpg"}]})
    assert run_job(job["id"], settings) == ["model failed to load"]
    job = client.get(f"/api/v1/jobs/{job['id']}").json
    assert job["status"] == "failed" and f"layer {conv.name!r} of category-model@1 outputs" in job["error"]


def test_an_upload_embeds_every_file_in_the_forms_category(stack, tmp_path, model_files):
    client, settings = stack
    paths = photos(tmp_path, "up", 3, seed=200)
    names = [layer.name for layer in layer_graph(model_files["classification"]).layers]
    data = {"model": "category-model", "catalog": "uploads", "category": "bags", "layer": names[-1],  # the head
            "normalize": "false", "files": [(p.open("rb"), p.name) for p in paths]}
    job = post_embed(client, data=data, content_type="multipart/form-data")
    assert job["embedding"]["space"] == f"category-model@1#{names[-1]}~raw" and job["source"]["type"] == "upload"
    run_job(job["id"], settings)
    rows = stored("uploads")
    assert set(rows) == {p.name for p in paths} and {r.category for r in rows.values()} == {"bags"}
    np.testing.assert_allclose(vectors_from_bytes([rows[p.name].vector for p in paths], 3),
                               expected(model_files["classification"], names[-1], paths, normalize=False), atol=1e-5)


@pytest.mark.parametrize("body, status, field, text", [
    ({"model": "catalog-embedder", "items": [{"id": "a", "uri": "a.jpg"}]}, 400, "catalog", "Field required"),
    ({"model": "catalog-embedder", "catalog": "../up", "items": [{"id": "a", "uri": "a.jpg"}]}, 400, "catalog",
     "may hold only letters"),
    ({"model": "catalog-embedder", "catalog": "x" * 101, "items": [{"id": "a", "uri": "a.jpg"}]}, 400, "catalog",
     "at most 100"),
    ({"model": "category-model", "catalog": "c", "layer": "nope", "items": [{"id": "a", "uri": "a.jpg"}]}, 400,
     "layer", "has no layer 'nope'; its layers are"),
    ({"model": "category-model", "catalog": "c", "layer": "a/b", "items": [{"id": "a", "uri": "a.jpg"}]}, 400,
     "layer", "may hold only letters"),
    ({"model": "nobody", "catalog": "c", "items": [{"id": "a", "uri": "a.jpg"}]}, 404, None, "no model named"),
    ({"model": "catalog-embedder", "catalog": "c", "items": [{"id": "a", "uri": "a.jpg", "category": "x" * 201}]},
     400, "items.0.category", "at most 200"),
    ({"model": "catalog-embedder", "catalog": "c", "manifest": "bad.csv", "category_column": "kind"}, 400,
     "category_column", "no column 'kind'"),
    ({"model": "catalog-embedder", "catalog": "c", "items": [{"id": "a", "uri": "a.jpg"}], "colour": 1}, 400,
     "colour", "Extra inputs"),
])
def test_bad_embed_requests_are_4xx_json_and_create_nothing(stack, configured, body, status, field, text):
    client, _ = stack
    (configured.data_roots[0] / "bad.csv").write_text("id,image\na,a.jpg\n")
    error = post_embed(client, body, expect=status)["error"]
    assert text in error["message"], error
    assert field is None or error["problems"][0]["field"] == field
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_one_idempotency_key_gives_one_embed_job_and_a_different_request_under_it_is_a_422(stack):
    client, _ = stack
    body = {"model": "catalog-embedder", "catalog": "c", "items": [{"id": "a", "uri": "a.jpg"}]}
    first = client.post("/api/v1/jobs/embed", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/api/v1/jobs/embed", json=body, headers={"Idempotency-Key": "k1"})
    assert (first.status_code, again.status_code) == (202, 202) and first.json["id"] == again.json["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/api/v1/jobs/embed", json={**body, "catalog": "d"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and other.json["error"]["problems"][0]["field"] == "Idempotency-Key"


def test_an_embedding_model_cannot_score_and_a_multipart_embed_needs_its_catalog(stack):
    client, _ = stack
    resp = client.post("/api/v1/jobs/score", json={"model": "catalog-embedder", "items": [{"id": "a", "uri": "a"}]})
    assert resp.status_code == 422 and "embedding model" in resp.json["error"]["message"]
    resp = client.post("/api/v1/jobs/embed", data={"model": "catalog-embedder", "files": [(io.BytesIO(b"x"), "a")]},
                       content_type="multipart/form-data")
    assert resp.status_code == 400 and resp.json["error"]["problems"][0]["field"] == "catalog"


def test_an_embedding_model_imports_without_output_names_and_training_refuses_the_task(configured, embedder_file):
    from shared.schemas.training import TrainRequest
    from shared.services import model_registry
    from worker.training.models import HeadSpec

    signature = model_registry.Signature(task="embedding", input_height=32, input_width=32)
    with session_scope() as s:
        row = model_registry.import_model(s, embedder_file, "embedder", signature, configured.model_store)
        assert (row.task, row.output_names, row.class_names) == ("embedding", None, None)
    with pytest.raises(Exception, match="no class or output names"):
        model_registry.Signature(task="embedding", input_height=32, input_width=32,
                                 output_names=["x"]).validated()
    with pytest.raises(ValidationError, match="task"):
        TrainRequest.model_validate({"model": "m", "task": "embedding", "dataset": {"path": "x.csv"},
                                     "base": {"architecture": "vgg"}, "input_size": 32})
    with pytest.raises(ValueError, match="unknown task 'embedding'"):
        HeadSpec("embedding", 4).validated()


# ---------------------------------------------------------------------------------------- real worker processes

def end_to_end(stack, database_url, file, catalog):
    """Import an embedding model over HTTP, embed a manifest with a bad row, check the vectors; again: cached."""
    name = f"embedder-{uuid.uuid4().hex[:6]}"
    import_model_http(stack, file, name, task="embedding")
    paths = photos(stack.data, catalog, 10, seed=300)
    (stack.data / catalog / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    frame = pd.DataFrame({"id": [p.stem for p in paths] + ["broken"], "image": [p.name for p in paths] +
                          ["broken.jpg"], "category": ["x", "y"] * 5 + ["x"]})
    frame.to_csv(stack.data / catalog / "items.csv", index=False)
    body = {"model": name, "catalog": catalog, "manifest": f"{catalog}/items.csv"}
    resp = stack.http.post(stack.url("/api/v1/jobs/embed"), json=body, timeout=60)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=180)
    assert job["status"] == "succeeded" and (job["progress"]["done"], job["progress"]["failed"]) == (11, 1)
    assert job["embedding"] == {"catalog": catalog, "space": f"{name}@1", "layer": None, "normalize": True,
                                "dim": 6}
    with session_scope(database_url) as s:
        rows = {r.item_id: r for r in s.scalars(select(Embedding).where(Embedding.catalog == catalog))}
    assert set(rows) == {p.stem for p in paths}
    assert [rows[p.stem].category for p in paths] == ["x", "y"] * 5
    got = vectors_from_bytes([rows[p.stem].vector for p in paths], 6)
    np.testing.assert_allclose(got, expected(file, None, paths), atol=1e-5)
    # the catalog indexed by the maintenance worker, and an image query embedded by the worker (its result comes
    # back through the result backend: Redis, or a folder on the embedded default)
    resp = stack.http.post(stack.url(f"/api/v1/catalogs/{catalog}/indexes"), json={}, timeout=60)
    assert resp.status_code == 202, resp.text
    assert stack.wait_job(resp.json()["id"], timeout=180)["status"] == "succeeded"
    with open(paths[3], "rb") as fh:
        resp = stack.http.post(stack.url("/api/v1/similar"), data={"catalog": catalog, "k": "3"},
                               files={"image": ("query.jpg", fh)}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["id"] == paths[3].stem and resp.json()["results"][0]["score"] > 0.9999
    resp = stack.http.post(stack.url("/api/v1/jobs/embed"), json={**body, "catalog": f"{catalog}-again"}, timeout=60)
    again = stack.wait_job(resp.json()["id"], timeout=180)
    assert again["status"] == "succeeded" and again["progress"]["from_cache"] == 10


def test_an_embed_job_end_to_end_on_postgres_and_redis(pg_stack, embedder_file):
    end_to_end(pg_stack, pg_stack.database_url, embedder_file, "pg-catalog")


def test_an_embed_job_end_to_end_on_the_embedded_default(embedded_stack, embedder_file):
    home = embedded_stack.log_dir.parent / "home"
    end_to_end(embedded_stack, f"sqlite:///{home / 'imgq.db'}", embedder_file, "embedded-catalog")
