"""Object storage other than S3: the same stack with its crawl, model store and uploads in containers of a real Azure
Blob Storage server on loopback (Azurite, Microsoft's emulator, from npm; `.ci/run` installs it), reached through
fsspec's adlfs as `az://container/key` and configured only by AZURE_STORAGE_CONNECTION_STRING, through a TCP proxy a
test may cut. A score job on the container gives exactly the local files' results; bad objects are their items'
errors; uploads stream to the container; a train job on a dataset in the container checkpoints and registers its
version there; a job's results are exported to the container as Parquet; the store away for 10 s mid-job costs no
item and no attempt."""
from __future__ import annotations

import io
import shutil
import time
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import Chunk, ModelVersion, TrainRun
from shared.images.synthetic import write_catalog
from tests.helpers import (
    REDIS_BASE,
    Azurite,
    TcpProxy,
    azurite_binary,
    comparable,
    create_pg_database,
    import_model_http,
    make_stack,
    scored,
    stop_with_database,
    store_away_mid_job,
    write_jpeg,
)

pytestmark = pytest.mark.integration

CRAWL = "az://crawl/2026/"
MODEL_STORE = "az://models/store/"
UPLOADS = "az://uploads/up/"
EXPORTS = "az://exports/out/"


@pytest.fixture(scope="module")
def az_stack(tmp_path_factory, model_files):
    if azurite_binary() is None:
        pytest.skip("azurite-blob is missing (npm install --prefix .ci/tools azurite; .ci/run installs it)")
    from PIL import Image
    from sklearn.datasets import load_digits

    from shared.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("az-stack")
    server = Azurite(tmp / "azurite")
    proxy = TcpProxy(server.port)
    manifest = write_catalog(tmp / "data" / "catalog", 20, size=(120, 90), seed=11)
    server.put_files("crawl", "2026/catalog", {p.name: p for p in manifest.parent.iterdir()})
    server.put_files("other", "2026", {"x.jpg": manifest.parent / "sku-000000.jpg"})
    digits, lines = load_digits(), ["id,image,label"]
    for i in range(300):
        png = io.BytesIO()
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").save(png, "PNG")
        server.put_files("crawl", "2026/digits", {f"d{i:04d}.png": png.getvalue()})
        lines.append(f"digit-{i:04d},d{i:04d}.png,{digits.target[i]}")
    server.put_files("crawl", "2026/digits", {"digits.csv": ("\n".join(lines) + "\n").encode()})
    server.put_files("models", "", {})
    server.put_files("uploads", "", {})
    server.put_files("exports", "", {})
    url = create_pg_database()
    upgrade(url)
    stack = make_stack(tmp, {"DATABASE_URL": url, "BROKER_URL": f"{REDIS_BASE}/9", **server.env(proxy.port),
                             "IMGQ_BROKER_PREFIX": f"imgq-test-{uuid.uuid4().hex[:8]}:",
                             "IMGQ_DATA_ROOTS": f"{tmp / 'data'}:{CRAWL}", "IMGQ_MODEL_STORE": MODEL_STORE,
                             "IMGQ_UPLOAD_DIR": UPLOADS, "IMGQ_EXPORT_ROOTS": EXPORTS,
                             "IMGQ_HOME": str(tmp / "main-home")})
    stack.process_env["worker"] = {"IMGQ_HOME": str(tmp / "worker-home")}
    stack.worker_home, stack.main_home = tmp / "worker-home", tmp / "main-home"
    try:
        stack.start()
        stack.model = f"az-{uuid.uuid4().hex[:6]}"
        import_model_http(stack, model_files["regression"], stack.model, target_transform="log1p")
        stack.database_url, stack.azurite, stack.proxy = url, server, proxy
        yield stack
    finally:
        stop_with_database(stack, url, proxy, server)
        shutil.rmtree(tmp / "data", ignore_errors=True)


