"""Logging in a Celery worker's processes: imgq's configuration instead of Celery's, and the log context of each task.

`install(log_format, role)` is called by the worker's entry point (shared/tools/cli.py) before Celery starts. Celery
then configures logging through our `setup_logging` receiver, in the main process and again in each pool process
(and the embedded beat), so it installs no handler of its own; and every line logged while a task runs carries its
job id (and chunk id, for a score chunk; the attempt once claimed, worker/run_chunk.py), bound when the task starts
and dropped when it ends, including Celery's own "Task ... succeeded" line. A query task carries the request id of
the web request that sent it (the `imgq_request_id` message header, shared/services/similar.py).
"""
from __future__ import annotations

from celery.signals import setup_logging, task_postrun, task_prerun

from shared.core import logs
from shared.core.celery_app import BUILD_INDEX_TASK, IMPORT_MODEL_TASK, SCORE_CHUNK_TASK, TRAIN_TASK

REQUEST_ID_HEADER = "imgq_request_id"
_JOB_TASKS = {TRAIN_TASK, IMPORT_MODEL_TASK, BUILD_INDEX_TASK}  # their first argument is a job id
_tokens: dict[str, object] = {}  # task id -> the token that undoes its context (prerun and postrun share a thread)


def task_fields(name: str, args, request) -> dict:
    """The log context of a task from its name, arguments and request."""
    if name == SCORE_CHUNK_TASK and len(args) >= 2:
        return {"job_id": args[0], "chunk_id": args[1]}
    if name in _JOB_TASKS and args:
        return {"job_id": args[0]}
    return {"request_id": getattr(request, REQUEST_ID_HEADER, None)}


def install(log_format: str, role: str) -> None:
    """Let imgq configure logging in every process of this worker, and bind each task's context."""
    def configure(loglevel=None, **_):
        logs.configure_logging(log_format, role, loglevel or "INFO")

    def bind_task(task_id=None, task=None, args=(), **_):
        if task_id is not None and task is not None:
            _tokens[task_id] = logs.enter_context(**task_fields(task.name, args or (), task.request))

    def unbind_task(task_id=None, **_):
        token = _tokens.pop(task_id, None)
        if token is not None:
            logs.exit_context(token)

    setup_logging.connect(configure, weak=False)
    task_prerun.connect(bind_task, weak=False)
    task_postrun.connect(unbind_task, weak=False)
