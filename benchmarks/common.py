"""What score_throughput.py and train_throughput.py share: the backend (a fresh PostgreSQL database + a
Redis database, or the embedded default), the run's environment and LocalStack, the cached JPEG catalog,
CPU accounting of other processes, waiting for an idle machine, and the results files.

The benchmarks import it as a sibling module (`python benchmarks/<name>.py` puts this folder on sys.path).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "benchmarks" / ".cache"
RESULTS_DIR = ROOT / "benchmarks" / "results"
CATALOG_SIZE = (600, 800)  # width x height, as write_catalog takes it
CATALOG_DIR = CACHE_DIR / "catalogs" / f"catalog-{CATALOG_SIZE[0]}x{CATALOG_SIZE[1]}"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_BENCH_URL = "postgresql://postgres@127.0.0.1:5432/{db}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- arguments


def new_parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("embedded", "postgres"),
                   help="default: postgres when 127.0.0.1:5432 and Redis are reachable, else embedded")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/11",
                   help="Redis database for the postgres backend's broker (flushed first and last)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait-idle", type=float, default=120.0,
                   help="wait up to this many seconds for other processes to quiet down before starting")
    p.add_argument("--keep", action="store_true", help="keep the temporary IMGQ_HOME (logs) and database")


# --------------------------------------------------------------------------- backend


def postgres_and_redis_reachable(redis_url: str) -> bool:
    for port in (5432, int(redis_url.split("://", 1)[1].split("/")[0].rsplit(":", 1)[1])):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.5):
                pass
        except OSError:
            return False
    try:
        import psycopg
        import redis

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            pass
        redis.Redis.from_url(redis_url, socket_timeout=3).ping()
    except Exception:
        return False
    return True


class Backend:
    """The database + broker for this run; `env` goes to the benchmark process and to the stack.

    The postgres backend (the default when 127.0.0.1:5432 and Redis answer) creates a fresh database
    imgq_bench_<pid> and drops it at the end; it uses one Redis database number (flushed first and last).
    The embedded one is imgq's default: SQLite + the filesystem broker under the run's IMGQ_HOME.
    """

    def __init__(self, kind: str, redis_url: str):
        self.kind = kind
        self.redis_url = redis_url
        self.db_name = f"imgq_bench_{os.getpid()}"
        self.env: dict[str, str] = {}
        self.created = False

    def setup(self) -> None:
        if self.kind == "embedded":
            return  # no DATABASE_URL / BROKER_URL: SQLite + kombu filesystem transport under IMGQ_HOME
        import psycopg
        import redis

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.created = True
        redis.Redis.from_url(self.redis_url).flushdb()
        self.env = {"DATABASE_URL": PG_BENCH_URL.format(db=self.db_name), "BROKER_URL": self.redis_url}

    def teardown(self) -> None:
        if self.kind == "embedded":
            return
        try:
            import redis

            redis.Redis.from_url(self.redis_url).flushdb()
        except Exception as exc:
            log(f"warning: could not flush {self.redis_url}: {exc}")
        if self.created:
            try:
                from shared.core.db import engine

                engine().dispose()  # close this process's pooled connections
            except Exception:
                pass
            import psycopg

            try:
                with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except Exception as exc:
                log(f"warning: could not drop database {self.db_name}: {exc}")


# --------------------------------------------------------------------------- one run: environment, stack, cleanup


class BenchRun:
    """One benchmark run: its timestamp, backend, temporary IMGQ_HOME (with a manifest folder that is a data
    root next to the catalogs), the LocalStack once started, and the cleanup at the end."""

    def __init__(self, name: str, args: argparse.Namespace, home_prefix: str, detail: str = ""):
        """Picks the backend, logs what runs (`detail` after the image count), then makes the temporary
        IMGQ_HOME and sets the environment: everything after reads settings from it, so this comes before
        any imgq import."""
        self.name = name
        self.args = args
        self.t_start = time.time()
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.backend_kind = args.backend or ("postgres" if postgres_and_redis_reachable(args.redis_url) else "embedded")
        log(f"{name}: backend {self.backend_kind}, {args.images} images{detail}{' (quick)' if args.quick else ''}")
        self.home = Path(tempfile.mkdtemp(prefix=home_prefix))
        self.manifest_dir = self.home / "manifests"
        self.backend = Backend(self.backend_kind, args.redis_url)
        for key in ("DATABASE_URL", "BROKER_URL", "IMGQ_DATA_ROOTS", "IMGQ_UPLOAD_DIR", "IMGQ_MODEL_STORE"):
            os.environ.pop(key, None)
        os.environ.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "IMGQ_HOME": str(self.home),
                           "IMGQ_DATA_ROOTS": os.pathsep.join([str(CATALOG_DIR.parent), str(self.manifest_dir)])})
        self.stack = None
        self.ok = False

    def setup_backend(self):
        """Create the database (or not, embedded), migrate it; returns shared.core.config.get_settings()."""
        self.backend.setup()
        os.environ.update(self.backend.env)
        from shared.core.config import ensure_dirs, get_settings
        from shared.core.db import configure
        from shared.core.migrate import upgrade

        s = get_settings()
        CATALOG_DIR.parent.mkdir(parents=True, exist_ok=True)
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        ensure_dirs(s)
        configure(s)  # this benchmark process's own sessions (the stack's processes configure themselves)
        upgrade(s.database_url)
        return s

    def describe(self, head: dict, tail: dict, s=None) -> dict:
        """report["run"]: what every run records, with the benchmark's own keys `head` (after "images") and
        `tail` (before "database"); with no settings `s`, the short form a run that failed early keeps."""
        if s is None:
            return {"timestamp": self.stamp, "quick": self.args.quick, "backend": self.backend_kind,
                    "images": self.args.images, **head, "cpus": os.cpu_count(), **tail}
        return {
            "timestamp": self.stamp, "quick": self.args.quick, "backend": self.backend_kind,
            "images": self.args.images, **head,
            "cpus": os.cpu_count(), "python": platform.python_version(), "git_commit": git_commit(),
            "git_dirty": git_dirty(), **tail,
            "database": s.database_url.split("@")[-1], "broker": s.broker_url,
        }

    def start_stack(self):
        """`imgq serve` + `imgq worker --cpu` on the environment already in os.environ.
        Returns (the LocalStack, its requests.Session carrying an admin token, the perf_counter before the start)."""
        from shared.tools.local_stack import LocalStack

        self.stack = LocalStack({}, self.home / "logs")
        t0 = time.perf_counter()
        self.stack.start(timeout=180)
        return self.stack, self.stack.http, t0

    @contextlib.contextmanager
    def measuring(self, report: dict, fallback_run: dict):
        """Around the measurements: an exception is printed and recorded in report["errors"] (the run goes on
        to write its report); at the end the stack stops and report["run"] gets seconds_total."""
        try:
            yield
            self.ok = True
        except Exception as exc:
            traceback.print_exc()
            report["errors"].append(f"{type(exc).__name__}: {exc}")
            if self.stack is not None:
                log(f"logs kept in {self.stack.log_dir}")
        finally:
            if self.stack is not None:
                self.stack.stop()
            report.setdefault("run", fallback_run)
            report["run"]["seconds_total"] = round(time.time() - self.t_start, 1)

    def write_report(self, report: dict, markdown_text: str) -> None:
        write_report(self.name, report, self.stamp, markdown_text)

    def close(self) -> int:
        """Remove IMGQ_HOME (kept with --keep or after an error) and the database (kept with --keep);
        returns the exit code."""
        if not (self.args.keep or not self.ok):
            shutil.rmtree(self.home, ignore_errors=True)
        elif not self.ok:
            log(f"IMGQ_HOME kept for inspection: {self.home}")
        if not self.args.keep:
            self.backend.teardown()
        log(f"total {time.time() - self.t_start:.0f}s")
        return 0 if self.ok else 1


# --------------------------------------------------------------------------- catalog


def ensure_catalog(n: int) -> Path:
    """At least `n` JPEGs (~600x800) in the cache folder (shared by the benchmarks); made once, reused by
    later runs.

    write_catalog draws image i from one seeded stream, so the first k images of any catalog are the
    same: a bigger catalog serves every smaller run through a subset manifest.
    """
    from shared.images.synthetic import write_catalog

    marker = CATALOG_DIR / "catalog.json"
    have = 0
    if marker.exists():
        try:
            have = int(json.loads(marker.read_text())["images"])
        except (ValueError, KeyError):
            have = 0
    if have >= n and (CATALOG_DIR / "items.csv").exists():
        log(f"catalog: reusing {have} JPEGs in {CATALOG_DIR.relative_to(ROOT)}")
        return CATALOG_DIR
    log(f"catalog: writing {n} JPEGs of about {CATALOG_SIZE[0]}x{CATALOG_SIZE[1]} to "
        f"{CATALOG_DIR.relative_to(ROOT)} (once)")
    t0 = time.perf_counter()
    marker.unlink(missing_ok=True)
    write_catalog(CATALOG_DIR, n, size=CATALOG_SIZE, broken=False)
    marker.write_text(json.dumps({"images": n, "size": CATALOG_SIZE, "seed": 0}))
    log(f"catalog: done in {time.perf_counter() - t0:.1f}s")
    return CATALOG_DIR


def catalog_rows() -> list[list[str]]:
    with open(CATALOG_DIR / "items.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[1:]


def write_manifest(folder: Path, name: str, rows: list[list[str]], catalog_dir: Path = CATALOG_DIR) -> str:
    """A manifest of catalog `rows` (id, image as an absolute path into `catalog_dir`, pageviews) in the run's
    own folder, so the cached catalog is never modified; returns its path relative to that data root."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "pageviews"])
        writer.writerows([r[0], str(catalog_dir / r[1]), *r[2:]] for r in rows)
    return path.name


