"""HTTP endpoints for the model registry. Names in the URL are checked by the registry (shared/core/names.py)."""
from __future__ import annotations

import json
import os

from flask import Blueprint, current_app, request

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest
from shared.core.names import AliasName, Name
from shared.schemas.models import AliasRequest, ModelImportForm
from shared.schemas.responses.jobs import Job
from shared.schemas.responses.models import Alias, ModelsPage, Version, VersionsPage
from shared.services import model_registry as registry
from web.http import accepted, check_tree, form_fields, json_object, origin, refuse_nul, respond
from web.openapi import Form, Link, documented
from web.pagination import PageQuery, decode_cursor, page_body, parse_query
from web.submit import submit_import

bp = Blueprint("models", __name__, url_prefix="/api/v1/models")

LIST_TEXT = {"type": "string", "description": "a JSON list, or names separated by commas"}
IMPORT_FORM = Form(ModelImportForm, {"file": "the .keras file (Keras 3; loaded with safe_mode)"}, overrides={
    "class_names": LIST_TEXT, "output_names": LIST_TEXT,
    "target_transform": {"type": "string", "description": 'a bare kind (none, log1p, standardise, log1p_arctan) or '
                                                          'a JSON object such as {"kind": "standardise", "mean": 3, '
                                                          '"std": 2}'}})


def _json_field(key: str, raw: str):
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"form field {key} is nested too deeply", field=key) from None
    except ValueError as exc:
        raise InvalidRequest(f"form field {key} holds invalid JSON: {exc}", field=key) from None
    check_tree(value)
    return value


def _form_value(key: str, raw: str):
    """Multipart fields are text: lists may be JSON or comma-separated, objects JSON."""
    if key in ("class_names", "output_names"):
        raw = raw.strip()
        return _json_field(key, raw) if raw.startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
    if key == "target_transform":
        raw = raw.strip()
        return _json_field(key, raw) if raw.startswith("{") else {"kind": raw}
    return raw


def _shown_name(filename: str | None) -> str:
    """How messages name the uploaded file: its own base name, never the temporary path it is saved at."""
    return os.path.basename((filename or "").replace("\\", "/"))[:200] or "the uploaded file"


@bp.post("")
@documented("Import a model file", form=IMPORT_FORM, responses={202: Job}, submits=True,
            links={202: {"GetJob": Link("jobs.get_job", {"job_id": "$response.body#/id"})}})
def import_model():
    """202 with an import job: the maintenance worker inspects and registers the file (GET /api/v1/jobs/<id>)."""
    who = origin()
    upload = request.files.get("file")
    if upload is None:
        raise InvalidRequest("send the .keras file as the multipart part 'file'", field="file")
    refuse_nul(upload.filename, "file")
    form = ModelImportForm.model_validate({k: _form_value(k, v) for k, v in form_fields().items()})
    sig = registry.Signature(task=form.task, input_height=form.input_height, input_width=form.input_width,
                             resize_mode=form.resize_mode, pixel_scale=form.pixel_scale,
                             output_names=form.output_names, class_names=form.class_names,
                             target_transform=form.target_transform.model_dump())
    return accepted(Job, *submit_import(current_app.config["IMGQ_SETTINGS"], upload, name=form.name, signature=sig,
                                   shown=_shown_name(upload.filename), description=form.description,
                                   promote=form.promote, origin=who))


@bp.get("")
@documented("List models by name", query=PageQuery, responses={200: ModelsPage})
def list_models():
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = registry.models_page(session, limit=query.limit, after=decode_cursor(query.after, str))
    return respond(ModelsPage, page_body("models", rows, next_key, query))


@bp.get("/<name>/versions")
@documented("List a model's versions", query=PageQuery, path={"name": Name}, responses={200: VersionsPage})
def list_versions(name: str):
    query = parse_query(PageQuery)
    with session_scope() as session:
        rows, next_key = registry.versions_page(session, name, limit=query.limit,
                                                after=decode_cursor(query.after, int))
        aliases = registry.aliases_by_version(session, name)
        body = [registry.version_json(v, aliases.get(v.id)) for v in rows]
    return respond(VersionsPage, page_body("versions", body, next_key, query, name=name))


@bp.get("/<name>/versions/<int:version>")
@documented("A model version", path={"name": Name}, responses={200: Version})
def get_version(name: str, version: int):
    registry.check_version(version)
    with session_scope() as session:
        row = registry.resolve(session, f"{name}@{version}")
        return respond(Version, registry.version_json(row, registry.aliases_by_version(session, name).get(row.id)))


@bp.post("/<name>/rollback")
@documented("Roll production back", path={"name": Name}, responses={200: Alias}, errors=(409,))
def rollback(name: str):
    """Production goes back to the version it pointed at before its last move (409 when there is none)."""
    with session_scope() as session:
        return respond(Alias, registry.alias_json(session, registry.rollback(session, name)))


@bp.post("/<name>/aliases/<alias>")
@documented("Point an alias at a version", path={"name": Name, "alias": AliasName}, body=AliasRequest,
            responses={200: Alias})
def set_alias(name: str, alias: str):
    """Moving `production` records where it pointed before, for a rollback."""
    req = AliasRequest.model_validate(json_object('a JSON object such as {"version": 3}'))
    with session_scope() as session:
        return respond(Alias, registry.alias_json(session, registry.set_alias(session, name, alias, req.version)))
