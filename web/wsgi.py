"""WSGI entry point for gunicorn: `gunicorn 'web.wsgi:create()'` (what `imgq serve` runs), called in each
gunicorn worker. The web front's settings are read here, when gunicorn calls it; importing this module reads
nothing."""
from flask import Flask

from shared.core.config import get_settings
from web.app import create_app


def create() -> Flask:
    return create_app(get_settings())
