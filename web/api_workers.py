"""HTTP endpoint for the worker processes seen recently (each reports itself every few seconds: worker/presence.py),
for the operations page and for anyone checking that scoring and maintenance capacity is up."""
from __future__ import annotations

from flask import Blueprint

from shared.core.db import session_scope
from shared.schemas.responses.common import WorkersPage
from shared.services import workers
from web.http import respond
from web.openapi import documented
from web.pagination import WorkersQuery, decode_cursor, page_body, parse_query

bp = Blueprint("workers", __name__, url_prefix="/api/v1/workers")


@bp.get("")
@documented("Worker processes seen recently, by name", query=WorkersQuery, responses={200: WorkersPage},
            description="Each worker and maintenance process reports its host, pid, queues and start time every few "
                        "seconds (a quarter of IMGQ_HEARTBEAT_TIMEOUT, at most 30 s); a stopped one ages out of the "
                        "`seen_within` window.")
def list_workers():
    query = parse_query(WorkersQuery)
    with session_scope() as session:
        rows, next_key = workers.workers_page(session, seen_within=query.seen_within, limit=query.limit,
                                              after=decode_cursor(query.after, str))
    return respond(WorkersPage, page_body("workers", rows, next_key, query))
