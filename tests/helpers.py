"""Helpers shared by tests (import them from here, never from conftest): databases, images, small models,
stacks of processes and what a model should score."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psycopg

PG_ADMIN = os.environ.get("IMGQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("IMGQ_TEST_REDIS", "redis://127.0.0.1:6379")


def _pg_base() -> str:
    return PG_ADMIN.rsplit("/", 1)[0]


def create_pg_database() -> str:
    name = f"imgq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{_pg_base()}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def migrated_database(kind: str, folder: Path) -> Iterator[str]:
    """A migrated database of `kind` ("sqlite": a file in `folder`; "postgres": a fresh database, dropped after)."""
    from shared.core.db import engine_for
    from shared.core.migrate import upgrade

    url = f"sqlite:///{folder / 'imgq.db'}" if kind == "sqlite" else create_pg_database()
    upgrade(url)
    try:
        yield url
    finally:
        if kind != "sqlite":
            engine_for(url).dispose()
            drop_pg_database(url)


def tiny_cnn(input_size: int, outputs: int, activation: str | None = None, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(outputs, activation=activation)(x)
    return keras.Model(inputs, out)


def write_jpeg(path: Path, size=(64, 48), seed: int = 0, mode: str = "RGB") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode if mode != "CMYK" else None)
    if mode == "CMYK":
        img = Image.fromarray(arr[..., :4], "RGBA").convert("CMYK")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if mode == "RGBA" else "JPEG"
    img.save(path, fmt)
    return path


STACK_ENV = {
    "IMGQ_CHUNK_SIZE": "16",
    "IMGQ_BATCH_SIZE": "8",
    "IMGQ_DECODE_THREADS": "2",
    "IMGQ_HEARTBEAT_TIMEOUT": "8",
    "IMGQ_SWEEP_INTERVAL": "2",
    "IMGQ_MAX_ATTEMPTS": "3",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def make_stack(tmp: Path, extra: dict):
    """A LocalStack (not started) with the tests' small chunks and short timeouts, in `tmp`."""
    from shared.tools.local_stack import LocalStack

    env = {**STACK_ENV, "IMGQ_HOME": str(tmp / "home"), "IMGQ_DATA_ROOTS": str(tmp / "data"), **extra}
    for key in ("DATABASE_URL", "BROKER_URL"):
        if key not in extra:
            env[key] = ""
    stack = LocalStack(env, tmp / "logs")
    stack.data = tmp / "data"
    stack.data.mkdir(parents=True, exist_ok=True)
    return stack


