"""The `imgq` command as a user runs it: the demo (README's first command). The remote commands (models, score,
jobs...) are tested against running servers in test_remote_cli.py."""
import os
import subprocess
import sys

import pytest

from shared.tools.local_stack import free_port

pytestmark = pytest.mark.integration


def imgq(*args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "IMGQ_HOME",
                                                             "IMGQ_DATA_ROOTS", "IMGQ_MODEL_STORE")}
    return subprocess.run([sys.executable, "-m", "shared.tools.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_runs_the_main_job_with_no_servers(tmp_path):
    proc = imgq("demo", "--images", "24", "--port", str(free_port()), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "status: succeeded; 24 scored, 3 failed" in out
    assert "failed broken-truncated: truncated image" in out
    results = tmp_path / ".imgq" / "demo" / "results.csv"
    lines = results.read_text().splitlines()
    assert lines[0] == "id,status,error,from_cache,pageviews" and len(lines) == 28
