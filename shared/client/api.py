"""A Python client of imgq's HTTP API: what the `imgq` CLI's remote commands are built on, and what a notebook or a
cron job imports. It needs only the server's address and a token (no database, no broker, no TensorFlow):

    from shared.client import Client
    client = Client("http://imgq:8000", token)
    job = client.score(["crawl/2026-12-06/"], model="pageviews")
    client.wait(job, progress=True)
    frame = client.results(job)

Invariants: every list is read by following its `next` link (no offsets); uploads and downloads are streamed
(a folder of images never sits whole in memory, nor a million results), a large folder in parts; every error the
server answers becomes an ApiError with its type, message and problems, and no answer at all an Unreachable.
"""
from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import requests
from requests_toolbelt.multipart.encoder import MultipartEncoder

from shared.client import config, uploads
from shared.client.errors import ApiError, AuthError, ServerError, Unreachable

API = "/api/v1"
FINAL_STATUSES = ("succeeded", "failed", "canceled")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
PAGE_LIMIT = 1000  # the server's maximum page size
USER_AGENT = "imgq-client/1"


def job_id_of(job: dict | str) -> str:
    return job if isinstance(job, str) else job["id"]


def image_files(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(item id, file) for every image under the given folders (by suffix, hidden files skipped, sorted) and for
    every file given by name. A folder's items are named by their path inside it; a file by its base name."""
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = f.relative_to(path)
                if f.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in rel.parts):
                    found.append((rel.as_posix(), f))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    ids = [item_id for item_id, _ in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise ValueError(f"two files would have the same item id: {', '.join(duplicates[:5])}")
    return found


class Client:
    """One server, one token. Methods return the server's JSON (dicts), results as pandas DataFrames."""

    def __init__(self, server: str, token: str | None = None, *, timeout: float = 60.0,
                 session: requests.Session | None = None):
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.http = session or requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_config(cls, server: str | None = None, token: str | None = None, **kwargs) -> Client:
        """Arguments, then IMGQ_SERVER / IMGQ_TOKEN, then the file `imgq login` wrote."""
        target = config.resolve(server, token)
        return cls(target.server, target.token, **kwargs)

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, *, expect_json: bool = True, stream: bool = False,
                **kwargs) -> requests.Response:
        """The response to `method path` (relative to the server), or the error the server answered."""
        url = path if path.startswith(("http://", "https://")) else f"{self.server}{path}"
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.http.request(method, url, stream=stream, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(f"cannot reach {self.server}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def get(self, path: str, **params) -> dict:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: dict | None = None, *, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.request("POST", path, json=body if body is not None else {}, headers=headers).json()

    def pages(self, path: str, key: str, **params) -> Iterator[dict]:
        """Every row of a list, page after page, by its `next` link."""
        body = self.get(path, **params)
        while True:
            yield from body[key]
            if not body.get("next"):
                return
            body = self.request("GET", body["next"]).json()

    # ------------------------------------------------------------------ jobs
    def job(self, job: dict | str) -> dict:
        return self.get(f"{API}/jobs/{job_id_of(job)}")

    def jobs(self, *, status: str | None = None, kind: str | None = None, model: str | None = None,
             limit: int | None = None) -> Iterator[dict]:
        """Jobs, newest first, filtered; at most `limit` of them (all when None)."""
        rows = self.pages(f"{API}/jobs", "jobs", status=status, kind=kind, model=model,
                          limit=min(limit, PAGE_LIMIT) if limit else PAGE_LIMIT)
        for n, row in enumerate(rows, 1):
            yield row
            if limit and n >= limit:
                return

    def cancel(self, job: dict | str) -> dict:
        return self.post(f"{API}/jobs/{job_id_of(job)}/cancel")

    def score(self, paths: Iterable[str | Path] = (), *, model: str, manifest: str | None = None,
              id_column: str = "id", image_column: str = "image", cache: bool = True,
              idempotency_key: str | None = None, on_upload: Callable[[int, int], None] | None = None,
              on_part: Callable[[int, int, dict], None] | None = None, part_files: int = uploads.PART_FILES,
              part_bytes: int = uploads.PART_BYTES) -> dict:
        """A score job: a manifest on the server's data roots, or the images under `paths` uploaded (streamed; one
        multipart request when they fit one part of `part_files` files and `part_bytes` bytes, else an upload in
        parts: shared/client/uploads.py). `on_upload(sent, total)` follows the bytes, `on_part(n, parts, answer)`
        the parts. Returns the job (202)."""
        if manifest is not None:
            return self.post(f"{API}/jobs/score", {"model": model, "manifest": manifest, "id_column": id_column,
                                                   "image_column": image_column, "cache": cache},
                             idempotency_key=idempotency_key)
        files = image_files(paths)
        if not files:
            raise ValueError("no images found (looked for " + ", ".join(IMAGE_SUFFIXES) + ")")
        return uploads.upload_folder(self, f"{API}/jobs/score", files, {"model": model, "cache": cache},
                                     idempotency_key=idempotency_key, part_files=part_files, part_bytes=part_bytes,
                                     on_upload=on_upload, on_part=on_part)

    def upload(self, upload_id: str) -> dict:
        """An upload sent in parts: its files and bytes so far, and the job that took it."""
        return self.get(f"{API}/uploads/{upload_id}")

    def wait(self, job: dict | str, *, progress: Callable[[dict], None] | bool = False, poll: float = 1.0,
             timeout: float | None = None) -> dict:
        """Poll the job until it is final (succeeded, failed, canceled) and return it; `progress` is called with
        each poll's job (True: a progress bar on the terminal, lines otherwise). TimeoutError after `timeout` s."""
        if progress is True:
            from shared.client.progress import watch

            return watch(self, job, poll=poll, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.job(job)
            if callable(progress):
                progress(current)
            if current["status"] in FINAL_STATUSES:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current['id']} is still {current['status']} after {timeout} s")
            time.sleep(poll)

    def iter_results(self, job: dict | str, *, status: str | None = None) -> Iterator[dict]:
        """Each item's result as JSON (id, status, outputs, error, from_cache), in item id order."""
        return self.pages(f"{API}/jobs/{job_id_of(job)}/results", "results", status=status, limit=PAGE_LIMIT)

    def results_csv(self, job: dict | str) -> Iterator[bytes]:
        """The job's results as CSV bytes, streamed (one row per item; outputs as columns)."""
        return self.results_file(job, "csv")

    def results_file(self, job: dict | str, format: str) -> Iterator[bytes]:
        """The job's results as the server streams them as one file: `format` csv or parquet."""
        response = self.request("GET", f"{API}/jobs/{job_id_of(job)}/results", params={"format": format},
                                stream=True)
        with response:
            yield from response.iter_content(chunk_size=1 << 16)

    def results(self, job: dict | str):
        """The job's results as a pandas DataFrame: id, status, error, from_cache and one column per output."""
        import pandas as pd

        frame = pd.read_csv(io.BytesIO(b"".join(self.results_csv(job))), dtype=str, keep_default_na=False)
        return _typed(frame)

    def download_results(self, job: dict | str, out: str | Path) -> int:
        """Write the results to `out` (.csv or .parquet, as the server streams it; written beside, then renamed, so
        `out` is never a partial file). Returns the number of rows."""
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ValueError(f"{out}: results are written as .csv or .parquet")
        tmp = out.with_name(out.name + ".part")
        try:
            with open(tmp, "wb") as f:
                for block in self.results_file(job, suffix[1:]):
                    f.write(block)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(out).metadata.num_rows
        with open(out, newline="") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)

    # ------------------------------------------------------------------ training
    def train(self, request: dict, *, idempotency_key: str | None = None) -> dict:
        return self.post(f"{API}/jobs/train", request, idempotency_key=idempotency_key)

    def epochs(self, job: dict | str) -> dict:
        """A train job's epochs so far (loss and metrics, train and validation) and its progress."""
        return self.get(f"{API}/jobs/{job_id_of(job)}/epochs")

    # ------------------------------------------------------------------ models
    def models(self) -> Iterator[dict]:
        return self.pages(f"{API}/models", "models", limit=PAGE_LIMIT)

    def versions(self, name: str) -> Iterator[dict]:
        return self.pages(f"{API}/models/{name}/versions", "versions", limit=PAGE_LIMIT)

    def version(self, name: str, version: int) -> dict:
        return self.get(f"{API}/models/{name}/versions/{version}")

    def promote(self, name: str, version: int, alias: str = "production") -> dict:
        return self.post(f"{API}/models/{name}/aliases/{alias}", {"version": version})

    def rollback(self, name: str) -> dict:
        return self.post(f"{API}/models/{name}/rollback")

    def import_model(self, file: str | Path, *, name: str, task: str, **fields) -> dict:
        """Upload a .keras file as the next version of `name` (an import job; wait for it). `fields` are the form
        fields of POST /api/v1/models (input_size, class_names as a list, target_transform, promote...)."""
        form = {"name": name, "task": task}
        for key, value in fields.items():
            if value is None:
                continue
            form[key] = ",".join(value) if isinstance(value, (list, tuple)) else \
                str(value).lower() if isinstance(value, bool) else str(value)
        file = Path(file)
        with open(file, "rb") as f:
            encoder = MultipartEncoder([*form.items(), ("file", (file.name, f, "application/octet-stream"))])
            return self.request("POST", f"{API}/models", data=encoder,
                                headers={"Content-Type": encoder.content_type}).json()

    # ------------------------------------------------------------------ schedules
    def schedules(self) -> Iterator[dict]:
        return self.pages(f"{API}/schedules", "schedules", limit=PAGE_LIMIT)

    def schedule(self, schedule_id: int) -> dict:
        return self.get(f"{API}/schedules/{schedule_id}")

    def create_schedule(self, body: dict) -> dict:
        return self.post(f"{API}/schedules", body)

    def set_schedule_enabled(self, schedule_id: int, enabled: bool) -> dict:
        return self.request("PATCH", f"{API}/schedules/{schedule_id}", json={"enabled": enabled}).json()

    def delete_schedule(self, schedule_id: int) -> None:
        self.request("DELETE", f"{API}/schedules/{schedule_id}")

    # ------------------------------------------------------------------ similar images
    def similar(self, image: str | Path | None = None, *, catalog: str, k: int = 10, item_id: str | None = None,
                image_uri: str | None = None, category: str | None = None, category_from: str | None = None,
                space: str | None = None) -> dict:
        """The catalog items most like an image file (uploaded), an image on the server's data roots
        (`image_uri`) or an item of the catalog (`item_id`)."""
        fields = {"catalog": catalog, "k": k, "category": category, "category_from": category_from, "space": space}
        fields = {key: value for key, value in fields.items() if value is not None}
        if image is None:
            return self.post(f"{API}/similar", {**fields, **({"item_id": item_id} if item_id else {}),
                                                **({"image_uri": image_uri} if image_uri else {})})
        with open(image, "rb") as f:
            encoder = MultipartEncoder([*((key, str(value)) for key, value in fields.items()),
                                        ("image", (Path(image).name, f, "application/octet-stream"))])
            return self.request("POST", f"{API}/similar", data=encoder,
                                headers={"Content-Type": encoder.content_type}).json()


def _error_of(response: requests.Response) -> ApiError:
    try:
        error = response.json()["error"]
        kind, message, problems = error.get("type", "Error"), error.get("message", ""), error.get("problems", [])
        body = error
    except (ValueError, KeyError, TypeError, AttributeError):
        kind, message, problems, body = response.reason or "Error", response.text[:300].strip(), [], {}
    cls = AuthError if response.status_code in (401, 403) else ServerError if response.status_code >= 500 \
        else ApiError
    return cls(response.status_code, kind, message or response.reason or "", problems, body)


def _typed(frame):
    """Output columns read as text become numbers where every non-empty value is one; from_cache a bool."""
    import pandas as pd

    for column in frame.columns:
        if column in ("id", "status", "error"):
            continue
        values = frame[column]
        numeric = pd.to_numeric(values.where(values != ""), errors="coerce")
        if numeric.notna().sum() == (values != "").sum():
            frame[column] = numeric
    if "from_cache" in frame:
        frame["from_cache"] = frame["from_cache"].astype(bool)
    return frame
