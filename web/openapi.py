"""The OpenAPI 3.1 document of the HTTP API, generated from the app's URL map and the pydantic models that validate
requests (shared/schemas, web/pagination.py) and build responses (shared/schemas/responses).

Each handler declares what the document says of it with `@documented(...)`, beside its code: summary, query model,
JSON body or multipart form (and its file parts), answers by status, the error statuses only it can give, whether
it submits jobs, and links to the operations its answer leads to. `build_document` walks `app.url_map`, so no route
is left out: a view that declares nothing raises `Undocumented` (Swagger UI's files, Flask's static files and the
dashboard's HTML pages are not the API: UNDOCUMENTED, HTML_BLUEPRINTS). The generator adds, from the one place each
rule lives: security (the bearer scheme
with the scope of web/auth.SCOPE_OF, none for auth.OPEN, 401/403 where a token is checked, all off under
IMGQ_AUTH=off); 400 and 414 everywhere (web/request_checks), 429 with Retry-After where web/rate_limits applies,
413 where a body is read, 404 where the path names something; for submissions the Idempotency-Key header, 202
with Location and Idempotent-Replayed, 422 and 429; path parameters from the rule's converters, typed further by
the declaration; example requests and path values from shared/schemas/examples.py.

Schemas: every model is rendered by one `pydantic.json_schema.models_json_schema` call (requests in validation
mode, responses in serialization mode) with ref_template "#/components/schemas/{model}"; its `$defs` become
`components.schemas`. Rendering all at once (rather than `model_json_schema` per model, then merging `$defs`)
lets pydantic name every definition once, so two models that share a nested one agree on it, and a model that
differs between input and output gets two names instead of one overwriting the other.

Conformance is enforced at run time, the strongest of the choices: handlers answer through web/http.respond, which
validates the service's dict with the response model the document shows (a key the model does not name is refused)
and has pydantic write it (`model_dump_json(exclude_unset=True)`), so a serializer cannot drift from the document
without failing, in every test that touches it and not only in a conformance run. pydantic-core writes JSON faster
than `jsonify` does, which pays for most of the validation: benchmarks/response_validation.py measured a page of
1000 results at 22.4 ms against 19.6 ms with `jsonify` alone, and 100 jobs at 46.0 against 44.6 ms (2 busy cores,
SQLite). schemathesis (tests/integration/test_openapi.py) checks what validation cannot: statuses, headers, content
types and error bodies.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version

from flask import Flask
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from shared.schemas import examples
from shared.schemas.responses.common import Error
from web import auth, rate_limits
from web.http import MAX_IDEMPOTENCY_KEY

REF = "#/components/schemas/{model}"
API_PREFIX = "/api/v1/"
UNDOCUMENTED = frozenset({"static", "swagger_ui.show"})  # Flask's static files, the Swagger UI page and its files
HTML_BLUEPRINTS = ("dashboard.",)  # the dashboard's pages and files: HTML for a browser, not API operations
SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})
BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
TEXT = {"type": "string"}
PARQUET = {"type": "string", "contentMediaType": "application/vnd.apache.parquet"}
DECLARATION = "imgq_operation"  # the attribute of a view function that holds its Operation


class Undocumented(RuntimeError):
    """A route whose view declares nothing for the document."""


@dataclass(frozen=True)
class Form:
    """A multipart body: the text fields `model` validates (`overrides` replace a field's schema where the wire
    carries text the handler parses, such as a JSON list), and file parts, `name -> description`; a part named in
    `many` may be repeated."""
    model: type[BaseModel]
    files: dict[str, str]
    many: frozenset[str] = frozenset()
    overrides: dict[str, dict] = field(default_factory=dict)
    leave_out: frozenset[str] = frozenset()  # fields the handler fills from the files


@dataclass(frozen=True)
class Link:
    """An answer's value that another operation takes: `operation` (a Flask endpoint), its path parameters as
    runtime expressions, e.g. {"job_id": "$response.body#/id"}."""
    operation: str
    parameters: dict[str, str]


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict  # status -> a model, (models...) for any of them, {media type: model or schema}, or None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    form: Form | None = None
    path: dict = field(default_factory=dict)  # parameter -> a type (e.g. shared.core.names.Name)
    errors: tuple[int, ...] = ()
    submits: bool = False
    headers: dict = field(default_factory=dict)  # status -> {header: description}
    links: dict = field(default_factory=dict)  # status -> {name: Link}
    deprecated: bool = False
    description: str | None = None


def documented(summary: str, *, responses: dict, description: str | None = None, **details) -> Callable:
    """Declare what the document says of a handler (see Operation); without a `description`, its docstring."""
    def attach(view):
        setattr(view, DECLARATION, Operation(summary, responses, description=description or view.__doc__, **details))
        return view
    return attach


def operation_of(app: Flask, rule: Rule) -> Operation | None:
    return getattr(app.view_functions[rule.endpoint], DECLARATION, None)


def documented_rules(app: Flask) -> list[Rule]:
    """Every rule the document covers, in URL order; Undocumented names those whose view declares nothing."""
    rules = [r for r in app.url_map.iter_rules()
             if r.endpoint not in UNDOCUMENTED and not r.endpoint.startswith(HTML_BLUEPRINTS)]
    missing = sorted(r.rule for r in rules if operation_of(app, r) is None)
    if missing:
        raise Undocumented(f"routes without @documented: {', '.join(missing)}")
    return sorted(rules, key=lambda r: (r.rule, r.endpoint))


_ARGUMENT = re.compile(r"<(?:([a-zA-Z_]\w*)(?:\([^)]*\))?:)?([a-zA-Z_]\w*)>")  # <converter(options):name>


def openapi_path(rule: Rule) -> str:
    return _ARGUMENT.sub(r"{\2}", rule.rule)


class _Schemas:
    """Every model the document names, rendered once; `ref(model)` is where its schema is."""

    def __init__(self, operations: list[Operation]):
        inputs, outputs = set(), {Error}
        for op in operations:
            inputs.update(m for m in (op.query, op.body, op.form and op.form.model) if m)
            outputs.update(m for answer in op.responses.values() for m in _models_in(answer))
        pairs = [(m, "validation") for m in sorted(inputs, key=_name)] + \
                [(m, "serialization") for m in sorted(outputs, key=_name)]
        self._refs, defs = models_json_schema(pairs, ref_template=REF)
        self.components = dict(sorted(defs.get("$defs", {}).items()))

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict:
        return dict(self._refs[(model, mode)])

    def definition(self, model: type[BaseModel], mode: str = "validation") -> dict:
        return self.components[self.ref(model, mode)["$ref"].rsplit("/", 1)[1]]


def _name(model: type) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _models_in(answer) -> list[type[BaseModel]]:
    if isinstance(answer, type) and issubclass(answer, BaseModel):
        return [answer]
    if isinstance(answer, tuple):
        return [m for part in answer for m in _models_in(part)]
    if isinstance(answer, dict):
        return [m for part in answer.values() for m in _models_in(part)]
    return []


# ------------------------------------------------------------------------------------------- the document

ERRORS = {  # status -> (the component's name, when it is answered); the body is always the Error shape
    400: ("BadRequest", "The request is malformed: a field, parameter, header or the URL is invalid "
                        "(`problems` names it)."),
    401: ("Unauthorized", "No API token, or one imgq does not know (or that was revoked)."),
    403: ("Forbidden", "The token lacks the scope this operation needs (`error.scope`), or may not act on this "
                       "resource."),
    404: ("NotFound", "Nothing is found at this path (or a resource the request names does not exist)."),
    409: ("Conflict", "The request conflicts with what is stored (a name taken, nothing to roll back to)."),
    413: ("TooLarge", "The body is over its limit (`error.limit`, in bytes)."),
    414: ("UriTooLong", "The URL is over 4096 bytes."),
    422: ("Unprocessable", "Well-formed, but imgq cannot do it (e.g. an Idempotency-Key used for another request)."),
    429: ("TooManyRequests", "Over the token's request rate, or (a submission) over its cap on active jobs; retry "
                            "after Retry-After seconds."),
    503: ("Unavailable", "A part the request needs is not up (no worker answered in time, the broker is away)."),
}
HEADERS = {
    "Location": ("the URL of what was made", {"type": "string"}),
    "Idempotent-Replayed": ("`true` when this answer replays an earlier submission with the same Idempotency-Key",
                            {"type": "string", "enum": ["true"]}),
    "Retry-After": ("seconds to wait before retrying", {"type": "integer", "minimum": 0}),
}
BEARER = {"type": "http", "scheme": "bearer",
          "description": "An API token (`imgq tokens create NAME --scopes read,score`), sent as `Authorization: "
                         "Bearer <token>`. Each operation names the scope it needs: read, score, train or admin "
                         "(admin may do everything)."}
INFO = """Asynchronous jobs for image models: score and embed images, train and register Keras models, search
similar images. Conventions (README, "HTTP API"): every list pages with `limit` and an opaque `after` cursor taken
from the previous page's `next` link; every 4xx and 5xx answers the Error shape; every submission answers 202 with
Location, honours `Idempotency-Key` and counts against the token's cap on active jobs. Any operation may also
answer 503 while the database is unreachable, and 500 on a fault of the server (both with the Error shape)."""


def build_document(app: Flask) -> dict:
    """The OpenAPI 3.1 document of `app` (its settings say whether tokens are checked)."""
    settings = app.config["IMGQ_SETTINGS"]
    rules = documented_rules(app)
    schemas = _Schemas([operation_of(app, rule) for rule in rules])
    paths: dict[str, dict] = {}
    for rule in rules:
        for method in sorted(rule.methods - SKIPPED_METHODS):
            paths.setdefault(openapi_path(rule), {})[method.lower()] = \
                _operation(rule, operation_of(app, rule), schemas, _scope(rule.endpoint, settings))
    return {
        "openapi": "3.1.0",
        "info": {"title": "imgq", "version": _version(), "description": INFO},
        "tags": _tags(app, rules),
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": {name: _error_response(status, schemas) for status, (name, _) in ERRORS.items()},
            "securitySchemes": {"bearer": BEARER},
        },
    }


def _version() -> str:
    try:
        return version("imgq")
    except PackageNotFoundError:
        return "0"


def _scope(endpoint: str, settings) -> str | None:
    """The scope a token needs for `endpoint`; None when no token is checked."""
    if not settings.auth_enabled or endpoint in auth.OPEN or \
            (endpoint == "prometheus_metrics" and settings.metrics_public):
        return None
    return auth.SCOPE_OF.get(endpoint, "admin")


def _tag(endpoint: str) -> str:
    return endpoint.partition(".")[0] if "." in endpoint else "service"


def _tags(app: Flask, rules: list[Rule]) -> list[dict]:
    tags = []
    for name in dict.fromkeys(_tag(rule.endpoint) for rule in rules):
        blueprint = app.blueprints.get(name)
        module = sys.modules.get(blueprint.import_name) if blueprint else None
        doc = (module.__doc__ or "").strip() if module else "Health, readiness and Prometheus metrics."
        tags.append({"name": name, "description": " ".join(doc.split("\n\n")[0].split())})
    return tags


def _operation(rule: Rule, op: Operation, schemas: _Schemas, scope: str | None) -> dict:
    out = {"operationId": rule.endpoint, "tags": [_tag(rule.endpoint)], "summary": op.summary}
    if op.description:
        out["description"] = " ".join(op.description.split())
    parameters = _path_parameters(rule, op) + _query_parameters(op, schemas) + _header_parameters(op)
    if parameters:
        out["parameters"] = parameters
    body = _request_body(op, schemas)
    if body:
        out["requestBody"] = body
    out["responses"] = _responses(rule, op, schemas, scope)
    out["security"] = [{"bearer": [scope]}] if scope else []
    if op.deprecated:
        out["deprecated"] = True
    return out


def _path_parameters(rule: Rule, op: Operation) -> list[dict]:
    out = []
    for converter, name in _ARGUMENT.findall(rule.rule):
        if name in op.path:
            schema = TypeAdapter(op.path[name]).json_schema()
        elif converter == "int":
            schema = {"type": "integer", "minimum": 0}
        else:
            schema = {"type": "string", "minLength": 1}
        parameter = {"name": name, "in": "path", "required": True, "schema": schema}
        if converter == "path":
            parameter["description"] = "may hold '/'"
        if name in examples.PATH_PARAMETERS:
            parameter["example"] = examples.PATH_PARAMETERS[name]
        out.append(parameter)
    return out


def _query_parameters(op: Operation, schemas: _Schemas) -> list[dict]:
    if op.query is None:
        return []
    definition = schemas.definition(op.query)
    required = set(definition.get("required", ()))
    out = []
    for name, schema in definition["properties"].items():
        schema = _absent_not_null({k: v for k, v in schema.items() if k != "title"})
        parameter = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        out.append(parameter)
    return out


def _absent_not_null(schema: dict) -> dict:
    """An optional query parameter's schema: a parameter is left out, never null (`X | None = None` -> X)."""
    options = schema.get("anyOf", ())
    kept = [option for option in options if option != {"type": "null"}]
    if len(kept) == len(options):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**kept[0], **rest} if len(kept) == 1 else {"anyOf": kept, **rest}


