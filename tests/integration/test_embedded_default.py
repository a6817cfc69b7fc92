"""The same score flow with no servers at all: SQLite file and kombu's filesystem broker, with the web
front and the worker as separate processes (a real queue between them, not eager mode)."""
import numpy as np
import pytest

from shared.images.synthetic import write_catalog
from tests.helpers import expected_scores, import_model_http

pytestmark = pytest.mark.integration


def test_manifest_job_on_the_embedded_default(embedded_stack, model_files):
    stack = embedded_stack
    home = stack.log_dir.parent / "home"
    assert (home / "imgq.db").is_file() and (home / "broker").is_dir()  # no server: files only
    import_model_http(stack, model_files["regression"], "embedded", target_transform="log1p")
    write_catalog(stack.data / "catalog", 40, size=(120, 90), seed=3)
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json={"model": "embedded",
                                                               "manifest": "catalog/items.csv"}, timeout=60)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=180)
    assert job["status"] == "succeeded"
    assert (job["progress"]["total"], job["progress"]["failed"]) == (43, 3)
    results = {r["id"]: r for r in stack.all_results(job["id"])}
    paths = sorted((stack.data / "catalog").glob("sku-*.jpg"))
    got = [results[p.stem]["outputs"]["value"] for p in paths]
    np.testing.assert_allclose(got, expected_scores(model_files["regression"], paths), rtol=1e-4)
    assert results["broken-empty"]["error"] == "empty file"
