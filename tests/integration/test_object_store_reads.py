"""Item and manifest reads from object storage, against a real S3 server on loopback (moto's server mode, its own
process): found, missing (404), forbidden (403, moto's IAM checks), refused before any request (a '..' in the key,
another bucket, a prefix escape), a store that refuses connections (retried, then the store's error, not the
item's), and a store that throttles (503 SlowDown, retried until it answers)."""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.core.errors import InvalidRequest, ObjectStoreUnavailable
from shared.images.imaging import ImageError, read_and_hash
from shared.images.item_reads import Places, read_item
from shared.images.manifests import iter_manifest, size_of
from shared.images.object_store import ObjectFile, StoreConfig
from shared.tools.local_stack import free_port
from tests.helpers import S3_KEYS, authorized_client, seed_version, write_jpeg

pytestmark = pytest.mark.integration

PREFIX = "s3://crawl-bucket/2026/"


@pytest.fixture
def keys(monkeypatch):
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def store(s3_server, tmp_path, keys):
    """The server holding crawl-bucket/2026/a.jpg (the same bytes as the local `a.jpg`), a manifest beside it, and
    a bucket no root names; the process's credentials are the server's."""
    local = write_jpeg(tmp_path / "local" / "a.jpg", seed=3)
    s3_server.put_files("crawl-bucket", "2026", {"a.jpg": local, "items.csv": b"id,image\na,a.jpg\nb,sub/b.jpg\n"})
    s3_server.put_files("crawl-bucket", "2025", {"a.jpg": local})
    s3_server.put_files("other-bucket", "2026", {"a.jpg": local})
    s3_server.local = local
    return s3_server


def places(server, retries: int = 2) -> Places:
    return Places(roots=(server.local.parent,), object_roots=(PREFIX,),
                  store=StoreConfig(server.endpoint, retries=retries, timeout=10))


def test_an_object_reads_to_the_same_bytes_and_hash_as_the_same_file(store):
    data, digest = read_item(PREFIX + "a.jpg", places(store), max_bytes=10**7)
    assert (data, digest) == read_and_hash(store.local, max_bytes=10**7)
    assert read_item("a.jpg", places(store), max_bytes=10**7)[1] == digest  # local folders work as before


@pytest.mark.parametrize("uri, reason", [
    (PREFIX + "missing.jpg", f"object not found: {PREFIX}missing.jpg"),
    ("s3://crawl-bucket/2025/a.jpg", "path outside the data roots: s3://crawl-bucket/2025/a.jpg"),
    ("s3://crawl-bucket/2026-old/a.jpg", "path outside the data roots"),
    ("s3://other-bucket/2026/a.jpg", "path outside the data roots: s3://other-bucket/2026/a.jpg"),
    (PREFIX + "../2025/a.jpg", "invalid path ('.' or '..' in the key)"),
])
def test_a_bad_object_is_the_items_error_with_a_clear_reason(store, uri, reason):
    with pytest.raises(ImageError) as refused:
        read_item(uri, places(store), max_bytes=10**7)
    assert reason in str(refused.value)


def test_an_empty_object_reads_as_empty_bytes_like_an_empty_file(store):
    store.put_files("crawl-bucket", "2026", {"empty.jpg": b""})  # S3 answers 416 to a range on an empty object
    assert read_item(PREFIX + "empty.jpg", places(store), max_bytes=10**7)[0] == bytearray()


def test_an_object_over_the_size_limit_is_refused(store):
    with pytest.raises(ImageError, match="file too large"):
        read_item(PREFIX + "a.jpg", places(store), max_bytes=100)


