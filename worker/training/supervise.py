"""Run one train job in a fresh Python process and watch it (the body of the train task).

Training never runs inside the long-lived worker: Keras leaks memory across repeated fits, and
a fork of a process that already imported TensorFlow is unsafe. The child is started with
fork+exec (subprocess), loads everything itself, and heartbeats to the database.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.logs import bind
from shared.core.paths import path_inside
from worker.training import lifecycle as train_lifecycle

log = logging.getLogger(__name__)
FAILED_FOR_GOOD = 3  # exit code of worker.training.run after it recorded a failure no retry can mend


def run_train_job(job_id: str, *, worker: str, settings: Settings) -> str:
    with session_scope() as session:
        claimed = train_lifecycle.claim(session, job_id, worker=worker, heartbeat_timeout=settings.heartbeat_timeout,
                             max_attempts=settings.max_attempts)
        attempt = claimed.attempts if not isinstance(claimed, str) else None
    if isinstance(claimed, str):
        log.info("train job %s skipped: %s", job_id, claimed)
        return claimed
    bind(attempt=attempt)
    log_path = path_inside(settings.data_dir, "train-logs", f"{job_id}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        out.write(f"\n--- attempt {attempt} on {worker}\n".encode())
        out.flush()
        child = subprocess.Popen([sys.executable, "-m", "worker.training.run", job_id, str(attempt)], stdout=out,
                                 stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + settings.max_train_seconds
        try:
            while child.poll() is None:
                if time.monotonic() > deadline:
                    child.kill()
                time.sleep(0.5)
        except BaseException:  # the worker is shutting down: stop the child, the job is taken up again
            child.terminate()
            child.wait(30)
            raise
    if child.returncode == 0:
        return "done"
    if child.returncode == FAILED_FOR_GOOD:  # the child recorded why; another attempt would fail the same way
        return "failed"
    tail = log_path.read_text(errors="replace")[-3000:]
    with session_scope() as session:
        if attempt >= settings.max_attempts:
            train_lifecycle.fail(session, job_id, f"training failed (exit code {child.returncode}) after {attempt} "
                                            f"attempts:\n{tail}", attempt)
        else:
            train_lifecycle.release(session, job_id, attempt,
                                    f"attempt {attempt} exited with code {child.returncode}:\n{tail}")
    return f"exit code {child.returncode}"
