"""HTTP endpoints for API tokens: listing them (admin scope), and the caller's own name and scopes (read: the
dashboard shows write buttons only to a token that may use them). Tokens are created and revoked with `imgq tokens`;
no answer ever holds a secret (only its hash is stored, and that is never shown either)."""
from __future__ import annotations

from flask import Blueprint

from shared.core.db import session_scope
from shared.schemas.responses.common import TokenSelf, TokensPage
from shared.services import tokens
from web.auth import caller
from web.http import respond
from web.openapi import documented
from web.pagination import PageQuery, decode_cursor, page_body, parse_query

bp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens")


@bp.get("")
@documented("List API tokens (never their secrets)", query=PageQuery, responses={200: TokensPage})
def list_tokens():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = tokens.tokens_page(session, limit=query.limit, after=decode_cursor(query.after, int))
    return respond(TokensPage, page_body("tokens", rows, next_key, query))


@bp.get("/me")
@documented("The calling token: its id, name and scopes (never a secret); the dashboard shows write buttons by them",
            responses={200: TokenSelf})
def get_me():
    who = caller()
    return respond(TokenSelf, {"id": who.token_id, "name": who.name, "scopes": sorted(who.scopes)})
