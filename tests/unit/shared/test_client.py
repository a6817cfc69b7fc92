"""The HTTP client's own logic, with no server: where it finds its server and token, which files a folder
uploads and under which ids, how results become typed columns, and the lines it prints while watching."""
import io

import pandas as pd
import pytest

from shared.client import config
from shared.client.api import _typed, image_files
from shared.client.errors import NotConfigured, ServerError, Unreachable
from shared.client.progress import describe, uploading, watch
from shared.client.uploads import retried, split


def test_arguments_beat_the_environment_which_beats_the_file(tmp_path):
    env = {"HOME": str(tmp_path)}
    config.write_config(config.config_path(env), "http://from-file:8000", "file-token")
    assert config.resolve(environ=env) == config.Target("http://from-file:8000", "file-token")
    env.update(IMGQ_SERVER="http://from-env:8000/", IMGQ_TOKEN="env-token")
    assert config.resolve(environ=env) == config.Target("http://from-env:8000", "env-token")
    assert config.resolve("http://arg:1", "arg-token", environ=env) == config.Target("http://arg:1", "arg-token")
    assert config.config_path(env).stat().st_mode & 0o777 == 0o600


def test_no_server_anywhere_is_a_usage_error(tmp_path):
    with pytest.raises(NotConfigured, match="IMGQ_SERVER"):
        config.resolve(environ={"HOME": str(tmp_path)})


def test_a_token_with_quotes_survives_the_file(tmp_path):
    path = tmp_path / "c.toml"
    config.write_config(path, "http://h", 'to"ken\\x')
    assert config.read_config(path) == {"url": "http://h", "token": 'to"ken\\x'}


def test_a_folder_uploads_its_images_named_by_their_path_inside_it(tmp_path):
    for rel in ("a.jpg", "b.PNG", "sub/c.webp", "notes.txt", "items.csv", ".hidden/d.jpg", ".e.jpg"):
        (tmp_path / "crawl" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "crawl" / rel).write_bytes(b"x")
    (tmp_path / "single.gif").write_bytes(b"x")
    ids = [item_id for item_id, _ in image_files([tmp_path / "crawl", tmp_path / "single.gif"])]
    assert ids == ["a.jpg", "b.PNG", "sub/c.webp", "single.gif"]


def test_two_files_with_one_id_are_refused_before_uploading(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="same.jpg"):
        image_files([tmp_path / "x", tmp_path / "y" / "same.jpg"])
    with pytest.raises(FileNotFoundError):
        image_files([tmp_path / "missing"])


def test_result_columns_become_numbers_where_every_value_is_one():
    frame = pd.read_csv(io.StringIO("id,status,error,from_cache,views,label\n"
                                    "007,ok,,0,1.5,cat\nNA,error,empty file,1,,\n"), dtype=str, keep_default_na=False)
    typed = _typed(frame)
    assert list(typed["id"]) == ["007", "NA"]
    assert typed["views"].dtype.kind == "f" and typed["views"][0] == 1.5 and pd.isna(typed["views"][1])
    assert typed["label"].tolist() == ["cat", ""] and typed["from_cache"].tolist() == [False, True]


def _sized(tmp_path, sizes: list[int]) -> list:
    files = []
    for i, size in enumerate(sizes):
        (tmp_path / f"{i:02d}.jpg").write_bytes(b"x" * size)
        files.append((f"{i:02d}.jpg", tmp_path / f"{i:02d}.jpg"))
    return files


def test_a_folder_splits_into_parts_in_order_within_both_budgets(tmp_path):
    files = _sized(tmp_path, [10] * 10)
    parts = split(files, part_files=4, part_bytes=1000)
    assert [len(p) for p in parts] == [4, 4, 2] and [f for p in parts for f in p] == files
    parts = split(files, part_files=100, part_bytes=35)
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert split(files, part_files=10, part_bytes=100) == [files]  # exactly full: one part, one request


def test_a_file_over_the_byte_budget_goes_alone_and_nothing_is_an_empty_part(tmp_path):
    files = _sized(tmp_path, [5, 500, 5, 5])
    assert [[i for i, _ in p] for p in split(files, part_files=10, part_bytes=100)] == \
        [["00.jpg"], ["01.jpg"], ["02.jpg", "03.jpg"]]
    assert split([], part_files=1, part_bytes=1) == []
    with pytest.raises(ValueError):
        split(files, part_files=0)


