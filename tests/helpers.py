"""Helpers shared by tests (import them from here, never from conftest)."""
from __future__ import annotations


def authorized_client(app, scopes: str = "admin", name: str = "test-client"):
    """app.test_client() that sends a fresh API token with the given scopes on every request; the database of
    the app's settings must be migrated."""
    from shared import tokens
    from shared.db import session_scope

    with session_scope() as session:
        _, secret = tokens.create_token(session, name, scopes)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client
