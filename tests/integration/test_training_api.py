"""Promotion, rollback, sweeps, cancel and dataset checks through the running stack."""
import time
import uuid

import pytest

from tests.helpers import import_model_http, write_jpeg

pytestmark = pytest.mark.integration


def test_promotion_and_rollback_reach_the_next_job_without_a_restart(pg_stack, model_files):
    name = f"swap-{uuid.uuid4().hex[:6]}"
    import_model_http(pg_stack, model_files["regression"], name)
    import_model_http(pg_stack, model_files["regression"], name)
    write_jpeg(pg_stack.data / "swap" / "a.jpg")
    item = {"model": name, "items": [{"id": "a", "uri": "swap/a.jpg"}], "cache": False}

    def scored_by():
        job = pg_stack.http.post(pg_stack.url("/api/v1/jobs/score"), json=item, timeout=30).json()
        return pg_stack.wait_job(job["id"])["model"]["ref"]

    assert scored_by() == f"{name}@1"
    resp = pg_stack.http.post(pg_stack.url(f"/api/v1/models/{name}/aliases/production"), json={"version": 2},
                              timeout=10)
    assert resp.status_code == 200
    assert scored_by() == f"{name}@2"  # the same worker, no restart
    models = pg_stack.http.get(pg_stack.url("/api/v1/models"), timeout=10).json()["models"]
    assert {"name": name, "versions": 2, "production": 2} in models
    back = pg_stack.http.post(pg_stack.url(f"/api/v1/models/{name}/rollback"), timeout=10)
    assert back.status_code == 200 and back.json()["version"] == 1
    assert scored_by() == f"{name}@1"


def test_rollback_without_history_is_a_409(pg_stack, model_files):
    name = f"once-{uuid.uuid4().hex[:6]}"
    import_model_http(pg_stack, model_files["regression"], name)
    resp = pg_stack.http.post(pg_stack.url(f"/api/v1/models/{name}/rollback"), timeout=10)
    assert resp.status_code == 409 and "no earlier version" in resp.json()["error"]["message"]


def base_request(name, **over):
    body = {"model": name, "task": "classification", "input_size": 32, "epochs": 2, "batch_size": 64,
            "dataset": {"path": "digits/all.csv", "id_column": "id", "label_column": "label"},
            "base": {"architecture": "vgg", "width": 8}}
    body.update(over)
    return body


def test_a_sweep_runs_one_job_per_point_compared_on_one_holdout(pg_stack, digits):
    name = f"sweep-{uuid.uuid4().hex[:6]}"
    resp = pg_stack.http.post(pg_stack.url("/api/v1/sweeps"), timeout=30, json={
        "base": base_request(name), "grid": {"optimizer.name": ["adam", "sgd"], "optimizer.learning_rate": [0.003]}})
    assert resp.status_code == 202, resp.text
    sweep = resp.json()
    assert len(sweep["runs"]) == 2
    for run in sweep["runs"]:
        assert pg_stack.wait_job(run["job_id"], timeout=600, poll=1.0)["status"] == "succeeded"
    table = pg_stack.http.get(pg_stack.url(resp.headers["Location"]), timeout=10).json()["runs"]
    assert sorted(r["params"]["optimizer.name"] for r in table) == ["adam", "sgd"]
    assert all(r["holdout_metrics"]["n"] == table[0]["holdout_metrics"]["n"] > 0 for r in table)
    assert sorted(r["version"] for r in table) == [f"{name}@1", f"{name}@2"]


def test_bad_sweeps_and_train_requests_are_4xx(pg_stack):
    bad_grid = pg_stack.http.post(pg_stack.url("/api/v1/sweeps"),
                                  json={"base": base_request("x"), "grid": {"epochs": []}},
                             timeout=10)
    assert bad_grid.status_code == 400 and bad_grid.json()["error"]["problems"][0]["field"] == "grid"
    no_labels = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), timeout=10, json={
        **base_request("x"), "dataset": {"path": "digits/all.csv"}})
    assert no_labels.status_code == 400 and "label_column" in no_labels.json()["error"]["message"]
    unknown_base = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), timeout=10,
                                 json={**base_request("x"), "base": {"version": "nope@4"}})
    assert unknown_base.status_code == 404
    bad_opt = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), timeout=10,
                            json={**base_request("x"), "optimizer": {"name": "lion"}})
    assert bad_opt.status_code == 400 and bad_opt.json()["error"]["problems"][0]["field"] == "optimizer.name"


