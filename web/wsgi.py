"""WSGI entry point for gunicorn: `gunicorn 'web.wsgi:create()'` (what `imgq serve` runs), called in each
gunicorn worker. The web front's settings are read here, when gunicorn calls it, and its logging is set up from them
(gunicorn's own error log joins it); importing this module reads nothing."""
import logging

from flask import Flask

from shared.core.config import get_settings
from shared.core.logs import configure_logging
from web.app import create_app


def create() -> Flask:
    import faiss

    # Similar-image queries search one query at a time and gunicorn's threads already run several at once: FAISS
    # splitting one query over every core only adds contention (benchmarks/similar_search.py, 2 cores: exact search
    # at 45 queries/s on one thread and 42 on two when quiet; 51 and 28 while other processes took a third of the CPU).
    faiss.omp_set_num_threads(1)
    settings = get_settings()
    configure_logging(settings.log_format, "web")
    gunicorn_log = logging.getLogger("gunicorn.error")  # this worker's lines from gunicorn, in the same format
    gunicorn_log.handlers.clear()
    gunicorn_log.propagate = True
    return create_app(settings)
