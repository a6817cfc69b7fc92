import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.core.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_need_no_servers(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'imgq.db'}"
    assert s.broker_url == "filesystem://"
    assert s.embedded
    assert s.broker_transport_options["data_folder_in"] == str(tmp_path / "broker")
    assert s.data_roots == (tmp_path / "data",)
    assert s.model_store == tmp_path / "models"
    assert s.upload_dir not in s.readable_roots()  # no job reads another job's uploads
    assert s.readable_roots("f00") == (*s.data_roots, s.upload_dir / "f00")
    assert (s.max_json_bytes, s.max_upload_bytes) == (20 * 1024 ** 2, 2 * 1024 ** 3)  # two limits, apart


def test_postgres_and_redis_urls(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path), "DATABASE_URL": "postgres://u:p@db:5432/imgq",
                       "BROKER_URL": "redis://redis:6379/0", "IMGQ_VISIBILITY_TIMEOUT": "7200"})
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/imgq"
    assert not s.embedded
    assert s.broker_transport_options == {"visibility_timeout": 7200}
    prefixed = load_settings({"IMGQ_HOME": str(tmp_path), "BROKER_URL": "redis://r:6379/0",
                              "IMGQ_BROKER_PREFIX": "shop-a:"})
    assert prefixed.broker_transport_options["global_keyprefix"] == "shop-a:"


def test_data_roots_are_a_path_list(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    s = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_DATA_ROOTS": f"{a}:{b}:"})
    assert s.data_roots == (a.resolve(), b.resolve())
    assert s.object_roots == ()


def test_data_roots_may_name_object_store_prefixes_beside_folders(tmp_path):
    a = tmp_path / "a"
    s = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_DATA_ROOTS": f"{a}:s3://crawl-bucket/2026:s3://b-2/",
                       "IMGQ_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert s.data_roots == (a.resolve(),)
    assert s.object_roots == ("s3://crawl-bucket/2026/", "s3://b-2/")
    assert s.s3_endpoint_url == "http://127.0.0.1:9000"
    only_s3 = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_DATA_ROOTS": "s3://crawl-bucket/"})
    assert only_s3.data_roots == () and only_s3.object_roots == ("s3://crawl-bucket/",)
    assert load_settings({"IMGQ_HOME": str(tmp_path)}).s3_endpoint_url is None


@pytest.mark.parametrize("env, message", [
    ({"IMGQ_DATA_ROOTS": "ftp://bucket/x"}, "only s3://, az://, abfs://, gs://, gcs:// URI prefixes"),
    ({"IMGQ_DATA_ROOTS": "s3://Not_A_Bucket/"}, "not a bucket name"),
    ({"IMGQ_S3_ENDPOINT_URL": "minio:9000"}, "IMGQ_S3_ENDPOINT_URL must be an http:// or https:// URL"),
    ({"IMGQ_S3_RETRIES": "21"}, "IMGQ_S3_RETRIES must be at most 20"),
    ({"IMGQ_READ_THREADS": "0"}, "IMGQ_READ_THREADS must be at least 1"),
])
def test_unusable_object_store_settings_are_refused(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"IMGQ_HOME": str(tmp_path), **env})


@pytest.mark.parametrize("name, value, message", [
    ("IMGQ_CHUNK_SIZE", "many", "IMGQ_CHUNK_SIZE must be an integer"),
    ("IMGQ_CHUNK_SIZE", "0", "IMGQ_CHUNK_SIZE must be at least 1"),
    ("IMGQ_HEARTBEAT_TIMEOUT", "-3", "IMGQ_HEARTBEAT_TIMEOUT must be positive"),
    ("IMGQ_SWEEP_INTERVAL", "soon", "IMGQ_SWEEP_INTERVAL must be a number"),
    ("IMGQ_MAX_JSON_BYTES", "100", "IMGQ_MAX_JSON_BYTES must be at least 1024"),
])
def test_bad_values_are_named(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"IMGQ_HOME": str(tmp_path), name: value})


def test_relative_home_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings({})
    assert s.data_dir == Path(tmp_path / ".imgq").resolve()


def test_serving_and_worker_start_up_settings(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path)})
    assert (s.preload, s.auto_migrate, s.host, s.port) == (True, True, "127.0.0.1", 8000)
    s = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_PRELOAD": "0", "IMGQ_AUTO_MIGRATE": "off",
                       "IMGQ_HOST": "0.0.0.0", "IMGQ_PORT": "65535"})
    assert (s.preload, s.auto_migrate, s.host, s.port) == (False, False, "0.0.0.0", 65535)


@pytest.mark.parametrize("name, value, message", [
    ("IMGQ_PORT", "0", "IMGQ_PORT must be at least 1"),
    ("IMGQ_PORT", "65536", "IMGQ_PORT must be at most 65535"),
    ("IMGQ_HOST", "example.com:80", "IMGQ_HOST must be a host name or address"),
    ("IMGQ_HOST", "http://example.com", "IMGQ_HOST must be a host name or address"),
    ("IMGQ_PRELOAD", "maybe", "IMGQ_PRELOAD must be on or off"),
    ("IMGQ_AUTO_MIGRATE", "2", "IMGQ_AUTO_MIGRATE must be on or off"),
])
def test_bad_start_up_values_are_named(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"IMGQ_HOME": str(tmp_path), name: value})


