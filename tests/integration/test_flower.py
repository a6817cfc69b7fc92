"""`imgq flower` (the flower extra) as an operator runs it: Celery Flower on imgq's configured app, answering on its
port, on the embedded default's filesystem broker and on Redis, where it finds the stack's worker; stopped by
SIGTERM (it exits 0)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from shared.tools.local_stack import free_port

pytestmark = pytest.mark.integration


def _flower(env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shared.tools.cli", "flower", "--port", str(port)],
                            env={**env, "FLOWER_UNAUTHENTICATED_API": "true"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _get(port: int, path: str, until, proc: subprocess.Popen, wait: float = 60) -> requests.Response:
    """GET the path until `until(response)` holds (Flower takes a moment to listen and to ask the workers); a
    response that never does, or a Flower that exits, fails with its output."""
    deadline = time.monotonic() + wait
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            if until(response):
                return response
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"{path} never answered as expected"
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_flower_answers_on_its_port_on_the_embedded_broker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_") and k not in ("DATABASE_URL",
                                                                                        "BROKER_URL")}
    port = free_port()
    proc = _flower({**env, "IMGQ_HOME": str(tmp_path / "home")}, port)
    try:
        assert _get(port, "/healthcheck", lambda r: r.status_code == 200, proc).text == "OK"
        page = _get(port, "/", lambda r: r.status_code == 200, proc)
        assert "Flower" in page.text
    finally:
        code = _stop(proc)
    assert code == 0


def test_flower_on_redis_lists_the_stacks_worker(pg_stack):
    port = free_port()
    proc = _flower(pg_stack.env, port)
    try:
        worker = f"cpu-{pg_stack.worker.pid}@"  # the stack's worker (shared/tools/cli.worker_argv names it)
        workers = _get(port, "/api/workers?refresh=1",
                       lambda r: r.status_code == 200 and any(name.startswith(worker) for name in r.json()),
                       proc).json()
        info = next(info for name, info in workers.items() if name.startswith(worker))
        assert {"score", "train", "queries"} <= {queue["name"] for queue in info["active_queues"]}
    finally:
        code = _stop(proc)
    assert code == 0
