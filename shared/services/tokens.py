"""API tokens: created (the secret shown once), checked, listed and revoked; only hashes are stored.

Scopes: `read` (status, results, lists), `score`, `train` (train jobs, sweeps, schedules) and `admin`
(import models, promote, roll back, delete schedules, list tokens), which grants every other scope too.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.core import keyset
from shared.core.errors import InvalidRequest, NotFound
from shared.core.keyset import Key
from shared.core.tables import ApiToken, utcnow

SCOPES = ("read", "score", "train", "admin")
PREFIX = "imgq_"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's id, name and scopes (id None when auth is off)."""
    token_id: int | None
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


ANYONE = Caller(None, "anonymous (auth off)", frozenset(SCOPES))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(raw: str | list[str]) -> list[str]:
    scopes = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw) if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        got = ", ".join(unknown) or "none"
        raise InvalidRequest(f"scopes must be a non-empty list of {', '.join(SCOPES)}; got {got}", field="scopes")
    return sorted(set(scopes), key=SCOPES.index)


def create_token(session: Session, name: str, scopes: str | list[str]) -> tuple[ApiToken, str]:
    """A new token and its secret, which is never stored and cannot be shown again."""
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=_hash(secret), scopes=parse_scopes(scopes), created_at=utcnow())
    session.add(row)
    session.flush()
    return row, secret


def authenticate(session: Session, secret: str) -> Caller | None:
    """The caller a secret belongs to, or None for an unknown or revoked one."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    digest = _hash(secret)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
        return None
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:  # one write a minute at most
        row.last_used_at = now
    return Caller(row.id, row.name, frozenset(row.scopes))


def list_tokens(session: Session) -> list[dict]:
    return [token_json(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id))]


def tokens_page(session: Session, *, limit: int, after: Key | None = None) -> tuple[list[dict], Key | None]:
    """Tokens by id (keyed by it) as `token_json` shows them (never a secret, which is not stored, nor its hash)."""
    rows, next_key = keyset.page(session, select(ApiToken), (ApiToken.id,), after=after, limit=limit,
                                 key_of=lambda row: (row[0].id,))
    return [token_json(row[0]) for row in rows], next_key


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"no token {token_id}")
    row.revoked_at = row.revoked_at or utcnow()
    return row


def _iso(t) -> str | None:
    return t.isoformat() if t else None


def token_json(row: ApiToken) -> dict:
    iso = _iso
    return {"id": row.id, "name": row.name, "scopes": row.scopes, "created_at": iso(row.created_at),
            "last_used_at": iso(row.last_used_at), "revoked_at": iso(row.revoked_at)}
