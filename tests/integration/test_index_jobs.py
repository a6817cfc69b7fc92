"""Index jobs and similar-item queries over HTTP, on SQLite and PostgreSQL, with vectors written straight into the
embeddings table (embed jobs have their own tests): builds, deltas, deletions, the exact category filter, the swap
to a new version, and the 4xx/503 answers. Index jobs run in-process (worker.index_builder.run_index_job), as the
maintenance worker would run them."""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.states import JobKind, JobStatus
from shared.core.tables import Embedding, Job, ModelVersion, VectorIndex, utcnow
from shared.services.index_jobs import claim, index_folder
from tests.helpers import authorized_client
from worker.index_builder import remove_stray_folders, run_index_job

DIM = 32
SPACE = "embedder@1"
CATEGORIES = ("coat", "bag", "shoe")


def _model_version(session) -> int:
    row = ModelVersion(name="embedder", version=1, task="embedding", input_height=32, input_width=32,
                       resize_mode="stretch", pixel_scale="unit", output_names=None, class_names=None,
                       target_transform={"kind": "none"}, path="/nonexistent.keras", sha256="0" * 64, size_bytes=1)
    session.add(row)
    session.flush()
    return row.id


def _vectors(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors: clusters cut across categories, so a category filter has neighbours to refuse."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM))
    v = centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def seed_catalog(catalog: str, n: int, *, start: int = 0, seed: int = 0, space: str = SPACE) -> dict:
    """n items item-<i> with clustered vectors and round-robin categories, as an embed job would have written."""
    vectors = _vectors(n, seed)
    with session_scope() as session:
        version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == "embedder")) \
            or _model_version(session)
        job_id = str(uuid.uuid4())
        session.add(Job(id=job_id, kind=JobKind.EMBED, status=JobStatus.SUCCEEDED, model_version_id=version_id,
                        model_ref="embedder@1", source={"type": "items"}, spec={"catalog": catalog, "space": space}))
        session.flush()
        session.add_all(Embedding(catalog=catalog, space=space, item_id=f"item-{start + i}",
                                  category=CATEGORIES[(start + i) % 3], uri=f"img/{start + i}.jpg", dim=DIM,
                                  vector=vectors[i].astype("<f4").tobytes(), job_id=job_id, created_at=utcnow())
                        for i in range(n))
    return {f"item-{start + i}": (vectors[i], CATEGORIES[(start + i) % 3]) for i in range(n)}


def build(client, settings, catalog: str, **body) -> dict:
    r = client.post(f"/api/v1/catalogs/{catalog}/indexes", json=body)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["kind"] == "index" and job["status"] == "queued"
    run_index_job(job["id"], settings)
    done = client.get(f"/api/v1/jobs/{job['id']}").get_json()
    assert done["status"] == "succeeded", done
    return done


def exact_neighbours(items: dict, query: np.ndarray, k: int, category: str | None, leave_out: str) -> list[str]:
    scored = [(float(v @ query), i) for i, (v, c) in items.items()
              if i != leave_out and (category is None or c == category)]
    return [i for _, i in sorted(scored, reverse=True)[:k]]


@pytest.fixture
def settings(configured):
    return configured


def test_a_built_index_answers_item_queries_like_exact_search_within_the_items_category(client, settings):
    items = seed_catalog("shop", 300)
    job = build(client, settings, "shop", params={"kind": "exact"})
    assert job["index"]["version"] == 1 and job["progress"]["total"] == 300 and job["progress"]["done"] == 300
    answer = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": "item-7", "k": 5}).get_json()
    assert answer["category"] == {"value": items["item-7"][1], "source": "item"}
    got = [h["id"] for h in answer["results"]]
    assert got == exact_neighbours(items, items["item-7"][0], 5, items["item-7"][1], "item-7")
    assert all(h["category"] == items["item-7"][1] for h in answer["results"])
    assert answer["results"][0]["thumbnail"] == f"/api/v1/catalogs/shop/items/{got[0]}/thumbnail"
    scores = [h["score"] for h in answer["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_a_category_filter_never_returns_another_category(client, settings, kind):
    items = seed_catalog("shop", 600, seed=1)
    build(client, settings, "shop", params={"kind": kind})
    for item_id in ("item-0", "item-1", "item-2", "item-100"):
        for category in CATEGORIES:
            answer = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": item_id, "k": 10,
                                                          "category": category}).get_json()
            assert answer["category"] == {"value": category, "source": "request"}
            assert len(answer["results"]) == 10
            assert {h["category"] for h in answer["results"]} == {category}
            assert {h["id"] for h in answer["results"]} <= {i for i, (_, c) in items.items() if c == category}


