"""Fixtures: real PostgreSQL and Redis (127.0.0.1), SQLite files, small Keras models made here, the app and a
client on the app factory, and running stacks. Plain helpers live in tests/helpers.py."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from tests.helpers import (  # noqa: E402
    REDIS_BASE,
    MotoS3,
    authorized_client,
    configure_process,
    create_pg_database,
    drop_pg_database,
    make_stack,
    migrated_database,
    tiny_cnn,
)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test."""
    url = create_pg_database()
    yield url
    from shared.core.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'imgq.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The same test on the embedded SQLite database and on a fresh PostgreSQL database, migrated."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def configured(monkeypatch, tmp_path, db_url):
    """Settings pointed at `db_url` and temporary folders, configured as an entry point would (folders, database,
    Celery app on the embedded broker); the environment says the same, for code under test that reads it
    (the CLI). Returns the Settings."""
    from shared.core.config import get_settings

    yield configure_process(monkeypatch, tmp_path, db_url)
    get_settings.cache_clear()


@pytest.fixture
def app(configured):
    """The Flask app from its factory on the test's migrated database: HTTP contract tests need no gunicorn."""
    from web.app import create_app

    return create_app(configured)


@pytest.fixture
def client(app):
    """A test client of `app` that sends an admin token on every request."""
    return authorized_client(app)


@pytest.fixture(scope="module")
def regression(model_files):
    """The regression test model as a worker's model cache loads it (version 7, a log1p target): for scoring code
    run in the test's own process."""
    from shared.core.tables import ModelVersion
    from shared.services.model_registry import sha256_file
    from worker.model_cache import load

    file = model_files["regression"]
    return load(ModelVersion(id=7, name="m", version=1, task="regression", input_height=32, input_width=32,
                             resize_mode="stretch", pixel_scale="unit", output_names=["value"], class_names=None,
                             target_transform={"kind": "log1p"}, path=str(file), sha256=sha256_file(file),
                             size_bytes=1))


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    """Keras files for each task, plus one that asks for arbitrary code (a Lambda layer)."""
    import keras

    folder = tmp_path_factory.mktemp("models")
    files = {}
    for name, model in {"regression": tiny_cnn(32, 1), "classification": tiny_cnn(32, 3, "softmax"),
                        "keypoints": tiny_cnn(32, 4, "sigmoid"), "regression_big": tiny_cnn(48, 1)}.items():
        files[name] = folder / f"{name}.keras"
        model.save(files[name])
    inputs = keras.Input((32, 32, 3))
    lam = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(lam))
    files["unsafe"] = folder / "unsafe.keras"
    keras.Model(inputs, out).save(files["unsafe"])
    return files


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory):
    """Web front and a Celery worker as real processes on PostgreSQL and Redis."""

    from shared.core.migrate import upgrade

    url = create_pg_database()
    upgrade(url)
    broker = f"{REDIS_BASE}/9"
    # a key prefix of its own: another test run on the same Redis (or another xdist worker of this one, whose stack
    # shares the database number) never takes this run's tasks, and nothing needs flushing
    stack = make_stack(tmp_path_factory.mktemp("pg-stack"), {"DATABASE_URL": url, "BROKER_URL": broker,
                                                         "IMGQ_BROKER_PREFIX": f"imgq-test-{uuid.uuid4().hex[:8]}:"})
    stack.database_url = url
    stack.start()
    yield stack
    stack.stop()
    from shared.core.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """Web front and a worker on the embedded default: SQLite file and filesystem broker, no servers."""
    stack = make_stack(tmp_path_factory.mktemp("embedded-stack"), {})
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def digits(pg_stack):
    """scikit-learn's bundled handwritten digits, written out as PNG files with a CSV."""
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = pg_stack.data / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        name = f"d{i:04d}.png"
        Image.fromarray((img * 255 / 16).astype(np.uint8), "L").save(folder / name)
        rows.append({"id": f"digit-{i:04d}", "image": name, "label": str(label)})
    frame = pd.DataFrame(rows)
    frame.iloc[:900].to_csv(folder / "first-night.csv", index=False)
    frame.to_csv(folder / "all.csv", index=False)
    return folder


@pytest.fixture
def s3_server(tmp_path):
    """A real S3 server (moto's server mode) on a free loopback port, for one test; stopped after it."""
    server = MotoS3(tmp_path / "moto")
    yield server
    server.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Everything under tests/integration/ talks to real servers or processes: mark it so `-m "not integration"`
    runs the unit tests alone (seconds, no servers).

    Under pytest-xdist (`-n 2 --dist loadgroup`, the README's command) each module is one group, so a module's
    fixtures (a stack, a trained model) are built once, on one worker; the fault suite is a single group, run
    in order on one worker: its tests share a session's private servers and write one reliability report.

    tryfirst: xdist's worker reads the xdist_group marks in its own pytest_collection_modifyitems, and its plugin is
    registered after this conftest, so it would run first (pluggy calls the last registered first) and find no
    marks: every test was then scheduled on its own, and each module's fixtures were built on both workers."""
    for item in items:
        parts = item.path.parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        group = "faults" if "faults" in parts else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config):
    """An xdist controller names its run (xdist's --testrunuid, passed on to every worker) before the workers start,
    so that it knows where they spool the fault report's rows."""
    if not hasattr(config, "workerinput") and hasattr(config.option, "testrunuid") and not config.option.testrunuid:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_sessionfinish(session):
    """The controller of an xdist run writes the fault report once, from every worker's spooled rows
    (tests/integration/faults/report.py); a plain run writes it from its session fixture instead."""
    config = session.config
    run_id = getattr(config.option, "testrunuid", None)
    if hasattr(config, "workerinput") or not run_id:
        return
    import shlex
    import shutil

    from tests.integration.faults.report import FaultReport, spool_folder

    folder = spool_folder(run_id)
    if not folder.is_dir():
        return
    command = shlex.join([".venv/bin/python", "-m", "pytest", *config.invocation_params.args])
    path = FaultReport.merged(folder).write(command=command)
    shutil.rmtree(folder, ignore_errors=True)
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if path is not None and terminal is not None:
        terminal.write_line(f"reliability report written to {path}")
