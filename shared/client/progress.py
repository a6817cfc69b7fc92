"""Watching a job until it ends: a live bar on a terminal (rich), plain lines otherwise (a log, a pipe, cron); and
the same for a folder going up (`uploading`: a byte bar, or one line per part of an upload in parts).

Item jobs (score, embed) show done/total, images/s, ETA and the failed count (while `preparing`, the manifest rows
read so far); train jobs the epoch, the step and
the latest epoch's loss and metrics (from /jobs/<id>/epochs). Lines carry no control characters; a state line is
written only when something changed (at most every `line_every` seconds), so a log of a long job stays short, and
a train job's finished epochs each get their own line (all of them, however many ended between two polls).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from shared.client.api import FINAL_STATUSES, Client, job_id_of

ITEM_KINDS = ("score", "embed")  # jobs of items: done/total, images/s, ETA, failures


def is_terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def _figure(value, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def latest_epoch(client: Client, job: dict) -> dict | None:
    epochs = client.epochs(job).get("epochs") or []
    return epochs[-1] if epochs else None


def epoch_figures(epoch: dict | None) -> str:
    """'loss 0.412 val_loss 0.455 accuracy 0.91' from an epoch's row (its own number and seconds left out)."""
    if not epoch:
        return ""
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in epoch.items() if k not in ("epoch", "seconds"))


def describe(job: dict, epoch: dict | None = None) -> str:
    """One line saying where the job is."""
    p = job.get("progress") or {}
    head = f"job {job['id']} {job['kind']} {job['status']}"
    if job["kind"] == "train":
        return (f"{head}: {p.get('phase') or '-'} epoch {p.get('epoch') or 0}/{p.get('epochs') or '?'}"
                f" eta {_figure(p.get('eta_seconds'), '{:.0f}s')} {epoch_figures(epoch)}").rstrip()
    if job["status"] == "preparing":  # a large manifest being read into items: its total is not known yet
        return f"{head}: {p.get('rows_read', 0)} manifest rows read"
    if job["kind"] not in ITEM_KINDS:  # an import or an index build: its phase, or how far it is
        return f"{head}: {p['phase']}" if p.get("phase") else \
            f"{head}: {p['done']}/{p['total']}" if "total" in p else head
    return (f"{head}: {p['done']}/{p['total']} ({p['percent']:.1f}%) {_figure(p.get('images_per_second'))} images/s"
            f" eta {_figure(p.get('eta_seconds'), '{:.0f}s')} failed {p['failed']}")


def watch(client: Client, job: dict | str, *, poll: float = 1.0, timeout: float | None = None,
          out: TextIO | None = None, line_every: float = 10.0) -> dict:
    """Follow the job to its end and return its final state; a bar when `out` is a terminal."""
    out = out or sys.stdout
    if is_terminal(out):
        return _watch_bar(client, job, poll=poll, timeout=timeout, out=out)
    return _watch_lines(client, job, poll=poll, timeout=timeout, out=out, line_every=line_every)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _expired(deadline: float | None, job: dict, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job['id']} is still {job['status']} after {timeout} s")


def _watch_lines(client: Client, job, *, poll, timeout, out, line_every) -> dict:
    deadline, last_line, last_at, printed_epoch = _deadline(timeout), None, 0.0, 0
    while True:
        current = client.job(job)
        epochs = (client.epochs(current).get("epochs") or []) if current["kind"] == "train" else []
        for row in epochs:  # every finished epoch once, however many ended between two polls
            if row["epoch"] > printed_epoch:
                print(epoch_line(current, row), file=out, flush=True)
                printed_epoch = row["epoch"]
        line = describe(current, epochs[-1] if epochs else None)
        final = current["status"] in FINAL_STATUSES
        if line != last_line and (final or time.monotonic() - last_at >= line_every or last_line is None):
            print(line, file=out, flush=True)
            last_line, last_at = line, time.monotonic()
        if final:
            return current
        _expired(deadline, current, timeout)
        time.sleep(poll)


def epoch_line(job: dict, epoch: dict) -> str:
    """'job <id> train epoch 2/5: loss 0.41 val_loss 0.45 accuracy 0.91 (3.2 s)': one finished epoch."""
    total = (job.get("progress") or {}).get("epochs") or "?"
    return (f"job {job['id']} train epoch {epoch['epoch']}/{total}: {epoch_figures(epoch)}"
            f" ({_figure(epoch.get('seconds'), '{:.1f} s')})")


def _watch_bar(client: Client, job, *, poll, timeout, out) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

    deadline = _deadline(timeout)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TextColumn("eta {task.fields[eta]}"),
               TextColumn("{task.fields[extra]}")]
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task(f"job {job_id_of(job)[:8]}", total=None, rate="", eta="-", extra="")
        while True:
            current = client.job(job)
            p = current.get("progress") or {}
            if current["kind"] == "train":
                extra = epoch_figures(latest_epoch(client, current))
                bar.update(task, total=p.get("epochs") or None, completed=p.get("epoch") or 0,
                           rate=p.get("phase") or "", eta=_figure(p.get("eta_seconds"), "{:.0f}s"), extra=extra)
            elif current["status"] == "preparing":
                bar.update(task, total=None, completed=0, rate=f"{p.get('rows_read', 0)} rows read", extra="preparing")
            elif "total" in p:
                bar.update(task, total=p["total"], completed=p["done"],
                           rate=f"{_figure(p.get('images_per_second'))} img/s",
                           eta=_figure(p.get("eta_seconds"), "{:.0f}s"), extra=f"failed {p['failed']}")
            if current["status"] in FINAL_STATUSES:
                bar.update(task, description=f"job {current['id'][:8]} {current['status']}")
                return current
            _expired(deadline, current, timeout)
            time.sleep(poll)


@contextmanager
def uploading(out: TextIO | None = None) -> Iterator[tuple]:
    """(on_upload, on_part) for Client.score: a bar of the bytes sent when `out` (stderr) is a terminal; otherwise
    no byte progress and one plain line per part of an upload in parts (a one-request upload prints nothing)."""
    out = out or sys.stderr
    if not is_terminal(out):
        def line(n: int, parts: int, answer: dict) -> None:
            upload = answer["upload"]
            print(f"uploaded part {n}/{parts}: {answer['added']} files added, {answer['repeated']} already there; "
                  f"upload {upload['id']} holds {upload['files']} files, {upload['bytes'] / 2**20:,.1f} MiB",
                  file=out, flush=True)
        yield None, line
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TextColumn("{task.fields[parts]}"), console=Console(file=out), transient=False) as bar:
        task = bar.add_task("uploading", total=None, parts="")
        yield (lambda sent, total: bar.update(task, completed=sent, total=total),
               lambda n, parts, answer: bar.update(task, parts=f"part {n}/{parts}"))
