"""Shared fixtures: real PostgreSQL and Redis (127.0.0.1), SQLite files, small Keras models made here."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PG_ADMIN = os.environ.get("IMGQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("IMGQ_TEST_REDIS", "redis://127.0.0.1:6379")


def _pg_base() -> str:
    return PG_ADMIN.rsplit("/", 1)[0]


def create_pg_database() -> str:
    name = f"imgq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{_pg_base()}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test."""
    url = create_pg_database()
    yield url
    from shared.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'imgq.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """The same test on the embedded SQLite database and on a fresh PostgreSQL database, migrated."""
    from shared.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'imgq.db'}"
        upgrade(url)
        yield url
        return
    url = create_pg_database()
    upgrade(url)
    yield url
    from shared.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


@pytest.fixture
def configured(monkeypatch, tmp_path, db_url):
    """Settings pointed at `db_url` and temporary folders, configured as an entry point would (folders, database,
    Celery app on the embedded broker); the environment says the same, for code under test that reads it
    (the CLI). Returns the Settings."""
    from shared import celery_app, db
    from shared.config import ensure_dirs, get_settings

    monkeypatch.setenv("IMGQ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("IMGQ_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.delenv("BROKER_URL", raising=False)
    get_settings.cache_clear()
    s = get_settings()
    ensure_dirs(s)
    db.configure(s)
    celery_app.configure(s)
    yield s
    get_settings.cache_clear()


# ---------------------------------------------------------------- small models, built in the test

def tiny_cnn(input_size: int, outputs: int, activation: str | None = None, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(outputs, activation=activation)(x)
    return keras.Model(inputs, out)


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


def write_jpeg(path: Path, size=(64, 48), seed: int = 0, mode: str = "RGB") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode if mode != "CMYK" else None)
    if mode == "CMYK":
        img = Image.fromarray(arr[..., :4], "RGBA").convert("CMYK")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if mode == "RGBA" else "JPEG"
    img.save(path, fmt)
    return path


# ---------------------------------------------------------------- running stacks (web + worker processes)

STACK_ENV = {
    "IMGQ_CHUNK_SIZE": "16",
    "IMGQ_BATCH_SIZE": "8",
    "IMGQ_DECODE_THREADS": "2",
    "IMGQ_HEARTBEAT_TIMEOUT": "8",
    "IMGQ_SWEEP_INTERVAL": "2",
    "IMGQ_MAX_ATTEMPTS": "3",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def _stack(tmp: Path, extra: dict):
    from shared.local_stack import LocalStack

    env = {**STACK_ENV, "IMGQ_HOME": str(tmp / "home"), "IMGQ_DATA_ROOTS": str(tmp / "data"), **extra}
    for key in ("DATABASE_URL", "BROKER_URL"):
        if key not in extra:
            env[key] = ""
    stack = LocalStack(env, tmp / "logs")
    stack.data = tmp / "data"
    stack.data.mkdir(parents=True, exist_ok=True)
    return stack


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory):
    """Web front and a Celery worker as real processes on PostgreSQL and Redis."""
    import redis

    from shared.migrate import upgrade

    url = create_pg_database()
    upgrade(url)
    broker = f"{REDIS_BASE}/9"
    redis.Redis.from_url(broker).flushdb()
    # a key prefix of its own: another test run on the same Redis never takes this run's tasks
    stack = _stack(tmp_path_factory.mktemp("pg-stack"), {"DATABASE_URL": url, "BROKER_URL": broker,
                                                         "IMGQ_BROKER_PREFIX": f"imgq-test-{uuid.uuid4().hex[:8]}:"})
    stack.database_url = url
    stack.start()
    yield stack
    stack.stop()
    from shared.db import engine_for

    engine_for(url).dispose()
    drop_pg_database(url)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """Web front and a worker on the embedded default: SQLite file and filesystem broker, no servers."""
    stack = _stack(tmp_path_factory.mktemp("embedded-stack"), {})
    stack.start()
    yield stack
    stack.stop()


def import_model_http(stack, file: Path, name: str, **fields) -> dict:
    """POST the file (202 and an import job), wait for the maintenance worker to import it, and return the new
    version as GET /api/v1/models/<name>/versions/<n> describes it."""
    data = {"name": name, "task": "regression", "input_size": "32", **fields}
    with open(file, "rb") as fh:
        resp = stack.http.post(stack.url("/api/v1/models"), data=data, files={"file": (file.name, fh)}, timeout=120)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    _, _, version = job["model"]["result"].partition("@")
    resp = stack.http.get(stack.url(f"/api/v1/models/{name}/versions/{version}"), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def expected_scores(model_file: Path, paths: list[Path], size: int = 32, transform=np.expm1) -> np.ndarray:
    """What model.predict says on the same preprocessed tensors, in target units."""
    import keras

    from shared.imaging import Preprocessing, load_for_model

    model = keras.models.load_model(model_file)
    x = np.stack([load_for_model(p.read_bytes(), Preprocessing(size, size), max_pixels=10**8)[0] for p in paths])
    return transform(model.predict(x, verbose=0)[:, 0])


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
