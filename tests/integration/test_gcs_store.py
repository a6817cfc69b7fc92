"""Object storage on Google Cloud Storage: the same stack with its crawl, model store and exports in buckets of a
real GCS JSON-API server on loopback (gcp-storage-emulator, from PyPI, in memory), reached through fsspec's gcsfs as
`gs://bucket/key` and configured only by the environment: STORAGE_EMULATOR_HOST (gcsfs' endpoint), FSSPEC_GS_TOKEN=anon
(no credential lookup) and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false. The last is what makes an emulator usable: by
default gcsfs (2025.x and later) is its ExtendedGcsFileSystem, which first asks the Storage Control gRPC API for each
bucket's layout (zonal, hierarchical) at the same host and port over TLS; against an HTTP/1.1 emulator the
handshake fails with UNAVAILABLE, which google-api-core retries for 60 s (and, the answer UNKNOWN not being cached,
again at the next call), then falls back to the JSON API. A score job on the bucket gives exactly the local files'
results with the model from the bucket-backed store; bad objects are their items' errors; a job's results are
exported to the bucket as Parquet."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.core.db import session_scope
from shared.core.tables import ModelVersion
from shared.images.synthetic import write_catalog
from tests.helpers import (
    REDIS_BASE,
    comparable,
    create_pg_database,
    import_model_http,
    make_stack,
    scored,
    stop_with_database,
)

pytestmark = pytest.mark.integration

CRAWL = "gs://crawl/2026/"
MODEL_STORE = "gs://models/store/"
EXPORTS = "gs://exports/out/"
PROJECT = "imgq-test"


class GcsEmulator:
    """A real GCS JSON-API server on loopback (gcp-storage-emulator's `start --in-memory`) on a free port; `env` is
    what a process needs to reach it through gcsfs, with no credentials and no gRPC."""

    def __init__(self, log_dir: Path):
        from shared.tools.local_stack import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / f"gcs-emulator-{self.port}.log", "ab")
        server = Path(sys.executable).with_name("gcp-storage-emulator")
        self.process = subprocess.Popen([str(server), "start", "--host", "127.0.0.1", "--port", str(self.port),
                                         "--in-memory"], stdout=self._log, stderr=subprocess.STDOUT,
                                        env={k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"})
        self._wait_ready()

    def env(self) -> dict:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GS_PROJECT": PROJECT,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def filesystem(self):
        from gcsfs.core import GCSFileSystem  # the plain JSON-API class, whatever the environment of this process

        return GCSFileSystem(endpoint_url=self.endpoint, token="anon", project=PROJECT, skip_instance_cache=True)

    def put_files(self, bucket: str, prefix: str, files: dict) -> None:
        """`files`: name -> local Path or bytes, written under `bucket/prefix/` (the bucket made if new)."""
        fs = self.filesystem()
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for name, body in files.items():
            data = body.read_bytes() if isinstance(body, Path) else body
            fs.pipe_file(f"{bucket}/{prefix}/{name}".replace("//", "/"), data)

    def _wait_ready(self, timeout: float = 30) -> None:
        import requests

        stop = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"{self.endpoint}/storage/v1/b", timeout=1)
                return
            except requests.ConnectionError:
                if time.monotonic() > stop or self.process.poll() is not None:
                    raise RuntimeError(f"gcp-storage-emulator on port {self.port} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def gs_stack(tmp_path_factory, model_files):
    from shared.core.migrate import upgrade

    tmp = tmp_path_factory.mktemp("gs-stack")
    server = GcsEmulator(tmp / "gcs")
    manifest = write_catalog(tmp / "data" / "catalog", 20, size=(120, 90), seed=13)
    server.put_files("crawl", "2026/catalog", {p.name: p for p in manifest.parent.iterdir()})
    server.put_files("crawl", "2026-old", {"x.jpg": manifest.parent / "sku-000000.jpg"})
    server.put_files("other", "2026", {"x.jpg": manifest.parent / "sku-000000.jpg"})
    for bucket in ("models", "exports"):
        server.put_files(bucket, "", {})
    url = create_pg_database()
    upgrade(url)
    stack = make_stack(tmp, {"DATABASE_URL": url, "BROKER_URL": f"{REDIS_BASE}/9", **server.env(),
                             "IMGQ_BROKER_PREFIX": f"imgq-test-{uuid.uuid4().hex[:8]}:",
                             "IMGQ_DATA_ROOTS": f"{tmp / 'data'}:{CRAWL}", "IMGQ_MODEL_STORE": MODEL_STORE,
                             "IMGQ_EXPORT_ROOTS": EXPORTS, "IMGQ_HOME": str(tmp / "main-home")})
    stack.process_env["worker"] = {"IMGQ_HOME": str(tmp / "worker-home")}
    stack.worker_home = tmp / "worker-home"
    try:
        stack.start()
        stack.model = f"gs-{uuid.uuid4().hex[:6]}"
        import_model_http(stack, model_files["regression"], stack.model, target_transform="log1p")
        stack.database_url, stack.gcs = url, server
        yield stack
    finally:
        stop_with_database(stack, url, server)
        shutil.rmtree(tmp / "data", ignore_errors=True)


def test_a_job_on_a_bucket_scores_exactly_as_the_same_job_on_local_files_with_the_model_from_the_store(gs_stack):
    from_bucket = scored(gs_stack, {"manifest": CRAWL + "catalog/items.csv"})
    from_folder = scored(gs_stack, {"manifest": "catalog/items.csv"})
    assert len(from_bucket) == 23 and sum(r["status"] == "ok" for r in from_bucket.values()) == 20
    assert {k: comparable(r) for k, r in from_bucket.items()} == {k: comparable(r) for k, r in from_folder.items()}
    with session_scope(gs_stack.database_url) as session:
        version = session.scalars(select(ModelVersion).where(ModelVersion.name == gs_stack.model)).one()
        path, sha256 = version.path, version.sha256
    assert path.startswith(f"{MODEL_STORE}{gs_stack.model}/")
    assert gs_stack.gcs.filesystem().find(f"models/store/{gs_stack.model}") == [path.removeprefix("gs://")]
    assert [p.name for p in (gs_stack.worker_home / "model-cache").glob("*.keras")] == [f"{sha256}.keras"]


def test_bad_objects_are_their_items_errors_and_the_rest_is_scored(gs_stack):
    gs_stack.gcs.put_files("crawl", "2026/catalog", {"empty.jpg": b""})
    results = scored(gs_stack, {"items": [
        {"id": "good", "uri": CRAWL + "catalog/sku-000001.jpg"},
        {"id": "missing", "uri": CRAWL + "catalog/none.jpg"},
        {"id": "empty", "uri": CRAWL + "catalog/empty.jpg"},
        {"id": "other-bucket", "uri": "gs://other/2026/x.jpg"},
        {"id": "escape", "uri": CRAWL + "../2026-old/x.jpg"},
        {"id": "beside", "uri": "gs://crawl/2026-old/x.jpg"},
    ]})
    assert results["good"]["status"] == "ok"
    assert results["missing"]["error"] == f"object not found: {CRAWL}catalog/none.jpg"
    assert results["empty"]["status"] == "error" and "empty" in results["empty"]["error"], results["empty"]
    assert results["other-bucket"]["error"] == "path outside the data roots: gs://other/2026/x.jpg"
    assert results["escape"]["error"] == f"invalid path ('.' or '..' in the key): {CRAWL}../2026-old/x.jpg"
    assert results["beside"]["error"] == "path outside the data roots: gs://crawl/2026-old/x.jpg"


def test_a_jobs_results_are_exported_to_the_bucket_as_parquet(gs_stack):
    import pandas as pd

    resp = gs_stack.http.post(gs_stack.url("/api/v1/jobs/score"), timeout=60, json={
        "model": gs_stack.model, "cache": False, "manifest": CRAWL + "catalog/items.csv",
        "export": EXPORTS + "{job_id}.parquet"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    deadline = time.time() + 120
    while (job := gs_stack.http.get(gs_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json())["export"][
            "status"] != "written":
        assert time.time() < deadline and job["export"]["status"] != "failed", job["export"]
        time.sleep(0.3)
    with gs_stack.gcs.filesystem().open(f"exports/out/{job_id}.parquet", "rb") as fh:
        frame = pd.read_parquet(fh)
    api = {r["id"]: r for r in gs_stack.all_results(job_id)}
    assert job["export"]["rows"] == len(frame) == len(api) == 23
    ok = frame[frame["status"] == "ok"].set_index("id")
    output = next(iter(next(r for r in api.values() if r["status"] == "ok")["outputs"]))
    assert len(ok) == 20 and ok[output].to_dict() == pytest.approx(
        {k: r["outputs"][output] for k, r in api.items() if r["status"] == "ok"}, rel=1e-6)
