"""Record the README's terminal session: the remote CLI against a real server, as a newcomer would run it.

Starts `imgq serve`, a worker and the maintenance worker on the embedded default (a temporary IMGQ_HOME), makes a
small VGG-style page-view model and a laptop folder of photo-like JPEGs (plus three broken files), then runs the
commands the README shows, each in a process of its own that knows only the server's address and token, and writes
what they printed (the token masked) to benchmarks/results/cli_session-<stamp>.txt, stamped with the commit.

    python benchmarks/cli_session.py [--images 200]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, ROOT, log, new_parser

sys.path.insert(0, str(ROOT))

from shared.images.synthetic import write_catalog  # noqa: E402
from shared.tools.local_stack import LocalStack  # noqa: E402


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "shared", "web", "worker"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" (modified tree)" if dirty else "")


def main() -> int:
    p = new_parser(__doc__)
    p.add_argument("--images", type=int, default=200)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imgq-cli-session-"))
    env = {"IMGQ_HOME": str(tmp / "server"), "IMGQ_DATA_ROOTS": str(tmp / "server" / "data"),
           "DATABASE_URL": "", "BROKER_URL": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    stack = LocalStack(env, tmp / "logs")
    laptop = tmp / "laptop"
    crawl = laptop / "crawl-2026-12-06"
    log("writing the laptop's folder and the model")
    write_catalog(crawl, args.images, size=(480, 640), seed=5)
    (crawl / "items.csv").unlink()
    from worker.training.architectures import vgg_regressor

    vgg_regressor(60).save(laptop / "pageviews.keras")
    transcript: list[str] = []
    try:
        stack.start(timeout=180)
        shell_env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGQ_", "DATABASE_", "BROKER_"))}
        shell_env.update({"IMGQ_SERVER": stack.base, "IMGQ_TOKEN": stack.token or "", "HOME": str(laptop),
                          "TF_CPP_MIN_LOG_LEVEL": "3"})
        commands = [
            ["models", "import", "pageviews.keras", "--name", "pageviews", "--task", "regression", "--input-size",
             "60", "--target-transform", "log1p", "--output-names", "pageviews", "--wait"],
            ["score", "crawl-2026-12-06/", "--model", "pageviews", "--wait", "--out", "scores.parquet"],
            ["jobs", "list", "--limit", "3"],
            ["models", "list", "pageviews"],
        ]
        for argv in commands:
            log("imgq " + " ".join(argv))
            started = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "shared.tools.cli", *argv], cwd=laptop, env=shell_env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            text = out.stdout.replace(stack.token or "\0", "imgq_…")
            transcript += [f"$ imgq {' '.join(argv)}", *text.rstrip().splitlines(),
                           f"# exit {out.returncode}, {time.monotonic() - started:.1f} s", ""]
    finally:
        stack.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"cli_session-{stamp}.txt"
    header = [f"# imgq CLI session, commit {_commit()}, {time.strftime('%Y-%m-%d %H:%M')}, "
              f"embedded default, {os.cpu_count()} cores, {args.images} JPEGs and the catalog's broken files", ""]
    path.write_text("\n".join(header + transcript) + "\n")
    print("\n".join(transcript))
    log(f"written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
