"""A job's `export`: its results written to a bucket of a real S3 server (moto's server mode, its own process on
loopback) when it succeeds, on SQLite and PostgreSQL. Jobs are submitted over HTTP (the app's test client) and run by
the real score task (run_chunk, no Celery) with a stand-in regression model; the sweeper is the real one.

Covered: the Parquet and CSV files equal the API's results; a URI outside IMGQ_EXPORT_ROOTS, with '..', an unknown
placeholder or another extension is a 400 on `export` with no job and no object; a store away when the job finishes
leaves the export pending, each sweep tries it again, and once the store is back one sweep writes it, once."""
from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.core.db import session_scope
from shared.core.tables import Job
from shared.images.imaging import Preprocessing
from shared.services.model_registry import signature_of
from tests.helpers import S3_KEYS, assert_error, authorized_client, configure_process, seed_version
from worker.model_cache import ModelCache
from worker.run_chunk import run_chunk
from worker.sweeper import sweep

pytestmark = pytest.mark.integration

BUCKET, OTHER = "exports", "other-exports"
ROOT = f"s3://{BUCKET}/out/"


class Brightness:
    """A stand-in regression model: an image's mean pixel value (0..1)."""

    def __init__(self, version):
        self.version_id = version.id
        self.signature = signature_of(version)
        self.preprocessing = Preprocessing(height=32, width=32, pixel_scale="unit")

    def predict(self, batch):
        return np.asarray(batch, dtype=np.float64).mean(axis=(1, 2, 3))[:, None] / 255.0


@pytest.fixture
def setup(monkeypatch, tmp_path, db_url, s3_server):
    """Settings whose exports go under s3://exports/out/ on the test's S3 server (chunks of 4 items), an app client,
    and 10 grey images in the data root."""
    from shared.core.config import get_settings
    from web.app import create_app

    for name, value in {**S3_KEYS, "IMGQ_S3_ENDPOINT_URL": s3_server.endpoint, "IMGQ_EXPORT_ROOTS": ROOT,
                        "IMGQ_CHUNK_SIZE": "4", "IMGQ_S3_RETRIES": "0"}.items():
        monkeypatch.setenv(name, value)
    settings = configure_process(monkeypatch, tmp_path, db_url)
    s3_server.put_files(BUCKET, "", {})
    s3_server.put_files(OTHER, "", {})
    for i in range(10):
        Image.new("RGB", (20, 20), (i * 25,) * 3).save(settings.data_roots[0] / f"g{i}.png")
    seed_version("grey")
    yield settings, authorized_client(create_app(settings)), s3_server
    get_settings.cache_clear()


def submit(client, export: str):
    return client.post("/api/v1/jobs/score", json={
        "model": "grey", "cache": False, "export": export,
        "items": [{"id": f"g{i}", "uri": f"g{i}.png"} for i in range(10)] + [{"id": "gone", "uri": "none.png"}]})


def run_to_the_end(settings, job_id: str) -> None:
    """Every chunk through the real score task (the first chains into the rest)."""
    models = ModelCache(1, loader=Brightness)
    for chunk_no in range(3):
        assert run_chunk(job_id, chunk_no, worker="w", models=models, settings=settings) in (
            "done", "chunk already done")


def api_rows(client, job_id: str) -> dict:
    """The job's results as the JSON API pages them: {id: (status, error, v)}."""
    rows, url = {}, f"/api/v1/jobs/{job_id}/results?limit=4"
    while url:
        body = client.get(url).json
        rows.update({r["id"]: (r["status"], r.get("error"), (r.get("outputs") or {}).get("v"))
                     for r in body["results"]})
        url = body["next"]
    return rows


