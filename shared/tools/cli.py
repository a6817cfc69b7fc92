"""The `imgq` command: serve, worker, beat, db, models, train, index, similar, demo.

The wiring of the project: the one module of shared/ allowed to import web/ and worker/ (tests/unit/
test_dependency_rule.py), because it starts every process: the web front, the workers and beat, and the demo, to
which it hands worker/'s model builder. Each command is an entry point: it reads the settings once (`_settings`),
sets up logging, creates the data folders and configures the database and the Celery app from them before it does
anything else. The long-running ones set logging up again for their role (web, worker, maintenance, beat) and, for
their metrics, a multiprocess folder before anything imports prometheus_client (shared/core/prometheus.py;
`_observed`). Nothing here imports web/, worker/ or TensorFlow at module level: `imgq worker` must pin its GPU first,
and each command loads only what it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shared.core.vocab import INDEX_MODES, PIXEL_SCALES, RESIZE_MODES, TASKS


def _settings():
    """The settings of this process, read from the environment; with the folders, the database and the
    Celery app set up from them."""
    from shared.core import celery_app, db
    from shared.core.config import ensure_dirs, get_settings
    from shared.core.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, "cli", "WARNING")  # a one-shot command's output is its own
    ensure_dirs(settings)
    db.configure(settings)
    celery_app.configure(settings)
    return settings


def _database_ready():
    """On the embedded SQLite default, bring the schema up to date on first use; on PostgreSQL
    migrations are an explicit step (`imgq db upgrade`, or `imgq serve`)."""
    settings = _settings()
    if settings.database_url.startswith("sqlite"):
        from shared.core.migrate import upgrade

        upgrade(settings.database_url)
    return settings


def cmd_db_upgrade(args) -> int:
    from shared.core.migrate import upgrade

    upgrade(_settings().database_url)
    print("database is at the latest revision")
    return 0


def _name(value: str) -> str:
    """argparse type for a model name (shared/core/names.py), imported only when a command takes one."""
    from shared.core.names import argparse_name

    return argparse_name(value)


def _alias(value: str) -> str:
    from shared.core.names import argparse_alias

    return argparse_alias(value)


def _observed(settings, role: str, loglevel: str = "INFO", metrics_port: int | None = None,
              collectors=tuple) -> None:
    """Logging for a long-running process of `role` (a Celery worker's pool processes set it up again, through
    worker/task_logs.py); and for its metrics, a fresh multiprocess folder for its tree: always on the web front (it
    serves /metrics on its own port), and on a Celery worker that serves them on `metrics_port` (else
    IMGQ_METRICS_PORT; 0: none), with what `collectors()` gives (called once the folder is set)."""
    from shared.core import prometheus
    from shared.core.logs import configure_logging

    configure_logging(settings.log_format, role, loglevel.upper())
    if role in ("worker", "maintenance", "beat"):
        from worker import task_logs

        task_logs.install(settings.log_format, role)
    port = settings.metrics_port if metrics_port is None else metrics_port
    if role == "web":
        prometheus.start_tree(settings, role)
    elif port and role in ("worker", "maintenance"):
        prometheus.start_tree(settings, role)
        prometheus.serve(settings, port, *collectors())


def _queue_collectors() -> list:
    """The maintenance process's figures of the queues: their depth on the broker, their oldest waiting message."""
    from shared.core.celery_app import MAINTENANCE_QUEUE, QUERY_QUEUE, SCORE_QUEUE, TRAIN_QUEUE
    from shared.core.dispatch import queue_depth
    from worker.metrics import QueueCollector, oldest_waiting

    return [QueueCollector(queue_depth, (SCORE_QUEUE, TRAIN_QUEUE, QUERY_QUEUE, MAINTENANCE_QUEUE), oldest_waiting)]


