"""The registry of model versions: import files into the model store, resolve names, move aliases.

Names and aliases follow shared/core/names.py; a version number fits its 32-bit column. A stored file's path is
proven inside the model store (shared.core.paths.path_inside), and messages about a file name it as the client
sent it, never by a server path.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.core import keyset, names
from shared.core.errors import Conflict, InvalidRequest, ModelRejected, NotFound
from shared.core.keyset import Key
from shared.core.paths import path_inside
from shared.core.tables import MAX_VERSION, ModelAlias, ModelVersion, utcnow
from shared.core.vocab import EMBEDDING_TASK, PIXEL_SCALES, RESIZE_MODES, TASKS
from shared.models import targets
from shared.models.outputs import default_output_names
from shared.services.model_files import sha256_file, store_file

if TYPE_CHECKING:
    from shared.core.config import Settings

log = logging.getLogger(__name__)

PRODUCTION = "production"


@dataclass
class Signature:
    """What a model needs as input and what its outputs mean."""
    task: str
    input_height: int
    input_width: int
    resize_mode: str = "stretch"
    pixel_scale: str = "unit"
    output_names: list[str] | None = None
    class_names: list[str] | None = None
    target_transform: dict = field(default_factory=lambda: {"kind": "none"})

    def validated(self) -> Signature:
        if self.task not in TASKS:
            raise InvalidRequest(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidRequest(f"resize_mode must be one of {', '.join(RESIZE_MODES)}")
        if self.pixel_scale not in PIXEL_SCALES:
            raise InvalidRequest(f"pixel_scale must be one of {', '.join(PIXEL_SCALES)}")
        if not (8 <= self.input_height <= 4096 and 8 <= self.input_width <= 4096):
            raise InvalidRequest("input size must be between 8 and 4096 pixels")
        if self.task == "classification" and not self.class_names:
            raise InvalidRequest("a classification model needs class_names")
        if self.task == EMBEDDING_TASK and (self.class_names or self.output_names):
            raise InvalidRequest("an embedding model has no class or output names: its output is the vector")
        if self.task == EMBEDDING_TASK and (self.target_transform or {"kind": "none"}).get("kind") != "none":
            raise InvalidRequest("an embedding model takes no target transform: its output is the vector")
        try:
            self.target_transform = targets.validate(self.target_transform or {"kind": "none"})
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return self

    def check_shapes(self, shapes: dict) -> None:
        """Refuse a file whose input/output shapes contradict the signature."""
        if len(shapes["inputs"]) != 1 or len(shapes["outputs"]) != 1:
            raise ModelRejected("imgq scores models with exactly one image input and one output")
        inp, out = shapes["inputs"][0], shapes["outputs"][0]
        if len(inp) != 4 or inp[3] not in (3, None):
            raise ModelRejected(f"the model input must be (batch, height, width, 3), got {inp}")
        for axis, want in ((1, self.input_height), (2, self.input_width)):
            if inp[axis] not in (None, want):
                raise ModelRejected(
                    f"the model input is {inp[1]}x{inp[2]} but the signature says "
                    f"{self.input_height}x{self.input_width}")
        if len(out) != 2 or out[1] is None:
            raise ModelRejected(f"the model output must be (batch, n), got {out}")
        n = out[1]
        if self.task == "classification":
            k = len(self.class_names or [])
            if not (n == k or (k == 2 and n == 1)):
                raise ModelRejected(f"the model has {n} outputs but {k} class names")
        elif self.task == "keypoints":
            if n % 2:
                raise ModelRejected(f"a keypoint model needs an even number of outputs (x, y per point), got {n}")
            if self.output_names and len(self.output_names) != n // 2:
                raise ModelRejected(f"{len(self.output_names)} point names for {n // 2} points")
        elif self.output_names and len(self.output_names) != n:
            raise ModelRejected(f"{len(self.output_names)} output names for {n} outputs")

    def as_columns(self) -> dict:
        return {"task": self.task, "input_height": self.input_height, "input_width": self.input_width,
                "resize_mode": self.resize_mode, "pixel_scale": self.pixel_scale,
                "output_names": self.output_names, "class_names": self.class_names,
                "target_transform": self.target_transform}


def signature_of(v: ModelVersion) -> Signature:
    """The Signature a stored version was registered with (a trained candidate's, before it is stored:
    worker/training/registration.candidate_signature)."""
    return Signature(task=v.task, input_height=v.input_height, input_width=v.input_width,
                     resize_mode=v.resize_mode, pixel_scale=v.pixel_scale,
                     output_names=v.output_names, class_names=v.class_names,
                     target_transform=v.target_transform)


def _without_paths(text: str, path: Path, shown: str) -> str:
    """`text` with the file's server path (and its folder) replaced by the name the client knows."""
    for full in {str(path), str(path.resolve())}:
        text = text.replace(full, shown)
    for folder in {str(path.parent), str(path.resolve().parent)}:
        text = text.replace(folder + os.sep, "").replace(folder, ".")
    return text