def test_a_part_is_sent_again_only_when_the_server_did_not_answer():
    calls = []

    def flaky(errors):
        def call():
            calls.append(1)
            if errors:
                raise errors.pop(0)
            return "ok"
        return call

    assert retried(flaky([Unreachable("down"), ServerError(502, "BadGateway", "")]), pause=0) == "ok"
    assert len(calls) == 3
    with pytest.raises(Unreachable):
        retried(flaky([Unreachable("down")] * 3), pause=0)
    from shared.client.errors import ApiError
    calls.clear()
    with pytest.raises(ApiError):
        retried(flaky([ApiError(409, "Conflict", "other bytes")]), pause=0)
    assert len(calls) == 1  # a refusal is final


def test_parts_going_up_without_a_terminal_print_one_plain_line_each():
    out = io.StringIO()
    with uploading(out) as (on_upload, on_part):
        assert on_upload is None
        on_part(1, 2, {"added": 4, "repeated": 0, "upload": {"id": "u1", "files": 4, "bytes": 3 * 2**20}})
        on_part(2, 2, {"added": 1, "repeated": 3, "upload": {"id": "u1", "files": 5, "bytes": 4 * 2**20}})
    assert out.getvalue().splitlines() == [
        "uploaded part 1/2: 4 files added, 0 already there; upload u1 holds 4 files, 3.0 MiB",
        "uploaded part 2/2: 1 files added, 3 already there; upload u1 holds 5 files, 4.0 MiB"]


class _Jobs:
    """A stand-in for the server's answers, poll after poll (the watcher's logic only; the real server is used in
    tests/integration/test_remote_cli.py)."""
    def __init__(self, states):
        self.states = list(states)

    def job(self, job):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def epochs(self, job):
        return {"epochs": [{"epoch": 1, "loss": 0.5, "val_loss": 0.61, "seconds": 2.0}]}


def _score_job(done, status="running"):
    return {"id": "j1", "kind": "score", "status": status, "progress": {
        "total": 10, "done": done, "failed": 1 if done else 0, "percent": 10.0 * done,
        "images_per_second": 5.0 if done else None, "eta_seconds": (10 - done) / 5 if done else None}}


def test_watching_without_a_terminal_prints_plain_changing_lines():
    out = io.StringIO()
    final = watch(_Jobs([_score_job(0), _score_job(0), _score_job(5), _score_job(10, "succeeded")]), "j1",
                  poll=0, out=out, line_every=0)
    lines = out.getvalue().splitlines()
    assert final["status"] == "succeeded"
    assert lines == ["job j1 score running: 0/10 (0.0%) - images/s eta - failed 0",
                     "job j1 score running: 5/10 (50.0%) 5.0 images/s eta 1s failed 1",
                     "job j1 score succeeded: 10/10 (100.0%) 5.0 images/s eta 0s failed 1"]
    assert not any(c in out.getvalue() for c in "\r\x1b")


def test_a_preparing_job_line_shows_the_manifest_rows_read_then_its_items():
    preparing = {"id": "j1", "kind": "score", "status": "preparing",
                 "progress": {"total": 0, "done": 0, "failed": 0, "percent": 0.0, "rows_read": 40000}}
    out = io.StringIO()
    final = watch(_Jobs([preparing, _score_job(10, "succeeded")]), "j1", poll=0, out=out, line_every=0)
    assert final["status"] == "succeeded"
    assert out.getvalue().splitlines() == ["job j1 score preparing: 40000 manifest rows read",
                                           "job j1 score succeeded: 10/10 (100.0%) 5.0 images/s eta 0s failed 1"]


def test_a_train_job_line_shows_the_epoch_and_the_latest_metrics():
    job = {"id": "t1", "kind": "train", "status": "running",
           "progress": {"phase": "fitting", "epoch": 1, "epochs": 5, "eta_seconds": 8.2}}
    assert describe(job, {"epoch": 1, "loss": 0.5, "val_loss": 0.61, "seconds": 2.0}) == \
        "job t1 train running: fitting epoch 1/5 eta 8s loss 0.5 val_loss 0.61"


def test_the_client_and_its_commands_load_no_database_broker_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, shared.client.commands, shared.tools.cli; "
            "print(sorted(m for m in ('sqlalchemy', 'celery', 'kombu', 'tensorflow', 'keras', 'flask', 'psycopg') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