# --------------------------------------------------------------------------- jobs over HTTP


def parse_ts(value) -> float | None:
    """A timestamp from the API (ISO string) or the database (datetime) as epoch seconds."""
    if not value:
        return None
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:  # SQLite hands back naive UTC datetimes
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def wait_final(session, stack, job_id: str, timeout: float, poll: float = 0.25, what: str = "job",
               log_phases: bool = False) -> dict:
    """Poll GET /api/v1/jobs/<id> every `poll` s until the job is no longer queued or running; with
    `log_phases`, log each change of its progress phase."""
    deadline = time.time() + timeout
    last_phase = None
    while True:
        job = session.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=30).json()
        if log_phases:
            phase = (job.get("progress") or {}).get("phase")
            if phase != last_phase:
                log(f"    job {job_id[:8]}: {job['status']}, phase {phase}")
                last_phase = phase
        if job["status"] not in ("preparing", "queued", "running"):
            return job
        if time.time() > deadline:
            raise TimeoutError(f"{what} {job_id} still {job['status']} after {timeout}s: {job.get('progress')}")
        for p in (stack.web, stack.worker):
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"a process exited with code {p.returncode}; logs in {stack.log_dir}")
        time.sleep(poll)


# --------------------------------------------------------------------------- CPU accounting (/proc or psutil)
# The machine may be shared: each phase records how much CPU *other* processes used meanwhile.

