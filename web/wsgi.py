"""WSGI entry point for gunicorn: `gunicorn 'web.wsgi:create()'` (what `imgq serve` runs), called in each
gunicorn worker. The web front's settings are read here, when gunicorn calls it; importing this module reads
nothing."""
from flask import Flask

from shared.core.config import get_settings
from web.app import create_app


def create() -> Flask:
    import faiss

    # Similar-image queries search one query at a time and gunicorn's threads already run several at once: FAISS
    # splitting one query over every core only adds contention (benchmarks/similar_search.py, 2 cores: exact search
    # at 45 queries/s on one thread and 42 on two when quiet; 51 and 28 while other processes took a third of the CPU).
    faiss.omp_set_num_threads(1)
    return create_app(get_settings())