def test_a_deleted_item_leaves_answers_at_once_and_the_next_build_purges_it(client, settings):
    items = seed_catalog("shop", 200, seed=2)
    build(client, settings, "shop", params={"kind": "exact"})
    ask = {"catalog": "shop", "item_id": "item-3", "k": 5}
    first = [h["id"] for h in client.post("/api/v1/similar", json=ask).get_json()["results"]]
    gone = first[0]
    r = client.post("/api/v1/catalogs/shop/deletions", json={"ids": [gone, "no-such-item"]})
    assert r.status_code == 200 and r.get_json()["found"] == 1 and r.get_json()["unknown"] == ["no-such-item"]
    after = [h["id"] for h in client.post("/api/v1/similar", json=ask).get_json()["results"]]
    assert gone not in after and len(after) == 5 and after[:4] == first[1:5]
    r = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": gone})
    assert r.status_code == 404 and "deleted" in r.get_json()["error"]["message"]
    rebuilt = build(client, settings, "shop", params={"kind": "exact"})
    assert rebuilt["index"]["version"] == 2 and rebuilt["index"]["built"]["items"] == len(items) - 1
    again = [h["id"] for h in client.post("/api/v1/similar", json=ask).get_json()["results"]]
    assert gone not in again
    assert client.delete(f"/api/v1/catalogs/shop/items/{first[1]}").status_code == 204
    assert first[1] not in [h["id"] for h in client.post("/api/v1/similar", json=ask).get_json()["results"]]


def test_a_delta_adds_new_items_without_a_rebuild_and_queries_swap_to_it(client, settings):
    items = seed_catalog("shop", 300, seed=3)
    base = build(client, settings, "shop", params={"kind": "hnsw"})
    assert client.post("/api/v1/similar", json={"catalog": "shop", "item_id": "item-1"}).get_json()[
        "index_version"] == 1
    new = seed_catalog("shop", 30, start=300, seed=4)
    items.update(new)
    delta = build(client, settings, "shop", mode="delta")
    assert delta["index"]["version"] == 2 and delta["index"]["base_version"] == 1
    assert delta["progress"]["total"] == 30 and delta["index"]["built"]["items"] == 330
    assert delta["index"]["built"]["params"]["kind"] == base["index"]["params"]["kind"] == "hnsw"
    eligible = found = 0
    for item_id, (vector, category) in new.items():
        # ask for the neighbours of the item nearest to the new one: exact search has the new one among them
        neighbour = exact_neighbours(items, vector, 1, category, item_id)[0]
        answers = client.post("/api/v1/similar/batch", json={"queries": [
            {"catalog": "shop", "item_id": neighbour, "k": 10},
            {"catalog": "shop", "item_id": "item-1", "k": 3}]}).get_json()["answers"]
        assert [a["index_version"] for a in answers] == [2, 2]
        if item_id in exact_neighbours(items, items[neighbour][0], 10, category, neighbour):
            eligible += 1
            found += item_id in [h["id"] for h in answers[0]["results"]]
    assert eligible >= 15 and found >= eligible - 2  # an approximate index: nearly every new item is found
    assert client.application.config["IMGQ_INDEXES"].held()[("shop", SPACE)] == 2