_TICK = os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=False)]
    except ImportError:
        pass
    except Exception:
        return []
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(entry.name))
    return sorted(kids)


def _machine_busy_s() -> float:
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / _TICK


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants, plus the reaped children they waited for."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime
        todo.extend(child_pids(p))
    return total


class CpuWatch:
    """Background CPU use (other processes) during a phase, as % of the machine."""

    def __init__(self):
        self.t, self.busy, self.ours = time.perf_counter(), _machine_busy_s(), _tree_cpu_s(os.getpid())

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t
        busy = _machine_busy_s() - self.busy
        ours = _tree_cpu_s(os.getpid()) - self.ours
        cpus = os.cpu_count() or 1
        return {"wall_s": round(wall, 2), "our_cpu_pct": round(100 * ours / (wall * cpus), 1),
                "background_cpu_pct": round(max(0.0, 100 * (busy - ours) / (wall * cpus)), 1)}


def wait_for_quiet(max_wait: float, threshold_pct: float = 25.0) -> dict:
    """Wait (up to max_wait s) until other processes use < threshold % of the machine over 2 s."""
    t0 = time.time()
    while True:
        w = CpuWatch()
        time.sleep(2)
        bg = w.stop()["background_cpu_pct"]
        waited = time.time() - t0
        if bg < threshold_pct or waited >= max_wait:
            if bg >= threshold_pct:
                log(f"warning: the machine is busy ({bg:.0f}% CPU used by other processes); "
                    f"figures may be low and noisy")
            return {"background_cpu_pct_at_start": bg, "waited_s": round(waited, 1)}
        if waited < 2.5:
            log(f"the machine is busy ({bg:.0f}% CPU used by other processes): waiting up to {max_wait:.0f}s")


