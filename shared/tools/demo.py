"""`imgq demo`: the main job end to end on the embedded default, with no servers to install.

Starts the web front and a worker as separate processes, registers a small VGG-style CNN,
writes a synthetic catalog, submits a score job over HTTP, polls it with a progress bar,
prints a summary and where the results are, and stops everything; with `keep`, it first keeps serving (the
dashboard's URL printed) until Ctrl-C. It runs on the Settings the CLI read
(and configured the database with); the processes it starts read the same environment.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from shared.core.config import Settings
from shared.tools.local_stack import LocalStack

MODEL_NAME = "pageviews-demo"


def _register_model(settings: Settings, build_model: Callable[[int], Any]) -> str:
    from shared.core.db import session_scope
    from shared.services import model_registry as registry

    with session_scope() as session:
        try:
            v = registry.resolve(session, MODEL_NAME)
            return f"{v.name}@{v.version}"
        except Exception:
            pass
    path = settings.data_dir / "demo" / "vgg_regressor_60.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_model(60).save(path)
    sig = registry.Signature(task="regression", input_height=60, input_width=60, output_names=["pageviews"],
                             target_transform={"kind": "log1p"})
    with session_scope() as session:
        v = registry.import_model(session, path, MODEL_NAME, sig, settings.model_store, promote=True,
                                  description="imgq demo: untrained VGG-style page-view regressor",
                                  settings=settings)
        return f"{v.name}@{v.version}"


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _serve_until_interrupted(stack: LocalStack) -> None:
    """Keep the demo's processes running for the dashboard until Ctrl-C (or one of them dies)."""
    print(f"dashboard: {stack.base}/  (sign in with the token above; Ctrl-C stops everything)", flush=True)
    try:
        while all(p.poll() is None for p in stack.processes()):
            time.sleep(1)
        print("a demo process stopped; stopping the others")
    except KeyboardInterrupt:
        print()


def run_demo(settings: Settings, build_model: Callable[[int], Any], images: int = 300, port: int = 8765,
             keep: bool = False) -> int:
    """The demo on `settings`, whose folders exist and whose database is configured (shared/tools/cli.py does both).
    `build_model(input_size)` makes the Keras model it registers (the CLI passes
    worker.training.architectures.vgg_regressor: model builders live in the worker)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # for this process's Keras and the processes it starts
    if not settings.embedded:
        print("note: BROKER_URL is set; the demo uses it instead of the embedded broker")
    from shared.core.migrate import upgrade

    upgrade(settings.database_url)
    print(f"imgq demo: data under {settings.data_dir}")
    model_ref = _register_model(settings, build_model)
    print(f"model registered: {model_ref} (production)")
    if not settings.data_roots:
        raise SystemExit("the demo writes its catalog to a local folder: IMGQ_DATA_ROOTS names none")
    catalog = settings.data_roots[0] / "demo-catalog"
    manifest = catalog / "items.csv"
    if not manifest.exists() or sum(1 for _ in open(manifest)) != images + 4:
        from shared.images.synthetic import write_catalog

        manifest = write_catalog(catalog, images, size=(480, 640))
    print(f"catalog: {images} JPEGs and 3 broken files in {catalog}")

    logs = settings.data_dir / "demo"
    stack = LocalStack({"IMGQ_HOME": str(settings.data_dir)}, logs, port=port)
    base = stack.base
    try:
        stack.start()
        if stack.token:
            print(f"API token (admin, made for this demo): {stack.token}")
        rel = manifest.relative_to(settings.data_roots[0])
        resp = stack.http.post(f"{base}/api/v1/jobs/score", timeout=60,
                             json={"model": MODEL_NAME, "manifest": str(rel), "id_column": "id",
                                   "image_column": "image"})
        resp.raise_for_status()
        job = resp.json()
        print(f"job {job['id']} submitted: {job['progress']['total']} items in {job['chunks']['total']} chunks")
        last_line = ""
        while job["status"] in ("preparing", "queued", "running"):
            time.sleep(0.5)
            if any(p.poll() is not None for p in stack.processes()):
                raise RuntimeError("a demo process died; see the logs in " + str(logs))
            job = stack.http.get(f"{base}{resp.headers['Location']}", timeout=10).json()
            p = job["progress"]
            rate = f"{p['images_per_second']:.0f} img/s" if p["images_per_second"] else "starting"
            line = f"{_bar(p['done'], p['total'])} {p['done']}/{p['total']} failed {p['failed']}  {rate}"
            if sys.stdout.isatty():
                sys.stdout.write(f"\r{line}  {job['status']}   ")
                sys.stdout.flush()
            elif line != last_line:
                print(line, flush=True)
            last_line = line
        print()
        out = logs / "results.csv"
        with stack.http.get(f"{base}/api/v1/jobs/{job['id']}/results?format=csv", stream=True, timeout=60) as r:
            r.raise_for_status()
            with open(out, "wb") as fh:
                for block in r.iter_content(1 << 16):
                    fh.write(block)
        errors = stack.http.get(f"{base}/api/v1/jobs/{job['id']}/results?status=error", timeout=10).json()
        p = job["progress"]
        print(f"status: {job['status']}; {p['succeeded']} scored, {p['failed']} failed, "
              f"{p['from_cache']} from the score cache, {p['images_per_second']} img/s")
        for row in errors["results"]:
            print(f"  failed {row['id']}: {row['error']}")
        print(f"results: {out}")
        print(f"         {base}/api/v1/jobs/{job['id']}/results (while a server runs)")
        if keep:
            _serve_until_interrupted(stack)
        return 0 if job["status"] == "succeeded" else 1
    finally:
        stack.stop()
