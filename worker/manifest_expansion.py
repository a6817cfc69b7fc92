"""Reading a preparing score or embed job's manifest into its items and chunks, on the maintenance worker, then
sending its chunks. The transitions and their invariants (a reader run again neither loses nor duplicates an item;
commit first, send second) are in shared/services/preparation.py; this module only drives them.

A manifest that turns out bad part-way (an unreadable row, an empty id, a duplicate id, a bad item) fails the job
with the reason the request would have got as a 400. An object store that fails (ObjectStoreUnavailable) leaves
the job preparing, and the sweeper sends it again (worker/sweeper.py); a database outage puts the task's message back
on the queue (worker/tasks.requeue_on_outage).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from shared.core import dispatch
from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.core.states import JobStatus
from shared.core.tables import Job
from shared.images.manifests import source_pieces
from shared.services import preparation

log = logging.getLogger(__name__)
ReadPieces = Callable[[Settings, dict], Iterator[list[tuple]]]


def run_preparation(job_id: str, settings: Settings, *, read_pieces: ReadPieces = source_pieces,
                    enqueue: Callable[[str, list[int]], int] = dispatch.enqueue_chunks) -> str:
    """Read the job's manifest (`read_pieces(settings, source)`) into items, queue the job and send its chunks.
    Returns what became of it: queued, failed, or skipped (not preparing: done, canceled or unknown)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.PREPARING:
            return "skipped"
        source = dict(job.source)
    log.info("job %s: reading manifest %s", job_id, source.get("manifest"))
    try:
        if not _read_items(job_id, settings, read_pieces(settings, source)):
            return "skipped"
        with session_scope() as session:
            chunks = preparation.finish(session, job_id)
    except InvalidRequest as exc:
        with session_scope() as session:
            preparation.fail(session, job_id, exc.message)
        log.info("job %s: manifest refused: %s", job_id, exc.message)
        return "failed"
    if chunks is None:
        return "skipped"
    log.info("job %s: manifest read, %d chunks queued", job_id, chunks)
    enqueue(job_id, list(range(chunks)))
    return "queued"


def _read_items(job_id: str, settings: Settings, pieces: Iterator[list[tuple]]) -> bool:
    """Record every piece, one transaction each; False when the job stopped preparing meanwhile."""
    first = 0
    for piece in pieces:
        with session_scope() as session:
            read = preparation.record_piece(session, job_id, first, piece, settings.chunk_size)
        if read is None:
            return False
        first += len(piece)
    return True