# --------------------------------------------------------------------------- report


def verdict(goals: dict[str, tuple[str, float]], name: str, value) -> dict:
    """`value` against the target goals[name], an (op, number) such as (">=", 0.9); op is one of >=, <=, <."""
    op, target = goals[name]
    if value is None:
        met = None
    elif op == ">=":
        met = value >= target
    elif op == "<=":
        met = value <= target
    else:
        met = value < target
    return {"value": value, "target": f"{op} {target:g}", "met": met}


def fmt_met(v: dict) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[v["met"]]


def md_row(targets: dict, measure, value, part: dict | None = None, target_key: str | None = None) -> str:
    """A row of the markdown table: measure, value, the target and whether it is met (when `target_key`
    names one in `targets`), and other processes' CPU during `part` (when it recorded it)."""
    v = targets.get(target_key) if target_key else None
    target, met = (v["target"], fmt_met(v)) if v else ("", "")
    cpu = (part or {}).get("cpu", {})
    bg = f"{cpu['background_cpu_pct']:.0f} %" if "background_cpu_pct" in cpu else ""
    return f"| {measure} | {value} | {target} | {met} | {bg} |"


def md_table_head(run: dict) -> list[str]:
    """The lines between the run's summary line and the table's rows."""
    lines = []
    if run.get("git_dirty"):
        lines.append(f"working tree differs from the commit in: {', '.join(run['git_dirty'])}")
    return lines + ["", "| measure | value | target | | other processes' CPU |", "|---|---:|---:|---|---:|"]


def print_summary(markdown_text: str, targets: dict) -> None:
    print()
    print(markdown_text)
    for name, v in targets.items():
        print(f"  target {name}: {v['value']} {v['target']} -> {fmt_met(v)}")


def write_report(name: str, report: dict, stamp: str, markdown_text: str) -> None:
    """benchmarks/results/<name>-<stamp>.json and .md, and <name>-latest.json (each written whole, then
    renamed); prints each path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    text = json.dumps(report, indent=2, default=str)
    for file_name, body in ((f"{name}-{stamp}.json", text), (f"{name}-{stamp}.md", markdown_text),
                            (f"{name}-latest.json", text)):
        path = RESULTS_DIR / file_name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body)
        os.replace(tmp, path)
        paths.append(path)
    for path in paths:
        print(f"  wrote {path.relative_to(ROOT)}")


def machine() -> dict:
    """What the figures ran on: CPU model and count, memory, OS and Python."""
    out = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "hostname": socket.gethostname()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                out["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    return out


def git_dirty() -> list[str]:
    """Files changed in the working tree, new ones included (the benchmark runs the code as it is on disk); results
    files aside: an earlier benchmark of the same run_all writes them, and they are not code."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout
        return [line[3:] for line in out.splitlines()
                if line.strip() and not line[3:].startswith(("benchmarks/results/", "benchmarks/.cache/"))]
    except Exception:
        return []


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None
