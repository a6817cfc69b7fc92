"""The `imgq` command, in two halves.

Remote commands (login, score, jobs, train, models, schedules, index, similar, datasets) talk to a server over HTTP
only, with --server/--token (shared/client/commands.py): they run on a laptop, a crawler box or in cron, with no
database. Server-side commands (demo, serve, worker, maintenance, beat, flower, db, tokens) run where the database
and the broker are.

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

from shared.client import commands
from shared.client.commands import add_remote_commands
from shared.core.vocab import PIXEL_SCALES, RESIZE_MODES, TASKS

SERVER_SIDE = "[server side]"  # in --help: runs where the database and broker are


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

    return run_demo(_settings(), vgg_regressor, images=args.images, port=args.port, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgq", description="Asynchronous scoring and fine-tuning of image models. Remote commands take "
        "--server/--token (or IMGQ_SERVER/IMGQ_TOKEN, or `imgq login`); server-side commands read DATABASE_URL and "
        "BROKER_URL (the embedded default without them).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_remote_commands(sub, {"tasks": TASKS, "resize_modes": RESIZE_MODES, "pixel_scales": PIXEL_SCALES})

    demo = sub.add_parser("demo", help="score a synthetic catalog on the embedded default " + SERVER_SIDE)
    demo.add_argument("--images", type=int, default=300)
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--keep", action="store_true",
                      help="keep serving after the demo job (the dashboard's URL is printed) until Ctrl-C")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the HTTP API (gunicorn) " + SERVER_SIDE)
    serve.add_argument("--host", help="default: IMGQ_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: IMGQ_PORT (8000)")
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=4)
    serve.add_argument("--access-log", action="store_true",
                       help="gunicorn's access log too (raw URLs); the app logs one line per request anyway")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a scoring worker pinned to one GPU or the CPU " + SERVER_SIDE)
    where = worker.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, help="GPU index to pin this worker to")
    where.add_argument("--cpu", action="store_true", help="run on the CPU (the default without --gpu)")
    worker.add_argument("--queues", help="comma-separated queues (default: score,train,queries)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--metrics-port", type=int, help="serve /metrics on this port (default: IMGQ_METRICS_PORT; "
                                                          "0: none)")
    worker.set_defaults(func=cmd_worker)

    maintenance = sub.add_parser("maintenance", help="run the sweeper and schedule ticks " + SERVER_SIDE)
    maintenance.add_argument("--beat", action="store_true", help="also run the periodic scheduler in this process")
    maintenance.add_argument("--loglevel", default="INFO")
    maintenance.add_argument("--metrics-port", type=int, help="serve /metrics, with the queues' depth and age, on "
                                                               "this port (default: IMGQ_METRICS_PORT; 0: none)")
    maintenance.set_defaults(func=cmd_maintenance)

    beat = sub.add_parser("beat", help="run the periodic scheduler (sweeper) " + SERVER_SIDE)
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(func=cmd_beat)

    flower = sub.add_parser("flower", help="run Celery Flower (the flower extra) " + SERVER_SIDE)
    flower.add_argument("--port", type=int, default=5555)
    flower.set_defaults(func=cmd_flower)

    db = sub.add_parser("db", help="database migrations " + SERVER_SIDE).add_subparsers(dest="db_command",
                                                                                        required=True)
    db.add_parser("upgrade", help="apply all migrations").set_defaults(func=cmd_db_upgrade)

    toks = sub.add_parser("tokens", help="API tokens " + SERVER_SIDE).add_subparsers(dest="tokens_command",
                                                                                     required=True)
    tcreate = toks.add_parser("create", help="create a token (printed once) with scopes read,score,train,admin")
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--scopes", required=True, help="comma-separated: read, score, train, admin")
    tcreate.set_defaults(func=cmd_tokens_create)
    toks.add_parser("list", help="tokens, their scopes and last use (never the secrets)").set_defaults(
        func=cmd_tokens_list)
    trevoke = toks.add_parser("revoke", help="revoke a token by id")
    trevoke.add_argument("id", type=int)
    trevoke.set_defaults(func=cmd_tokens_revoke)

    return p


def main(argv: list[str] | None = None) -> int:
    """Errors a user can mend (bad input, unknown names) print one line and exit with 2; remote commands exit with
    the codes of shared/client/errors.py."""
    from pydantic import ValidationError

    from shared.core.errors import ImgqError

    args = build_parser().parse_args(argv)
    if args.func.__module__ == commands.__name__:
        return commands.run(args)
    try:
        return args.func(args) or 0
    except ImgqError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
