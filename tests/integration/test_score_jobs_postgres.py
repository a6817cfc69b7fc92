"""Score jobs end to end through real parts: HTTP -> PostgreSQL -> Redis -> Celery worker process
holding the CNN -> results in PostgreSQL -> status and results over HTTP."""
import csv
import io
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, Result
from shared.services import result_exports
from tests.helpers import expected_scores, import_model_http, write_jpeg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(pg_stack, model_files):
    name = f"pageviews-{uuid.uuid4().hex[:6]}"
    body = import_model_http(pg_stack, model_files["regression"], name, target_transform="log1p",
                             output_names="pageviews")
    assert body["version"] == 1 and body["aliases"] == ["production"]
    return name


def make_catalog(root, name, n, seed=0):
    folder = root / name
    paths = [write_jpeg(folder / f"p{i:04d}.jpg", size=(60 + i % 13, 45 + i % 7), seed=seed + i) for i in range(n)]
    return folder, paths


def submit(stack, body, key=None, expect=202):
    headers = {"Idempotency-Key": key} if key else {}
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json=body, headers=headers, timeout=60)
    assert resp.status_code == expect, resp.text
    return resp


def results_by_id(stack, job_id):
    rows = stack.all_results(job_id, page=37)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a result appears twice"
    return {r["id"]: r for r in rows}


def test_items_job_with_a_bad_mix_scores_every_good_image_exactly(pg_stack, model, model_files):
    folder, paths = make_catalog(pg_stack.data, "mix", 40)
    (folder / "text.jpg").write_text("hello")
    (folder / "trunc.jpg").write_bytes(paths[0].read_bytes()[:200])
    write_jpeg(folder / "cmyk.jpg", mode="CMYK", seed=5)
    write_jpeg(folder / "rgba.png", mode="RGBA", seed=6)
    items = [{"id": p.stem, "uri": f"mix/{p.name}"} for p in paths]
    items += [{"id": "text", "uri": "mix/text.jpg"}, {"id": "trunc", "uri": "mix/trunc.jpg"},
              {"id": "missing", "uri": "mix/none.jpg"}, {"id": "escape", "uri": "../../etc/passwd"},
              {"id": "cmyk", "uri": "mix/cmyk.jpg"}, {"id": "rgba", "uri": "mix/rgba.png"}]
    resp = submit(pg_stack, {"model": model, "items": items, "cache": False})
    assert resp.headers["Location"] == f"/api/v1/jobs/{resp.json()['id']}"
    assert resp.json()["chunks"]["total"] == 3  # 46 items in chunks of 16
    job = pg_stack.wait_job(resp.json()["id"])
    assert job["status"] == "succeeded"
    assert job["progress"]["total"] == job["progress"]["done"] == 46
    assert job["progress"]["failed"] == 4
    assert job["model"]["ref"] == f"{model}@1"
    assert job["timings"]["last_heartbeat_at"] is not None and job["progress"]["images_per_second"] > 0
    results = results_by_id(pg_stack, job["id"])
    assert len(results) == 46
    expected = expected_scores(model_files["regression"], paths)
    got = np.array([results[p.stem]["outputs"]["pageviews"] for p in paths])
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert "not an image" in results["text"]["error"]
    assert "truncated" in results["trunc"]["error"]
    assert "file not found" in results["missing"]["error"]
    assert "outside the data roots" in results["escape"]["error"]
    assert results["cmyk"]["status"] == results["rgba"]["status"] == "ok"