def test_a_store_without_credentials_is_the_items_error_said_plainly(monkeypatch):
    for name in (*S3_KEYS, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anon = Places(roots=(), object_roots=(PREFIX,), store=StoreConfig(f"http://127.0.0.1:{free_port()}", 3))
    with pytest.raises(ImageError, match="no credentials for the object store"):
        read_item(PREFIX + "a.jpg", anon, max_bytes=10**7)


def test_a_forbidden_object_is_the_items_403_error(s3_server, tmp_path, monkeypatch):
    local = write_jpeg(tmp_path / "a.jpg")
    s3_server.put_files("crawl-bucket", "2026", {"a.jpg": local})
    s3_server.put_files("locked-bucket", "2026", {"a.jpg": local})
    for name, value in {**S3_KEYS, **s3_server.reader_allowed_only("crawl-bucket")}.items():
        monkeypatch.setenv(name, value)
    both = Places(roots=(), object_roots=(PREFIX, "s3://locked-bucket/"), store=StoreConfig(s3_server.endpoint, 1))
    assert read_item(PREFIX + "a.jpg", both, max_bytes=10**7)[0] == local.read_bytes()
    with pytest.raises(ImageError, match=r"access denied \(403\) to s3://locked-bucket/2026/a.jpg"):
        read_item("s3://locked-bucket/2026/a.jpg", both, max_bytes=10**7)


def test_a_store_that_refuses_connections_is_retried_then_the_stores_error_not_the_items(keys, caplog):
    down = Places(roots=(), object_roots=(PREFIX,), store=StoreConfig(f"http://127.0.0.1:{free_port()}", retries=2))
    with caplog.at_level(logging.INFO, logger="shared.images.object_store"), \
            pytest.raises(ObjectStoreUnavailable, match="after 3 tries"):
        read_item(PREFIX + "a.jpg", down, max_bytes=10**7)
    assert [r.getMessage().split(" try ")[1][:6] for r in caplog.records] == ["2 of 3", "3 of 3"]


class Throttling(BaseHTTPRequestHandler):
    """An S3 endpoint that answers 503 SlowDown to the first `refusals` requests, then the object's bytes."""
    refusals, body, seen = 2, b"\xff\xd8 object bytes", 0

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen += 1
        if self.seen <= self.refusals:
            error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_a_throttling_store_is_retried_until_it_answers(keys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        slow = Places(roots=(), object_roots=(PREFIX,),
                      store=StoreConfig(f"http://127.0.0.1:{server.server_port}", retries=3))
        data, _ = read_item(PREFIX + "a.jpg", slow, max_bytes=10**7)
        assert bytes(data) == Throttling.body and Throttling.seen == 3
    finally:
        server.shutdown()


def test_a_manifest_in_the_store_lists_its_images_beside_it(store):
    manifest = ObjectFile(PREFIX + "items.csv", StoreConfig(store.endpoint))
    assert [row for piece in iter_manifest(manifest, "id", "image") for row in piece] == [
        ("a", PREFIX + "a.jpg"), ("b", PREFIX + "sub/b.jpg")]


def test_a_missing_manifest_in_the_store_is_a_clear_request_error(store):
    with pytest.raises(InvalidRequest, match=f"manifest: object not found: {PREFIX}none.csv"):
        list(iter_manifest(ObjectFile(PREFIX + "none.csv", StoreConfig(store.endpoint)), "id", "image"))


def test_a_manifest_in_the_store_has_its_size_asked_without_reading_it_and_a_missing_one_is_a_request_error(store):
    """The size decides whether a manifest is read in the request or off it (IMGQ_INLINE_MANIFEST_BYTES)."""
    assert size_of(ObjectFile(PREFIX + "items.csv", StoreConfig(store.endpoint))) == len(
        b"id,image\na,a.jpg\nb,sub/b.jpg\n")
    with pytest.raises(InvalidRequest, match=f"manifest: object not found: {PREFIX}none.csv"):
        size_of(ObjectFile(PREFIX + "none.csv", StoreConfig(store.endpoint)))


def score(items, model, where: Places, batch_size: int = 4, written: dict | None = None) -> dict:
    """{item id: result} of scoring `items`, written into `written` batch by batch (so a caller sees what was
    written before an exception)."""
    from worker.scoring import ScoreOptions, score_items

    written = {} if written is None else written
    opts = ScoreOptions(roots=where.roots, batch_size=batch_size, max_pixels=10**7, max_bytes=10**7, threads=2,
                        use_cache=False, object_roots=where.object_roots, store=where.store, read_threads=8)
    score_items(items, model, opts, lambda hashes: {}, lambda results, _: written.update(
        {r["item_id"]: r for r in results}))
    return written


def test_the_scoring_pipeline_gives_an_object_the_same_result_as_the_same_file(store, regression, tmp_path):
    files = {f"p{i}.jpg": write_jpeg(tmp_path / "local" / f"p{i}.jpg", size=(50 + i, 40), seed=i) for i in range(9)}
    store.put_files("crawl-bucket", "2026/pipe", files)
    results = score([(f"file-{n}", str(p)) for n, p in files.items()]
                    + [(f"object-{n}", f"{PREFIX}pipe/{n}") for n in files], regression, places(store))
    for name in files:
        assert results[f"object-{name}"]["status"] == "ok"
        assert {k: v for k, v in results[f"object-{name}"].items() if k != "item_id"} == \
            {k: v for k, v in results[f"file-{name}"].items() if k != "item_id"}


def test_a_store_away_through_every_retry_ends_the_scoring_with_no_error_for_its_items(keys, regression, tmp_path):
    local = write_jpeg(tmp_path / "a.jpg")
    down = Places(roots=(tmp_path,), object_roots=(PREFIX,),
                  store=StoreConfig(f"http://127.0.0.1:{free_port()}", retries=1))
    written: dict = {}
    with pytest.raises(ObjectStoreUnavailable, match="after 2 tries"):
        score([("file", str(local)), ("object", PREFIX + "a.jpg")], regression, down, batch_size=1, written=written)
    assert "object" not in written  # no error row: the chunk is given back, the item tried again later
    assert all(r["status"] == "ok" for r in written.values())


def test_a_manifest_in_a_store_that_does_not_answer_is_a_503_and_no_job(configured, keys):
    from dataclasses import replace

    from web.app import create_app

    seed_version("m")
    settings = replace(configured, object_roots=(PREFIX,), s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                       s3_retries=1)
    client = authorized_client(create_app(settings))
    resp = client.post("/api/v1/jobs/score", json={"model": "m", "manifest": PREFIX + "items.csv"})
    assert resp.status_code == 503, resp.get_json()
    assert "the object store did not answer" in resp.get_json()["error"]["message"]
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_a_training_dataset_may_be_one_manifest_in_the_store_with_its_images_beside_it(store, tmp_path):
    from shared.images.datasets import DatasetSpec, load_dataset
    from shared.images.image_cache import DecodedImageCache
    from shared.images.imaging import Preprocessing

    store.put_files("crawl-bucket", "2026/train", {
        "a.jpg": store.local,
        "train.csv": ("id,image,label\n"
                      "one,a.jpg,cat\n"
                      f"two,{PREFIX}a.jpg,dog\n"  # named in full
                      "three,../../2025/a.jpg,cat\n"  # climbs out of the prefix
                      "four,s3://other-bucket/2026/a.jpg,dog\n").encode()})
    spec = DatasetSpec(path=PREFIX + "train/train.csv", image_column="image", id_column="id", label_column="label")
    frame = load_dataset((store.local.parent,), spec, places(store)).set_index("item_id")
    assert frame.loc["one", "path"] == PREFIX + "train/a.jpg" and frame.loc["two", "path"] == PREFIX + "a.jpg"
    assert frame.loc["three", "error"] == f"invalid path ('.' or '..' in the key): {PREFIX}train/../../2025/a.jpg"
    assert frame.loc["four", "error"] == "path outside the data roots: s3://other-bucket/2026/a.jpg"
    assert frame.loc["one", "manifest"] == PREFIX + "train/train.csv"

    cache = DecodedImageCache(tmp_path / "cache", Preprocessing(16, 16), max_pixels=10**7, places=places(store))
    from_object = cache.load(frame.loc["one", "path"], pixels=True)
    from_file = cache.load(store.local, pixels=True)
    assert from_object[2] == from_file[2] and (from_object[0] == from_file[0]).all()  # same bytes, same pixels

    for path, problem in [(PREFIX + "train/*.csv", "no globs"), ("s3://other-bucket/2026/train.csv", "outside"),
                          (PREFIX + "train/none.csv", "not found")]:
        with pytest.raises(InvalidRequest, match=problem):
            load_dataset((), DatasetSpec(path=path, image_column="image"), places(store))
    with pytest.raises(InvalidRequest, match="outside"):  # without places, a URI is outside the data roots
        load_dataset((store.local.parent,), spec)