def inspect_file(path: Path, timeout: float = 300, shown: str | None = None) -> dict:
    """Shapes of a Keras file, read in a fresh process with safe_mode on. Errors name the file as `shown`
    (the uploaded file's name); the inspector's own output goes to the log only."""
    shown = shown or path.name
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run([sys.executable, "-m", "shared.models.model_inspect", str(path)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ModelRejected(f"inspecting the model file {shown} took longer than {timeout:g} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        log.warning("model inspector exited with code %s on %s: %s", proc.returncode, shown,
                    proc.stderr.strip()[-2000:])
        raise ModelRejected(f"cannot inspect the model file {shown} (the inspector exited with code "
                            f"{proc.returncode}); is it a Keras 3 .keras file?")
    info = json.loads(lines[-1])
    if "error" in info:
        raise ModelRejected(f"{shown}: {_without_paths(str(info['error']), path, shown)}")
    return info


def check_version(version, field: str = "version") -> int:
    """A version number that fits its column (1 .. 2^31-1), else InvalidRequest naming `field`."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise InvalidRequest(f"{field} must be a whole number from 1 to {MAX_VERSION}", field=field)
    return version


def import_model(session: Session, src: Path, name: str, signature: Signature, store: Path,
                 *, description: str | None = None, lineage: dict | None = None,
                 promote: bool | None = None, shown: str | None = None, shapes: dict | None = None,
                 settings: Settings | None = None) -> ModelVersion:
    """Store a copy of `src` (in the local folder `store`, then, when `settings` name an object-store model store,
    uploaded there: shared/services/model_files.py) and register it as the next version of `name`.

    `promote=None` makes the first version of a name its production version. Errors name the file as
    `shown` (e.g. the uploaded file's name; default: `src`'s own name). `shapes`: what `inspect_file` said of
    `src`, when the caller inspected it outside its transaction (worker/model_importer.py); else it is inspected
    here.
    """
    names.check_name(name)
    shown = shown or src.name
    signature.validated()
    if not src.is_file():
        raise InvalidRequest(f"model file not found: {shown}")
    if src.suffix != ".keras":
        raise ModelRejected("imgq takes Keras 3 model files (.keras)")
    shapes = shapes if shapes is not None else inspect_file(src, shown=shown)
    signature.check_shapes(shapes)
    if signature.output_names is None:
        signature.output_names = default_output_names(signature.task, shapes["outputs"][0][1])
    digest = sha256_file(src)
    version = (session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
    dest = path_inside(store, name, f"v{version}-{digest[:12]}.keras")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    size = dest.stat().st_size
    stored = store_file(dest, digest, settings, name) if settings is not None else str(dest)
    row = ModelVersion(name=name, version=version, path=stored, sha256=digest, size_bytes=size,
                       description=description, lineage=lineage, **signature.as_columns())
    session.add(row)
    session.flush()
    has_production = session.get(ModelAlias, (name, PRODUCTION)) is not None
    if promote or (promote is None and not has_production):
        set_alias(session, name, PRODUCTION, version)
    return row


def parse_ref(ref: str, field: str = "model") -> tuple[str, str | int]:
    """'pageviews' -> (pageviews, 'production'); 'pageviews@3' -> (pageviews, 3); 'x@staging' -> alias.
    A bad name, alias or version number is an InvalidRequest naming `field`."""
    if not isinstance(ref, str) or len(ref) > names.MAX_REF_LENGTH:
        raise InvalidRequest(f"{field} must be name, name@version or name@alias, at most "
                             f"{names.MAX_REF_LENGTH} characters", field=field)
    name, _, tag = ref.partition("@")
    names.check_name(name, field)
    if not tag:
        return name, PRODUCTION
    names.check_alias(tag, field)  # ASCII only, so isdigit() below means 0-9
    return (name, check_version(int(tag), field)) if tag.isdigit() else (name, tag)


def resolve(session: Session, ref: str, field: str = "model") -> ModelVersion:
    name, tag = parse_ref(ref, field)
    if isinstance(tag, int):
        row = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == tag))
        if row is None:
            raise NotFound(f"model {name!r} has no version {tag}")
        return row
    alias = session.get(ModelAlias, (name, tag))
    if alias is None:
        if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name).limit(1)) is None:
            raise NotFound(f"no model named {name!r}")
        raise NotFound(f"model {name!r} has no alias {tag!r}")
    return session.get(ModelVersion, alias.version_id)


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelAlias:
    names.check_name(name)
    names.check_alias(alias)
    check_version(version)
    target = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if target is None:
        raise NotFound(f"model {name!r} has no version {version}")
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        row = ModelAlias(name=name, alias=alias, version_id=target.id)
        session.add(row)
    elif row.version_id != target.id:
        row.previous_version_id, row.version_id, row.updated_at = row.version_id, target.id, utcnow()
    session.flush()
    return row


def rollback(session: Session, name: str, alias: str = PRODUCTION) -> ModelAlias:
    """Point the alias back where it was before its last move."""
    names.check_name(name)
    names.check_alias(alias)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFound(f"model {name!r} has no alias {alias!r}")
    if row.previous_version_id is None:
        raise Conflict(f"{name}@{alias} has no earlier version to roll back to")
    previous = session.get(ModelVersion, row.previous_version_id)
    return set_alias(session, name, alias, previous.version)


def alias_json(session: Session, row: ModelAlias) -> dict:
    """An alias as the API shows it: which version of the name it points at, since when."""
    return {"name": row.name, "alias": row.alias, "version": session.get(ModelVersion, row.version_id).version,
            "updated_at": row.updated_at.isoformat()}


def production_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(
        select(ModelVersion).join(ModelAlias, ModelAlias.version_id == ModelVersion.id)
        .where(ModelAlias.alias == PRODUCTION)))


def models_page(session: Session, *, limit: int, after: Key | None = None) -> tuple[list[dict], Key | None]:
    """Model names in order (keyed by name), each as `model_json` describes it, and the key of the last one when
    more follow."""
    q = select(ModelVersion.name, func.count()).group_by(ModelVersion.name)
    rows, next_key = keyset.page(session, q, (ModelVersion.name,), after=after, limit=limit,
                                 key_of=lambda row: (row[0],))
    production = dict(session.execute(
        select(ModelAlias.name, ModelVersion.version).join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(ModelAlias.alias == PRODUCTION, ModelAlias.name.in_([name for name, _ in rows]))).all())
    return [model_json(name, count, production.get(name)) for name, count in rows], next_key


def model_json(name: str, versions: int, production: int | None) -> dict:
    """A model name: how many versions it has and its production version (None without one)."""
    return {"name": name, "versions": versions, "production": production}


def list_versions(session: Session, name: str) -> list[ModelVersion]:
    names.check_name(name)
    rows = list(session.scalars(select(ModelVersion).where(ModelVersion.name == name).order_by(ModelVersion.version)))
    if not rows:
        raise NotFound(f"no model named {name!r}")
    return rows


def versions_page(session: Session, name: str, *, limit: int,
                  after: Key | None = None) -> tuple[list[ModelVersion], Key | None]:
    """A model's versions in order (keyed by number); NotFound for a name without any."""
    names.check_name(name)
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name).limit(1)) is None:
        raise NotFound(f"no model named {name!r}")
    rows, next_key = keyset.page(session, select(ModelVersion).where(ModelVersion.name == name),
                                 (ModelVersion.version,), after=after, limit=limit,
                                 key_of=lambda row: (row[0].version,))
    return [row[0] for row in rows], next_key


def aliases_by_version(session: Session, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for a in session.scalars(select(ModelAlias).where(ModelAlias.name == name)):
        out.setdefault(a.version_id, []).append(a.alias)
    return out


def version_json(v: ModelVersion, aliases: list[str] | None = None) -> dict:
    return {"name": v.name, "version": v.version, "ref": f"{v.name}@{v.version}", "aliases": aliases or [],
            **signature_of(v).as_columns(), "sha256": v.sha256, "size_bytes": v.size_bytes,
            "description": v.description, "lineage": v.lineage, "created_at": v.created_at.isoformat()}