def test_cancel_stops_a_training_at_the_next_batch(pg_stack, digits):
    name = f"stop-{uuid.uuid4().hex[:6]}"
    job_id = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), json=base_request(name, epochs=50, batch_size=16),
                           timeout=30).json()["id"]
    deadline = time.time() + 300
    while pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]["epoch"] < 1:
        assert time.time() < deadline
        time.sleep(0.3)
    assert pg_stack.http.post(pg_stack.url(f"/api/v1/jobs/{job_id}/cancel"), timeout=10).json()["status"] == "canceled"
    deadline = time.time() + 60
    while True:
        job = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()
        if job["progress"]["phase"] == "canceled":
            break
        assert time.time() < deadline, job["progress"]
        time.sleep(0.3)
    assert job["status"] == "canceled" and job["progress"]["epoch"] < 50 and job["model"]["result"] is None
    versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10)
    assert versions.status_code == 404  # nothing was registered


def test_dataset_check_over_http(pg_stack, digits):
    (digits / "broken.png").write_bytes(b"not a png")
    rows = (digits / "all.csv").read_text().splitlines()
    (digits / "check.csv").write_text("\n".join(rows[:50] + ["digit-9998,broken.png,3", "digit-9999,gone.png,4",
                                                             f"digit-copy,{rows[1].split(',')[1]},0"]) + "\n")
    resp = pg_stack.http.post(pg_stack.url("/api/v1/datasets/check"), timeout=60, json={
        "path": "digits/check.csv", "id_column": "id", "label_column": "label"})
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["rows"] == 52
    assert report["missing_files"]["count"] == 1
    assert report["unreadable_images"]["count"] == 1
    assert report["duplicates"]["groups"] >= 1
    assert {"0", "3", "4"} <= set(report["classes"]["per_class"])
    bad = pg_stack.http.post(pg_stack.url("/api/v1/datasets/check"), json={"path": "../../etc"}, timeout=10)
    assert bad.status_code == 400


def test_a_fine_tune_mixes_in_earlier_items(pg_stack, digits):
    name = f"mix-{uuid.uuid4().hex[:6]}"
    lines = (digits / "all.csv").read_text().splitlines()
    (digits / "second-night.csv").write_text("\n".join([lines[0], *lines[901:]]) + "\n")
    first = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), timeout=30, json=base_request(
        name, epochs=1, dataset={"path": "digits/first-night.csv", "id_column": "id", "label_column": "label"}))
    assert pg_stack.wait_job(first.json()["id"], timeout=600, poll=1.0)["status"] == "succeeded"
    second = pg_stack.http.post(pg_stack.url("/api/v1/jobs/train"), timeout=30, json=base_request(
        name, epochs=1, base={"version": name}, mix_in={"fraction": 0.5},
        dataset={"path": "digits/second-night.csv", "id_column": "id", "label_column": "label"}))
    job = pg_stack.wait_job(second.json()["id"], timeout=600, poll=1.0)
    assert job["status"] == "succeeded", job
    assert job["data"]["rows"] == 897 and job["data"]["mixed_in_rows"] == 450  # half of the first night's 900
    assert sum(job["data"]["split_sizes"].values()) == 897 + 450
    assert 200 * 2**20 < job["data"]["peak_rss_bytes"] < 8 * 2**30  # the trainer's own VmHWM: TensorFlow and more
    phases = job["data"]["phase_seconds"]  # where the attempt's time went, in the order the phases ran
    assert list(phases) == ["process_start", "attempt_start", "crawl_check", "load_data", "build_and_fit", "evaluate",
                            "compare_with_production", "register", "drift_reference"]
    assert phases["process_start"] > 0.5  # Python and the imports, TensorFlow among them, before train() began
    assert phases["build_and_fit"] > phases["evaluate"] > 0
    assert sum(phases.values()) <= job["timings"]["elapsed_seconds"] + 0.5  # one process, started after the claim
