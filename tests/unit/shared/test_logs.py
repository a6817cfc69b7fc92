"""Logging set-up and the log context, without servers: records pass through the real filter and formatters."""
import contextvars
import io
import json
import logging
import re
import threading
from datetime import datetime

import pytest

from shared.core import logs


@pytest.fixture
def captured():
    """The root logger configured as an entry point would, into a buffer; put back as it was afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()
    clean = logs.empty_context()  # what earlier tests bound in this thread (an in-process task) is not this test's

    def configure(log_format: str, role: str = "worker"):
        buffer.seek(0)
        buffer.truncate()
        logs.configure_logging(log_format, role, stream=buffer)
        return buffer

    yield configure
    for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
        root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    logs.exit_context(clean)


def lines(buffer) -> list[str]:
    return buffer.getvalue().splitlines()


def test_every_line_logged_inside_a_context_carries_its_fields(captured):
    out = captured("json")
    log = logging.getLogger("worker.run_chunk")
    with logs.log_context(job_id="j-1", chunk_id=3):
        log.info("job %s chunk %s: claimed", "j-1", 3)
        logs.bind(attempt=2)
        log.warning("slow")
    log.info("after")
    first, second, third = (json.loads(line) for line in lines(out))
    assert {k: first[k] for k in ("level", "logger", "role", "message", "job_id", "chunk_id")} == {
        "level": "INFO", "logger": "worker.run_chunk", "role": "worker", "message": "job j-1 chunk 3: claimed",
        "job_id": "j-1", "chunk_id": 3}
    assert "attempt" not in first and second["attempt"] == 2 and second["level"] == "WARNING"
    assert not {"job_id", "chunk_id", "attempt"} & set(third)  # the context ended with its block
    assert datetime.fromisoformat(first["timestamp"]).utcoffset().total_seconds() == 0
    assert list(first)[0] == "timestamp"


def test_nested_contexts_add_and_give_back(captured):
    out = captured("json")
    with logs.log_context(request_id="r-9"):
        with logs.log_context(job_id="j-2", chunk_id=None):  # None binds nothing
            logging.getLogger("x").info("inner")
        logging.getLogger("x").info("outer")
    inner, outer = (json.loads(line) for line in lines(out))
    assert (inner["request_id"], inner["job_id"], "chunk_id" in inner) == ("r-9", "j-2", False)
    assert outer["request_id"] == "r-9" and "job_id" not in outer


def test_a_field_given_explicitly_wins_over_the_context(captured):
    out = captured("json")
    with logs.log_context(job_id="bound"):
        logging.getLogger("x").info("m", extra={"job_id": "explicit", "status": 202})
    record = json.loads(lines(out)[0])
    assert (record["job_id"], record["status"]) == ("explicit", 202)


def test_a_thread_starts_empty_unless_it_runs_in_a_copy_of_the_context(captured):
    out = captured("json")
    with logs.log_context(job_id="j-3"):
        bare = threading.Thread(target=logging.getLogger("x").info, args=("bare",))
        copied = threading.Thread(target=contextvars.copy_context().run, args=(logging.getLogger("x").info, "copied"))
        for thread in (bare, copied):
            thread.start()
            thread.join()
    records = {r["message"]: r for r in map(json.loads, lines(out))}
    assert "job_id" not in records["bare"] and records["copied"]["job_id"] == "j-3"


def test_text_lines_have_a_timestamp_role_and_the_context_at_the_end(captured):
    out = captured("text", role="maintenance")
    with logs.log_context(job_id="j-4"):
        logging.getLogger("worker.sweeper").info("swept %d", 3)
    line = lines(out)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO maintenance worker.sweeper: swept 3 \[job_id=j-4\]",
                        line), line


def test_a_traceback_stays_inside_its_json_line(captured):
    out = captured("json")
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(out)
    record = json.loads(line)
    assert record["message"] == "failed" and "ValueError: broken" in record["exc_info"]


def test_celery_s_trace_context_is_not_copied_into_json(captured):
    out = captured("json")
    logging.getLogger("celery.app.trace").info("Task %(name)s succeeded", {"name": "imgq.embed_query"},
                                               extra={"data": {"return_value": "{'vectors': [[0.1]]}"}})
    record = json.loads(lines(out)[0])
    assert record["message"] == "Task imgq.embed_query succeeded" and "data" not in record


def test_configuring_again_replaces_the_handler(captured):
    captured("text")
    out = captured("json", role="trainer")
    assert [h.get_name() for h in logging.getLogger().handlers].count(logs.HANDLER_NAME) == 1
    logging.getLogger("x").warning("once")
    assert len(lines(out)) == 1 and json.loads(lines(out)[0])["role"] == "trainer"
    with pytest.raises(ValueError, match="role"):
        logs.configure_logging("json", "nobody")
