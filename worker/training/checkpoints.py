"""Where a train attempt's epoch checkpoints live, so that a resumed attempt finds the last one.

Each attempt writes its checkpoints in a folder of its own, `IMGQ_HOME/checkpoints/<job>/attempt-N/` (a superseded
attempt never deletes the live one's files). With a local model store that file's path is what the run records;
with an object-store model store (IMGQ_MODEL_STORE=s3://...) the file is also uploaded to
`<store>checkpoints/<job>/attempt-N/epoch-NNNN.keras` before the epoch is recorded, and the run records that URI: an
attempt taken over by a worker on another machine (shared/services/model_files.py explains the store) downloads it
into its own folder and resumes from it. Only the newest checkpoint is kept, in the folder and in the store, and
both go when the job has registered its version.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from shared.core.config import Settings
from shared.core.paths import is_object_uri, path_inside
from shared.services.store_files import remove_prefix, store_call

log = logging.getLogger(__name__)


def folder_for(settings: Settings, job_id: str, attempt: int | None) -> Path:
    """The attempt's own local folder, created."""
    folder = path_inside(settings.data_dir, "checkpoints", job_id, f"attempt-{attempt or 0}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prefix(settings: Settings, job_id: str) -> str:
    return f"{settings.model_store_uri}checkpoints/{job_id}/"


def publish(settings: Settings, job_id: str, local: Path) -> str:
    """What the run records for the checkpoint just written at `local`: its path, or the URI it was uploaded to."""
    if settings.model_store_uri is None:
        return str(local)
    uri = f"{_prefix(settings, job_id)}{local.parent.name}/{local.name}"
    store_call(settings, uri, lambda fs: fs.put_file(str(local), uri))
    return uri


def discard(settings: Settings, recorded: str) -> None:
    """Remove a checkpoint no run needs any more (an older epoch's), wherever it is; never fails the epoch."""
    try:
        if is_object_uri(recorded):
            store_call(settings, recorded, lambda fs: fs.rm_file(recorded))
        else:
            Path(recorded).unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - a leftover file costs space, not correctness
        log.warning("could not remove the old checkpoint %s: %s", recorded, exc)


def fetch(settings: Settings, recorded: str | None, folder: Path) -> Path | None:
    """A local file of the recorded checkpoint, downloaded into `folder` when it is in the store; None when there
    is none to resume from (never recorded, or gone: the attempt starts over, as before)."""
    if not recorded:
        return None
    if not is_object_uri(recorded):
        return Path(recorded) if Path(recorded).is_file() else None
    local = folder / recorded.rsplit("/", 1)[1]
    try:
        store_call(settings, recorded, lambda fs: fs.get_file(recorded, str(local)))
    except FileNotFoundError:
        log.warning("checkpoint %s is gone from the store: starting over", recorded)
        return None
    log.info("resuming from checkpoint %s", recorded)
    return local


def remove_all(settings: Settings, job_id: str, folder: Path) -> None:
    """Every attempt's checkpoints of a job that is done: its local folders, and its objects in the store."""
    shutil.rmtree(folder.parent, ignore_errors=True)
    if settings.model_store_uri is None:
        return
    prefix = _prefix(settings, job_id)
    try:
        remove_prefix(settings, prefix)
    except Exception as exc:  # noqa: BLE001 - the version is registered; leftovers cost space only
        log.warning("could not remove the checkpoints under %s: %s", prefix, exc)
