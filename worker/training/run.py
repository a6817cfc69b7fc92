"""The training process: `python -m worker.training.run JOB_ID [ATTEMPT]`, started fresh for each attempt by
worker/training/supervise.py.

`train` runs one attempt as named phases, each a public function that takes what it needs and returns plain
results: start the attempt (its request, parent version and last checkpoint) and its heartbeat; for a crawl's
increment, check it against production and stop, training nothing, when it is quarantined (crawl_check.py); load
the data through the decoded-image cache; build the model or resume it from the checkpoint and fit it phase by phase,
with a checkpoint and a metrics row per epoch (fitting.py); measure it on the fixed holdout and, when the
request has a gate, against production (comparison.py); register it with its lineage, then promote it by the
gate's decision and close the run (registration.py).

Every write is fenced by the attempt number and waits out database outages (attempt.py): an attempt that lost
the run to a newer one stops at its next batch and writes nothing.
Exit codes: 0 done, canceled or superseded; 3 failed for good (recorded); anything else: retry.
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shared.core import db
from shared.core.config import Settings, get_settings
from shared.core.db import session_scope
from shared.core.errors import ImgqError
from shared.core.logs import bind, configure_logging
from shared.core.tables import Job, ModelVersion
from shared.images.imaging import Preprocessing
from shared.schemas.training import TrainRequest
from worker.device import configure_tensorflow
from worker.heartbeat import interval_for
from worker.metrics import observed_epochs
from worker.training import checkpoints, crawl_check, lifecycle, pixel_files
from worker.training import data as training_data
from worker.training.attempt import (
    AttemptHeartbeat,
    Canceled,
    Superseded,
    owned,
    patiently,
    record_epoch,
    report,
    start_heartbeat,
    stop_if_told,
)
from worker.training.comparison import compare_with_production, evaluate_holdout, production_version
from worker.training.reference import record_training_reference
from worker.training.registration import candidate_signature, finish, lineage_of, register

log = logging.getLogger("worker.training.run")  # its module's name: run with -m, __name__ is "__main__"
FAILED_FOR_GOOD = 3


class PhaseClock:
    """Seconds of an attempt's phases, in the order they ran: the job's `data.phase_seconds`, so that a slow job
    says where its time went. The first, `process_start`, is Python's start and the imports before `train`."""

    def __init__(self) -> None:
        self.started = self._last = time.monotonic()
        self.seconds: dict[str, float] = {}
        age = process_age_seconds()
        if age is not None:
            self.seconds["process_start"] = age

    def lap(self, phase: str) -> None:
        """`phase` ended now: it took the time since the previous lap (added, if it ran before)."""
        now = time.monotonic()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._last, 3)
        self._last = now

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def process_age_seconds() -> float | None:
    """Seconds since this process started, from /proc (Linux); None elsewhere."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return round(max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK")), 3)
    return None


@dataclass
class AttemptStart:
    """What an attempt starts from."""
    request: TrainRequest
    parent: ModelVersion | None  # the version it fine-tunes (detached), if any
    checkpoint_epoch: int  # the last epoch with a checkpoint and a metrics row (0: none)
    checkpoint_path: str | None


def start_attempt(job_id: str) -> AttemptStart:
    """The run's request, parent version and last checkpoint; metrics of epochs after the checkpoint dropped
    (the attempt writes them again, once)."""
    with session_scope() as session:
        run = lifecycle.start_attempt(session, job_id)
        job = session.get(Job, job_id)
        parent = session.get(ModelVersion, job.model_version_id) if job.model_version_id else None
        if parent is not None:
            session.expunge(parent)
        spec, epoch, path = run.spec, run.checkpoint_epoch, run.checkpoint_path
    return AttemptStart(TrainRequest.model_validate(spec), parent, epoch, path)


def prepare_tensorflow(seed: int, deterministic: bool = False) -> None:
    """TensorFlow configured for this process's device; Python, NumPy and Keras seeded; op determinism on when the
    request asks for it (fitting.seed says what each guarantees)."""
    configure_tensorflow()
    from worker.training import fitting  # imports Keras: after TensorFlow is configured

    fitting.seed(seed, deterministic=deterministic)


def preprocessing_for(req: TrainRequest, parent) -> Preprocessing:
    """A fine-tune keeps its parent's preprocessing; a new model takes the request's input size, resize mode
    (default: letterbox for keypoints, else stretch) and pixel scale (default: the architecture's)."""
    from worker.training.models import recommended_pixel_scale  # imports Keras

    if parent is not None:
        return Preprocessing(parent.input_height, parent.input_width, resize_mode=parent.resize_mode,
                             pixel_scale=parent.pixel_scale)
    size = req.input_size
    resize = req.resize_mode or ("letterbox" if req.task == "keypoints" else "stretch")
    scale = req.pixel_scale or recommended_pixel_scale(req.base.architecture)
    return Preprocessing(size, size, resize_mode=resize, pixel_scale=scale)


def load_data(req: TrainRequest, parent, settings: Settings, folder: Path
              ) -> tuple[Preprocessing, training_data.TrainingData]:
    """(the preprocessing, the split and decoded data, its pixels in `folder`): see worker.training.data.prepare."""
    prep = preprocessing_for(req, parent)
    return prep, training_data.prepare(req, settings, prep, folder=folder, parent=parent)


def check_increment(job_id: str, attempt: int | None, req: TrainRequest, heartbeat: AttemptHeartbeat,
                    settings: Settings) -> None:
    """A crawl's increment checked against production before anything trains on it (crawl_check.py): the report
    stored on the run; raises crawl_check.Quarantined (the job fails with its reason) when a check fails."""
    if not crawl_check.applies(req):
        return
    production = production_version(req.model)
    if production is None:
        checked = {"skipped": "no production version to compare the crawl with", "quarantined": False}
    else:
        report(heartbeat, phase="checking crawl")
        checked = crawl_check.check_crawl(req, production, settings)
    patiently(crawl_check.record, job_id, attempt, checked)
    log.info("train job %s: crawl check: %s", job_id, checked.get("reason") or checked.get("skipped"))
    if checked["quarantined"]:
        raise crawl_check.Quarantined(checked["reason"])


def fit_model(start: AttemptStart, data, prep: Preprocessing, settings: Settings, heartbeat: AttemptHeartbeat,
              folder: Path):
    """The model built, or resumed from the last checkpoint, and fitted phase by phase (worker.training.fitting);
    raises Canceled or Superseded after a phase when the heartbeat learned so."""
    from worker.training import fitting  # imports Keras

    req = start.request
    steps = fitting.steps_per_epoch(len(data.splits["train"].ids), req.batch_size)
    report(heartbeat, phase="training", steps_per_epoch=steps, data_stats=data.stats)
    resume_from = checkpoints.fetch(settings, start.checkpoint_path, folder) if start.checkpoint_epoch else None
    model, start_epoch = fitting.build_or_resume_model(req, start.parent, data, prep, settings,
                                                       checkpoint_epoch=start.checkpoint_epoch,
                                                       checkpoint_path=resume_from)
    record = observed_epochs(req.model, partial(record_epoch, heartbeat.job_id, heartbeat.attempt))
    recorder = fitting.EpochRecorder(folder, heartbeat, record, steps=steps, epochs=req.epochs,
                                     publish=partial(checkpoints.publish, settings, heartbeat.job_id),
                                     discard=partial(checkpoints.discard, settings))
    learned_weights = start.parent is not None or bool(req.base.backbone_weights)
    fitting.fit(model, req, fitting.plan_phases(req, learned_weights=learned_weights),
                fitting.make_datasets(req, data, prep), fitting.callbacks_for(req, recorder), steps=steps,
                start_epoch=start_epoch, between_phases=partial(stop_if_told, heartbeat))
    return model


def train(job_id: str, attempt: int | None, settings: Settings) -> None:
    """One attempt of a train job, phase by phase; raises Canceled or Superseded when told to stop."""
    clock = PhaseClock()
    start = patiently(start_attempt, job_id)
    req = start.request
    heartbeat = start_heartbeat(job_id, attempt, interval_for(settings.heartbeat_timeout, at_most=5.0),
                                phase="loading data", epoch=start.checkpoint_epoch)
    prepare_tensorflow(req.seed, req.deterministic)
    clock.lap("attempt_start")
    check_increment(job_id, attempt, req, heartbeat, settings)
    clock.lap("crawl_check")
    folder = checkpoints.folder_for(settings, job_id, attempt)
    with pixel_files.workspace(settings, job_id, attempt) as pixels:  # the decoded pixels, on this machine's disk
        version, metrics = fit_and_register(start, attempt, heartbeat, settings, pixels, folder, clock)
    heartbeat.stop()
    checkpoints.remove_all(settings, job_id, folder)  # every attempt's checkpoints: the job is done
    log.info("train job %s done: %s@%s holdout %s", job_id, req.model, version.version, metrics)


def fit_and_register(start: AttemptStart, attempt: int | None, heartbeat: AttemptHeartbeat, settings: Settings,
                     pixels: Path, folder: Path, clock: PhaseClock) -> tuple[ModelVersion, dict]:
    """The data decoded into `pixels`, the model fitted (checkpoints in `folder`), evaluated, compared with
    production when the request asks, registered and the job finished: (the version, its holdout metrics)."""
    req, job_id = start.request, heartbeat.job_id
    prep, data = load_data(req, start.parent, settings, pixels)
    clock.lap("load_data")
    model = fit_model(start, data, prep, settings, heartbeat, folder)
    clock.lap("build_and_fit")
    heartbeat.progress.update(phase="evaluating", eta_seconds=None)
    metrics, signature = evaluate_holdout(req.task, model, data, prep), candidate_signature(req.task, prep, data)
    clock.lap("evaluate")
    comparison = compare_with_production(req, model, data, signature, metrics,
                                         production_version(req.model), settings) if req.gate else None
    clock.lap("compare_with_production")
    heartbeat.progress.update(phase="registering")
    if not patiently(owned, job_id, attempt):
        raise Superseded()
    lineage = lineage_of(req, job_id, start.parent, data, metrics, duration=clock.elapsed())
    version = patiently(register, req, job_id, model, signature, lineage, settings)
    clock.lap("register")
    patiently(record_training_reference, version, model, data)
    clock.lap("drift_reference")
    data.stats["peak_rss_bytes"] = peak_rss_bytes()  # in the job's "data": memory stays flat as datasets grow
    data.stats["phase_seconds"] = clock.seconds  # the last phase, closing the run, is the one not in it
    patiently(finish, job_id, attempt, req, version, metrics, comparison, data)
    return version, metrics


def peak_rss_bytes() -> int:
    """The most resident memory this training process has held so far: VmHWM, its own since its exec (getrusage's
    ru_maxrss would also count the worker process it was started from)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str]) -> int:
    job_id = argv[0]
    attempt = int(argv[1]) if len(argv) > 1 else None  # fences this process's writes (see lifecycle)
    settings = get_settings()
    configure_logging(settings.log_format, "trainer")
    bind(job_id=job_id, attempt=attempt)  # on every line of this process
    db.configure(settings)  # this process's entry point: its sessions use the database of its settings
    try:
        train(job_id, attempt, settings)
    except Superseded:
        log.warning("train job %s: attempt %s was superseded by a newer attempt; it stops, writing nothing",
                    job_id, attempt)
    except Canceled:
        with session_scope() as session:
            lifecycle.canceled(session, job_id, attempt)
        log.info("train job %s canceled", job_id)
    except (training_data.DataError, ImgqError, ValueError) as exc:  # no retry mends these
        message = getattr(exc, "message", None) or str(exc)
        log.error("train job %s failed: %s", job_id, message)
        with session_scope() as session:
            lifecycle.fail(session, job_id, message, attempt)
        return FAILED_FOR_GOOD
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