def blobs_under(stack, path: str) -> list[str]:
    fs = stack.azurite.filesystem()
    return sorted(fs.find(path)) if fs.exists(path) else []


def test_a_job_on_a_container_scores_exactly_as_the_same_job_on_local_files_with_the_model_from_the_store(az_stack):
    from_container = scored(az_stack, {"manifest": CRAWL + "catalog/items.csv"})
    from_folder = scored(az_stack, {"manifest": "catalog/items.csv"})
    assert len(from_container) == 23 and sum(r["status"] == "ok" for r in from_container.values()) == 20
    assert {k: comparable(r) for k, r in from_container.items()} == {k: comparable(r) for k, r in from_folder.items()}
    with session_scope(az_stack.database_url) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == az_stack.model)).one()
        path, sha256 = version.path, version.sha256
    assert path.startswith(f"{MODEL_STORE}{az_stack.model}/")
    assert blobs_under(az_stack, f"models/store/{az_stack.model}") == [path.removeprefix("az://")]
    assert [p.name for p in (az_stack.worker_home / "model-cache").glob("*.keras")] == [f"{sha256}.keras"]


def test_bad_objects_are_their_items_errors_and_the_rest_is_scored(az_stack):
    az_stack.azurite.put_files("crawl", "2026/catalog", {"empty.jpg": b""})
    results = scored(az_stack, {"items": [
        {"id": "good", "uri": CRAWL + "catalog/sku-000001.jpg"},
        {"id": "missing", "uri": CRAWL + "catalog/none.jpg"},
        {"id": "empty", "uri": CRAWL + "catalog/empty.jpg"},
        {"id": "other-container", "uri": "az://other/2026/x.jpg"},
        {"id": "escape", "uri": CRAWL + "../2025/x.jpg"},
        {"id": "beside", "uri": "az://crawl/2026-old/x.jpg"},
        {"id": "other-account", "uri": "az://crawl@elsewhere.blob.core.windows.net/2026/x.jpg"},
    ]})
    assert results["good"]["status"] == "ok"
    assert results["missing"]["error"] == f"object not found: {CRAWL}catalog/none.jpg"
    assert results["empty"]["status"] == "error" and "empty" in results["empty"]["error"], results["empty"]
    assert results["other-container"]["error"] == "path outside the data roots: az://other/2026/x.jpg"
    assert results["escape"]["error"] == f"invalid path ('.' or '..' in the key): {CRAWL}../2025/x.jpg"
    assert results["beside"]["error"] == "path outside the data roots: az://crawl/2026-old/x.jpg"
    assert results["other-account"]["error"].startswith("path outside the data roots")


def test_uploads_stream_to_the_container_and_score_on_a_worker_that_shares_no_folder(az_stack, tmp_path):
    photos = {f"shot-{i}.jpg": write_jpeg(tmp_path / f"shot-{i}.jpg", seed=200 + i).read_bytes() for i in range(5)}
    resp = az_stack.http.post(az_stack.url("/api/v1/jobs/score"), data={"model": az_stack.model, "cache": "false"},
                              files=[("files", (n, io.BytesIO(b), "image/jpeg")) for n, b in photos.items()],
                              timeout=60)
    assert resp.status_code == 202, resp.text
    job = az_stack.wait_job(resp.json()["id"], timeout=240)
    assert job["status"] == "succeeded" and (job["progress"]["done"], job["progress"]["failed"]) == (5, 0), job
    assert sorted(r["id"] for r in az_stack.all_results(job["id"])) == sorted(photos)
    stored = blobs_under(az_stack, "uploads/up")
    assert sorted(b.rsplit("/", 1)[1].split("-", 1)[1] for b in stored) == sorted(photos), stored  # 000000-<name>
    assert not [p for p in (az_stack.main_home / "uploads").rglob("*") if p.is_file()]


