"""A finished training recorded: the new version's signature and lineage, the version registered, then the run
closed with the gate's decision.

Invariants: registering is idempotent (an attempt that died after registering finds its version again by the
job id in its lineage); promotion, the run's success and the schedule slot's decision are one transaction,
taken only while the attempt still owns the run.
"""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sqlalchemy import select

from shared.core.config import Settings
from shared.core.db import session_scope
from shared.core.tables import ModelVersion, ScheduleRun, TrainRun, utcnow
from shared.images.imaging import Preprocessing
from shared.models.model_inspect import inspection_json
from shared.schemas.training import TrainRequest
from shared.services.model_registry import Signature, import_model, set_alias
from worker.training import lifecycle
from worker.training.attempt import Superseded
from worker.training.data import TrainingData


def code_version() -> str:
    """The imgq package version and, in a git checkout, its commit."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    try:
        package = version("imgq")
    except PackageNotFoundError:
        package = "unknown"
    return f"imgq {package}" + (f" ({sha})" if sha else "")


def candidate_signature(task: str, prep: Preprocessing, data: TrainingData) -> dict:
    """What the new version takes and gives, as the fields of shared.services.model_registry.Signature (the registry's
    signature_of reads them back from a stored version)."""
    return {"task": task, "input_height": prep.height, "input_width": prep.width, "resize_mode": prep.resize_mode,
            "pixel_scale": prep.pixel_scale, "class_names": data.class_names, "output_names": data.output_names,
            "target_transform": data.target_transform}


def lineage_of(req: TrainRequest, job_id: str, parent, data: TrainingData, metrics: dict, *,
               duration: float) -> dict:
    """Where the version came from: its job, parent, data, hyperparameters, code and holdout metrics."""
    return {"job_id": job_id, "parent": f"{parent.name}@{parent.version}" if parent else None,
            "architecture": req.base.architecture, "dataset": req.dataset.model_dump(mode="json"),
            "data": data.stats, "hyperparameters": req.model_dump(mode="json", exclude={"dataset", "model"}),
            "holdout_metrics": metrics, "code_version": code_version(),
            "duration_seconds": round(duration, 2), "trained_at": utcnow().isoformat()}


def registered_by(name: str, job_id: str) -> ModelVersion | None:
    """The version of `name` that job `job_id` registered (detached), if any."""
    with session_scope() as session:
        for candidate in session.scalars(select(ModelVersion).where(ModelVersion.name == name)):
            if (candidate.lineage or {}).get("job_id") == job_id:
                session.expunge(candidate)
                return candidate
    return None


def register(req: TrainRequest, job_id: str, model, signature: dict, lineage: dict, settings: Settings) -> ModelVersion:
    """The new version (detached); the one this job registered already, if an earlier attempt got that far."""
    earlier = registered_by(req.model, job_id)
    if earlier is not None:
        return earlier
    with tempfile.TemporaryDirectory(dir=settings.model_store) as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        with session_scope() as session:
            # promote=None: the first version of a new name becomes production, later ones wait for the gate
            # shapes from the model in hand: a file an upload brings is inspected in a fresh process with
            # safe_mode on (model_registry.inspect_file), but this one imgq built itself, and a fresh
            # process costs Python and TensorFlow's start (about 5 s) while this transaction is open
            registered = import_model(session, path, req.model, Signature(**signature), settings.model_store,
                                      description=f"trained by job {job_id}", lineage=lineage, promote=None,
                                      shapes=inspection_json(model), settings=settings)
            session.expunge(registered)
    return registered


@dataclass(frozen=True)
class Decision:
    promote: bool
    schedule_decision: str  # what the schedule slot records: "promoted" or "kept"
    reason: str


def decide(comparison: dict | None) -> Decision:
    """Promote when the gate said so; without a gate, the registry's own rule stands (a name's first version)."""
    if comparison is None:
        return Decision(False, "kept", "no gate configured")
    promote = comparison["gate"]["decision"] == "promoted"
    return Decision(promote, "promoted" if promote else "kept", comparison["gate"]["reason"])


def finish(job_id: str, attempt: int | None, req: TrainRequest, registered: ModelVersion, metrics: dict,
           comparison: dict | None, data: TrainingData) -> None:
    """Promote (when the gate says so), mark the run done and record the schedule slot's decision, in one
    transaction; raises Superseded (having changed nothing) when the attempt no longer owns the run."""
    decision = decide(comparison)
    with session_scope() as session:
        if decision.promote:
            set_alias(session, req.model, "production", registered.version)
        if not lifecycle.succeed(session, job_id, attempt, result_version_id=registered.id, holdout_metrics=metrics,
                                 comparison=comparison, data_stats=data.stats, eta_seconds=None):
            raise Superseded()
        run = session.get(TrainRun, job_id)
        if run.schedule_run_id is not None:
            slot = session.get(ScheduleRun, run.schedule_run_id)
            slot.decision, slot.reason = decision.schedule_decision, decision.reason
