"""Sending a folder of images to the server: in one multipart request when it is small, in parts when it is large.

A folder that fits one part (at most `part_files` files and `part_bytes` bytes) goes up with the score request
itself: one request, as before uploads in parts existed. A larger one goes through an upload resource
(POST /api/v1/uploads, then one POST .../files per part, then the score request naming the upload), because one
request cannot carry it: the server reads at most 1000 parts to a request and IMGQ_MAX_UPLOAD_BYTES, a cut
connection would lose the whole folder, and a progress bar of one request says nothing until it ends.

Invariants: parts keep the folder's order and never exceed either budget (a single file over `part_bytes` goes
alone); a part that fails for want of an answer (unreachable, 5xx) is sent again, which the server makes harmless
(a file it holds with the same name and bytes is stored once); an upload the job did not take (an error, or a
replayed Idempotency-Key whose job took another upload) is deleted before returning.
"""
from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from requests_toolbelt.multipart.encoder import MultipartEncoder, MultipartEncoderMonitor

from shared.client.errors import ApiError, ClientError, ServerError, Unreachable

if TYPE_CHECKING:
    from shared.client.api import Client

API = "/api/v1"
PART_FILES = 256  # files per part: well under the server's 1000 form parts to a request
PART_BYTES = 64 * 2**20  # bytes of files per part: a minute or so on a slow uplink, far under the server's limit
ATTEMPTS = 3  # tries of one part (or of the score request) when the server does not answer
Files = list[tuple[str, Path]]
OnUpload = Callable[[int, int], None]  # (bytes sent, bytes in all) across the folder
T = TypeVar("T")


def split(files: Files, part_files: int = PART_FILES, part_bytes: int = PART_BYTES) -> list[Files]:
    """The files in order, cut into parts of at most `part_files` files and `part_bytes` bytes (by file size)."""
    if part_files < 1 or part_bytes < 1:
        raise ValueError("a part holds at least one file and one byte")
    parts: list[Files] = []
    current: Files = []
    size = 0
    for item_id, path in files:
        length = path.stat().st_size
        if current and (len(current) >= part_files or size + length > part_bytes):
            parts.append(current)
            current, size = [], 0
        current.append((item_id, path))
        size += length
    if current:
        parts.append(current)
    return parts


def multipart(files: Files, fields: dict[str, str], stack: ExitStack) -> MultipartEncoder:
    """A multipart body whose files (each a part named `files`, its file name the item id) are read as sent."""
    parts = list(fields.items())
    parts += [("files", (item_id, stack.enter_context(open(path, "rb")),
                         mimetypes.guess_type(path.name)[0] or "application/octet-stream"))
              for item_id, path in files]
    return MultipartEncoder(parts)


def monitored(encoder: MultipartEncoder, on_bytes: Callable[[int], None] | None):
    """The body to send: `on_bytes(bytes read so far)` follows it when given."""
    if on_bytes is None:
        return encoder
    return MultipartEncoderMonitor(encoder, lambda monitor: on_bytes(monitor.bytes_read))


def retried(call: Callable[[], T], attempts: int = ATTEMPTS, pause: float = 1.0) -> T:
    """`call()`, again after an Unreachable or a 5xx (up to `attempts` in all): for requests safe to repeat."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (Unreachable, ServerError):
            if attempt == attempts:
                raise
            time.sleep(pause * attempt)
    raise AssertionError("unreachable")


def send_part(client: Client, upload_id: str, files: Files, on_bytes: Callable[[int], None] | None = None) -> dict:
    """One part (POST /api/v1/uploads/<id>/files): {"added", "repeated", "upload"}."""
    with ExitStack() as stack:
        encoder = multipart(files, {}, stack)
        body = monitored(encoder, on_bytes)
        return client.request("POST", f"{API}/uploads/{upload_id}/files", data=body,
                              headers={"Content-Type": body.content_type},
                              timeout=max(client.timeout, 3600)).json()


def send_parts(client: Client, upload_id: str, parts: list[Files], on_upload: OnUpload | None = None,
               on_part: Callable[[int, int, dict], None] | None = None) -> None:
    """Every part in order, each retried; `on_upload(sent, total)` follows the files' bytes, `on_part(n, parts,
    answer)` each part sent."""
    sizes = [sum(path.stat().st_size for _, path in part) for part in parts]
    total, done = sum(sizes), 0
    for n, (part, size) in enumerate(zip(parts, sizes), 1):
        on_bytes = None if on_upload is None else \
            (lambda read, base=done, size=size: on_upload(base + min(read, size), total))
        answer = retried(lambda part=part, on_bytes=on_bytes: send_part(client, upload_id, part, on_bytes))
        done += size
        if on_upload is not None:
            on_upload(done, total)
        if on_part is not None:
            on_part(n, len(parts), answer)


def submit_upload(client: Client, path: str, body: dict, idempotency_key: str | None) -> dict:
    """POST the request naming an upload (retried when unanswered; a 409 saying a job took the upload is that job,
    made by an earlier try whose answer was lost). Deletes the upload when the job did not take it."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    upload_id = body["upload"]
    try:
        job = retried(lambda: client.request("POST", path, json=body, headers=headers).json())
    except ApiError as exc:
        if exc.status == 409 and exc.body.get("job") and any(p.get("field") == "upload" for p in exc.problems):
            return client.job(exc.body["job"])
        discard(client, upload_id)
        raise
    except ClientError:
        discard(client, upload_id)
        raise
    if (job.get("source") or {}).get("upload") != upload_id:  # a replay: the job took an earlier upload
        discard(client, upload_id)
    return job


def discard(client: Client, upload_id: str) -> None:
    """Delete an upload no job took; best effort (the server removes it when idle anyway)."""
    try:
        client.request("DELETE", f"{API}/uploads/{upload_id}")
    except ClientError:
        pass


def upload_folder(client: Client, path: str, files: Files, fields: dict, *, idempotency_key: str | None = None,
                  part_files: int = PART_FILES, part_bytes: int = PART_BYTES, on_upload: OnUpload | None = None,
                  on_part: Callable[[int, int, dict], None] | None = None) -> dict:
    """Submit `fields` (the request's JSON fields) with `files` as its items to `path` (/api/v1/jobs/score or
    /embed): one request when the files fit one part, else an upload in parts. Returns the job."""
    parts = split(files, part_files, part_bytes)
    if len(parts) <= 1:
        return _one_request(client, path, files, fields, idempotency_key, on_upload)
    upload_id = client.post(f"{API}/uploads")["id"]
    try:
        send_parts(client, upload_id, parts, on_upload, on_part)
    except BaseException:
        discard(client, upload_id)
        raise
    return submit_upload(client, path, {**fields, "upload": upload_id}, idempotency_key)


def _one_request(client: Client, path: str, files: Files, fields: dict, idempotency_key: str | None,
                 on_upload: OnUpload | None) -> dict:
    form = {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in fields.items()}
    with ExitStack() as stack:
        encoder = multipart(files, form, stack)
        body = monitored(encoder, (lambda read: on_upload(read, encoder.len)) if on_upload else None)
        headers = {"Content-Type": body.content_type, **({"Idempotency-Key": idempotency_key}
                                                         if idempotency_key else {})}
        return client.request("POST", path, data=body, headers=headers, timeout=max(client.timeout, 3600)).json()
