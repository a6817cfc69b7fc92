"""The `imgq` commands that talk to a server over HTTP only (login, score, jobs, train, models, schedules, index,
similar, datasets): they need the server's address and a token, never a database.

Every command takes --server/--token (else IMGQ_SERVER/IMGQ_TOKEN, else the file `imgq login` wrote) and --json
(the server's JSON, for scripts). Without --json, a terminal gets tables and live bars, anything else plain lines.
Exit codes: shared/client/errors.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

from shared.client import config
from shared.client.api import Client
from shared.client.errors import EXIT_JOB_FAILED, EXIT_OK, ApiError, ClientError
from shared.client.progress import describe, is_terminal, uploading, watch
from shared.client.uploads import PART_BYTES, PART_FILES
from shared.core.names import argparse_alias, argparse_name
from shared.core.states import JobKind, JobStatus
from shared.core.vocab import INDEX_MODES, RESULT_STATUSES

EXIT_STOPPED_WATCHING = 130  # Ctrl-C, the job left running (the shell's code for SIGINT)


# ---------------------------------------------------------------------------------------------- output
def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def _table(rows: list[dict], columns: list[str]) -> None:
    """Rows as a rich table on a terminal, tab-separated lines (with a header) otherwise."""
    if is_terminal(sys.stdout):
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
        Console().print(table)
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join("" if row.get(c) is None else str(row.get(c)) for c in columns))


def _show(args, value, rows: list[dict] | None = None, columns: list[str] | None = None) -> None:
    if args.json or rows is None:
        _print_json(value)
    else:
        _table(rows, columns)


def _client(args) -> Client:
    return Client.from_config(args.server, args.token)


# ---------------------------------------------------------------------------------------------- waiting
def _job_row(job: dict) -> dict:
    p = job.get("progress") or {}
    model = job.get("model") or {}
    return {"id": job["id"], "kind": job["kind"], "status": job["status"],
            "model": model.get("ref") or model.get("result") or model.get("name") or job.get("catalog"),
            "done": f"{p['done']}/{p['total']}" if "total" in p else
            (f"epoch {p.get('epoch') or 0}/{p.get('epochs') or '?'}" if job["kind"] == "train" else ""),
            "failed": p.get("failed"), "created": (job.get("timings") or {}).get("created_at")}


def _ask_cancel(job_id: str) -> bool:
    if not (is_terminal(sys.stdin) and is_terminal(sys.stderr)):
        return False
    try:
        answer = input(f"\ncancel job {job_id}? [y/N] (no: stop watching, the job goes on) ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _wait(client: Client, job: dict, args) -> int:
    """Watch until the job ends; Ctrl-C asks whether to cancel it or only stop watching. The exit code."""
    try:
        final = client.wait(job, poll=args.poll) if args.json else watch(client, job, poll=args.poll)
    except KeyboardInterrupt:
        if _ask_cancel(job["id"]):
            final = client.cancel(job)
            print(f"job {job['id']} canceled", file=sys.stderr)
        else:
            print(f"stopped watching; the job goes on: imgq jobs watch {job['id']}", file=sys.stderr)
            return EXIT_STOPPED_WATCHING
    if args.json:
        _print_json(final)
    else:
        _summary(client, final)
    return EXIT_OK if final["status"] == "succeeded" else EXIT_JOB_FAILED


def _summary(client: Client, job: dict) -> None:
    """The failed items by reason and where the results are (the watcher printed the final state)."""
    if job.get("error"):
        print(f"error: {job['error']}")
    p = job.get("progress") or {}
    if p.get("failed"):
        reasons = Counter(r.get("error") or "?" for r in client.iter_results(job, status="error"))
        print(f"failed items by reason ({p['failed']}):")
        for reason, n in reasons.most_common(10):
            print(f"  {n:>7}  {reason}")
        if len(reasons) > 10:
            print(f"  ... and {len(reasons) - 10} other reasons")
    if "results" in (job.get("links") or {}):
        print(f"results: {client.server}{job['links']['results']}  (imgq jobs results {job['id']} --out FILE)")
    if job["kind"] == "train" and (job.get("model") or {}).get("result"):
        print(f"new version: {job['model']['result']}")


def _after_submit(client: Client, job: dict, args) -> int:
    if getattr(args, "wait", False):
        code = _wait(client, job, args)
        if getattr(args, "out", None) and code != EXIT_STOPPED_WATCHING:
            _download(client, job, args.out)
        return code
    _show(args, job) if args.json else print(describe(job))
    return EXIT_OK


def _download(client: Client, job: dict, out: str) -> None:
    rows = client.download_results(job, out)
    print(f"{rows} results written to {out}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- commands
def cmd_login(args) -> int:
    """Check the server and the token, then remember both."""
    client = Client(args.server.rstrip("/"), args.token)
    next(iter(client.jobs(limit=1)), None)  # 401/403/unreachable surface here, before anything is written
    path = config.config_path()
    config.write_config(path, client.server, args.token)
    print(f"logged in to {client.server}; settings in {path}")
    return EXIT_OK


def cmd_score(args) -> int:
    if bool(args.paths) == bool(args.manifest):
        raise ClientError("give image files or folders, or --manifest (a file on the server's data roots)")
    client = _client(args)
    with (uploading() if args.paths and not args.json else nullcontext((None, None))) as (on_upload, on_part):
        job = client.score(args.paths, model=args.model, manifest=args.manifest, id_column=args.id_column,
                           image_column=args.image_column, cache=args.cache, idempotency_key=args.idempotency_key,
                           on_upload=on_upload, on_part=on_part, part_files=args.part_files,
                           part_bytes=int(args.part_mb * 2**20))
    return _after_submit(client, job, args)


def cmd_jobs_list(args) -> int:
    jobs = list(_client(args).jobs(status=args.status, kind=args.kind, model=args.model, limit=args.limit))
    _show(args, jobs, [_job_row(j) for j in jobs], ["id", "kind", "status", "model", "done", "failed", "created"])
    return EXIT_OK


def cmd_jobs_show(args) -> int:
    job = _client(args).job(args.job)
    _print_json(job) if args.json else print(describe(job))
    return EXIT_OK


def cmd_jobs_watch(args) -> int:
    client = _client(args)
    return _wait(client, client.job(args.job), args)


def cmd_jobs_results(args) -> int:
    client = _client(args)
    if args.out:
        _download(client, {"id": args.job}, args.out)
        return EXIT_OK
    rows = list(client.iter_results(args.job, status=args.status))
    _show(args, rows, [{**r, "outputs": json.dumps(r.get("outputs"))} for r in rows],
          ["id", "status", "outputs", "error"])
    return EXIT_OK


def cmd_jobs_cancel(args) -> int:
    job = _client(args).cancel(args.job)
    _print_json(job) if args.json else print(describe(job))
    return EXIT_OK


def _read_json(path: str) -> dict:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ClientError(f"{path}: not JSON ({exc})") from None


def cmd_train(args) -> int:
    client = _client(args)
    job = client.train(_read_json(args.request), idempotency_key=args.idempotency_key)
    return _after_submit(client, job, args)


def _version_row(v: dict) -> dict:
    metrics = v.get("holdout_metrics") or v.get("metrics") or {}
    return {"ref": f"{v.get('name')}@{v.get('version')}", "task": v.get("task"),
            "aliases": ",".join(v.get("aliases") or []), "created": v.get("created_at"),
            "parent": v.get("parent"), "metrics": json.dumps(metrics) if metrics else ""}


def cmd_models_list(args) -> int:
    client = _client(args)
    if args.name:
        versions = list(client.versions(args.name))
        _show(args, versions, [_version_row(v) for v in versions],
              ["ref", "task", "aliases", "created", "parent", "metrics"])
        return EXIT_OK
    models = list(client.models())
    columns = sorted({k for m in models for k, v in m.items() if not isinstance(v, (dict, list))},
                     key=lambda k: (k != "name", k))
    _show(args, models, models, columns)
    return EXIT_OK


def cmd_models_show(args) -> int:
    client = _client(args)
    if args.version is None:
        versions = list(client.versions(args.name))
        _print_json(versions) if args.json else _table([_version_row(v) for v in versions],
                                                      ["ref", "task", "aliases", "created", "parent", "metrics"])
    else:
        _print_json(client.version(args.name, args.version))
    return EXIT_OK


def cmd_models_promote(args) -> int:
    body = _client(args).promote(args.name, args.version, args.alias)
    _print_json(body) if args.json else print(f"{args.name}@{args.alias} -> version {args.version}")
    return EXIT_OK


def cmd_models_rollback(args) -> int:
    body = _client(args).rollback(args.name)
    _print_json(body) if args.json else print(f"{args.name}: production -> {body.get('version')}")
    return EXIT_OK


def cmd_models_import(args) -> int:
    client = _client(args)
    fields = {"input_size": args.input_size, "input_height": args.input_height, "input_width": args.input_width,
              "resize_mode": args.resize_mode, "pixel_scale": args.pixel_scale, "class_names": args.class_names,
              "output_names": args.output_names, "target_transform": args.target_transform,
              "description": args.description, "promote": args.promote}
    job = client.import_model(args.file, name=args.name, task=args.task, **fields)
    return _after_submit(client, job, args)


def cmd_schedules_list(args) -> int:
    rows = list(_client(args).schedules())
    _show(args, rows, rows, ["id", "name", "cron", "timezone", "model", "enabled", "next_slot"])
    return EXIT_OK


def cmd_schedules_show(args) -> int:
    _print_json(_client(args).schedule(args.id))
    return EXIT_OK


def cmd_schedules_create(args) -> int:
    _print_json(_client(args).create_schedule(_read_json(args.request)))
    return EXIT_OK


def cmd_schedules_enable(args) -> int:
    body = _client(args).set_schedule_enabled(args.id, args.schedules_command == "enable")
    _print_json(body) if args.json else print(f"schedule {body['id']} {'enabled' if body['enabled'] else 'disabled'}")
    return EXIT_OK


def cmd_schedules_delete(args) -> int:
    _client(args).delete_schedule(args.id)
    print(f"schedule {args.id} deleted")
    return EXIT_OK


def cmd_index(args) -> int:
    client = _client(args)
    body = {"mode": args.mode, **({"space": args.space} if args.space else {}),
            **({"params": json.loads(args.params)} if args.params else {})}
    job = client.post(f"/api/v1/catalogs/{args.catalog}/indexes", body, idempotency_key=args.idempotency_key)
    return _after_submit(client, job, args)


def cmd_similar(args) -> int:
    client = _client(args)
    kwargs = dict(catalog=args.catalog, k=args.k, category=args.category, category_from=args.category_from,
                  space=args.space)
    if args.item:
        answer = client.similar(item_id=args.image, **kwargs)
    elif args.uri:
        answer = client.similar(image_uri=args.image, **kwargs)
    else:
        answer = client.similar(args.image, **kwargs)
    hits = answer.get("results") or answer.get("neighbors") or []
    _show(args, answer, hits, ["id", "score", "category"])
    return EXIT_OK


def cmd_datasets_check(args) -> int:
    body = {"path": args.path, "image_column": args.image_column, "id_column": args.id_column,
            "target_columns": [c.strip() for c in args.target_columns.split(",")] if args.target_columns else [],
            "label_column": args.label_column, "salt": args.salt, "sample": args.sample}
    _print_json(_client(args).post("/api/v1/datasets/check", {k: v for k, v in body.items() if v is not None}))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser
def remote_options() -> argparse.ArgumentParser:
    """--server, --token, --json: a parent parser of every remote command."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--server", help="the imgq server, e.g. http://imgq:8000 (default: IMGQ_SERVER, then imgq login)")
    p.add_argument("--token", help="an API token (default: IMGQ_TOKEN, then imgq login)")
    p.add_argument("--json", action="store_true", help="print the server's JSON (for scripts)")
    return p


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be above 0")
        return value
    return parse


