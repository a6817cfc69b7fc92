"""The reliability report: rows that fault tests record, written as Markdown at the end of a session.

One `FaultReport` lives for the whole pytest session (a session fixture), so rows recorded by every
test module end up in one file, `docs/reliability.md` by default. Under pytest-xdist each worker spools its rows
as JSON and the controller merges them into that one file (tests/conftest.py, `pytest_sessionfinish`).
Invariants: nothing is written unless a row or a randomized run was recorded; the commit is read before the file
is written, and the report's own file does not make the tree count as dirty.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tests.integration.faults.servers import postgres_version, redis_version

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PATH = REPO_ROOT / "docs" / "reliability.md"
VERDICTS = ("pass", "fail")
COLUMNS = ("fault", "case", "recovered in (s)", "items", "lost", "duplicated", "verdict", "notes")


@dataclass
class FaultRow:
    fault: str
    case: str
    recover_seconds: float | None
    items: int
    lost: int
    duplicated: int
    verdict: str
    notes: str = ""


@dataclass
class RandomRun:
    seed: int | str
    faults: list[str]
    verdict: str
    notes: str = ""


@dataclass
class LoadRow:
    endpoint: str
    requests: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: str  # e.g. "202: 812, 429: 3"


LOAD_COLUMNS = ("endpoint", "requests", "per second", "p50 ms", "p95 ms", "p99 ms", "statuses")


@dataclass
class FaultReport:
    rows: list[FaultRow] = field(default_factory=list)
    random_runs: list[RandomRun] = field(default_factory=list)
    load_rows: list[LoadRow] = field(default_factory=list)
    load_notes: str = ""

    def record_load(self, rows: list[LoadRow], notes: str) -> None:
        """The bounded load test's figures: one row per endpoint, and how the run was set up."""
        self.load_rows, self.load_notes = list(rows), notes

    def record(self, *, fault: str, case: str, recover_seconds: float | None, items: int, lost: int,
               duplicated: int, verdict: str, notes: str = "") -> FaultRow:
        """Add one row: which fault was injected into which case, and what the checker found."""
        _check_verdict(verdict)
        for name, value in (("items", items), ("lost", lost), ("duplicated", duplicated)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a count (an int >= 0), not {value!r}")
        row = FaultRow(fault, case, recover_seconds, items, lost, duplicated, verdict, notes)
        self.rows.append(row)
        return row

    def record_random_run(self, seed: int | str, faults: list[str], verdict: str, notes: str = "") -> RandomRun:
        """Add a randomized run: its seed (to replay it), the faults in the order injected, its verdict."""
        _check_verdict(verdict)
        run = RandomRun(seed, list(faults), verdict, notes)
        self.random_runs.append(run)
        return run

    def is_empty(self) -> bool:
        return not self.rows and not self.random_runs and not self.load_rows

    def spool(self, folder: Path, worker: str) -> Path | None:
        """Under pytest-xdist: this worker's rows as JSON in `folder` (shared by the run's workers), for the
        controller to merge (`merged`) and write once; None when nothing was recorded."""
        if self.is_empty():
            return None
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{worker}.json"
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def merged(cls, folder: Path) -> FaultReport:
        """One report of every worker's spooled rows (workers in name order, each in its own order)."""
        report = cls()
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text())
            report.rows += [FaultRow(**r) for r in data["rows"]]
            report.random_runs += [RandomRun(**r) for r in data["random_runs"]]
            if data["load_rows"]:
                report.load_rows, report.load_notes = [LoadRow(**r) for r in data["load_rows"]], data["load_notes"]
        return report

    def write(self, path: Path | str = DEFAULT_PATH, command: str | None = None) -> Path | None:
        """Write the Markdown file (creating its folder); returns its path, or None when nothing was recorded."""
        if self.is_empty():
            return None
        path = Path(path)
        text = self.render(commit=git_commit(ignore=path), command=command)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def render(self, commit: str, command: str | None = None, now: datetime | None = None) -> str:
        now = now or datetime.now(timezone.utc)
        failed = sum(r.verdict == "fail" for r in self.rows)
        lines = ["# imgq reliability under faults", "",
                 ("Written by `tests/integration/faults` (real PostgreSQL, Redis and worker processes; faults "
                  "injected by killing and restarting them). Regenerate with the command below; do not edit by "
                  "hand."), "",
                 f"- date: {now:%Y-%m-%d %H:%M} UTC",
                 f"- commit: `{commit}`",
                 f"- machine: {machine()}"]
        if command:
            lines.append(f"- command: `{command}`")
        lines += ["", "## Faults", ""]
        if self.rows:
            lines.append(f"{len(self.rows)} cases, {len(self.rows) - failed} pass, {failed} fail.")
            lines += ["", *markdown_table(COLUMNS, [_cells(r) for r in self.rows])]
        else:
            lines.append("No single-fault case ran.")
        for i, run in enumerate(self.random_runs, 1):
            title = "## Randomized run" if len(self.random_runs) == 1 else f"## Randomized run {i}"
            lines += ["", title, "", f"- seed: `{run.seed}`", f"- verdict: **{run.verdict}**"]
            if run.notes:
                lines.append(f"- notes: {_one_line(run.notes)}")
            lines += ["", "Faults in the order injected:", ""]
            lines += [f"{n}. {_one_line(f)}" for n, f in enumerate(run.faults, 1)] or ["(none)"]
        if self.load_rows:
            lines += ["", "## Load", "", _one_line(self.load_notes), "",
                      *markdown_table(LOAD_COLUMNS, [[r.endpoint, str(r.requests), f"{r.per_second:.1f}",
                                                      f"{r.p50_ms:.1f}", f"{r.p95_ms:.1f}", f"{r.p99_ms:.1f}",
                                                      r.statuses] for r in self.load_rows])]
        return "\n".join(lines) + "\n"


def spool_folder(run_id: str) -> Path:
    """Where the xdist workers of run `run_id` (xdist's testrunuid, the same in every worker) spool their rows."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"imgq-fault-report-{run_id}"


def _check_verdict(verdict: str) -> None:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cells(row: FaultRow) -> list[str]:
    recover = "-" if row.recover_seconds is None else f"{row.recover_seconds:.1f}"
    verdict = "pass" if row.verdict == "pass" else "**FAIL**"
    return [row.fault, row.case, recover, str(row.items), str(row.lost), str(row.duplicated), verdict, row.notes]


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table whose columns are also aligned in the raw text; pipes and newlines are escaped."""
    def cell(text) -> str:
        return _one_line(text).replace("|", "\\|")

    body = [[cell(c) for c in row] for row in rows]
    head = [cell(c) for c in header]
    widths = [max(3, len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
    numeric = [all(r[i].replace(".", "", 1).isdigit() or r[i] == "-" for r in body) and body != []
               for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if num else "-" * (w + 2) for w, num in zip(widths, numeric)) + "|"
    return [line(head), rule, *(line(r) for r in body)]


def git_commit(ignore: Path | None = None) -> str:
    """`git rev-parse --short HEAD`, with "+dirty" when the work tree has changes (other than `ignore`)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changes = git("status", "--porcelain", "--untracked-files=all").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    skip = None
    if ignore is not None:
        try:
            skip = Path(ignore).resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            skip = None
    dirty = [c for c in changes if c[3:].strip() != skip]
    return commit + ("+dirty" if dirty else "")


def machine() -> str:
    return (f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, PostgreSQL {postgres_version()}, Redis {redis_version()}")