def test_multipart_upload_job(pg_stack, model, model_files, tmp_path):
    _, paths = make_catalog(tmp_path, "upload", 5, seed=100)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    resp = pg_stack.http.post(pg_stack.url("/api/v1/jobs/score"), data={"model": model, "cache": "false"},
                         files=files, timeout=60)
    assert resp.status_code == 202, resp.text
    job = pg_stack.wait_job(resp.json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["succeeded"] == 5
    results = results_by_id(pg_stack, job["id"])
    assert set(results) == {p.name for p in paths}
    expected = expected_scores(model_files["regression"], paths)
    np.testing.assert_allclose([results[p.name]["outputs"]["pageviews"] for p in paths], expected, rtol=1e-4)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_job_and_csv_results(pg_stack, model, kind):
    folder, paths = make_catalog(pg_stack.data, f"crawl-{kind}", 50, seed=200)
    frame = pd.DataFrame({"sku": [f"sku-{i}" for i in range(50)], "photo": [p.name for p in paths],
                          "views": range(50)})
    manifest = folder / f"items.{kind}"
    frame.to_csv(manifest, index=False) if kind == "csv" else frame.to_parquet(manifest)
    resp = submit(pg_stack, {"model": model, "manifest": f"crawl-{kind}/items.{kind}", "id_column": "sku",
                             "image_column": "photo"})
    assert resp.json()["source"]["type"] == "manifest"
    job = pg_stack.wait_job(resp.json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["succeeded"] == 50
    assert job["chunks"]["done"] == 4
    text = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job['id']}/results"), params={"format": "csv"},
                        timeout=30).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 50 and {r["id"] for r in rows} == set(frame["sku"])
    assert list(rows[0]) == ["id", "status", "error", "from_cache", "pageviews"]
    assert all(float(r["pageviews"]) > 0 for r in rows)


def test_parquet_results_equal_the_json_and_csv_ones_row_group_by_row_group(pg_stack, model):
    # photos of its own (seed 450): the cache test below counts hits on its seed-400 photos
    _, paths = make_catalog(pg_stack.data, "parquet", 11, seed=450)
    items = [{"id": p.stem, "uri": f"parquet/{p.name}"} for p in paths] + [{"id": "gone", "uri": "parquet/no.jpg"}]
    job = pg_stack.wait_job(submit(pg_stack, {"model": model, "items": items}).json()["id"])
    assert job["status"] == "succeeded" and job["progress"]["failed"] == 1
    url = pg_stack.url(f"/api/v1/jobs/{job['id']}/results")
    expected = results_by_id(pg_stack, job["id"])
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(pg_stack.http.get(url, params={"format": "csv"},
                                                                           timeout=30).text))}
    resp = pg_stack.http.get(url, params={"format": "parquet"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == result_exports.MEDIA_TYPE
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{job["id"]}.parquet"'
    served = pq.ParquetFile(io.BytesIO(resp.content))
    assert served.metadata.num_row_groups == 1  # the default group holds 10,000 results
    # the same file from the service, a row group per five results: three groups, the same rows
    pieces = list(result_exports.results_parquet(job["id"], row_group_rows=5, url=pg_stack.database_url))
    grouped = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    assert grouped.metadata.num_row_groups == 3 and len(pieces) == 4  # a piece per group, then the footer
    for file in (served, grouped):
        table = file.read()
        assert table.schema.names == ["id", "status", "error", "from_cache", "pageviews"]
        assert str(table.schema.field("pageviews").type) == "double"
        records = table.to_pylist()
        assert [r["id"] for r in records] == sorted(expected)  # in item id order
        for record in records:
            result, row = expected[record["id"]], rows[record["id"]]
            assert (record["status"], record["error"], record["from_cache"]) == \
                (result["status"], result["error"], result["from_cache"])
            assert record["pageviews"] == (result["outputs"] or {}).get("pageviews")
            assert row["pageviews"] == ("" if record["pageviews"] is None else repr(record["pageviews"]))
    missing = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{uuid.uuid4()}/results"), params={"format": "parquet"},
                                timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"


def test_idempotency_key_gives_the_same_job(pg_stack, model):
    _, paths = make_catalog(pg_stack.data, "idem", 3, seed=300)
    body = {"model": model, "items": [{"id": p.stem, "uri": f"idem/{p.name}"} for p in paths]}
    key = uuid.uuid4().hex
    first = submit(pg_stack, body, key=key)
    second = submit(pg_stack, body, key=key)
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    with session_scope(pg_stack.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.idempotency_key == key)) == 1
    other = pg_stack.http.post(pg_stack.url("/api/v1/jobs/score"), json={**body, "cache": False},
                          headers={"Idempotency-Key": key}, timeout=30)
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json()["error"]["message"]


def test_score_cache_skips_photos_seen_before(pg_stack, model):
    folder, paths = make_catalog(pg_stack.data, "nightly", 20, seed=400)
    items = [{"id": p.stem, "uri": f"nightly/{p.name}"} for p in paths]
    first = pg_stack.wait_job(submit(pg_stack, {"model": model, "items": items}).json()["id"])
    assert first["progress"]["from_cache"] == 0
    write_jpeg(paths[0], size=(70, 70), seed=999)  # one photo changed since yesterday
    second = pg_stack.wait_job(submit(pg_stack, {"model": model, "items": items}).json()["id"])
    assert second["progress"]["from_cache"] == 19 and second["progress"]["succeeded"] == 20
    a, b = results_by_id(pg_stack, first["id"]), results_by_id(pg_stack, second["id"])
    assert all(a[k]["outputs"] == b[k]["outputs"] for k in a if k != paths[0].stem)
    assert not b[paths[0].stem]["from_cache"]
    third = pg_stack.wait_job(submit(pg_stack, {"model": model, "items": items, "cache": False}).json()["id"])
    assert third["progress"]["from_cache"] == 0


def test_cancel_stops_at_a_chunk_boundary_and_keeps_partial_results(pg_stack, model):
    folder, paths = make_catalog(pg_stack.data, "cancel", 160, seed=500)
    items = [{"id": p.stem, "uri": f"cancel/{p.name}"} for p in paths]
    job_id = submit(pg_stack, {"model": model, "items": items, "cache": False}).json()["id"]
    deadline = time.time() + 60
    while pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]["done"] == 0:
        assert time.time() < deadline
        time.sleep(0.05)
    canceled = pg_stack.http.post(pg_stack.url(f"/api/v1/jobs/{job_id}/cancel"), timeout=10).json()
    assert canceled["status"] == "canceled"
    time.sleep(3)  # a chunk in flight finishes; no new chunk starts
    job = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()
    assert job["status"] == "canceled"
    assert 0 < job["progress"]["done"] < 160
    assert job["chunks"]["canceled"] >= 1 and job["chunks"]["running"] == 0
    with session_scope(pg_stack.database_url) as s:
        stored = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
        done_chunks = s.scalar(select(func.sum(Chunk.item_count)).where(Chunk.job_id == job_id,
                                                                        Chunk.state == "done"))
    assert stored == job["progress"]["done"] == done_chunks  # whole chunks only, all kept
    time.sleep(2)
    assert pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]["done"] == stored