def import_model_http(stack, file: Path, name: str, **fields) -> dict:
    """POST the file (202 and an import job), wait for the maintenance worker to import it, and return the new
    version as GET /api/v1/models/<name>/versions/<n> describes it."""
    data = {"name": name, "task": "regression", "input_size": "32", **fields}
    with open(file, "rb") as fh:
        resp = stack.http.post(stack.url("/api/v1/models"), data=data, files={"file": (file.name, fh)}, timeout=120)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    _, _, version = job["model"]["result"].partition("@")
    resp = stack.http.get(stack.url(f"/api/v1/models/{name}/versions/{version}"), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def expected_scores(model_file: Path, paths: list[Path], size: int = 32, transform=np.expm1) -> np.ndarray:
    """What model.predict says on the same preprocessed tensors, in target units."""
    import keras

    from shared.images.imaging import Preprocessing, load_for_model

    model = keras.models.load_model(model_file)
    x = np.stack([load_for_model(p.read_bytes(), Preprocessing(size, size), max_pixels=10**8)[0] for p in paths])
    return transform(model.predict(x, verbose=0)[:, 0])


def configure_process(monkeypatch, home: Path, db_url: str):
    """Settings pointed at `db_url` and folders under `home`, set up as an entry point would (folders, database,
    Celery app on the embedded broker); the environment, set through `monkeypatch`, says the same for code under
    test that reads it (the CLI). Returns the Settings."""
    from shared.core import celery_app, db
    from shared.core.config import ensure_dirs, get_settings

    monkeypatch.setenv("IMGQ_HOME", str(home / "home"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("IMGQ_DATA_ROOTS", str(home / "data"))
    monkeypatch.delenv("BROKER_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    ensure_dirs(settings)
    db.configure(settings)
    celery_app.configure(settings)
    return settings


def authorized_client(app, scopes: str = "admin", name: str = "test-client"):
    """app.test_client() that sends a fresh API token with the given scopes on every request; the database of
    the app's settings must be migrated."""
    from shared.core.db import session_scope
    from shared.services import tokens

    with session_scope() as session:
        _, secret = tokens.create_token(session, name, scopes)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def seed_version(name: str, version: int = 1, task: str = "regression", production: bool = True) -> int:
    """A version row without a file (enough to submit jobs with it: nothing reads the file before a worker does),
    made the production version when asked. Returns its id; the database of the configured process is used."""
    from shared.core.db import session_scope
    from shared.core.tables import ModelVersion
    from shared.services.model_registry import set_alias

    with session_scope() as session:
        row = ModelVersion(name=name, version=version, task=task, input_height=32, input_width=32,
                           resize_mode="stretch", pixel_scale="unit",
                           output_names=None if task == "embedding" else ["v"], class_names=None,
                           target_transform={"kind": "none"}, path="/nowhere.keras", sha256="0" * 64, size_bytes=1)
        session.add(row)
        session.flush()
        if production:
            set_alias(session, name, "production", version)
        return row.id


def seed_embeddings(catalog: str, version_id: int, space: str, n: int, dim: int = 4) -> str:
    """n items of `catalog` in `space`, written by a finished embed job of the version; returns that job's id."""
    from shared.core.db import session_scope
    from shared.core.states import JobKind, JobStatus
    from shared.core.tables import Embedding, Job

    job_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(Job(id=job_id, kind=JobKind.EMBED, status=JobStatus.SUCCEEDED, model_version_id=version_id,
                        model_ref=space, source={"type": "items"}, spec={"catalog": catalog, "space": space}))
        session.flush()
        rng = np.random.default_rng(len(catalog))
        session.add_all(Embedding(catalog=catalog, space=space, item_id=f"item-{i}", uri=f"img/{i}.jpg", dim=dim,
                                  vector=rng.normal(size=dim).astype("<f4").tobytes(), job_id=job_id)
                        for i in range(n))
    return job_id


def assert_error(resp, status: int, kind: str | None = None, field: str | None = None) -> dict:
    """`resp` is the one error shape imgq answers every 4xx and 5xx with (web/errors.py): {"error": {"type",
    "message", "problems": [{"field", "message"}], ...details}}, with this status, type and first problem's field
    (when given). Returns the error."""
    assert resp.status_code == status, (status, resp.status_code, resp.get_data(as_text=True)[:500])
    assert resp.is_json, resp.get_data(as_text=True)[:200]
    assert set(resp.json) == {"error"}, resp.json
    error = resp.json["error"]
    assert isinstance(error["type"], str) and error["type"] and isinstance(error["message"], str) and error["message"]
    assert isinstance(error["problems"], list), error
    assert all(set(p) == {"field", "message"} and isinstance(p["field"], str) and p["message"]
               for p in error["problems"]), error
    assert "field" not in error, error
    if kind is not None:
        assert error["type"] == kind, error
    if field is not None:
        assert error["problems"] and error["problems"][0]["field"] == field, error
    return error


def configure_like_beat(monkeypatch, stack):
    """This process set up as the stack's beat process is (its database and broker, through the environment), so a
    test can fire schedule slots with a fake clock (shared/services/schedules.dispatch_due) and send their jobs as
    beat's schedule tick does (shared/core/dispatch.enqueue_train). Returns the Settings; the caller clears
    get_settings' cache when done."""
    from shared.core import celery_app, db
    from shared.core.config import get_settings

    for key in ("DATABASE_URL", "BROKER_URL", "IMGQ_BROKER_PREFIX", "IMGQ_HOME", "IMGQ_DATA_ROOTS"):
        if stack.env.get(key) is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, stack.env[key])
    get_settings.cache_clear()
    settings = get_settings()
    db.configure(settings)
    celery_app.configure(settings)
    return settings


S3_KEYS = {"AWS_ACCESS_KEY_ID": "imgq-test", "AWS_SECRET_ACCESS_KEY": "imgq-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3:
    """A real S3 server on loopback: moto's server mode as its own process (`moto_server`) on a free port, so its
    access rules (`deny_from_now_on`) are its alone. `env` is what a process needs to reach it. `stop()` then
    `start()` takes it away and brings it back on the same port, empty (moto keeps its buckets in memory)."""

    def __init__(self, log_dir: Path):
        from shared.tools.local_stack import free_port

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**S3_KEYS, "IMGQ_S3_ENDPOINT_URL": self.endpoint}
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = log_dir / f"moto-{self.port}.log"
        self.start()

    def start(self) -> None:
        import subprocess
        import sys

        self._log = open(self._log_file, "ab")
        server = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                        stderr=subprocess.STDOUT, env={**os.environ, **S3_KEYS})
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        import time

        import requests

        stop = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"{self.endpoint}/moto-api/", timeout=1)
                return
            except requests.ConnectionError:
                if time.monotonic() > stop or self.process.poll() is not None:
                    raise RuntimeError(f"moto_server on port {self.port} did not start") from None
                time.sleep(0.1)

    def client(self, service: str = "s3", **keys):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=keys.get("key", S3_KEYS["AWS_ACCESS_KEY_ID"]),
                            aws_secret_access_key=keys.get("secret", S3_KEYS["AWS_SECRET_ACCESS_KEY"]))

    def put_files(self, bucket: str, prefix: str, files: dict[str, Path | bytes]) -> None:
        """Upload {name: file or bytes} under `prefix/`, creating the bucket if it is new."""
        s3 = self.client()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for name, body in files.items():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}" if prefix else name,
                          Body=body if isinstance(body, bytes) else Path(body).read_bytes())

    def gets_of(self, bucket: str, key: str) -> int:
        """How many GET requests for the object `bucket/key` the server has answered so far, from its access log
        (path-style addressing: the endpoint is an IP address)."""
        import re

        self._log.flush()
        pattern = re.compile(rf'"GET /{re.escape(bucket)}/{re.escape(key)}(\?[^ ]*)? HTTP/')
        return sum(bool(pattern.search(line)) for line in self._log_file.read_text(errors="replace").splitlines())

    def reader_allowed_only(self, bucket: str) -> dict:
        """Switch on moto's IAM checks with a user who may read `bucket` alone: every other bucket answers 403.
        Returns that user's keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) for the reading side."""
        import json

        import requests

        iam = self.client("iam")
        iam.create_user(UserName="imgq-reader")
        statement = {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                     "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}
        iam.put_user_policy(UserName="imgq-reader", PolicyName="read-one-bucket",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
        key = iam.create_access_key(UserName="imgq-reader")["AccessKey"]
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


# Azurite's well-known development account key (public, in its documentation)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BIN = Path(__file__).resolve().parent.parent / ".ci" / "tools" / "node_modules" / ".bin" / "azurite-blob"


def azurite_binary() -> str | None:
    """Azurite's Blob server (Microsoft's emulator of Azure Blob Storage, from npm): on PATH, or where .ci/run puts it
    (`npm install --prefix .ci/tools azurite`)."""
    import shutil

    return shutil.which("azurite-blob") or (str(AZURITE_BIN) if AZURITE_BIN.exists() else None)


class Azurite:
    """A real Azure Blob Storage server on loopback (Azurite, in memory) on a free port; `env` is what a process needs
    to reach it (adlfs reads AZURE_STORAGE_CONNECTION_STRING), through `endpoint_port` (a TcpProxy's, to cut it)."""

    def __init__(self, log_dir: Path):
        import subprocess

        from shared.tools.local_stack import free_port

        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / f"azurite-{self.port}.log", "ab")
        self.process = subprocess.Popen([azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                                         "--inMemoryPersistence", "--skipApiVersionCheck", "--loose"],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def connection_string(self, port: int | None = None) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port or self.port}/devstoreaccount1;")

    def env(self, port: int | None = None) -> dict:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string(port)}

    def filesystem(self):
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string(), skip_instance_cache=True)

    def put_files(self, container: str, prefix: str, files: dict) -> None:
        """`files`: name -> local Path or bytes, written under `container/prefix/` (the container made if new)."""
        fs = self.filesystem()
        if not fs.exists(container):
            fs.mkdir(container)
        for name, body in files.items():
            data = body.read_bytes() if isinstance(body, Path) else body
            fs.pipe_file(f"{container}/{prefix}/{name}".replace("//", "/"), data)

    def _wait_ready(self, timeout: float = 30) -> None:
        import socket
        import time

        stop = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > stop or self.process.poll() is not None:
                    raise RuntimeError(f"azurite-blob on port {self.port} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except Exception:  # noqa: BLE001
            self.process.kill()
        self._log.close()


class TcpProxy:
    """A TCP forwarder from a free loopback port to `target_port`, to take a server away from its clients and bring
    it back without touching it: `stop()` closes the listening socket and every connection through it (clients then
    see resets, then refused connections), `start()` listens again on the same port."""

    def __init__(self, target_port: int):
        from shared.tools.local_stack import free_port

        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        import socket
        import threading

        self._conns: set = set()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(128)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._close(sock)

    def _close(self, sock) -> None:
        import socket

        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def stop(self) -> None:
        self._close(self._listener)  # shutdown wakes the thread blocked in accept()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            self._close(sock)


class TlsFiles:
    """A real HTTPS server on loopback serving a folder's files, with a certificate for localhost and 127.0.0.1
    signed by itself (`cert`: the CA file a client trusts, e.g. through SSL_CERT_FILE). `/redirect?to=URL` answers
    302 to URL, so a test can lead a fetcher anywhere."""

    def __init__(self, folder: Path, cert_dir: Path):
        import functools
        import ssl
        import subprocess
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        cert_dir.mkdir(parents=True, exist_ok=True)
        key, self.cert = cert_dir / "key.pem", cert_dir / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.cert)], check=True, capture_output=True)

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scored(stack, body: dict) -> dict:
    """A score job of `body` with `stack.model`, the score cache off, run to success: its results by item id."""
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json={"model": stack.model, "cache": False, **body},
                           timeout=60)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return {r["id"]: r for r in stack.all_results(job["id"])}


def comparable(result: dict) -> tuple:
    """What must be equal between two jobs' results for one item, wherever its bytes were read from."""
    return result["status"], result.get("outputs"), result.get("content_hash"), result.get("error")


def stop_with_database(stack, database_url: str, *servers) -> None:
    """A stack's processes stopped, then `servers` (each with stop(): object stores, proxies), then its database
    dropped."""
    from shared.core.db import engine_for

    stack.stop()
    for server in servers:
        server.stop()
    engine_for(database_url).dispose()
    drop_pg_database(database_url)


def store_away_mid_job(stack, job_id: str, proxy, seconds: float, *, after_done: int = 16) -> int:
    """Once the job has `after_done` items done, the way to its store (`proxy`) cut for `seconds` (connections reset,
    then refused) and restored; returns how many items were done when it was cut."""
    import time

    deadline = time.time() + 240
    while (done := stack.http.get(stack.url(f"/api/v1/jobs/{job_id}"), timeout=10).json()["progress"]
           ["done"]) < after_done:
        assert time.time() < deadline, "no chunk scored"
        time.sleep(0.05)
    proxy.stop()
    time.sleep(seconds)
    proxy.start()
    return done
