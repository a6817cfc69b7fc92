"""The naive one-task-per-image Celery set-up score_throughput.py compares imgq with: what a user who "just
puts the model behind Celery" writes. A tiny Celery app on Redis (broker and result backend on one database
number, NAIVE_CELERY_URL); its task loads the model once per process (a module-level cache) and scores one
image with Pillow (shared.images.imaging.load_for_model) + keras `model.predict(x[None])`.

The worker is a fresh `celery -A naive_celery worker -P solo -c 1` process started by NaiveCelery; the client
submits one task per image and waits for every result.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

HERE = Path(__file__).resolve().parent
URL = os.environ.get("NAIVE_CELERY_URL", "redis://127.0.0.1:6379/14")
QUEUE = "naive-score"

app = Celery("naive_celery", broker=URL, backend=URL)
app.conf.update(task_default_queue=QUEUE, result_expires=3600, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)

_models: dict[str, object] = {}


def _model(path: str):
    model = _models.get(path)
    if model is None:
        import keras

        model = _models[path] = keras.models.load_model(path, compile=False)
    return model


@app.task(name="naive.score")
def score(image_path: str, model_path: str, size: int, pixel_scale: str) -> float:
    from shared.images.imaging import Preprocessing, load_for_model

    x, _ = load_for_model(Path(image_path).read_bytes(), Preprocessing(size, size, pixel_scale=pixel_scale),
                          max_pixels=40_000_000)
    return float(_model(model_path).predict(x[None], verbose=0)[0, 0])


class NaiveCelery:
    """The worker process (started in its own session, stopped by its pid) and the client side."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        redis.Redis.from_url(URL).flushdb()
        # the celery command takes BROKER_URL (imgq's broker, set for the stacks) over the app's own broker
        env = {k: v for k, v in os.environ.items()
               if k not in ("BROKER_URL", "DATABASE_URL") and not k.startswith("CELERY_")}
        env.update(NAIVE_CELERY_URL=URL, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "naive_celery", "-b", URL, "worker", "-P", "solo", "-c", "1",
                 "-Q", QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
                cwd=HERE, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, image_paths: list[Path], model_path: Path, size: int, pixel_scale: str,
            timeout: float = 900) -> dict:
        """One task per image, then every result; images/s from the first send to the last result."""
        t0 = time.perf_counter()
        pending = [score.delay(str(p), str(model_path), size, pixel_scale) for p in image_paths]
        deadline = time.time() + timeout
        for result in pending:
            result.get(timeout=max(1.0, deadline - time.time()))
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the naive Celery worker exited ({self.proc.returncode}); see {self.log_path}")
        elapsed = time.perf_counter() - t0
        return {"images_per_s": round(len(image_paths) / elapsed, 2), "images": len(image_paths),
                "seconds": round(elapsed, 3)}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        try:
            import redis

            redis.Redis.from_url(URL).flushdb()
        except Exception:
            pass