def test_index_requests_and_queries_that_cannot_be_answered_are_4xx_with_a_reason(client, settings):
    r = client.post("/api/v1/catalogs/nowhere/indexes", json={})
    assert r.status_code == 404 and "embed its items first" in r.get_json()["error"]["message"]
    seed_catalog("shop", 50, seed=5)
    r = client.post("/api/v1/catalogs/shop/indexes", json={"mode": "delta"})
    assert r.status_code == 409 and "build one first" in r.get_json()["error"]["message"]
    r = client.post("/api/v1/catalogs/shop/indexes", json={"params": {"kind": "annoy"}})
    assert r.status_code == 400 and r.get_json()["error"]["problems"][0]["field"] == "params.kind"
    r = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": "item-1"})
    assert r.status_code == 404 and "no index" in r.get_json()["error"]["message"]
    build(client, settings, "shop")
    for body, fragment in [
        ({"catalog": "shop", "item_id": "item-1", "k": 0}, "k"),
        ({"catalog": "shop", "item_id": "item-1", "image_uri": "a.jpg"}, "exactly one"),
        ({"catalog": "shop"}, "exactly one"),
        ({"catalog": "shop", "item_id": "item-1", "category": "coat", "category_from": "m"}, "not both"),
        ({"catalog": "../etc", "item_id": "item-1"}, "catalog"),
        ({"catalog": "shop", "item_id": "item-1", "color": "red"}, "color"),
    ]:
        r = client.post("/api/v1/similar", json=body)
        assert r.status_code == 400, body
        assert fragment in str(r.get_json()["error"]), (body, r.get_json())
    r = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": "nope"})
    assert r.status_code == 404 and "nope" in r.get_json()["error"]["message"]
    r = client.post("/api/v1/similar", json={"catalog": "shop", "item_id": "item-1", "category_from": "embedder@1"})
    assert r.status_code == 400 and "classification" in r.get_json()["error"]["message"]
    seed_catalog("shop", 10, seed=6, space="other@1")
    r = client.post("/api/v1/catalogs/shop/indexes", json={})
    assert r.status_code == 400 and "several embedding spaces" in r.get_json()["error"]["message"]
    listed = client.get("/api/v1/catalogs/shop").get_json()
    assert {s["space"] for s in listed["spaces"]} == {SPACE, "other@1"}
    assert [i["version"] for s in listed["spaces"] if s["space"] == SPACE for i in s["indexes"]] == [1]


def test_an_image_query_with_no_worker_up_is_a_503_after_the_query_timeout(configured, client):
    from web.app import create_app

    seed_catalog("shop", 20, seed=7)
    build(client, configured, "shop")
    quick = authorized_client(create_app(dataclasses.replace(configured, query_timeout=1.0)))
    r = quick.post("/api/v1/similar", json={"catalog": "shop", "image_uri": "img/1.jpg"})
    assert r.status_code == 503
    assert "no worker embedded the query image within 1 s" in r.get_json()["error"]["message"]
    assert r.get_json()["error"]["reason"] == "no embedder"


def test_the_index_files_are_versioned_in_the_model_store(client, settings):
    seed_catalog("shop", 40, seed=8)
    build(client, settings, "shop")
    build(client, settings, "shop")
    with session_scope() as session:
        rows = session.scalars(select(VectorIndex).order_by(VectorIndex.version)).all()
        assert [r.version for r in rows] == [1, 2]
        paths = [r.path for r in rows]
    assert paths[0] != paths[1]
    for path in paths:
        assert str(settings.model_store) in path
        assert (Path(path) / "index.json").is_file() and len(list(Path(path).iterdir())) >= 3


def test_an_index_job_whose_worker_died_is_sent_again_registers_once_and_leaves_no_stray_files(client, settings):
    from worker.sweeper import sweep

    seed_catalog("shop", 100, seed=9)
    job_id = client.post("/api/v1/catalogs/shop/indexes", json={}).get_json()["id"]
    with session_scope() as session:
        assert claim(session, job_id) is not None  # a run took the job...
        job = session.get(Job, job_id)
        job.heartbeat_at = utcnow() - timedelta(seconds=settings.heartbeat_timeout + 5)  # ...and died mid-build
    stray = index_folder(settings.model_store, "shop", SPACE, f"{job_id}-deadbeef")  # its half-built files
    stray.mkdir(parents=True)
    sent: list[str] = []
    sweep(settings, lambda job_id, nos: 0, enqueue_index=lambda ids: sent.extend(ids) or len(ids))
    assert sent == [job_id]
    assert run_index_job(job_id, settings) == "version 1"
    assert run_index_job(job_id, settings) == "job is final"  # the message delivered once more does nothing
    with session_scope() as session:
        rows = session.scalars(select(VectorIndex)).all()
        assert [(r.version, r.item_count) for r in rows] == [(1, 100)]
        registered = Path(rows[0].path)
    assert remove_stray_folders(settings, older_than=3600) == 0  # too fresh: a run may still be writing it
    an_hour_ago = time.time() - 3700
    for path in (stray, registered):
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert remove_stray_folders(settings, older_than=3600) == 1
    assert not stray.exists() and (registered / "index.json").is_file()
