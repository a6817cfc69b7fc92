"""Start the web front, workers and the maintenance process (sweeper + beat) as separate local
processes; kill any of them (whole, or a worker's pool process alone) and stop them cleanly.

Used by `imgq demo`, the integration and fault tests and the benchmarks.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalStack:
    def __init__(self, env: dict, log_dir: Path, *, port: int | None = None, web_workers: int = 1,
                 beat: bool = True, worker_args: tuple[str, ...] = (), metrics: bool = False):
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log_dir = log_dir
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.web_workers = web_workers
        self.beat = beat
        self.worker_args = worker_args
        self.metrics = metrics  # each worker and the maintenance process serve /metrics on a port of their own
        # settings of one process alone, by its name ("web", "maintenance", a worker's): e.g. an IMGQ_HOME of its
        # own, as on another machine that shares only the database, the broker and the object store
        self.process_env: dict[str, dict[str, str]] = {}
        self.metrics_ports: dict[str, int] = {}
        self.web: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.maintenance: subprocess.Popen | None = None
        self._logs: list = []
        self.token: str | None = None
        self.http = requests.Session()  # carries the stack's admin token once `start` made one

    @property
    def worker(self) -> subprocess.Popen | None:
        return self.workers.get("worker")

    def processes(self) -> list[subprocess.Popen]:
        return [p for p in (self.web, self.maintenance, *self.workers.values()) if p is not None]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        env = {**self.env, **self.process_env.get(name, {})}
        return subprocess.Popen([sys.executable, "-m", "shared.tools.cli", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start_web(self) -> None:
        self.web = self._spawn("web", ["serve", "--port", str(self.port), "--workers", str(self.web_workers)])

    def _metrics_args(self, name: str) -> list[str]:
        if not self.metrics:
            return []
        self.metrics_ports[name] = free_port()
        return ["--metrics-port", str(self.metrics_ports[name])]

    def metrics_url(self, name: str = "worker") -> str:
        """The /metrics of a worker (by name) or of "maintenance" (a stack made with metrics=True)."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def start_worker(self, name: str = "worker") -> None:
        self.workers[name] = self._spawn(name, ["worker", "--cpu", *self.worker_args, *self._metrics_args(name)])

    def start_maintenance(self) -> None:
        self.maintenance = self._spawn("maintenance", ["maintenance", *(["--beat"] if self.beat else []),
                                                       *self._metrics_args("maintenance")])

    def create_token(self, name: str = "local-stack", scopes: str = "admin") -> str:
        """A new API token made with `imgq tokens create` on this stack's database (printed once)."""
        out = subprocess.run([sys.executable, "-m", "shared.tools.cli", "tokens", "create", "--name", name,
                              "--scopes", scopes], env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"imgq tokens create failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout)["token"]

    def authenticate(self) -> None:
        """Give `self.http` an admin token (a stack whose auth is off needs none)."""
        from shared.core.config import load_settings

        if load_settings(self.env).auth_enabled:
            self.token = self.create_token()
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def start(self, timeout: float = 90) -> LocalStack:
        self.authenticate()
        self.start_web()
        self.start_worker()
        self.start_maintenance()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for p in self.processes():
                if p.poll() is not None:
                    raise RuntimeError(f"a process exited early with code {p.returncode}; logs in {self.log_dir}")
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the web front did not come up; logs in {self.log_dir}")

    @staticmethod
    def _terminate(p: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 30) -> None:
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def kill_worker(self, name: str = "worker") -> None:
        """SIGKILL the worker and all its children at once, as a crash would."""
        self._terminate(self.workers.get(name), signal.SIGKILL)

    def pool_children(self, name: str = "worker") -> list[int]:
        """The pids of a worker's pool processes (the processes that run tasks)."""
        p = self.workers.get(name)
        if p is None or p.poll() is not None:
            return []
        try:
            return [int(pid) for pid in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
        except OSError:
            return []

    def kill_pool_child(self, name: str = "worker") -> int | None:
        """SIGKILL one pool process of the worker, as the OOM killer would; Celery starts another."""
        for pid in self.pool_children(name):
            try:
                os.kill(pid, signal.SIGKILL)
                return pid
            except ProcessLookupError:
                continue
        return None

    def kill_web(self) -> None:
        self._terminate(self.web, signal.SIGKILL)

    def kill_maintenance(self) -> None:
        """SIGKILL the maintenance worker (sweeper, imports, index builds) and its beat, as a crash would."""
        self._terminate(self.maintenance, signal.SIGKILL)

    def stop(self) -> None:
        for p in (*self.workers.values(), self.maintenance, self.web):
            self._terminate(p)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- small HTTP helpers
    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def wait_job(self, job_id: str, timeout: float = 300, poll: float = 0.3) -> dict:
        deadline = time.time() + timeout
        while True:
            job = self.http.get(self.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()
            if job["status"] not in ("preparing", "queued", "running"):
                return job
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s: {job['progress']}")
            for p in self.processes():
                if p.poll() is not None:
                    raise RuntimeError(f"a process exited with code {p.returncode}; logs in {self.log_dir}")
            time.sleep(poll)

    def all_results(self, job_id: str, page: int = 500) -> list[dict]:
        out, url = [], f"/api/v1/jobs/{job_id}/results?limit={page}"
        while url is not None:  # each page links the next one
            body = self.http.get(self.url(url), timeout=30).json()
            out.extend(body["results"])
            url = body["next"]
        return out
