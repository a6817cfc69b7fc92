"""A generated corpus of hostile requests through the app factory, on SQLite and PostgreSQL: each gets its
documented 4xx and the JSON error body (or, for a problem with one item, a 202 now and an item error when a
worker scores it: see the score_items tests below; for a bad model file, a 202 now and an import job that fails
with the reason), nothing answers 5xx, nothing names a server path or a file
outside the data roots, and the model and job stored before the corpus are unchanged after it.

The database is shared by the whole module (one per backend), so the corpus runs against state stored first.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.core.db import session_scope
from shared.core.errors import OutsideRoot
from shared.core.paths import path_inside
from shared.services import tokens
from tests.helpers import configure_process, create_pg_database, drop_pg_database
from web.app import create_app

SECRET = "7f3a"  # in the names and contents of files outside the data roots; never in any answer
BASELINE_MODEL = "baseline"


# ---------------------------------------------------------------- hostile files, generated

def png_header_bomb(side: int = 60_000) -> bytes:
    """A PNG that claims side x side pixels in a few hundred bytes (Pillow reads the header, then refuses)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * (side + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(size=(48, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@lru_cache(maxsize=1)
def hostile_images() -> dict[str, bytes]:
    """File name -> bytes: images a crawler really meets, and files built to hurt a decoder."""
    rgb = Image.fromarray(_noise())
    jpeg = _saved(rgb, "JPEG")
    frames = [Image.fromarray(_noise(seed=i)).convert("P") for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    wide = (np.arange(48 * 40, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    return {
        "ok.jpg": jpeg,
        "bomb-header.png": png_header_bomb(),
        "bomb-zeros.png": _saved(Image.new("L", (4000, 3000)), "PNG"),  # 12 Mpx of zeros in a few KB
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "png-named.jpg": _saved(rgb, "PNG"),  # mislabelled, but an image: scored
        "text-named.png": b"id,image\nthis is not a picture\n",
        "empty.jpg": b"",
        "cmyk.jpg": _saved(rgb.convert("CMYK"), "JPEG"),
        "grey16.png": _saved(Image.fromarray(wide), "PNG"),
        "palette.png": _saved(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "animated.gif": animated.getvalue(),
    }


SCORED = {"ok.jpg", "png-named.jpg", "cmyk.jpg", "grey16.png", "palette.png", "animated.gif"}
ITEM_ERRORS = {"bomb-header.png": "too many pixels", "bomb-zeros.png": "too many pixels",
               "truncated.jpg": "truncated", "text-named.png": "not an image", "empty.jpg": "empty file"}


def lay_out(root: Path, beyond: Path) -> None:
    """The data root as the corpus expects it, and a folder beyond it that links point into."""
    (beyond / "cat").mkdir(parents=True, exist_ok=True)
    (beyond / f"secret-{SECRET}.csv").write_text(f"hidden_column_{SECRET},image\nx,y.jpg\n")
    (beyond / "cat" / "cat.csv").write_text(f"image,label_{SECRET}\nx.jpg,a\n")
    (beyond / f"photo-{SECRET}.jpg").write_bytes(hostile_images()["ok.jpg"])
    root.mkdir(parents=True, exist_ok=True)
    for name, data in hostile_images().items():
        (root / name).write_bytes(data)
    (root / "missing-columns.csv").write_text("sku,photo\nA,ok.jpg\n")
    (root / "latin1-rows.csv").write_bytes(b"id,image\ncaf\xe9,ok.jpg\n")
    (root / "latin1-header.csv").write_bytes(b"\xff\xfei\xe9d,image\na,ok.jpg\n")
    (root / "nul-id.csv").write_bytes(b"id,image\na\x00b,ok.jpg\n")
    (root / "escaping-rows.csv").write_text(f"id,image\nup,../beyond/photo-{SECRET}.jpg\nabs,/etc/passwd\n")
    (root / "crawl" / "night").mkdir(parents=True, exist_ok=True)
    for link, target in {"link-out": beyond, "manifest-link.csv": beyond / f"secret-{SECRET}.csv",
                         "crawl/night/cat": beyond / "cat"}.items():
        if not os.path.lexists(root / link):
            os.symlink(target, root / link)


# ---------------------------------------------------------------- the corpus

@dataclass
class Ctx:
    client: object
    model: str
    job_id: str
    root: Path
    store: Path
    model_files: dict


@dataclass
class Case:
    id: str
    send: Callable[[Ctx], object]
    status: int
    field: str | None = None  # the field the error names (in `field` or among `problems`)
    text: str | None = None  # a part of the message
    check: Callable[[object, Ctx], None] | None = None


def post_json(url, body):
    return lambda c: c.client.post(url.format(model=c.model, job=c.job_id), json=body(c) if callable(body) else body)


def post_raw(url, data, **kw):
    """`data`: the body, or a function making it (large bodies are built only when their case runs)."""
    return lambda c: c.client.post(url, data=data() if callable(data) else data, content_type="application/json",
                                   **kw)


def get(url, **query):
    return lambda c: c.client.get(url.format(model=c.model, job=c.job_id), query_string=query)


def score(**body):
    return post_json("/api/v1/jobs/score", lambda c: {"model": c.model, **body})


def items(*pairs):
    return score(items=[{"id": i, "uri": u} for i, u in pairs])


def upload(*names, model=None, filename=None):
    def send(c):
        files = [(io.BytesIO((c.root / n).read_bytes()), filename or n) for n in names]
        return c.client.post("/api/v1/jobs/score", data={"model": model or c.model, "files": files},
                             content_type="multipart/form-data")
    return send


def import_model(name="imported", file="regression", data: bytes | None = None, filename="m.keras", **fields):
    def send(c):
        blob = data if data is not None else Path(c.model_files[file]).read_bytes()
        form = {"name": name, "task": "regression", "input_size": "32", **fields,
                "file": (io.BytesIO(blob), filename)}
        return c.client.post("/api/v1/models", data=form, content_type="multipart/form-data")
    return send


TRAIN = {"model": "trained", "task": "regression", "dataset": {"path": "x.csv", "target_columns": ["y"]},
         "base": {"architecture": "vgg"}, "input_size": 32}


def train(**overrides):
    return post_json("/api/v1/jobs/train", {**TRAIN, **overrides})


def schedule(path="crawl/{date:%Y-%m-%d}/items.csv", **overrides):
    body = {"name": "nightly", "cron": "0 3 * * *", "model": "nightly-model",
            "train": {"task": "regression", "dataset": {"path": path, "target_columns": ["y"]},
                      "base": {"architecture": "vgg"}, "input_size": 32}, **overrides}
    return post_json("/api/v1/schedules", body)


def check(path):
    return post_json("/api/v1/datasets/check", {"path": path})


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def nothing_beyond_the_store(resp, c):
    home = c.store.parent
    stray = [p for p in home.rglob("*.keras") if c.store not in p.parents]
    assert not stray, stray


def import_fails_naming_only_the_upload(*texts):
    """The import job a 202 created, run as the maintenance worker runs it: it fails with a reason that names the
    uploaded file and no server path, and stores nothing."""
    def check(resp, c):
        from shared.core.config import get_settings
        from shared.services.model_imports import staging_path
        from worker.model_importer import run_import

        job_id = resp.json["id"]
        assert resp.json["kind"] == "import" and resp.headers["Location"] == f"/api/v1/jobs/{job_id}"
        assert run_import(job_id, get_settings()) == "failed"
        job = c.client.get(f"/api/v1/jobs/{job_id}").json
        assert job["status"] == "failed" and job["model"]["result"] is None, job
        assert all(text in job["error"] for text in texts), job["error"]
        assert str(c.store) not in json.dumps(job) and ".staging" not in json.dumps(job), job
        assert not staging_path(c.store, job_id).exists()
        assert c.client.get(f"/api/v1/models/{resp.json['model']['name']}/versions").status_code == 404
    return check


def lists_nothing_in_etc(resp, c):
    text = resp.get_data(as_text=True)
    assert not [name for name in os.listdir("/etc") if len(name) > 5 and name in text]


def refused_quickly(seconds):
    def send_timed(send):
        def run(c):
            started = time.monotonic()
            resp = send(c)
            assert time.monotonic() - started < seconds
            return resp
        return run
    return send_timed


def hundred_thousand_items() -> str:
    body = json.dumps({"model": BASELINE_MODEL, "items": [
        {"id": f"sku-{i:06d}", "uri": f"crawl/2026-11-23/sku-{i:06d}.jpg"} for i in range(100_000)]})
    assert len(body) < 20 * 1024 * 1024 / 2  # well inside the default IMGQ_MAX_JSON_BYTES (about 6.6 MB)
    return body

CASES = [
    # names: one pattern, at the schema, in URL paths and in form fields
    Case("model-name-dot-dot-is-refused-before-anything-is-written", import_model(".."), 400, "name",
         check=nothing_beyond_the_store),
    Case("model-name-with-a-slash", import_model("a/b"), 400, "name"),
    Case("model-name-starting-with-a-dash", import_model("-rf"), 400, "name"),
    Case("model-name-of-101-characters", import_model("m" * 101), 400, "name"),
    Case("model-name-with-a-nul-byte", import_model("a\x00b"), 400, "name"),
    Case("model-name-dot-dot-in-the-url", get("/api/v1/models/%2E%2E/versions"), 400, "name"),
    Case("alias-dot-dot-in-the-url", post_json("/api/v1/models/{model}/aliases/%2E%2E", {"version": 1}), 400,
         "alias"),
    Case("alias-longer-than-its-column", post_json("/api/v1/models/{model}/aliases/" + "a" * 51, {"version": 1}),
         400, "alias"),
    Case("alias-with-a-slash-matches-no-route", post_json("/api/v1/models/{model}/aliases/a%2Fb", {"version": 1}),
         404),
    Case("schedule-name-dot-dot", schedule(name=".."), 400, "name"),
    Case("schedule-model-with-a-slash", schedule(model="a/b"), 400, "model"),
    Case("schedule-cron-longer-than-its-column", schedule(cron="0 " + ",".join(["1"] * 80) + " * * *"), 400,
         "cron"),
    Case("schedule-dataset-path-asking-for-a-gigabyte-of-padding", schedule(path="x/{date.year:>999999999}.csv"),
         400, "train.dataset.path"),
    Case("schedule-dataset-path-that-is-not-a-string", schedule(path=7), 400, "train.dataset.path"),
    Case("train-model-name-dot-dot", train(model=".."), 400, "model"),
    Case("sweep-base-model-name-dot-dot",
         post_json("/api/v1/sweeps", {"base": {"model": "..", "task": "regression"}, "grid": {"epochs": [1, 2]}}),
         400, "base.model"),
    # JSON bodies: size, depth, NUL bytes, numbers
    Case("json-body-over-the-json-limit-is-413",
         post_raw("/api/v1/jobs/train", lambda: b'{"pad": "' + b"x" * (21 * 1024 * 1024) + b'"}'), 413),
    Case("content-length-over-the-limit-is-413-before-reading",
         post_raw("/api/v1/jobs/train", b"{}", environ_overrides={"CONTENT_LENGTH": str(10 ** 12)}), 413),
    Case("json-body-without-a-length-is-capped-while-streaming",
         lambda c: c.client.post("/api/v1/jobs/train", input_stream=io.BytesIO(b"[" + b"0," * (11 * 1024 * 1024)),
                                 content_type="application/json",
                                 environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True}), 413),
    Case("json-nested-100000-deep", post_raw("/api/v1/jobs/score", deep(100_000)), 400, text="nested"),
    Case("json-nested-65-deep", post_raw("/api/v1/jobs/train", '{"a": ' + deep(64) + "}"), 400, text="nested"),
    Case("json-that-is-not-an-object", post_raw("/api/v1/jobs/score", "[1, 2]"), 400, text="JSON object"),
    Case("json-that-does-not-parse", post_raw("/api/v1/jobs/score", '{"model": '), 400, text="JSON object"),
    Case("json-integer-of-5000-digits", post_raw("/api/v1/jobs/score", '{"model": ' + "9" * 5000 + "}"), 400),
    Case("nul-byte-in-an-item-id", items(("a\x00", "ok.jpg")), 400, "items.0.id"),
    Case("nul-byte-in-an-item-uri", items(("a", "ok.jpg\x00.png")), 400, "items.0.uri"),
    Case("nul-byte-in-a-model-alias", score(model=f"{BASELINE_MODEL}@prod\x00", items=[{"id": "a", "uri": "b"}]),
         400, "model"),
    Case("nul-byte-in-a-json-key", score(items=[{"id": "a", "uri": "b"}], **{"x\x00": 1}), 400),
    Case("nul-byte-in-a-manifest-path", score(manifest="items\x00.csv"), 400, "manifest"),
    Case("nul-byte-in-a-dataset-path", check("crawl\x00/*"), 400, "path"),
    Case("nul-byte-in-the-after-cursor", get("/api/v1/jobs/{job}/results", after="\x00"), 400, "after"),
    Case("nul-byte-in-a-job-id-in-the-url", get("/api/v1/jobs/%00"), 400, "path"),
    Case("nul-byte-in-the-model-filter", get("/api/v1/jobs", model="x\x00"), 400, "model"),
    Case("nul-byte-in-an-idempotency-key",
         lambda c: c.client.post("/api/v1/jobs/score", json={"model": c.model, "items": [{"id": "a", "uri": "b"}]},
                                 headers={"Idempotency-Key": "k\x00"}), 400, "Idempotency-Key"),
    Case("nul-byte-in-a-form-field", upload("ok.jpg", model=f"{BASELINE_MODEL}\x00"), 400, "model"),
    Case("nul-byte-in-an-uploaded-file-name", upload("ok.jpg", filename="a\x00b.jpg"), 400, "files"),
    Case("version-beyond-64-bits-in-a-model-ref",
         score(model=f"{BASELINE_MODEL}@99999999999999999999999", items=[{"id": "a", "uri": "b"}]), 400, "model"),
    Case("alias-version-given-as-1e20", post_json("/api/v1/models/{model}/aliases/staging", {"version": 1e20}),
         400, "version"),
    Case("alias-version-beyond-64-bits",
         post_json("/api/v1/models/{model}/aliases/staging", {"version": 99999999999999999999}), 400, "version"),
    Case("version-beyond-64-bits-in-the-url", get("/api/v1/models/{model}/versions/99999999999999999999"), 400,
         "version"),
    Case("schedule-id-beyond-64-bits-in-the-url", get("/api/v1/schedules/99999999999999999999"), 400,
         "schedule_id"),
    Case("train-seed-beyond-64-bits", train(seed=2 ** 70), 400, "seed"),
    Case("limit-beyond-64-bits", get("/api/v1/jobs", limit="99999999999999999999999"), 400, "limit"),
    Case("item-id-longer-than-its-column", items(("i" * 501, "ok.jpg")), 400, "items.0.id"),
    Case("model-ref-longer-than-its-column", score(model="m" * 121, items=[{"id": "a", "uri": "b"}]), 400, "model"),
    Case("idempotency-key-longer-than-its-column-on-train",
         lambda c: c.client.post("/api/v1/jobs/train", json={}, headers={"Idempotency-Key": "k" * 201}), 400,
         "Idempotency-Key"),
    Case("url-longer-than-4096-bytes-is-a-json-414", get("/api/v1/jobs/" + "j" * 5000), 414),
    # sweeps, datasets, manifests: counted first, never naming what lies outside the data roots
    Case("sweep-of-20-to-the-5-points-is-refused-in-milliseconds", refused_quickly(1.0)(post_json(
        "/api/v1/sweeps", {"base": TRAIN, "grid": {key: list(range(1, 21)) for key in (
            "seed", "epochs", "batch_size", "shadow_sample", "freeze.head_epochs")}})),
        400, "grid", text="at most 64"),
    Case("sweep-base-over-256-kib", post_json("/api/v1/sweeps", {"base": {"augmentation": {"x": "y" * 300_000}},
                                                              "grid": {"epochs": [1]}}), 400, "body"),
    Case("sweep-grid-with-33-keys",
         post_json("/api/v1/sweeps", {"base": {}, "grid": {f"k{i}": [1] for i in range(33)}}), 400, "grid"),
    Case("dataset-check-of-etc-star", check("/etc/*"), 400, "path", check=lists_nothing_in_etc),
    Case("dataset-check-climbing-with-dot-dot", check("../*"), 400, "path"),
    Case("dataset-check-through-a-linked-folder", check("link-out/*"), 400, "path"),
    Case("dataset-check-of-a-match-that-is-a-link", check("*.csv"), 400, "path"),
    Case("dataset-check-of-etc-passwd", check("/etc/passwd"), 400, "path"),
    Case("dataset-check-of-a-crawler-folder-whose-category-links-out", check("crawl/night"), 400, "path"),
    Case("manifest-missing-its-columns", score(manifest="missing-columns.csv"), 400, "id_column"),
    Case("manifest-with-non-utf8-rows", score(manifest="latin1-rows.csv"), 400, "manifest"),
    Case("manifest-with-a-non-utf8-header", score(manifest="latin1-header.csv"), 400, "manifest"),
    Case("manifest-with-a-nul-byte-in-an-id", score(manifest="nul-id.csv"), 400, "id"),
    Case("manifest-climbing-with-dot-dot", score(manifest="../beyond/secret.csv"), 400, "manifest"),
    Case("manifest-at-an-absolute-path-outside", score(manifest="/etc/passwd"), 400, "manifest"),
    Case("manifest-that-is-a-link-out", score(manifest="manifest-link.csv"), 400, "manifest"),
    Case("manifest-whose-rows-escape-is-accepted-and-fails-per-item", score(manifest="escaping-rows.csv"), 202),
    Case("items-climbing-out-are-accepted-and-fail-per-item",
         items(("up", "../../etc/passwd"), ("abs", "/etc/passwd"), ("link", f"link-out/photo-{SECRET}.jpg")), 202),
    Case("100000-items-in-one-body-fit-the-json-limit-and-meet-the-items-limit",
         post_raw("/api/v1/jobs/score", hundred_thousand_items), 400, "items", text="at most 10000"),
    # uploads: accepted; each file is scored or becomes its item's error (score_items tests below)
    *[Case(f"upload-of-{name.replace('.', '-')}", upload(name), 202) for name in hostile_images()],
    Case("upload-of-every-hostile-file-at-once", upload(*hostile_images()), 202),
    # model files: accepted as an import job (202), which then fails with the reason
    Case("model-file-asking-for-code-is-an-import-job-that-fails", import_model("evil", file="unsafe"), 202,
         check=import_fails_naming_only_the_upload("m.keras", "arbitrary Python code")),
    Case("garbage-model-file-is-an-import-job-that-fails-naming-only-the-upload",
         import_model("garbage", data=os.urandom(4096), filename="garbage.keras"), 202,
         check=import_fails_naming_only_the_upload("garbage.keras")),
    Case("model-class-names-nested-too-deeply",
         import_model("deep", class_names=deep(5000), task="classification"), 400, "class_names"),
]
CASE_IDS = [case.id for case in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS) and len(CASES) >= 40


# ---------------------------------------------------------------- one database per backend, state stored first

@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_url(request, tmp_path_factory):
    """Overrides conftest's: one migrated database per backend for the whole module."""
    from shared.core.db import engine_for
    from shared.core.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('hostile-db') / 'imgq.db'}"
        upgrade(url)
        yield url
        engine_for(url).dispose()
        return
    url = create_pg_database()
    upgrade(url)
    yield url
    engine_for(url).dispose()
    drop_pg_database(url)


@dataclass
class Baseline:
    secret: str
    job_id: str
    model: dict
    model_sha256: str
    job: dict


def _client(app, secret):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return client


def _job_state(client, job_id) -> dict:
    job = client.get(f"/api/v1/jobs/{job_id}").json
    return {k: job[k] for k in ("status", "model", "progress", "chunks", "source", "cache")}


@pytest.fixture(scope="module")
def baseline(db_url, tmp_path_factory, model_files):
    """A model and a score job stored before the corpus runs (through the API, with an admin token)."""
    home = tmp_path_factory.mktemp("baseline")
    with pytest.MonkeyPatch.context() as mp:
        s = configure_process(mp, home, db_url)  # as an entry point would: the token below goes to this database
        with session_scope() as session:
            _, secret = tokens.create_token(session, "hostile-corpus", "admin")
        client = _client(create_app(s), secret)
        with open(model_files["regression"], "rb") as fh:
            resp = client.post("/api/v1/models", content_type="multipart/form-data", data={
                "name": BASELINE_MODEL, "task": "regression", "input_size": "32", "file": (fh, "r.keras")})
        assert resp.status_code == 202, resp.json
        from worker.model_importer import run_import

        assert run_import(resp.json["id"], s) == "succeeded"  # as the maintenance worker would
        (home / "data" / "kept.jpg").write_bytes(hostile_images()["ok.jpg"])
        resp = client.post("/api/v1/jobs/score", json={"model": BASELINE_MODEL,
                                                       "items": [{"id": "kept", "uri": "kept.jpg"}]})
        assert resp.status_code == 202, resp.json
        job_id = resp.json["id"]
        model = client.get(f"/api/v1/models/{BASELINE_MODEL}/versions/1").json
        state = Baseline(secret, job_id, model, hashlib.sha256(Path(_stored_path()).read_bytes()).hexdigest(),
                         _job_state(client, job_id))
    from shared.core.config import get_settings

    get_settings.cache_clear()
    return state


def _stored_path() -> str:
    from sqlalchemy import select

    from shared.core.tables import ModelVersion

    with session_scope() as session:
        return session.scalar(select(ModelVersion.path).where(ModelVersion.name == BASELINE_MODEL))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_each_hostile_request_gets_its_documented_status_and_a_json_body(case, configured, baseline, model_files,
                                                                       tmp_path):
    lay_out(configured.data_roots[0], tmp_path / "beyond")
    ctx = Ctx(client=_client(create_app(configured), baseline.secret), model=BASELINE_MODEL,
              job_id=baseline.job_id, root=configured.data_roots[0], store=configured.model_store,
              model_files=model_files)
    resp = case.send(ctx)
    text = resp.get_data(as_text=True)
    assert resp.status_code == case.status, text[:600]
    assert resp.is_json, text[:200]
    assert SECRET not in text  # nothing found beyond the data roots is named
    if resp.status_code >= 400:
        error = resp.json["error"]
        assert error["type"] and error["message"]
        assert str(tmp_path) not in text and str(configured.data_dir) not in text  # no server path
        if case.field:
            fields = {p["field"] for p in error["problems"]}
            assert case.field in fields, error
        if case.text:
            assert case.text in error["message"], error
    else:
        assert resp.json["status"] == "queued"
    if case.check:
        case.check(resp, ctx)


# ---------------------------------------------------------------- per-item problems, as a worker meets them

class FakeModel:
    """What score_items needs of a loaded model, without TensorFlow: every image scores 0."""

    def __init__(self):
        from shared.images.imaging import Preprocessing
        from shared.services.model_registry import Signature

        self.version_id = 1
        self.signature = Signature(task="regression", input_height=32, input_width=32, output_names=["value"])
        self.preprocessing = Preprocessing(32, 32)

    def predict(self, batch):
        return np.zeros((len(batch), 1), dtype=np.float32)


def test_hostile_items_are_scored_or_become_their_own_errors_and_never_raise(tmp_path):
    from worker.scoring import ScoreOptions, score_items

    root, beyond = tmp_path / "data", tmp_path / "beyond"
    lay_out(root, beyond)
    hostile = [(name, name) for name in hostile_images()]
    escapes = [("up", f"../beyond/photo-{SECRET}.jpg"), ("abs", "/etc/passwd"),
               ("link", f"link-out/photo-{SECRET}.jpg"), ("nul", "ok.jpg\x00.png"), ("gone", "missing.jpg")]
    written = []
    opts = ScoreOptions(roots=(root.resolve(),), batch_size=4, max_pixels=10_000_000, max_bytes=10_000_000,
                        threads=2)
    score_items(hostile + escapes, FakeModel(), opts, lambda hashes: {},
                lambda results, cache_rows: written.extend(results))
    results = {r["item_id"]: r for r in written}
    assert set(results) == {i for i, _ in hostile + escapes}
    for name in SCORED:
        assert results[name]["status"] == "ok", results[name]
    for name, reason in ITEM_ERRORS.items():
        assert results[name]["status"] == "error" and reason in results[name]["error"], results[name]
    for item_id in ("up", "abs", "link", "nul"):
        assert results[item_id]["status"] == "error", results[item_id]
        assert "outside the data roots" in results[item_id]["error"] or "invalid path" in results[item_id]["error"]
    assert "file not found" in results["gone"]["error"]


def test_uploaded_hostile_files_are_scored_or_become_item_errors(configured, baseline, tmp_path):
    """The files an upload stored, read back the way a worker reads that job's items."""
    from sqlalchemy import select

    from shared.core.tables import Job, JobItem
    from worker.scoring import ScoreOptions, score_items

    lay_out(configured.data_roots[0], tmp_path / "beyond")
    client = _client(create_app(configured), baseline.secret)
    resp = upload(*hostile_images())(Ctx(client, BASELINE_MODEL, "", configured.data_roots[0],
                                         configured.model_store, {}))
    assert resp.status_code == 202, resp.json
    with session_scope() as session:
        job = session.get(Job, resp.json["id"])
        roots = configured.readable_roots(job.upload_folder)
        stored = [(i.item_id, i.uri) for i in session.scalars(select(JobItem).where(JobItem.job_id == job.id))]
    written = []
    opts = ScoreOptions(roots=roots, batch_size=4, max_pixels=10_000_000, max_bytes=10_000_000, threads=2)
    score_items(stored, FakeModel(), opts, lambda hashes: {}, lambda results, cache_rows: written.extend(results))
    results = {r["item_id"]: r for r in written}
    assert {n for n, r in results.items() if r["status"] == "ok"} == SCORED
    assert all(reason in results[n]["error"] for n, reason in ITEM_ERRORS.items())


# ---------------------------------------------------------------- files written stay inside their root

def test_path_inside_keeps_a_destination_inside_its_root(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    assert path_inside(store, "pageviews", "v1-abc.keras") == store.resolve() / "pageviews" / "v1-abc.keras"
    for parts in (("..",), ("..", "x.keras"), ("a/b",), ("",), (".",), ("a\x00b",), ("/etc", "passwd")):
        with pytest.raises(OutsideRoot):
            path_inside(store, *parts)
    os.symlink(tmp_path, store / "link")  # a link inside the root that leads out of it
    with pytest.raises(OutsideRoot, match="leads outside 'store'"):
        path_inside(store, "link", "x.keras")


def test_a_model_named_dot_dot_cannot_write_outside_the_store(configured, model_files):
    from shared.core.errors import InvalidRequest
    from shared.services import model_registry as registry

    store = configured.model_store
    with session_scope() as session, pytest.raises(InvalidRequest, match="name"):
        registry.import_model(session, Path(model_files["regression"]), "..", registry.Signature(
            task="regression", input_height=32, input_width=32), store)
    assert not list(store.parent.glob("*.keras")) and not list(store.glob("*.keras"))


# ---------------------------------------------------------------- limits, the last line of defence, the CLI

def test_the_json_limit_and_the_upload_limit_are_apart(configured, baseline, tmp_path):
    from dataclasses import replace

    lay_out(configured.data_roots[0], tmp_path / "beyond")
    tight = replace(configured, max_json_bytes=1024, max_upload_bytes=64 * 1024)
    client = _client(create_app(tight), baseline.secret)
    resp = client.post("/api/v1/jobs/score", json={"model": BASELINE_MODEL, "items": [
        {"id": f"i{i}", "uri": "ok.jpg"} for i in range(40)]})
    assert resp.status_code == 413 and resp.json["error"]["limit"] == 1024
    ok = client.post("/api/v1/jobs/score", content_type="multipart/form-data", data={
        "model": BASELINE_MODEL, "files": [(io.BytesIO(b"x" * 8192), "big.jpg")]})
    assert ok.status_code == 202, ok.json  # 8 KiB of multipart: over the JSON limit, under the upload limit
    big = client.post("/api/v1/jobs/score", content_type="multipart/form-data", data={
        "model": BASELINE_MODEL, "files": [(io.BytesIO(b"x" * 100_000), "huge.jpg")]})
    assert big.status_code == 413 and big.json["error"]["type"] == "RequestEntityTooLarge"


@pytest.mark.parametrize("error, status", [("data", 400), ("integrity", 409), ("overflow", 400)],
                         ids=["data-error", "integrity-error", "sqlite-overflow"])
def test_a_database_error_past_validation_is_a_4xx_that_names_no_server_detail(error, status):
    from flask import Flask
    from sqlalchemy.exc import DataError, IntegrityError

    from web import errors

    detail = f"value too long for type character varying(50) in /srv/{SECRET}/imgq.db"
    raised = {"data": DataError("INSERT INTO model_aliases", {}, Exception(detail)),
              "integrity": IntegrityError("INSERT INTO schedules", {}, Exception(detail)),
              "overflow": OverflowError(detail)}[error]
    app = Flask("t")
    errors.register(app)

    @app.get("/boom")
    def boom():
        raise raised

    resp = app.test_client().get("/boom")
    assert resp.status_code == status and resp.json["error"]["message"]
    assert SECRET not in resp.get_data(as_text=True) and "model_aliases" not in resp.get_data(as_text=True)


@pytest.mark.parametrize("argv", [["models", "import", "m.keras", "--name", "..", "--task", "regression"],
                                  ["models", "import", "m.keras", "--name", "a/b", "--task", "regression"],
                                  ["models", "promote", "m", "1", "--alias", "x" * 51]],
                         ids=["import-named-dot-dot", "import-named-a-slash-b", "promote-to-a-51-character-alias"])
def test_the_cli_refuses_a_bad_model_name_before_doing_anything(argv, capsys):
    from shared.tools.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err


# ---------------------------------------------------------------- after everything above

def test_nothing_stored_before_the_corpus_is_lost(configured, baseline):
    client = _client(create_app(configured), baseline.secret)
    assert client.get(f"/api/v1/models/{BASELINE_MODEL}/versions/1").json == baseline.model
    assert client.get(f"/api/v1/models/{BASELINE_MODEL}/versions").json["versions"] == [baseline.model]
    assert hashlib.sha256(Path(_stored_path()).read_bytes()).hexdigest() == baseline.model_sha256
    assert _job_state(client, baseline.job_id) == baseline.job