def _header_parameters(op: Operation) -> list[dict]:
    if not op.submits:
        return []
    return [{"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "the same key with the same request answers the same job (202, Idempotent-Replayed: "
                            "true) and stores nothing new; with another request, 422",
             "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}}]


def _request_body(op: Operation, schemas: _Schemas) -> dict | None:
    content = {}
    if op.body is not None:
        content["application/json"] = {"schema": schemas.ref(op.body, "validation")}
        if op.body in examples.REQUESTS:
            content["application/json"]["examples"] = {name: {"value": value} for name, value in
                                                       examples.REQUESTS[op.body].items()}
    if op.form is not None:
        content["multipart/form-data"] = {"schema": _form_schema(op.form, schemas)}
    return {"required": op.body_required, "content": content} if content else None


def _form_schema(form: Form, schemas: _Schemas) -> dict:
    """The multipart body: the form model's fields (as the wire carries them) and the file parts."""
    definition = schemas.definition(form.model)
    properties = {name: form.overrides.get(name, schema) for name, schema in definition["properties"].items()
                  if name not in form.leave_out}
    required = [name for name in definition.get("required", ()) if name not in form.leave_out]
    for name, description in form.files.items():
        properties[name] = {"type": "array", "items": BINARY, "minItems": 1, "description": description} \
            if name in form.many else {**BINARY, "description": description}
        required.append(name)
    schema = {"type": "object", "properties": properties, "required": required}
    if "description" in definition:
        schema["description"] = definition["description"]
    return schema


def _responses(rule: Rule, op: Operation, schemas: _Schemas, scope: str | None) -> dict:
    out = {str(status): _answer(status, answer, op, schemas) for status, answer in op.responses.items()}
    for status in _error_statuses(rule, op, scope):
        out.setdefault(str(status), {"$ref": f"#/components/responses/{ERRORS[status][0]}"})
    return dict(sorted(out.items()))


def _error_statuses(rule: Rule, op: Operation, scope: str | None) -> set[int]:
    statuses = {400, 414, *op.errors}
    if scope:
        statuses |= {401, 403}
    if rule.endpoint not in rate_limits.UNLIMITED:
        statuses.add(429)
    if op.body is not None or op.form is not None:
        statuses.add(413)
    if rule.arguments:
        statuses.add(404)
    if op.submits:
        statuses |= {422, 429}
    return statuses


def _answer(status: int, answer, op: Operation, schemas: _Schemas) -> dict:
    out: dict = {"description": HTTPStatus(status).phrase}
    if answer is not None:
        out["content"] = {media: {"schema": _schema_of(part, schemas)} for media, part in
                          (answer.items() if isinstance(answer, dict) else [("application/json", answer)])}
    names = {**({"Location": True} if status in (201, 202) else {}),
             **({"Idempotent-Replayed": False} if op.submits and status == 202 else {})}
    headers = {name: _header(name, required) for name, required in names.items()}
    headers.update({name: {"description": text, "schema": TEXT} for name, text in op.headers.get(status, {}).items()})
    if headers:
        out["headers"] = headers
    if status in op.links:
        out["links"] = {name: {"operationId": link.operation, "parameters": link.parameters}
                        for name, link in op.links[status].items()}
    return out


def _schema_of(part, schemas: _Schemas) -> dict:
    if isinstance(part, tuple):
        return {"anyOf": [_schema_of(p, schemas) for p in part]}
    if isinstance(part, type) and issubclass(part, BaseModel):
        return schemas.ref(part)
    return part


def _header(name: str, required: bool) -> dict:
    description, schema = HEADERS[name]
    return {"description": description, "required": required, "schema": schema}


def _error_response(status: int, schemas: _Schemas) -> dict:
    out = {"description": ERRORS[status][1], "content": {"application/json": {"schema": schemas.ref(Error)}}}
    if status == 429:
        out["headers"] = {"Retry-After": _header("Retry-After", True)}
    return out
