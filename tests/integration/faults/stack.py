"""A whole imgq installation on the fault suite's private servers, and what the fault tests do with it.

`FaultStack` is a `LocalStack` (web front, workers, maintenance process with beat; all real processes)
on a fresh database of the private PostgreSQL and a key prefix of its own on the private Redis, with
short timeouts so recovery takes seconds. Helpers register a model, write photos, submit jobs, wait for
conditions and compute the scores a fault-free run gives (model.predict on the same tensors).
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from shared.tools.local_stack import LocalStack

FAULT_ENV = {
    "IMGQ_CHUNK_SIZE": "16",
    "IMGQ_BATCH_SIZE": "8",
    "IMGQ_DECODE_THREADS": "2",
    "IMGQ_HEARTBEAT_TIMEOUT": "8",
    "IMGQ_SWEEP_INTERVAL": "2",
    "IMGQ_LOST_AFTER": "5",
    "IMGQ_MAX_ATTEMPTS": "3",
    "IMGQ_READ_TIMEOUT": "3",
    "IMGQ_OUTAGE_RETRY_DELAY": "1",
    "IMGQ_SWEEP_MAX_AGE": "20",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


class FaultStack(LocalStack):
    def __init__(self, tmp: Path, database_url: str, broker_url: str, *, workers: int = 1, **env):
        self.database_url = database_url
        self.data = tmp / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        full_env = {**FAULT_ENV, "IMGQ_HOME": str(tmp / "home"), "IMGQ_DATA_ROOTS": str(self.data),
                    "DATABASE_URL": database_url, "BROKER_URL": broker_url,
                    "IMGQ_BROKER_PREFIX": f"faults-{uuid.uuid4().hex[:8]}:", **env}
        super().__init__(full_env, tmp / "logs")
        self.worker_names = [f"w{k + 1}" for k in range(workers)]

    def start(self, timeout: float = 120) -> FaultStack:
        self.authenticate()
        self.start_web()
        for name in self.worker_names:
            self.start_worker(name)
        self.start_maintenance()
        self.wait_healthy(timeout)
        return self

    def wait_job(self, job_id: str, timeout: float = 300, poll: float = 0.5) -> dict:
        """Like LocalStack.wait_job, but processes may be down on purpose and the web front may answer 503."""
        deadline = time.time() + timeout
        while True:
            try:
                resp = self.http.get(self.url(f"/api/v1/jobs/{job_id}"), timeout=10)
                if resp.status_code == 200 and resp.json()["status"] not in ("preparing", "queued", "running"):
                    return resp.json()
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s; logs in {self.log_dir}")
            time.sleep(poll)

    def log_text(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.2):
    """condition()'s first truthy value; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            value = condition()
        except (requests.RequestException, OSError):
            value = None
        if value:
            return value
        if time.time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(poll)


def write_photos(folder: Path, n: int, seed: int = 0, size=(64, 48)) -> list[Path]:
    """Small JPEGs with smooth gradients and noise (they decode like photos, not like flat shapes)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    paths = []
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        grad = (xx[..., None] * rng.uniform(-2, 2, 3) + yy[..., None] * rng.uniform(-2, 2, 3))
        arr = np.clip(base + grad + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        path = folder / f"p{i:05d}.jpg"
        Image.fromarray(arr, "RGB").save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def register_model(stack: LocalStack, file: Path, name: str | None = None) -> str:
    """Import a regression model (log1p page views) over HTTP; it becomes production. Returns its name."""
    name = name or f"pv-{uuid.uuid4().hex[:6]}"
    with open(file, "rb") as fh:
        resp = stack.http.post(stack.url("/api/v1/models"), files={"file": (file.name, fh)}, timeout=120,
                             data={"name": name, "task": "regression", "input_size": "32",
                                   "target_transform": "log1p", "output_names": "pageviews"})
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"])
    assert job["status"] == "succeeded", job
    return name


def submit_items(stack: LocalStack, model: str, items: list[dict], **extra) -> str:
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json={"model": model, "items": items, "cache": False,
                                                                 **extra}, timeout=120)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def items_for(paths: list[Path], root: Path) -> list[dict]:
    return [{"id": p.stem, "uri": str(p.relative_to(root))} for p in paths]


def expected_pageviews(model_file: Path, paths: list[Path]) -> dict[str, dict]:
    """The outputs a fault-free run gives each photo: model.predict on the same preprocessed tensors."""
    import keras

    from shared.images.imaging import Preprocessing, load_for_model

    model = keras.models.load_model(model_file)
    x = np.stack([load_for_model(p.read_bytes(), Preprocessing(32, 32), max_pixels=10**8)[0] for p in paths])
    raw = model.predict(x, verbose=0, batch_size=256)[:, 0]
    return {p.stem: {"pageviews": float(np.expm1(v))} for p, v in zip(paths, raw)}


def progress(stack: LocalStack, job_id: str) -> dict:
    return stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]


def write_digits(folder: Path) -> Path:
    """scikit-learn's bundled handwritten digits (1797 of them) as PNG files, with `all.csv` listing them
    (columns id, image, label): a real data set for a train job that lasts tens of seconds on a CPU."""
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        name = f"d{i:04d}.png"
        Image.fromarray((img * 255 / 16).astype(np.uint8), "L").save(folder / name)
        rows.append({"id": f"digit-{i:04d}", "image": name, "label": str(label)})
    pd.DataFrame(rows).to_csv(folder / "all.csv", index=False)
    return folder / "all.csv"