def test_a_train_job_on_a_container_dataset_checkpoints_and_registers_its_version_in_the_store(az_stack):
    name = f"digits-{uuid.uuid4().hex[:6]}"
    resp = az_stack.http.post(az_stack.url("/api/v1/jobs/train"), timeout=120, json={
        "model": name, "task": "classification", "input_size": 32, "epochs": 2, "batch_size": 32,
        "dataset": {"path": f"{CRAWL}digits/digits.csv", "image_column": "image", "id_column": "id",
                    "label_column": "label"}, "base": {"architecture": "vgg", "width": 8}})
    assert resp.status_code == 202, resp.text
    job = az_stack.wait_job(resp.json()["id"], timeout=600, poll=1.0)
    assert job["status"] == "succeeded", job
    assert sum(job["data"]["split_sizes"].values()) == 300
    with session_scope(az_stack.database_url) as session:
        checkpoint = session.scalars(select(TrainRun.checkpoint_path).where(TrainRun.job_id == job["id"])).one()
        path = session.scalars(select(ModelVersion.path).where(ModelVersion.name == name)).one()
    assert checkpoint.startswith(f"{MODEL_STORE}checkpoints/{job['id']}/attempt-1/epoch-0002")  # in the store
    assert blobs_under(az_stack, f"models/store/checkpoints/{job['id']}") == []  # and gone once registered
    assert path.startswith(f"{MODEL_STORE}{name}/") and blobs_under(az_stack, path.removeprefix("az://"))


def test_a_jobs_results_are_exported_to_the_container_as_parquet(az_stack):
    import pandas as pd

    resp = az_stack.http.post(az_stack.url("/api/v1/jobs/score"), timeout=60, json={
        "model": az_stack.model, "cache": False, "manifest": CRAWL + "catalog/items.csv",
        "export": EXPORTS + "{job_id}.parquet"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    deadline = time.time() + 240
    while (job := az_stack.http.get(az_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json())["export"][
            "status"] != "written":
        assert time.time() < deadline and job["export"]["status"] != "failed", job["export"]
        time.sleep(0.3)
    with az_stack.azurite.filesystem().open(f"exports/out/{job_id}.parquet", "rb") as fh:
        frame = pd.read_parquet(fh)
    api = {r["id"]: r for r in az_stack.all_results(job_id)}
    assert job["export"]["rows"] == len(frame) == len(api) == 23
    ok = frame[frame["status"] == "ok"].set_index("id")
    output = next(iter(next(r for r in api.values() if r["status"] == "ok")["outputs"]))
    assert len(ok) == 20 and ok[output].to_dict() == pytest.approx(
        {k: r["outputs"][output] for k, r in api.items() if r["status"] == "ok"}, rel=1e-6)


def test_the_store_away_for_10_s_mid_job_loses_no_item_and_uses_no_attempt(az_stack, tmp_path):
    photos = {f"p{i:02d}.jpg": write_jpeg(tmp_path / f"p{i:02d}.jpg", seed=300 + i) for i in range(30)}
    az_stack.azurite.put_files("crawl", "2026/outage", photos)
    items = [{"id": f"item-{n:04d}", "uri": f"{CRAWL}outage/p{n % 30:02d}.jpg"} for n in range(900)]
    resp = az_stack.http.post(az_stack.url("/api/v1/jobs/score"), timeout=60,
                              json={"model": az_stack.model, "cache": False, "items": items})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    done = store_away_mid_job(az_stack, job_id, az_stack.proxy, 10)
    assert done < 900
    job = az_stack.wait_job(job_id, timeout=300)
    assert job["status"] == "succeeded", job
    assert (job["progress"]["done"], job["progress"]["failed"]) == (900, 0), job["progress"]
    assert sorted(r["id"] for r in az_stack.all_results(job_id)) == [i["id"] for i in items]
    with session_scope(az_stack.database_url) as session:
        attempts = session.scalars(select(Chunk.attempts).where(Chunk.job_id == job_id)).all()
    assert max(attempts) == 1
