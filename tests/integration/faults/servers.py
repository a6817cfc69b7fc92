"""Private PostgreSQL and Redis servers that a fault test may stop, crash and restart at will.

Each server lives in its own folder on its own free port, so killing it never touches the
machine's shared servers. Invariants: `start()` returns only once the server answers (or raises
`ServerError` with the tail of its log, after a bounded wait); a PostgreSQL cluster keeps its data
across `stop()`/`start()` in any mode; a Redis runs without persistence, so `stop()` (SIGKILL)
loses every key, as a crashed Redis without persistence does; `restart()` keeps the port.
PostgreSQL refuses to run as root, so as root its programs run as the `postgres` OS user.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from glob import glob
from pathlib import Path

import psycopg
import redis

from shared.tools.local_stack import free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A private server did not start or stop as asked; the message carries its log tail."""


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def find_pg_bin() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, else the one on PATH."""
    def major(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name)) or (0,)

    for folder in sorted(glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    on_path = shutil.which("pg_ctl")
    if on_path and Path(on_path).with_name("initdb").exists():
        return Path(on_path).parent
    raise ServerError("no PostgreSQL server programs found (initdb and pg_ctl under /usr/lib/postgresql/*/bin "
                      "or on PATH): install the postgresql package")


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise ServerError("redis-server is not on PATH: install the redis-server package")
    return path


def postgres_version() -> str:
    """"15.20" or so, from the server program itself (no server needs to run)."""
    try:
        out = subprocess.run([str(find_pg_bin() / "postgres"), "--version"], capture_output=True,
                             text=True, timeout=30, check=False).stdout
    except (ServerError, OSError, subprocess.SubprocessError):
        return "not found"
    found = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


def redis_version() -> str:
    try:
        out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (ServerError, OSError, subprocess.SubprocessError):
        return "not found"
    found = re.search(r"v=(\S+)", out)
    return found.group(1) if found else out.strip() or "unknown"


class PrivatePostgres:
    """One PostgreSQL cluster in `base_dir` (data/, sock/, postgres.log), on 127.0.0.1:`port`, trust auth.

    The folder must be reachable by the `postgres` OS user when running as root: pytest's own
    temporary root is mode 0700, so use a folder made with `tempfile.mkdtemp()` under /tmp.
    """

    def __init__(self, base_dir: Path | str, port: int | None = None):
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.sock_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "postgres.log"
        self.bin = find_pg_bin()
        self.port = port or free_port()
        self._port_fixed = port is not None  # once the cluster has run on a port, it keeps it

    # --- running the server programs
    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args

    def _run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        # stdin/out are not inherited by the postmaster: pg_ctl sends them to the log file (-l)
        return subprocess.run(self._as_owner(args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return self._run([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), *args], timeout)

    def _prepare(self) -> None:
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in (self.base_dir, self.sock_dir):
                shutil.chown(path, "postgres", "postgres")
            if self._run(["test", "-w", str(self.base_dir)], 30).returncode != 0:
                raise ServerError(f"the postgres OS user cannot write to {self.base_dir}: a parent folder is "
                                  "not traversable (pytest's temporary root is 0700); use a folder under /tmp")
        if not (self.data_dir / "PG_VERSION").exists():
            done = self._run([str(self.bin / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                              "--no-sync", "-D", str(self.data_dir)], 120)
            if done.returncode != 0:
                raise ServerError(f"initdb failed in {self.data_dir}:\n{done.stdout}\n{done.stderr}")

    # --- lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> PrivatePostgres:
        """Start the cluster (initdb on first use) and wait until it accepts connections."""
        if self.is_running():
            return self
        self._prepare()
        tries = 1 if self._port_fixed else 3  # a fresh port may be taken by someone between pick and bind
        for attempt in range(tries):
            if attempt:
                self.port = free_port()
            options = (f"-p {self.port} -k {self.sock_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c max_connections=200")
            done = self._pg_ctl("-o", options, "-l", str(self.log_file), "-w", "-t", str(int(timeout)), "start",
                                timeout=timeout + 30)
            if done.returncode == 0:
                break
            if "could not bind" not in log_tail(self.log_file, 10):
                break
        if done.returncode != 0:
            raise ServerError(f"PostgreSQL did not start on port {self.port} within {timeout:.0f}s: "
                              f"{done.stdout.strip()} {done.stderr.strip()}\n{log_tail(self.log_file)}")
        self._port_fixed = True
        self._wait_connectable(timeout)
        return self

    def _wait_connectable(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL started on port {self.port} but refuses connections after "
                                  f"{timeout:.0f}s:\n{log_tail(self.log_file)}")
            time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT) -> None:
        """Stop the cluster: "fast" (clean, disconnects clients) or "immediate" (as a crash; recovery
        replays the WAL on the next start). A stopped cluster is left as it is."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}: smart, fast or immediate")
        if not self.is_running():
            return
        done = self._pg_ctl("-m", mode, "-w", "-t", str(int(timeout)), "stop", timeout=timeout + 30)
        if done.returncode != 0 and self.is_running():
            raise ServerError(f"PostgreSQL did not stop ({mode}): {done.stdout.strip()} {done.stderr.strip()}\n"
                              f"{log_tail(self.log_file)}")

    def restart(self, mode: str = "fast", timeout: float = START_TIMEOUT) -> PrivatePostgres:
        self.stop(mode)
        return self.start(timeout)

    def destroy(self) -> None:
        """Stop (immediately) and remove the folder with all its data."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def is_running(self) -> bool:
        """The postmaster process exists (it may not accept connections yet)."""
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._pg_ctl("status", timeout=30).returncode == 0

    def is_up(self) -> bool:
        """The server answers a query on its port."""
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    # --- addresses and databases
    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL, for psycopg itself."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL, as imgq's DATABASE_URL."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivateRedis:
    """One redis-server without persistence, a child process in its own session, on 127.0.0.1:`port`."""

    def __init__(self, base_dir: Path | str, port: int | None = None):
        self.base_dir = Path(base_dir)
        self.log_file = self.base_dir / "redis.log"
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 15.0) -> PrivateRedis:
        """Start the server (empty) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_file, "ab")  # noqa: SIM115 (held open while the server runs)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.base_dir), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                state = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f}s"
                raise ServerError(f"redis-server on port {self.port} {state}:\n{log_tail(self.log_file)}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGKILL the server: every key is lost, as when a Redis without persistence crashes."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=STOP_TIMEOUT)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 15.0) -> PrivateRedis:
        """Kill and start again on the same port, empty."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung broker)."""
        if self.process is None or self.process.poll() is not None:
            raise ServerError("redis-server is not running")
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def destroy(self) -> None:
        """Stop and remove the folder."""
        try:
            self.resume()  # a stopped process takes SIGKILL too, but leave nothing frozen behind
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def is_up(self) -> bool:
        """This server's process answers on its port (not another server that holds the port)."""
        if self.process is None or self.process.poll() is not None:
            return False
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return client.info("server").get("process_id") == self.process.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"
