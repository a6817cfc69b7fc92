"""A score job whose manifest and images live in a bucket of a real S3 server (moto's server mode on loopback),
through the real parts: HTTP -> PostgreSQL -> Redis -> a Celery worker process reading the objects -> results over
HTTP, equal to those of the same job on the same files in a local data root; and bad objects as the items' errors.
An embed job from the bucket stores the same vectors as from the folder, and an image query may name an object.
Items named by https:// URLs (a real TLS server on loopback, let through the address guard for this test only) score
as the same files do; redirects to internal addresses, plain http:// and missing URLs are their items' errors."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import ModelVersion, VectorIndex
from shared.images.synthetic import write_catalog
from tests.helpers import (
    REDIS_BASE,
    MotoS3,
    TlsFiles,
    comparable,
    create_pg_database,
    import_model_http,
    make_stack,
    scored,
    stop_with_database,
    tiny_cnn,
)

pytestmark = pytest.mark.integration

BUCKET_ROOT = "s3://crawl-bucket/2026/"
MODEL_STORE = "s3://model-bucket/store/"


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory, model_files):
    """A stack on PostgreSQL and Redis whose data roots are a local folder and a bucket prefix on its own S3
    server; the model imported; a 20-image catalog (and its broken files) both in the folder and in the bucket."""
    from shared.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("s3-stack")
    server = MotoS3(tmp / "moto")
    manifest = write_catalog(tmp / "data" / "catalog", 20, size=(120, 90), seed=7)
    web = TlsFiles(manifest.parent, tmp / "tls")
    url = create_pg_database()
    upgrade(url)
    # the worker trusts the test's CA (SSL_CERT_FILE) and lets 127.0.0.1 (only) through the address guard; the
    # model store is a bucket, and the worker has an IMGQ_HOME (so a model cache) of its own, as on another machine
    stack = make_stack(tmp, {"DATABASE_URL": url, "BROKER_URL": f"{REDIS_BASE}/9", **server.env,
                             "IMGQ_BROKER_PREFIX": f"imgq-test-{uuid.uuid4().hex[:8]}:",
                             "IMGQ_DATA_ROOTS": f"{tmp / 'data'}:{BUCKET_ROOT}", "IMGQ_READ_THREADS": "8",
                             "IMGQ_MODEL_STORE": MODEL_STORE,
                             "SSL_CERT_FILE": str(web.cert), "IMGQ_WEB_ALLOW_NETWORKS": "127.0.0.1/32"})
    stack.process_env["worker"] = {"IMGQ_HOME": str(tmp / "worker-home")}
    stack.worker_home = tmp / "worker-home"
    server.put_files("crawl-bucket", "2026/catalog", {p.name: p for p in manifest.parent.iterdir()})
    server.put_files("other-bucket", "2026", {"x.jpg": manifest.parent / "sku-000000.jpg"})
    server.put_files("model-bucket", "", {})
    try:
        stack.start()
        stack.model = f"s3-{uuid.uuid4().hex[:6]}"
        import_model_http(stack, model_files["regression"], stack.model, target_transform="log1p")
        stack.database_url = url
        stack.tls_files, stack.catalog, stack.s3 = web, manifest, server
        yield stack
    finally:
        stop_with_database(stack, url, server, web)
        shutil.rmtree(tmp / "data", ignore_errors=True)


def test_a_job_on_a_bucket_scores_exactly_as_the_same_job_on_local_files(s3_stack):
    from_bucket = scored(s3_stack, {"manifest": BUCKET_ROOT + "catalog/items.csv"})
    from_folder = scored(s3_stack, {"manifest": "catalog/items.csv"})
    assert len(from_bucket) == 23 and set(from_bucket) == set(from_folder)
    assert sum(r["status"] == "ok" for r in from_bucket.values()) == 20
    assert {k: comparable(r) for k, r in from_bucket.items()} == {k: comparable(r) for k, r in from_folder.items()}


def test_the_worker_downloads_the_model_from_the_store_once_into_its_own_cache(s3_stack):
    resp = s3_stack.http.get(s3_stack.url(f"/api/v1/models/{s3_stack.model}/versions/1"), timeout=10)
    assert resp.status_code == 200, resp.text
    with session_scope(s3_stack.database_url) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == s3_stack.model)).one()
        path, sha256 = version.path, version.sha256
    assert path.startswith(MODEL_STORE + s3_stack.model + "/")
    key = path.removeprefix("s3://model-bucket/")
    scored(s3_stack, {"manifest": "catalog/items.csv"})  # at least one job has loaded it (the test above ran two)
    cache = s3_stack.worker_home / "model-cache"
    assert sorted(p.name for p in cache.glob("*.keras")) == [f"{sha256}.keras"]
    assert s3_stack.s3.gets_of("model-bucket", key) == 1
    scored(s3_stack, {"manifest": BUCKET_ROOT + "catalog/items.csv"})
    assert s3_stack.s3.gets_of("model-bucket", key) == 1  # kept in memory, and on disk for the next process


def test_bad_objects_are_their_items_errors_and_the_rest_is_scored(s3_stack):
    results = scored(s3_stack, {"items": [
        {"id": "good", "uri": BUCKET_ROOT + "catalog/sku-000001.jpg"},
        {"id": "missing", "uri": BUCKET_ROOT + "catalog/none.jpg"},
        {"id": "other-bucket", "uri": "s3://other-bucket/2026/x.jpg"},
        {"id": "escape", "uri": BUCKET_ROOT + "../2025/x.jpg"},
        {"id": "beside", "uri": "s3://crawl-bucket/2026-old/x.jpg"},
    ]})
    assert results["good"]["status"] == "ok"
    assert results["missing"]["error"] == f"object not found: {BUCKET_ROOT}catalog/none.jpg"
    assert results["other-bucket"]["error"] == "path outside the data roots: s3://other-bucket/2026/x.jpg"
    assert results["escape"]["error"] == f"invalid path ('.' or '..' in the key): {BUCKET_ROOT}../2025/x.jpg"
    assert results["beside"]["error"] == "path outside the data roots: s3://crawl-bucket/2026-old/x.jpg"


def test_a_manifest_outside_the_bucket_prefix_or_missing_is_a_400(s3_stack):
    for manifest, message in [("s3://other-bucket/2026/items.csv", "outside the data roots"),
                              (BUCKET_ROOT + "catalog/none.csv", "object not found")]:
        resp = s3_stack.http.post(s3_stack.url("/api/v1/jobs/score"),
                                  json={"model": s3_stack.model, "manifest": manifest}, timeout=60)
        assert resp.status_code == 400 and message in resp.text, resp.text


def embed(stack, name: str, catalog: str, manifest: str) -> dict:
    from sqlalchemy import select

    from shared.core.db import session_scope
    from shared.core.tables import Embedding

    resp = stack.http.post(stack.url("/api/v1/jobs/embed"), json={"model": name, "catalog": catalog,
                                                                 "manifest": manifest, "cache": False}, timeout=60)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=240)
    assert job["status"] == "succeeded" and (job["progress"]["done"], job["progress"]["failed"]) == (23, 3), job
    with session_scope(stack.database_url) as session:
        return {r.item_id: bytes(r.vector) for r in session.scalars(select(Embedding)
                                                                    .where(Embedding.catalog == catalog))}


def test_an_embed_job_on_a_bucket_stores_the_same_vectors_and_an_object_can_be_a_query(s3_stack, tmp_path):
    file = tmp_path / "embedder.keras"
    tiny_cnn(32, 6, seed=5).save(file)
    name = f"embedder-{uuid.uuid4().hex[:6]}"
    import_model_http(s3_stack, file, name, task="embedding")
    from_bucket = embed(s3_stack, name, "bucket-catalog", BUCKET_ROOT + "catalog/items.csv")
    assert len(from_bucket) == 20 and from_bucket == embed(s3_stack, name, "folder-catalog", "catalog/items.csv")
    resp = s3_stack.http.post(s3_stack.url("/api/v1/catalogs/bucket-catalog/indexes"), json={}, timeout=60)
    assert resp.status_code == 202, resp.text
    assert s3_stack.wait_job(resp.json()["id"], timeout=180)["status"] == "succeeded"
    resp = s3_stack.http.post(s3_stack.url("/api/v1/similar"), timeout=60, json={
        "catalog": "bucket-catalog", "k": 3, "image_uri": BUCKET_ROOT + "catalog/sku-000004.jpg"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["id"] == "sku-000004"
    # the index version is in the model store's bucket, checksums last, and the web front searched its own copy
    with session_scope(s3_stack.database_url) as session:
        path = session.scalars(select(VectorIndex.path).where(VectorIndex.catalog == "bucket-catalog")).one()
    assert path.startswith(f"{MODEL_STORE}indexes/bucket-catalog/") and path.endswith("/")
    listed = s3_stack.s3.client().list_objects_v2(Bucket="model-bucket", Prefix=path.removeprefix("s3://model-bucket/"))
    names = {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]}
    assert {"checksums.json", "index.json"} <= names
    home = s3_stack.env["IMGQ_HOME"]
    assert not list(Path(home, "models", "indexes").rglob("*.faiss"))  # not kept beside the store
    copies = [p for p in Path(home, "model-cache", "indexes").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(copies) == 1 and {p.name for p in copies[0].iterdir()} == names - {"checksums.json"}


def test_items_named_by_https_urls_score_as_the_same_files_and_internal_redirects_are_refused(s3_stack):
    import csv

    base = s3_stack.tls_files.base
    with open(s3_stack.catalog) as fh:
        rows = list(csv.DictReader(fh))
    by_url = scored(s3_stack, {"items": [{"id": r["id"], "uri": f"{base}/{r['image']}"} for r in rows]})
    from_folder = scored(s3_stack, {"manifest": "catalog/items.csv"})
    assert set(by_url) == set(from_folder) and sum(r["status"] == "ok" for r in by_url.values()) == 20
    assert {k for k, r in by_url.items() if r["status"] == "error"} == \
        {k for k, r in from_folder.items() if r["status"] == "error"}  # the broken files, fetched whole
    assert {k: comparable(r)[:3] for k, r in by_url.items() if r["status"] == "ok"} == \
        {k: comparable(r)[:3] for k, r in from_folder.items() if r["status"] == "ok"}

    port = base.rsplit(":", 1)[1]
    bad = scored(s3_stack, {"items": [
        {"id": "metadata", "uri": f"{base}/redirect?to=https://169.254.169.254/latest/meta-data/"},
        {"id": "loopback-by-redirect", "uri": f"{base}/redirect?to=https://127.0.0.2:{port}/sku-000001.jpg"},
        {"id": "missing", "uri": f"{base}/none.jpg"},
        {"id": "plain-http", "uri": f"http://localhost:{port}/sku-000001.jpg"},
        {"id": "good", "uri": f"{base}/sku-000001.jpg"},
    ]})
    assert bad["good"]["status"] == "ok"
    assert bad["metadata"]["error"].startswith("image URL refused: 169.254.169.254 resolves to 169.254.169.254, a "
                                               "link-local address")
    assert bad["loopback-by-redirect"]["error"].startswith("image URL refused: 127.0.0.2 resolves to 127.0.0.2, a "
                                                           "loopback address")
    assert bad["missing"]["error"] == f"image URL not found (HTTP 404): {base}/none.jpg"
    assert bad["plain-http"]["error"].startswith("image URL refused: only https:// are fetched (http:// is off)")
