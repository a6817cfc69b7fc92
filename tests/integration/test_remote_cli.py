"""The `imgq` remote commands as a user on another machine runs them: a separate process that knows only the
server's address and a token (its DATABASE_URL points nowhere), against a real `imgq serve` and worker on the
embedded default and on PostgreSQL."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from shared.tools.local_stack import free_port
from tests.helpers import write_jpeg

pytestmark = pytest.mark.integration

CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + ["\x7f"]


def _env(tmp_path, **extra) -> dict:
    """A laptop's environment: no database or broker it could reach, a home of its own (for `imgq login`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
    env.update({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere", "BROKER_URL": "redis://127.0.0.1:1/0",
                "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"), **extra})
    return env


def imgq(*args, env, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "shared.tools.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def _remote(stack, tmp_path) -> dict:
    return _env(tmp_path, IMGQ_SERVER=stack.base, IMGQ_TOKEN=stack.token or "")


@pytest.fixture(params=["embedded", "postgres"])
def stack(request):
    return request.getfixturevalue("embedded_stack" if request.param == "embedded" else "pg_stack")


@pytest.fixture
def photos(tmp_path):
    """A laptop's folder: 12 JPEGs (one in a subfolder), a truncated one, a text file named .jpg, and a CSV."""
    folder = tmp_path / "crawl"
    for i in range(11):
        write_jpeg(folder / f"p{i:02d}.jpg", size=(80, 60), seed=i)
    write_jpeg(folder / "shoes" / "p11.jpg", size=(60, 80), seed=11)
    good = (folder / "p00.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "items.csv").write_text("id,image\n")
    return folder


def _import(stack, tmp_path, model_files, name: str) -> None:
    out = imgq("models", "import", str(model_files["regression"]), "--name", name, "--task", "regression",
               "--input-size", "32", "--target-transform", "log1p", "--output-names", "pageviews", "--wait",
               env=_remote(stack, tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_scoring_a_folder_with_wait_downloads_what_the_api_returns(stack, tmp_path, model_files, photos):
    name = f"remote-{free_port()}"
    _import(stack, tmp_path, model_files, name)
    out = imgq("score", str(photos), "--model", name, "--wait", "--out", str(tmp_path / "r.csv"),
               env=_remote(stack, tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not any(c in out.stdout + out.stderr for c in CONTROL)  # no terminal: plain lines
    job_id = out.stdout.split()[1]
    job = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()
    assert job["status"] == "succeeded" and (job["progress"]["total"], job["progress"]["failed"]) == (14, 2)
    assert "failed items by reason (2):" in out.stdout and "succeeded: 14/14" in out.stdout
    assert "truncated" in out.stdout.split("failed items by reason")[1]

    api = {r["id"]: r for r in stack.all_results(job_id)}
    assert set(api) == {f"p{i:02d}.jpg" for i in range(11)} | {"shoes/p11.jpg", "truncated.jpg", "notes.jpg"}
    downloaded = pd.read_csv(tmp_path / "r.csv", dtype={"id": str}, keep_default_na=False)
    assert set(downloaded["id"]) == set(api)
    for row in downloaded.itertuples():
        assert row.status == api[row.id]["status"] and (row.error or None) == api[row.id]["error"]
        if row.status == "ok":
            assert float(row.pageviews) == pytest.approx(api[row.id]["outputs"]["pageviews"], rel=1e-6)

    parquet = imgq("jobs", "results", job_id, "--out", str(tmp_path / "r.parquet"), env=_remote(stack, tmp_path))
    assert parquet.returncode == 0, parquet.stderr
    frame = pd.read_parquet(tmp_path / "r.parquet").set_index("id").sort_index()
    ok = frame[frame["status"] == "ok"]
    assert len(frame) == 14 and ok["pageviews"].dtype.kind == "f"
    assert ok["pageviews"].to_dict() == pytest.approx({k: v["outputs"]["pageviews"] for k, v in api.items()
                                                       if v["status"] == "ok"}, rel=1e-6)


def _long_job(stack, tmp_path, name: str) -> str:
    """A score job of 30,000 items (one photo, the cache off) that runs long enough to be canceled (the caller
    cancels it); a manifest's image paths are relative to its own folder."""
    folder = stack.data / f"long-{name}"
    write_jpeg(folder / "p.jpg", size=(80, 60))
    (folder / "items.csv").write_text("id,image\n" + "".join(f"i{i},p.jpg\n" for i in range(30_000)))
    out = imgq("score", "--manifest", f"long-{name}/items.csv", "--model", name, "--no-cache", "--json",
               env=_remote(stack, tmp_path))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["id"]


def test_cancel_from_the_cli_and_watch_exits_1(pg_stack, tmp_path, model_files):
    stack, name = pg_stack, f"cancel-{free_port()}"
    _import(stack, tmp_path, model_files, name)
    job_id = _long_job(stack, tmp_path, name)
    out = imgq("jobs", "cancel", job_id, "--json", env=_remote(stack, tmp_path))
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "canceled", out.stderr
    watch = imgq("jobs", "watch", job_id, env=_remote(stack, tmp_path))
    assert watch.returncode == 1 and f"job {job_id} score canceled" in watch.stdout


def test_ctrl_c_while_waiting_stops_watching_and_leaves_the_job(pg_stack, tmp_path, model_files):
    stack, name = pg_stack, f"sigint-{free_port()}"
    _import(stack, tmp_path, model_files, name)
    job_id = _long_job(stack, tmp_path, name)
    # Ctrl-C as a terminal gives it: SIGINT at its default, whatever the suite's own disposition (a shell runs a
    # background job, `.ci/run &`, with SIGINT ignored, and a child keeps an ignored signal ignored)
    proc = subprocess.Popen([sys.executable, "-m", "shared.tools.cli", "jobs", "watch", job_id],
                            env=_remote(stack, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert f"stopped watching; the job goes on: imgq jobs watch {job_id}" in stderr
    status = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["status"]
    assert status in ("queued", "running", "succeeded")  # not canceled: nobody asked
    stack.http.post(stack.url(f"/api/v1/jobs/{job_id}/cancel"), timeout=10)


def test_exit_codes_a_cron_job_can_act_on(pg_stack, tmp_path):
    env = _remote(pg_stack, tmp_path)
    wrong = imgq("jobs", "list", "--token", "imgq_not-a-token", env=env)
    assert wrong.returncode == 4 and "401" in wrong.stderr
    down = imgq("jobs", "list", "--server", f"http://127.0.0.1:{free_port()}", env=env)
    assert down.returncode == 3 and "cannot reach" in down.stderr
    (pg_stack.data / "exit-codes").mkdir(exist_ok=True)
    (pg_stack.data / "exit-codes" / "items.csv").write_text("id,image\na,a.jpg\n")  # the manifest is checked first
    missing = imgq("score", "--manifest", "exit-codes/none.csv", "--model", "no-such-model", env=env)
    assert missing.returncode == 2 and "manifest not found" in missing.stderr
    unknown = imgq("score", "--manifest", "exit-codes/items.csv", "--model", "no-such-model", env=env)
    assert unknown.returncode == 2 and "no-such-model" in unknown.stderr
    nothing = imgq("jobs", "list", env=_env(tmp_path))
    assert nothing.returncode == 2 and "IMGQ_SERVER" in nothing.stderr


def test_login_remembers_the_server_and_token(pg_stack, tmp_path):
    env = _env(tmp_path)
    bad = imgq("login", "--server", pg_stack.base, "--token", "imgq_wrong", env=env)
    assert bad.returncode == 4
    assert not (tmp_path / "home" / ".config" / "imgq" / "config.toml").exists()
    good = imgq("login", "--server", pg_stack.base, "--token", pg_stack.token, env=env)
    assert good.returncode == 0, good.stderr
    stored = tmp_path / "home" / ".config" / "imgq" / "config.toml"
    assert stored.stat().st_mode & 0o777 == 0o600
    listed = imgq("jobs", "list", "--json", "--limit", "3", env=env)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) <= 3


def test_models_import_list_promote_and_an_unsafe_file(pg_stack, tmp_path, model_files):
    env, name = _remote(pg_stack, tmp_path), f"views-{free_port()}"
    for _ in range(2):
        _import(pg_stack, tmp_path, model_files, name)
    promoted = imgq("models", "promote", name, "2", env=env)
    assert promoted.returncode == 0 and f"{name}@production -> version 2" in promoted.stdout, promoted.stderr
    listed = imgq("models", "list", name, env=env).stdout.splitlines()
    assert listed[0].split("\t")[:3] == ["ref", "task", "aliases"]
    assert [line.split("\t")[:3] for line in listed[1:]] == [[f"{name}@1", "regression", ""],
                                                             [f"{name}@2", "regression", "production"]]
    bad = imgq("models", "import", str(model_files["unsafe"]), "--name", f"{name}-x", "--task", "regression",
               "--input-size", "32", "--wait", env=env)
    assert bad.returncode == 1 and "arbitrary" in bad.stdout, bad.stdout + bad.stderr


def test_a_folder_sent_in_parts_scores_as_the_api_says(stack, tmp_path, model_files, photos):
    name = f"parts-{free_port()}"
    _import(stack, tmp_path, model_files, name)
    command = ["score", str(photos), "--model", name, "--part-files", "4", "--idempotency-key", name]
    out = imgq(*command, "--wait", "--out", str(tmp_path / "r.csv"), env=_remote(stack, tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not any(c in out.stdout + out.stderr for c in CONTROL)
    parts = [line for line in out.stderr.splitlines() if line.startswith("uploaded part ")]
    assert [line.split(":")[0] for line in parts] == [f"uploaded part {n}/4" for n in range(1, 5)], out.stderr
    assert parts[-1].endswith("holds 14 files, " + parts[-1].rsplit(", ", 1)[1])

    job_id = out.stdout.split()[1]
    job = stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()
    assert job["source"]["type"] == "upload" and job["source"]["count"] == 14
    assert (job["status"], job["progress"]["total"], job["progress"]["failed"]) == ("succeeded", 14, 2)
    upload = stack.http.get(stack.url(f"/api/v1/uploads/{job['source']['upload']}"), timeout=10).json()
    assert (upload["files"], upload["job"]) == (14, job_id)
    assert upload["bytes"] == sum(p.stat().st_size for p in photos.rglob("*.jpg"))

    api = {r["id"]: r for r in stack.all_results(job_id)}
    assert set(api) == {f"p{i:02d}.jpg" for i in range(11)} | {"shoes/p11.jpg", "truncated.jpg", "notes.jpg"}
    downloaded = pd.read_csv(tmp_path / "r.csv", dtype={"id": str}, keep_default_na=False)
    assert sorted(downloaded["id"]) == sorted(api)
    for row in downloaded.itertuples():
        assert row.status == api[row.id]["status"] and (row.error or None) == api[row.id]["error"]
        if row.status == "ok":
            assert float(row.pageviews) == pytest.approx(api[row.id]["outputs"]["pageviews"], rel=1e-6)

    again = imgq(*command, env=_remote(stack, tmp_path))  # the cron job run twice: the same job
    assert again.returncode == 0 and again.stdout.split()[1] == job_id, again.stdout + again.stderr
    second = again.stderr.strip().splitlines()[-1].split("upload ")[1].split()[0]
    assert second != job["source"]["upload"]
    gone = stack.http.get(stack.url(f"/api/v1/uploads/{second}"), timeout=10)
    assert gone.status_code == 404  # the client deleted the upload the replayed job did not take


def test_a_part_sent_again_adds_no_item_and_bad_uploads_answer_the_error_shape(pg_stack, tmp_path, model_files,
                                                                              photos):
    from shared.client import Client
    from shared.client.errors import ApiError
    from shared.client.uploads import send_part, submit_upload

    stack, model = pg_stack, f"again-{free_port()}"
    _import(stack, tmp_path, model_files, model)
    client = Client(stack.base, stack.token)

    def refused(call) -> ApiError:
        with pytest.raises(ApiError) as error:
            call()
        return error.value

    upload = client.post("/api/v1/uploads")["id"]
    first = [("a.jpg", photos / "p00.jpg"), ("b.jpg", photos / "p01.jpg")]
    assert send_part(client, upload, first)["added"] == 2
    again = send_part(client, upload, first)  # the part retried after a lost answer
    assert (again["added"], again["repeated"], again["upload"]["files"]) == (0, 2, 2)
    overlap = send_part(client, upload, [("b.jpg", photos / "p01.jpg"), ("c.jpg", photos / "p02.jpg")])
    assert (overlap["added"], overlap["repeated"], overlap["upload"]["files"]) == (1, 1, 3)
    other_bytes = refused(lambda: send_part(client, upload, [("c.jpg", photos / "p03.jpg"),
                                                             ("d.jpg", photos / "p04.jpg")]))
    assert (other_bytes.status, other_bytes.kind, other_bytes.problems[0]["field"]) == (409, "Conflict", "files")
    assert client.upload(upload)["files"] == 3  # the refused part stored nothing, d.jpg neither

    stranger = Client(stack.base, stack.create_token(f"stranger-{free_port()}", "score,read"))
    for call in (lambda: stranger.upload(upload), lambda: send_part(stranger, upload, first),
                 lambda: stranger.request("DELETE", f"/api/v1/uploads/{upload}"),
                 lambda: stranger.post("/api/v1/jobs/score", {"model": model, "upload": upload})):
        assert (refused(call).status, refused(call).kind) == (403, "Forbidden")

    job = client.post("/api/v1/jobs/score", {"model": model, "upload": upload})
    assert client.wait(job, timeout=300)["status"] == "succeeded"
    results = list(client.iter_results(job))
    assert sorted(r["id"] for r in results) == ["a.jpg", "b.jpg", "c.jpg"] and all(r["status"] == "ok"
                                                                                   for r in results)
    used = refused(lambda: client.post("/api/v1/jobs/score", {"model": model, "upload": upload}))
    assert (used.status, used.kind, used.body["job"], used.problems[0]["field"]) == (409, "Conflict", job["id"],
                                                                                     "upload")
    found = submit_upload(client, "/api/v1/jobs/score", {"model": model, "upload": upload}, None)
    assert (found["id"], found["status"]) == (job["id"], "succeeded")  # a retried score request whose first
    # answer was lost finds the job the first one made
    assert refused(lambda: send_part(client, upload, [("e.jpg", photos / "p05.jpg")])).status == 409
    assert refused(lambda: client.request("DELETE", f"/api/v1/uploads/{upload}")).status == 409

    unknown = refused(lambda: client.upload("0" * 32))
    assert (unknown.status, unknown.kind, unknown.problems) == (404, "NotFound", [])
    unknown = refused(lambda: client.post("/api/v1/jobs/score", {"model": model, "upload": "0" * 32}))
    assert (unknown.status, unknown.problems[0]["field"]) == (404, "upload")
    empty = client.post("/api/v1/uploads")["id"]
    nothing = refused(lambda: client.post("/api/v1/jobs/score", {"model": model, "upload": empty}))
    assert (nothing.status, nothing.kind, nothing.problems[0]["field"]) == (400, "InvalidRequest", "upload")
    client.request("DELETE", f"/api/v1/uploads/{empty}")
    assert refused(lambda: client.upload(empty)).status == 404


def _train_request(tmp_path, name: str, dataset: str, epochs: int = 2) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "model": name, "task": "classification", "input_size": 32, "epochs": epochs, "batch_size": 32,
        "dataset": {"path": dataset, "image_column": "image", "id_column": "id", "label_column": "label"},
        "base": {"architecture": "vgg", "width": 8}, "optimizer": {"name": "adam", "learning_rate": 0.003}}))
    return str(path)


def test_train_with_wait_prints_each_epoch_and_a_failed_training_exits_1(pg_stack, tmp_path, digits):
    env, name = _remote(pg_stack, tmp_path), f"digits-{free_port()}"
    out = imgq("train", _train_request(tmp_path, name, "digits/first-night.csv"), "--wait", "--poll", "0.5", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert not any(c in out.stdout + out.stderr for c in CONTROL)
    job_id = out.stdout.split()[1]
    epochs = [line for line in out.stdout.splitlines() if line.startswith(f"job {job_id} train epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"job {job_id} train epoch {n}/2" for n in (1, 2)], out.stdout
    api = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{job_id}/epochs"), timeout=10).json()["epochs"]
    for line, row in zip(epochs, api):
        assert f" loss {row['loss']:.4g} " in line and f"val_loss {row['val_loss']:.4g}" in line
    assert f"job {job_id} train succeeded" in out.stdout and f"new version: {name}@1" in out.stdout

    broken = pg_stack.data / f"broken-{name}"
    broken.mkdir()
    (broken / "items.csv").write_text("id,image,label\n" + "".join(f"i{i},missing-{i}.png,{i % 2}\n"
                                                                   for i in range(40)))
    failed = imgq("train", _train_request(tmp_path, f"{name}-broken", f"broken-{name}/items.csv"), "--wait",
                  "--poll", "0.5", env=env)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-2000:]
    assert " train failed" in failed.stdout and "error: " in failed.stdout, failed.stdout