def _waiting(p: argparse.ArgumentParser, out: bool = False) -> None:
    p.add_argument("--wait", action="store_true", help="follow the job to its end with a progress bar")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls while waiting")
    if out:
        p.add_argument("--out", help="with --wait: download the results to FILE (.csv or .parquet)")


def add_remote_commands(sub, choices: dict) -> None:
    """The remote commands, on the `imgq` parser's subparsers; `choices` holds the vocabularies (tasks, ...)."""
    remote = remote_options()
    login = sub.add_parser("login", help="remember a server and a token (~/.config/imgq/config.toml)")
    login.add_argument("--server", required=True)
    login.add_argument("--token", required=True)
    login.set_defaults(func=cmd_login)

    score = sub.add_parser("score", parents=[remote], help="score images (files, folders) or a server manifest")
    score.add_argument("paths", nargs="*", help="image files or folders, uploaded (item id: the path in the folder)")
    score.add_argument("--model", required=True, help="a model name, name@version or name@alias")
    score.add_argument("--manifest", help="a manifest on the server's data roots, instead of uploading files")
    score.add_argument("--id-column", default="id")
    score.add_argument("--image-column", default="image")
    score.add_argument("--no-cache", dest="cache", action="store_false", help="score photos scored before again")
    score.add_argument("--idempotency-key", help="retrying with the same key never makes a second job")
    score.add_argument("--part-files", type=_positive(int), default=PART_FILES,
                       help="a folder of more files than this goes up in parts of at most this many files")
    score.add_argument("--part-mb", type=_positive(float), default=PART_BYTES / 2**20,
                       help="... or of more MiB than this, in parts of at most this many MiB")
    _waiting(score, out=True)
    score.set_defaults(func=cmd_score)

    jobs = sub.add_parser("jobs", help="list, show, watch, cancel jobs; their results").add_subparsers(
        dest="jobs_command", required=True)
    lst = jobs.add_parser("list", parents=[remote], help="jobs, newest first")
    lst.add_argument("--status", choices=[s.value for s in JobStatus])
    lst.add_argument("--kind", choices=[k.value for k in JobKind])
    lst.add_argument("--model")
    lst.add_argument("--limit", type=int, default=20)
    lst.set_defaults(func=cmd_jobs_list)
    for verb, func, text in (("show", cmd_jobs_show, "a job's state"), ("cancel", cmd_jobs_cancel, "cancel a job"),
                             ("watch", cmd_jobs_watch, "follow a job to its end")):
        p = jobs.add_parser(verb, parents=[remote], help=text)
        p.add_argument("job")
        if verb == "watch":
            p.add_argument("--poll", type=float, default=1.0)
        p.set_defaults(func=func)
    res = jobs.add_parser("results", parents=[remote], help="a job's results (or --out FILE: .csv, .parquet)")
    res.add_argument("job")
    res.add_argument("--out")
    res.add_argument("--status", choices=RESULT_STATUSES)
    res.set_defaults(func=cmd_jobs_results)

    train = sub.add_parser("train", parents=[remote], help="submit a train job from a JSON request")
    train.add_argument("request", help="a JSON file, or - for standard input")
    train.add_argument("--idempotency-key")
    _waiting(train)
    train.set_defaults(func=cmd_train)

    _add_models(sub, remote, choices)
    _add_schedules(sub, remote)

    index = sub.add_parser("index", parents=[remote], help="build a catalog's similar-image index (or a delta)")
    index.add_argument("--catalog", required=True, type=argparse_name)
    index.add_argument("--space", help="the embedding space (needed when the catalog has several)")
    index.add_argument("--mode", choices=INDEX_MODES, default="build")
    index.add_argument("--params", help='build parameters as JSON, e.g. \'{"kind": "hnsw", "ef_search": 128}\'')
    index.add_argument("--idempotency-key")
    _waiting(index)
    index.set_defaults(func=cmd_index)

    sim = sub.add_parser("similar", parents=[remote], help="the catalog items most like an image")
    sim.add_argument("image", help="an image file (or with --item an item id, with --uri a server path)")
    sim.add_argument("--catalog", required=True, type=argparse_name)
    sim.add_argument("--k", type=int, default=10)
    how = sim.add_mutually_exclusive_group()
    how.add_argument("--item", action="store_true", help="IMAGE is an item id of the catalog")
    how.add_argument("--uri", action="store_true", help="IMAGE is a path on the server's data roots")
    sim.add_argument("--space")
    which = sim.add_mutually_exclusive_group()
    which.add_argument("--category")
    which.add_argument("--category-from", help="a classification model whose label is the category")
    sim.set_defaults(func=cmd_similar)

    datasets = sub.add_parser("datasets", help="training data").add_subparsers(dest="datasets_command",
                                                                                required=True)
    check = datasets.add_parser("check", parents=[remote], help="rows, unreadable images, duplicates, balance")
    check.add_argument("path", help="a manifest, a glob of manifests, or a crawler folder (on the data roots)")
    check.add_argument("--image-column", default="image")
    check.add_argument("--id-column")
    check.add_argument("--target-columns", help="comma-separated")
    check.add_argument("--label-column")
    check.add_argument("--salt", help="the model name whose fixed splits to report")
    check.add_argument("--sample", type=int, help="decode at most this many images")
    check.set_defaults(func=cmd_datasets_check)