def stored(server, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def keys_in(server, bucket: str) -> list[str]:
    return [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_a_score_job_with_an_export_writes_a_parquet_file_whose_rows_are_the_apis_results(setup):
    settings, client, server = setup
    resp = submit(client, ROOT + "{job_id}.parquet")
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job_id = resp.json["id"]
    assert resp.json["export"]["uri"] == f"{ROOT}{job_id}.parquet" and resp.json["export"]["status"] == "pending"
    run_to_the_end(settings, job_id)
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "succeeded"
    assert (job["export"]["status"], job["export"]["rows"], job["export"]["error"]) == ("written", 11, None)
    table = pq.read_table(io.BytesIO(stored(server, f"out/{job_id}.parquet")))
    exported = {r["id"]: (r["status"], r["error"], r["v"]) for r in table.to_pylist()}
    assert exported == api_rows(client, job_id) and len(exported) == 11
    assert exported["gone"][0] == "error" and exported["g4"][2] == pytest.approx(100 / 255)


def test_a_csv_export_holds_the_csv_downloads_bytes(setup):
    settings, client, server = setup
    job_id = submit(client, ROOT + "csv/{job_id}.csv").json["id"]
    run_to_the_end(settings, job_id)
    assert client.get(f"/api/v1/jobs/{job_id}").json["export"]["status"] == "written"
    exported = stored(server, f"out/csv/{job_id}.csv")
    assert exported == client.get(f"/api/v1/jobs/{job_id}/results?format=csv").get_data()
    assert len(list(csv.DictReader(io.StringIO(exported.decode())))) == 11


@pytest.mark.parametrize("export, reason", [
    (f"s3://{OTHER}/out/{{job_id}}.parquet", "outside the export roots"),
    (ROOT + "../elsewhere/{job_id}.parquet", "'..' in the key"),
    (ROOT + "{jobid}.parquet", "the only placeholder"),
    (ROOT + "{job_id}.json", "ends in .parquet or .csv"),
    ("/srv/out/{job_id}.parquet", "object-store URI (s3://, az://...)"),
])
def test_a_bad_export_uri_is_a_400_on_export_with_nothing_stored(setup, export, reason):
    _, client, server = setup
    resp = submit(client, export)
    error = assert_error(resp, 400, field="export")
    assert reason in str(error), error
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert keys_in(server, BUCKET) == [] and keys_in(server, OTHER) == []


def test_an_export_whose_store_is_away_at_the_finish_is_written_by_a_sweep_once_it_is_back(setup):
    settings, client, server = setup
    job_id = submit(client, ROOT + "{job_id}.parquet").json["id"]
    server.stop()
    run_to_the_end(settings, job_id)
    job = client.get(f"/api/v1/jobs/{job_id}").json
    assert job["status"] == "succeeded"
    assert (job["export"]["status"], job["export"]["tries"]) == ("pending", 1) and job["export"]["error"]
    sweep(settings, lambda job_id, nos: len(nos))  # still away: pending, tried again
    assert (client.get(f"/api/v1/jobs/{job_id}").json["export"]["status"],
            client.get(f"/api/v1/jobs/{job_id}").json["export"]["tries"]) == ("pending", 2)
    server.start()  # back on the same port, empty: its owner recreates the bucket
    server.put_files(BUCKET, "", {})
    sweep(settings, lambda job_id, nos: len(nos))
    export = client.get(f"/api/v1/jobs/{job_id}").json["export"]
    assert (export["status"], export["rows"], export["tries"], export["error"]) == ("written", 11, 3, None)
    table = pq.read_table(io.BytesIO(stored(server, f"out/{job_id}.parquet")))
    assert {r["id"]: (r["status"], r["error"], r["v"]) for r in table.to_pylist()} == api_rows(client, job_id)
    sweep(settings, lambda job_id, nos: len(nos))  # written once: a later sweep leaves it
    assert client.get(f"/api/v1/jobs/{job_id}").json["export"]["tries"] == 3


def big_pieces(parts: int, fail_after: int | None = None):
    """A stand-in for the Parquet writer's pieces: `parts` pieces of 6 MiB (more than one upload part in all),
    raising after `fail_after` of them if given."""
    def pieces(job_id, **_):
        for n in range(parts):
            if n == fail_after:
                raise RuntimeError("the results' database went away")
            yield bytes([n]) * (6 * 1024 * 1024)
    return pieces


def test_a_large_export_goes_up_as_a_multipart_upload_and_a_failed_one_leaves_no_object(setup, monkeypatch):
    from shared.services import result_exports

    settings, client, server = setup
    monkeypatch.setattr(result_exports, "results_parquet", big_pieces(6))
    job_id = submit(client, ROOT + "{job_id}.parquet").json["id"]
    run_to_the_end(settings, job_id)
    assert client.get(f"/api/v1/jobs/{job_id}").json["export"]["status"] == "written"
    head = server.client().head_object(Bucket=BUCKET, Key=f"out/{job_id}.parquet")
    assert head["ContentLength"] == 36 * 1024 * 1024
    assert int(head["ETag"].strip('"').rsplit("-", 1)[1]) >= 2  # a multipart object's ETag ends in -<parts>
    monkeypatch.setattr(result_exports, "results_parquet", big_pieces(6, fail_after=4))
    failed_id = submit(client, ROOT + "{job_id}.parquet").json["id"]
    run_to_the_end(settings, failed_id)
    export = client.get(f"/api/v1/jobs/{failed_id}").json["export"]
    assert export["status"] == "pending" and "went away" in export["error"]
    assert keys_in(server, BUCKET) == [f"out/{job_id}.parquet"]
    assert server.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_an_export_being_written_is_left_to_its_writer_and_taken_over_once_its_lease_is_stale(setup):
    from datetime import timedelta

    from sqlalchemy import update

    from shared.core.tables import ResultExport, utcnow

    settings, client, server = setup
    job_id = submit(client, ROOT + "{job_id}.parquet").json["id"]
    server.stop()
    run_to_the_end(settings, job_id)  # pending, tried once
    server.start()
    server.put_files(BUCKET, "", {})

    def held_since(moment):  # as a writer (this test) holding the export since `moment` leaves it
        with session_scope() as session:
            session.execute(update(ResultExport).where(ResultExport.job_id == job_id)
                            .values(status="writing", updated_at=moment))

    held_since(utcnow())
    sweep(settings, lambda job_id, nos: len(nos))
    assert client.get(f"/api/v1/jobs/{job_id}").json["export"]["status"] == "writing"
    assert keys_in(server, BUCKET) == []
    held_since(utcnow() - timedelta(seconds=settings.heartbeat_timeout + 60))  # its writer died
    sweep(settings, lambda job_id, nos: len(nos))
    export = client.get(f"/api/v1/jobs/{job_id}").json["export"]
    assert (export["status"], export["rows"], export["tries"]) == ("written", 11, 2)
    assert keys_in(server, BUCKET) == [f"out/{job_id}.parquet"]