def cmd_serve(args) -> int:
    settings = _settings()
    _observed(settings, "web")
    if settings.auto_migrate:
        from shared.core.migrate import upgrade

        upgrade(settings.database_url)
    # each gunicorn worker calls web.wsgi.create(), which reads the same environment (and the metrics folder's)
    argv = [sys.executable, "-m", "gunicorn", "web.wsgi:create()",
            "--bind", f"{args.host or settings.host}:{args.port or settings.port}",
            "--workers", str(args.workers), "--threads", str(args.threads), "--timeout", "300",
            # gunicorn's largest request line: the app itself answers longer URLs up to it with a JSON 414
            # (web/request_checks.py); only beyond it does gunicorn answer with its own HTML 414
            "--limit-request-line", "8190",
            "--access-logfile", "-" if args.access_log else "/dev/null"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def worker_argv(args) -> list[str]:
    queues = args.queues or "score,train,queries"
    name = "cpu" if args.gpu is None else f"gpu{args.gpu}"  # and the pid: several workers may share a host
    return ["worker", "-Q", queues, "--pool", "prefork", "-c", str(args.concurrency), "-n", f"{name}-{os.getpid()}@%h",
            "--without-mingle", "--without-gossip", "-l", args.loglevel]


def maintenance_argv(args, settings) -> list[str]:
    """A worker of its own for the maintenance queue (sweeper, schedule ticks), so they never wait behind
    scoring or training; threads, no TensorFlow. With --beat it also runs the periodic scheduler."""
    argv = ["worker", "-Q", "maintenance", "--pool", "threads", "-c", "2", "-n", f"maintenance-{os.getpid()}@%h",
            "--without-mingle", "--without-gossip", "-l", args.loglevel]
    if args.beat:
        argv += ["-B", "-s", str(settings.data_dir / "celerybeat-schedule")]
    return argv


def _quiet(settings) -> list[str]:
    """Celery's start-up banner is for a terminal: JSON logs are one event per line."""
    return ["--quiet"] if settings.log_format == "json" else []


def cmd_worker(args) -> int:
    from worker.device import pin

    pin(None if args.cpu else args.gpu)
    settings = _database_ready()
    _observed(settings, "worker", args.loglevel, args.metrics_port)
    from shared.core.celery_app import app  # configured by _database_ready; the pool processes fork from here

    app.worker_main(argv=_quiet(settings) + worker_argv(args))
    return 0


def cmd_maintenance(args) -> int:
    settings = _database_ready()
    _observed(settings, "maintenance", args.loglevel, args.metrics_port, _queue_collectors)
    from shared.core.celery_app import app

    app.worker_main(argv=_quiet(settings) + maintenance_argv(args, settings))
    return 0


def cmd_beat(args) -> int:
    settings = _settings()
    _observed(settings, "beat", args.loglevel)
    from shared.core.celery_app import app

    app.start(argv=["beat", "-s", str(settings.data_dir / "celerybeat-schedule"), "-l", args.loglevel])
    return 0


def cmd_flower(args) -> int:
    """Celery Flower (the `flower` extra) on the configured app; `celery -A shared.core.celery_app flower` would see an
    app with no broker."""
    _observed(_settings(), "flower")  # Flower's own lines (tornado's) in imgq's format
    from shared.core.celery_app import app

    app.start(argv=["flower", f"--port={args.port}"])
    return 0


def _parse_list(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    raw = raw.strip()
    return json.loads(raw) if raw.startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]


def cmd_models_import(args) -> int:
    from shared.core.db import session_scope
    from shared.services import model_registry as registry

    settings = _database_ready()
    transform = json.loads(args.target_transform) if args.target_transform.startswith("{") \
        else {"kind": args.target_transform}
    sig = registry.Signature(task=args.task, input_height=args.input_height or args.input_size,
                             input_width=args.input_width or args.input_size, resize_mode=args.resize_mode,
                             pixel_scale=args.pixel_scale, output_names=_parse_list(args.output_names),
                             class_names=_parse_list(args.class_names), target_transform=transform)
    with session_scope() as session:
        row = registry.import_model(session, Path(args.file), args.name, sig, settings.model_store,
                                    description=args.description, promote=args.promote)
        print(json.dumps(registry.version_json(row, registry.aliases_by_version(session, args.name)
                                               .get(row.id)), indent=2))
    return 0


def cmd_models_list(args) -> int:
    from shared.core.db import session_scope
    from shared.services import model_registry as registry

    _database_ready()
    with session_scope() as session:
        if args.name:
            aliases = registry.aliases_by_version(session, args.name)
            for v in registry.list_versions(session, args.name):
                tags = ",".join(aliases.get(v.id, []))
                print(f"{v.name}@{v.version}\t{v.task}\t{v.input_height}x{v.input_width}\t{tags}")
        else:
            for v in registry.production_versions(session):
                print(f"{v.name}\tproduction={v.version}\t{v.task}")
    return 0


def cmd_models_promote(args) -> int:
    from shared.core.db import session_scope
    from shared.services import model_registry as registry

    _database_ready()
    with session_scope() as session:
        registry.set_alias(session, args.name, args.alias, args.version)
    print(f"{args.name}@{args.alias} -> version {args.version}")
    return 0


def cmd_models_rollback(args) -> int:
    from shared.core.db import session_scope
    from shared.core.tables import ModelVersion
    from shared.services import model_registry as registry

    _database_ready()
    with session_scope() as session:
        row = registry.rollback(session, args.name)
        version = session.get(ModelVersion, row.version_id).version
    print(f"{args.name}@production -> version {version}")
    return 0


def _read_json(path: str) -> dict:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def cmd_train(args) -> int:
    """Submit a train request (JSON file) through the same service as POST /api/v1/jobs/train."""
    from shared.schemas.training import TrainRequest
    from shared.services.submission import submit_train

    _database_ready()
    description, _ = submit_train(TrainRequest.model_validate(_read_json(args.request)))
    print(json.dumps(description, indent=2))
    return 0


def cmd_index(args) -> int:
    """Build a catalog's index (or extend it with a delta) through the same service as
    POST /api/v1/catalogs/<catalog>/indexes; the maintenance worker runs the job."""
    from shared.schemas.catalogs import IndexRequest
    from shared.services.submission import submit_index

    settings = _database_ready()
    req = IndexRequest.model_validate({"mode": args.mode, "space": args.space,
                                       "params": json.loads(args.params) if args.params else None})
    description, _ = submit_index(catalog=args.catalog, space=req.space, mode=req.mode,
                                  params=req.build_params(settings.exact_index_below))
    print(json.dumps(description, indent=2))
    return 0


def cmd_similar(args) -> int:
    """The catalog items most like an image (or an item), as POST /api/v1/similar answers: the image is embedded by
    a worker consuming the queries queue, the index is searched here."""
    from shared.schemas.catalogs import SimilarQuery
    from shared.services.similar import encode_image, new_holder, search

    settings = _database_ready()
    query = {"catalog": args.catalog, "k": args.k, "space": args.space, "category": args.category,
             "category_from": args.category_from}
    if args.item:
        query["item_id"] = args.image
    else:
        query["image_base64"] = encode_image(Path(args.image).read_bytes())
    answer = search(settings, [SimilarQuery.model_validate(query)], new_holder())[0]
    print(json.dumps(answer, indent=2))
    return 0


def cmd_datasets_check(args) -> int:
    from shared.images.datasets import DatasetSpec, check_dataset

    settings = _settings()
    spec = DatasetSpec(path=args.path, image_column=args.image_column, id_column=args.id_column,
                       target_columns=_parse_list(args.target_columns) or [], label_column=args.label_column)
    report = check_dataset(settings.data_roots, spec, max_pixels=settings.max_image_pixels, salt=args.salt,
                           sample=args.sample)
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_schedules_create(args) -> int:
    """A schedule from JSON, validated as POST /api/v1/schedules validates it."""
    from shared.core.db import session_scope
    from shared.schemas.training import ScheduleRequest
    from shared.services import schedules

    _database_ready()
    req = ScheduleRequest.model_validate(_read_json(args.request))
    with session_scope() as session:
        row = schedules.create_schedule(session, name=req.name, cron=req.cron, timezone_name=req.timezone,
                                        model_name=req.model, train=req.train_template(),
                                        gate=req.gate.model_dump(mode="json") if req.gate else None,
                                        enabled=req.enabled)
        print(json.dumps(schedules.schedule_json(session, row), indent=2))
    return 0


def cmd_schedules_list(args) -> int:
    from shared.core.db import session_scope
    from shared.services import schedules

    _database_ready()
    with session_scope() as session:
        for row in schedules.list_schedules(session):
            d = schedules.schedule_json(session, row)
            print(f"{d['id']}\t{d['name']}\t{d['cron']} {d['timezone']}\t{d['model']}\tnext {d['next_slot']}"
                  f"\t{'enabled' if d['enabled'] else 'disabled'}")
    return 0


def cmd_tokens_create(args) -> int:
    from shared.core.db import session_scope
    from shared.services import tokens

    _database_ready()
    with session_scope() as session:
        row, secret = tokens.create_token(session, args.name, args.scopes)
        body = tokens.token_json(row)
    print(json.dumps({**body, "token": secret}, indent=2))
    print("store the token now: it is not kept and cannot be shown again", file=sys.stderr)
    return 0


def cmd_tokens_list(args) -> int:
    from shared.core.db import session_scope
    from shared.services import tokens

    _database_ready()
    with session_scope() as session:
        for t in tokens.list_tokens(session):
            state = f"revoked {t['revoked_at']}" if t["revoked_at"] else f"last used {t['last_used_at'] or 'never'}"
            print(f"{t['id']}\t{t['name']}\t{','.join(t['scopes'])}\t{state}")
    return 0


def cmd_tokens_revoke(args) -> int:
    from shared.core.db import session_scope
    from shared.services import tokens

    _database_ready()
    with session_scope() as session:
        row = tokens.revoke_token(session, args.id)
        print(f"token {row.id} ({row.name}) revoked")
    return 0


def cmd_demo(args) -> int:
    from shared.tools.demo import run_demo
    from worker.training.architectures import vgg_regressor

    return run_demo(_settings(), vgg_regressor, images=args.images, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgq", description="Asynchronous scoring and fine-tuning of image models")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run web + worker on the embedded default and score a synthetic catalog")
    demo.add_argument("--images", type=int, default=300)
    demo.add_argument("--port", type=int, default=8765)
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the HTTP API (gunicorn)")
    serve.add_argument("--host", help="default: IMGQ_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: IMGQ_PORT (8000)")
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=4)
    serve.add_argument("--access-log", action="store_true",
                       help="gunicorn's access log too (raw URLs); the app logs one line per request anyway")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a scoring worker pinned to one GPU or the CPU")
    where = worker.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, help="GPU index to pin this worker to")
    where.add_argument("--cpu", action="store_true", help="run on the CPU (the default without --gpu)")
    worker.add_argument("--queues", help="comma-separated queues (default: score,train,queries)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--metrics-port", type=int, help="serve /metrics on this port (default: IMGQ_METRICS_PORT; "
                                                          "0: none)")
    worker.set_defaults(func=cmd_worker)

    maintenance = sub.add_parser("maintenance", help="run the sweeper and schedule ticks (the maintenance queue)")
    maintenance.add_argument("--beat", action="store_true", help="also run the periodic scheduler in this process")
    maintenance.add_argument("--loglevel", default="INFO")
    maintenance.add_argument("--metrics-port", type=int, help="serve /metrics, with the queues' depth and age, on "
                                                               "this port (default: IMGQ_METRICS_PORT; 0: none)")
    maintenance.set_defaults(func=cmd_maintenance)

    beat = sub.add_parser("beat", help="run the periodic scheduler (sweeper)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=cmd_beat)

    flower = sub.add_parser("flower", help="run Celery Flower, the task monitor (needs the flower extra)")
    flower.add_argument("--port", type=int, default=5555)
    flower.set_defaults(func=cmd_flower)

    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply all migrations").set_defaults(func=cmd_db_upgrade)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command",
                                                                               required=True)
    imp = models.add_parser("import", help="register a .keras file as a new version")
    imp.add_argument("file")
    imp.add_argument("--name", required=True, type=_name, help="letters, digits, '-', '_', '.'; 1-100 characters")
    imp.add_argument("--task", required=True, choices=TASKS)
    imp.add_argument("--input-size", type=int)
    imp.add_argument("--input-height", type=int)
    imp.add_argument("--input-width", type=int)
    imp.add_argument("--resize-mode", default="stretch", choices=RESIZE_MODES)
    imp.add_argument("--pixel-scale", default="unit", choices=PIXEL_SCALES)
    imp.add_argument("--class-names", help="comma-separated, or a JSON list")
    imp.add_argument("--output-names", help="comma-separated, or a JSON list")
    imp.add_argument("--target-transform", default="none",
                     help="none, log1p, log1p_arctan, or JSON such as {\"kind\":\"standardise\",\"mean\":3,\"std\":2}")
    imp.add_argument("--description")
    imp.add_argument("--promote", action=argparse.BooleanOptionalAction, default=None,
                     help="point the production alias at it (default: only for a name's first version)")
    imp.set_defaults(func=cmd_models_import)
    lst = models.add_parser("list", help="production versions, or all versions of NAME")
    lst.add_argument("name", nargs="?")
    lst.set_defaults(func=cmd_models_list)
    prom = models.add_parser("promote", help="point an alias (production by default) at a version")
    prom.add_argument("name", type=_name)
    prom.add_argument("version", type=int)
    prom.add_argument("--alias", default="production", type=_alias)
    prom.set_defaults(func=cmd_models_promote)
    rb = models.add_parser("rollback", help="point production back at the version before its last move")
    rb.add_argument("name")
    rb.set_defaults(func=cmd_models_rollback)

    train = sub.add_parser("train", help="submit a train job from a JSON request (as POST /api/v1/jobs/train)")
    train.add_argument("request", help="a JSON file, or - for standard input")
    train.set_defaults(func=cmd_train)

    datasets = sub.add_parser("datasets", help="training data").add_subparsers(dest="datasets_command",
                                                                                required=True)
    check = datasets.add_parser("check", help="rows, missing and unreadable images, duplicates, targets, balance")
    check.add_argument("path", help="a manifest, a glob of manifests, or a crawler folder (inside the data roots)")
    check.add_argument("--image-column", default="image")
    check.add_argument("--id-column")
    check.add_argument("--target-columns", help="comma-separated")
    check.add_argument("--label-column")
    check.add_argument("--salt", default="imgq", help="the model name whose fixed splits to report")
    check.add_argument("--sample", type=int, help="decode at most this many images")
    check.set_defaults(func=cmd_datasets_check)

    toks = sub.add_parser("tokens", help="API tokens").add_subparsers(dest="tokens_command", required=True)
    tcreate = toks.add_parser("create", help="create a token (printed once) with scopes read,score,train,admin")
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--scopes", required=True, help="comma-separated: read, score, train, admin")
    tcreate.set_defaults(func=cmd_tokens_create)
    toks.add_parser("list", help="tokens, their scopes and last use (never the secrets)").set_defaults(
        func=cmd_tokens_list)
    trevoke = toks.add_parser("revoke", help="revoke a token by id")
    trevoke.add_argument("id", type=int)
    trevoke.set_defaults(func=cmd_tokens_revoke)

    sched = sub.add_parser("schedules", help="nightly fine-tunes").add_subparsers(dest="schedules_command",
                                                                                 required=True)
    create = sched.add_parser("create", help="create a schedule from JSON (as POST /api/v1/schedules)")
    create.add_argument("request", help="a JSON file, or - for standard input")
    create.set_defaults(func=cmd_schedules_create)
    sched.add_parser("list", help="schedules and their next slot").set_defaults(func=cmd_schedules_list)
    index = sub.add_parser("index", help="build a catalog's similar-image index, or extend it (--mode delta)")
    index.add_argument("--catalog", required=True, type=_name)
    index.add_argument("--space", help="the embedding space (needed when the catalog has several)")
    index.add_argument("--mode", choices=INDEX_MODES, default="build")
    index.add_argument("--params", help='build parameters as JSON, e.g. \'{"kind": "hnsw", "ef_search": 128}\'')
    index.set_defaults(func=cmd_index)

    sim = sub.add_parser("similar", help="the catalog items most like an image (or, with --item, an item)")
    sim.add_argument("image", help="an image file (or an item id with --item)")
    sim.add_argument("--catalog", required=True, type=_name)
    sim.add_argument("--k", type=int, default=10)
    sim.add_argument("--item", action="store_true", help="IMAGE is an item id of the catalog")
    sim.add_argument("--space", help="the embedding space (default: the catalog's latest index)")
    which = sim.add_mutually_exclusive_group()
    which.add_argument("--category", help="only items of this category")
    which.add_argument("--category-from", help="a classification model whose label is the category")
    sim.set_defaults(func=cmd_similar)
    return p


def main(argv: list[str] | None = None) -> int:
    """Errors a user can mend (bad input, unknown names) print one line and exit with 2."""
    from pydantic import ValidationError

    from shared.core.errors import ImgqError

    args = build_parser().parse_args(argv)
    if getattr(args, "input_size", None) is None and getattr(args, "models_command", None) == "import" \
            and not (args.input_height and args.input_width):
        print("error: give --input-size, or --input-height and --input-width", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except ImgqError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