def test_log_format_and_metrics_settings(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path)})
    assert (s.log_format, s.metrics_port, s.metrics_host) == ("text", 0, "127.0.0.1")
    assert s.metrics_dir.is_dir()  # the system's temporary folder: local to the host
    s = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_LOG_FORMAT": "JSON", "IMGQ_METRICS_PORT": "9464",
                       "IMGQ_METRICS_HOST": "0.0.0.0", "IMGQ_METRICS_DIR": str(tmp_path / "m")})
    assert (s.log_format, s.metrics_port, s.metrics_host, s.metrics_dir) == ("json", 9464, "0.0.0.0", tmp_path / "m")
    for name, value, message in (("IMGQ_LOG_FORMAT", "xml", "IMGQ_LOG_FORMAT must be one of text, json"),
                                 ("IMGQ_METRICS_PORT", "-1", "IMGQ_METRICS_PORT must be at least 0"),
                                 ("IMGQ_METRICS_PORT", "70000", "IMGQ_METRICS_PORT must be at most 65535"),
                                 ("IMGQ_METRICS_HOST", "a:1", "IMGQ_METRICS_HOST must be a host name")):
        with pytest.raises(ConfigError, match=message):
            load_settings({"IMGQ_HOME": str(tmp_path), name: value})


IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, socket, sys

OURS = ("IMGQ_", "DATABASE_URL", "BROKER_URL")
CODE = tuple(os.path.join(sys.argv[1], package) + os.sep for package in ("shared", "web", "worker"))
read, connects = [], []
environ_getitem = os._Environ.__getitem__


def spy(self, key):  # our code reading our variables (a library copying the whole environment reads no setting)
    frame = sys._getframe(1)
    while frame.f_code.co_filename.endswith(("os.py", "_collections_abc.py")):  # os.environ.get, `in`, getenv
        frame = frame.f_back
    if isinstance(key, str) and key.startswith(OURS) and frame.f_code.co_filename.startswith(CODE):
        read.append(f"{key} in {frame.f_code.co_filename}:{frame.f_lineno}")
    return environ_getitem(self, key)


def refuse(self, address):
    connects.append(repr(address))
    raise OSError("no connection at import time")


os._Environ.__getitem__ = spy
socket.socket.connect = socket.socket.connect_ex = refuse
modules = []
for package in ("shared", "web", "worker"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
        modules.append(info.name)

from shared.core import celery_app, config, db

unconfigured = []
for use in (lambda: db.session_scope().__enter__(), celery_app.configured_settings):
    try:
        use()
    except RuntimeError as exc:
        unconfigured.append(str(exc))
print(json.dumps({"read": read, "connects": connects, "modules": modules, "unconfigured": unconfigured,
                  "settings_loaded": config.get_settings.cache_info().misses}))
"""


def test_importing_any_module_reads_no_setting_connects_nothing_and_creates_no_folder(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "IMGQ_HOME": str(home), "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
           "BROKER_URL": "redis://127.0.0.1:9/0", "IMGQ_DATA_ROOTS": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, str(REPO)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert {"shared.tools.cli", "web.wsgi", "worker.tasks", "worker.training.run"} <= set(report["modules"])
    assert report["read"] == [] and report["settings_loaded"] == 0
    assert report["connects"] == []
    assert sorted(tmp_path.iterdir()) == [cwd] and list(cwd.iterdir()) == []  # no .imgq, no home, no broker
    assert len(report["unconfigured"]) == 2 and all("configure(settings)" in m for m in report["unconfigured"])


CONFIGURE_WORKER = """
import json, sys
from shared.core import celery_app
from shared.core.config import load_settings

celery_app.configure(load_settings({"IMGQ_HOME": sys.argv[1], "IMGQ_MAX_TRAIN_SECONDS": "100",
                                    "IMGQ_HEARTBEAT_TIMEOUT": "5", "IMGQ_PRELOAD": "0"}))
import worker.tasks  # as the worker's main process imports it (include=["worker.tasks"]), after the CLI configured

train, score = (celery_app.app.tasks[name] for name in (celery_app.TRAIN_TASK, celery_app.SCORE_CHUNK_TASK))
print(json.dumps({"train": [train.soft_time_limit, train.time_limit],
                  "score": [score.soft_time_limit, score.time_limit], "broker": celery_app.app.conf.broker_url,
                  "preload": celery_app.configured_settings().preload}))
"""


def test_the_task_time_limits_come_from_the_settings_the_app_is_configured_with(tmp_path):
    out = subprocess.run([sys.executable, "-c", CONFIGURE_WORKER, str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert report == {"train": [160, 220], "score": [50, 110], "broker": "filesystem://", "preload": False}
