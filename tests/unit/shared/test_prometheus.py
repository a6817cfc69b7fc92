"""The multiprocess folders of process trees: made fresh, written by the tree's processes, removed when the tree
ends, and left behind by a killed tree only until the next start on the host."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shared.core import prometheus
from shared.core.config import load_settings

REPO = Path(__file__).resolve().parents[3]

TREE = """
import json, os, sys
from shared.core import prometheus
from shared.core.config import load_settings

folder = prometheus.start_tree(load_settings({"IMGQ_HOME": sys.argv[1], "IMGQ_METRICS_DIR": sys.argv[2]}), "worker")
from prometheus_client import Counter  # after the folder is set, as in every entry point

Counter("imgq_test_things_total", "things").inc(3)
child = os.fork()
if child == 0:  # a pool process: counts into the same folder, and its exit removes nothing
    Counter("imgq_test_more_total", "more").inc()
    sys.exit(0)
os.waitpid(child, 0)
registry = prometheus.registry()
print(json.dumps({"folder": str(folder), "files": sorted(os.listdir(folder)),
                  "things": registry.get_sample_value("imgq_test_things_total"),
                  "more": registry.get_sample_value("imgq_test_more_total")}))
"""


def test_a_tree_counts_in_its_own_folder_and_removes_it_at_exit(tmp_path):
    out = subprocess.run([sys.executable, "-c", TREE, str(tmp_path / "home"), str(tmp_path / "metrics")], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.splitlines()[-1])
    assert (report["things"], report["more"]) == (3.0, 1.0)  # both processes' counts, summed at scrape time
    assert prometheus.OWNER_FILE in report["files"] and any(f.startswith("counter_") for f in report["files"])
    assert Path(report["folder"]).parent == tmp_path / "metrics" and not Path(report["folder"]).exists()


def test_a_tree_cannot_start_after_the_client_was_imported(tmp_path):
    import prometheus_client  # noqa: F401  (the test process has it: its metrics would stay in memory)

    with pytest.raises(RuntimeError, match="imported before"):
        prometheus.start_tree(load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_METRICS_DIR": str(tmp_path)}), "web")


def _tree(parent: Path, name: str, host: str, pid: int) -> Path:
    folder = parent / f"{prometheus.PREFIX}{name}"
    folder.mkdir()
    (folder / prometheus.OWNER_FILE).write_text(json.dumps({"host": host, "pid": pid}))
    return folder


def test_only_the_folders_of_gone_trees_on_this_host_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    gone = _tree(tmp_path, "worker-gone", socket.gethostname(), int(finished.stdout))
    alive = _tree(tmp_path, "web-alive", socket.gethostname(), os.getppid())
    elsewhere = _tree(tmp_path, "worker-elsewhere", "another-host", int(finished.stdout))
    starting = tmp_path / f"{prometheus.PREFIX}worker-starting"  # no owner file yet
    starting.mkdir()
    assert prometheus.remove_dead_trees(tmp_path) == 1
    assert not gone.exists() and alive.exists() and elsewhere.exists() and starting.exists()