def _add_models(sub, remote, choices: dict) -> None:
    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command",
                                                                               required=True)
    lst = models.add_parser("list", parents=[remote], help="models, or the versions of NAME")
    lst.add_argument("name", nargs="?")
    lst.set_defaults(func=cmd_models_list)
    show = models.add_parser("show", parents=[remote], help="a model's versions, or one version")
    show.add_argument("name")
    show.add_argument("version", type=int, nargs="?")
    show.set_defaults(func=cmd_models_show)
    prom = models.add_parser("promote", parents=[remote], help="point an alias (production) at a version")
    prom.add_argument("name", type=argparse_name)
    prom.add_argument("version", type=int)
    prom.add_argument("--alias", default="production", type=argparse_alias)
    prom.set_defaults(func=cmd_models_promote)
    rb = models.add_parser("rollback", parents=[remote], help="production back to the version before its last move")
    rb.add_argument("name")
    rb.set_defaults(func=cmd_models_rollback)
    imp = models.add_parser("import", parents=[remote], help="upload a .keras file as a new version (an import job)")
    imp.add_argument("file")
    imp.add_argument("--name", required=True, type=argparse_name,
                     help="letters, digits, '-', '_', '.'; 1-100 characters")
    imp.add_argument("--task", required=True, choices=choices["tasks"])
    imp.add_argument("--input-size", type=int)
    imp.add_argument("--input-height", type=int)
    imp.add_argument("--input-width", type=int)
    imp.add_argument("--resize-mode", choices=choices["resize_modes"])
    imp.add_argument("--pixel-scale", choices=choices["pixel_scales"])
    imp.add_argument("--class-names", help="comma-separated")
    imp.add_argument("--output-names", help="comma-separated")
    imp.add_argument("--target-transform", help='none, log1p, log1p_arctan, or JSON {"kind": "standardise", ...}')
    imp.add_argument("--description")
    imp.add_argument("--promote", action=argparse.BooleanOptionalAction, default=None)
    _waiting(imp)
    imp.set_defaults(func=cmd_models_import)


def _add_schedules(sub, remote) -> None:
    sched = sub.add_parser("schedules", help="nightly fine-tunes").add_subparsers(dest="schedules_command",
                                                                                 required=True)
    sched.add_parser("list", parents=[remote], help="schedules and their next slot").set_defaults(
        func=cmd_schedules_list)
    for verb, func, text in (("show", cmd_schedules_show, "one schedule"),
                             ("enable", cmd_schedules_enable, "enable a schedule"),
                             ("disable", cmd_schedules_enable, "pause a schedule"),
                             ("delete", cmd_schedules_delete, "delete a schedule (admin)")):
        p = sched.add_parser(verb, parents=[remote], help=text)
        p.add_argument("id", type=int)
        p.set_defaults(func=func)
    create = sched.add_parser("create", parents=[remote], help="create a schedule from JSON")
    create.add_argument("request", help="a JSON file, or - for standard input")
    create.set_defaults(func=cmd_schedules_create)


def run(args) -> int:
    """Run a remote command; a client error prints one line (and the problems) and exits with its code."""
    try:
        return args.func(args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for problem in exc.problems[1:]:
            print(f"  {problem.get('field')}: {problem.get('message')}", file=sys.stderr)
        return exc.exit_code
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
