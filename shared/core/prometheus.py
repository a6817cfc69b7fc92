"""prometheus-client's multiprocess mode for one imgq process tree: a Celery worker with its pool and training
processes, the maintenance worker, or gunicorn with its workers.

Why multiprocess mode rather than a port per process: none of the processes that do the work has a stable identity a
scrape config could name. A prefork pool replaces a child the OOM killer took, each training attempt is a fresh
subprocess, gunicorn forks N workers and answers /metrics from whichever one a request reaches; and a counter kept in
a process's memory would die with it. Here each process writes its values to memory-mapped files in one folder its
tree shares (PROMETHEUS_MULTIPROC_DIR, inherited by forks and subprocesses), and the process that serves (a worker's or
the maintenance process's main process on IMGQ_METRICS_PORT, any gunicorn worker on the web front's /metrics) sums
them at scrape time: one scrape target per worker, counters that outlive the process that counted, and a training's
epoch figures without a port of its own.

Invariants:
- a tree's folder is new when its entry point starts (mkdtemp under IMGQ_METRICS_DIR, never shared by two trees), so
  a restarted worker never adds the counts of an earlier run; it is removed when the tree's first process exits, and
  folders of trees whose first process is gone (killed) are removed when another tree on the host starts;
- the variable is set before prometheus_client is imported anywhere in the tree: the library chooses its storage at
  import (`start_tree` refuses to run after that import, rather than let the metrics silently stay in memory);
- only counters, histograms and gauges in "mostrecent" mode are written by the workers: no gauge needs a dead
  process's values removed.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from shared.core.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "imgq-metrics-"
OWNER_FILE = "owner.json"


def start_tree(settings: Settings, role: str) -> Path:
    """Make this process tree's metrics folder and point PROMETHEUS_MULTIPROC_DIR at it; called by an entry point
    before anything imports prometheus_client. Returns the folder."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics folder was set: the entry point must "
                           "call shared.core.prometheus.start_tree first")
    parent = settings.metrics_dir
    parent.mkdir(parents=True, exist_ok=True)
    remove_dead_trees(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{role}-", dir=parent))
    (folder / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    os.environ[ENV] = str(folder)
    atexit.register(_remove_if_owner, folder, os.getpid())
    return folder


def _remove_if_owner(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # not a forked pool process that happens to run exit handlers
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_trees(parent: Path) -> int:
    """Remove the metrics folders, made on this host, whose first process is gone; returns how many."""
    removed = 0
    for folder in parent.glob(f"{PREFIX}*"):
        try:
            owner = json.loads((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # being made right now, or not ours
        if owner.get("host") == socket.gethostname() and (owner.get("pid") == os.getpid()
                                                          or not _alive(int(owner.get("pid", 0)))):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def multiprocess() -> bool:
    """True when this process writes its metrics to a tree's folder."""
    return bool(os.environ.get(ENV))


def registry(*collectors):
    """A registry holding what every process of the tree wrote (or, outside multiprocess mode, what this process
    holds), plus `collectors` read at scrape time."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not multiprocess():
        for collector in collectors:
            REGISTRY.register(collector)
        return REGISTRY
    served = CollectorRegistry()
    MultiProcessCollector(served)
    for collector in collectors:
        served.register(collector)
    return served


def serve(settings: Settings, port: int, *collectors) -> None:
    """Serve /metrics of this tree (and `collectors`) on `port` at IMGQ_METRICS_HOST, from a daemon thread of this
    process; raises OSError at once when the port is taken."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=settings.metrics_host, registry=registry(*collectors))