def test_job_list_filters(pg_stack, model):
    listed = pg_stack.http.get(pg_stack.url("/api/v1/jobs"), params={"model": model, "status": "succeeded",
                                                                "limit": 2}, timeout=10).json()
    assert 1 <= len(listed["jobs"]) <= 2
    assert all(j["status"] == "succeeded" and j["model"]["ref"].startswith(model) for j in listed["jobs"])
    if listed["next"] is not None:  # the next page keeps the filters and shows none of this page's jobs
        nxt = pg_stack.http.get(pg_stack.url(listed["next"]), timeout=10).json()
        assert all(j["status"] == "succeeded" and j["model"]["ref"].startswith(model) for j in nxt["jobs"])
        assert not {j["id"] for j in nxt["jobs"]} & {j["id"] for j in listed["jobs"]}


def test_killed_worker_mid_job_loses_and_duplicates_nothing(pg_stack, model):
    folder, paths = make_catalog(pg_stack.data, "crash", 240, seed=600)
    items = [{"id": p.stem, "uri": f"crash/{p.name}"} for p in paths]
    job_id = submit(pg_stack, {"model": model, "items": items, "cache": False}).json()["id"]
    deadline = time.time() + 60
    while pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]["done"] < 20:
        assert time.time() < deadline
        time.sleep(0.02)
    pg_stack.kill_worker()  # SIGKILL the worker and its pool child mid-chunk
    time.sleep(1)
    pg_stack.start_worker()
    job = pg_stack.wait_job(job_id, timeout=180)
    assert job["status"] == "succeeded"
    assert job["progress"]["done"] == job["progress"]["succeeded"] == 240
    results = results_by_id(pg_stack, job_id)
    assert set(results) == {p.stem for p in paths}
    with session_scope(pg_stack.database_url) as s:
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 240
        assert s.scalar(select(func.max(Chunk.attempts)).where(Chunk.job_id == job_id)) >= 1


def test_prometheus_metrics_report_jobs_from_the_database(pg_stack, model):
    text = pg_stack.http.get(pg_stack.url("/metrics"), timeout=10).text
    with session_scope(pg_stack.database_url) as s:
        counts = s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)).all()
    assert counts
    for kind, status, n in counts:
        assert f'imgq_jobs{{kind="{kind}",status="{status}"}} {float(n)}' in text
    assert "imgq_items_remaining" in text
