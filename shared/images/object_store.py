"""Reading objects from a store (`s3://bucket/key` through fsspec/s3fs; `az://container/key` through adlfs, or
another protocol of OBJECT_SCHEMES whose fsspec implementation is installed): an item's bytes and hash, a manifest.

Invariants:
- Only URIs already checked by `shared/core/paths.object_inside` reach here; this module reads, it does not decide
  what may be read.
- One read is one ranged GET (at most max_bytes + 1 bytes), hashed as the local reader hashes a file, so an object
  and a file with the same bytes have the same content hash (and share the score cache).
- A 404 (no such key or bucket) and a 403 (access denied) are the item's error (`ImageError`), said plainly.
  A refused or reset connection, a timeout, a 5xx or throttling is the store's, not the item's: retried with
  exponential backoff (IMGQ_S3_RETRIES more tries, within the deadline the caller gives), then
  `ObjectStoreUnavailable`, which ends the chunk's attempt instead of marking the item.
- Endpoint: IMGQ_S3_ENDPOINT_URL (Settings); credentials and region: botocore's own chain (AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION or AWS_REGION, AWS_PROFILE).
  Another protocol is configured by its library's own environment (adlfs: AZURE_STORAGE_CONNECTION_STRING, or
  AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or Azure AD's variables) and by fsspec's
  FSSPEC_<PROTOCOL>_<ARGUMENT> variables; its errors are sorted as S3's are (status codes, missing, denied,
  network), and IMGQ_S3_RETRIES applies to it too. Nothing connects until the first read.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.core.errors import ObjectStoreUnavailable
from shared.images.imaging import ImageError

if TYPE_CHECKING:
    from shared.core.config import Settings

log = logging.getLogger(__name__)

_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequests"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                 "SignatureDoesNotMatch", "AccountProblem"}
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0  # seconds; doubled per try, with jitter


@dataclass(frozen=True)
class StoreConfig:
    endpoint_url: str | None = None
    retries: int = 5
    timeout: float = 30.0  # one request's connect and read timeout
    connections: int = 10  # the connection pool: as many as reads in flight, so none waits for a connection

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreConfig:
        return cls(settings.s3_endpoint_url, settings.s3_retries, settings.read_timeout,
                   max(10, settings.read_threads))


_MAKING = threading.Lock()


def protocol_of(uri: str) -> str:
    """The fsspec protocol of an object URI (`s3`, `az`...), as paths.object_root normalised its scheme."""
    return uri.partition("://")[0].lower()


def filesystem(config: StoreConfig, protocol: str = "s3"):
    """The file system of `protocol` for `config`, made once per process, config and protocol, its session
    (credentials, client) set up before any read: the first reads of a worker come from many threads at once, and
    each would otherwise set up a session of its own (a credential lookup and a client each, seconds in all on 2
    cores)."""
    with _MAKING:
        return _filesystem(config, protocol)


@lru_cache(maxsize=8)
def _filesystem(config: StoreConfig, protocol: str):
    """s3fs's and botocore's own retries are off: `read_object` retries, within its deadline, so the per-item read
    timeout keeps its meaning. Another protocol is its library's, as its environment configures it."""
    if protocol != "s3":
        import fsspec

        return fsspec.filesystem(protocol, skip_instance_cache=True)
    import s3fs

    fs = s3fs.S3FileSystem(
        endpoint_url=config.endpoint_url, skip_instance_cache=True,
        config_kwargs={"retries": {"max_attempts": 1, "mode": "standard"}, "max_pool_connections": config.connections,
                       "connect_timeout": min(config.timeout, 10.0), "read_timeout": config.timeout})
    fs.retries = 1  # one try per call (a class attribute in s3fs, not a constructor argument)
    try:
        fs.connect()  # the session now, once (no request is sent: credentials and the client are made locally)
    except Exception as exc:  # noqa: BLE001 - e.g. no credentials: each read then reports it as its own error
        log.info("object store session not set up in advance: %s", exc)
    return fs


def read_object(config: StoreConfig, uri: str, *, max_bytes: int, deadline: float | None = None
                ) -> tuple[bytearray, str]:
    """The object's bytes and their sha256 hex; ImageError for a missing, forbidden or too large object,
    ObjectStoreUnavailable when the store stays unreachable (until `deadline`, a time.monotonic(), if given)."""
    data = retrying(config, uri, deadline, lambda fs: _get(fs, uri, max_bytes + 1))
    if len(data) > max_bytes:
        raise ImageError(f"file too large: more than {max_bytes} bytes")
    return bytearray(data), hashlib.sha256(data).hexdigest()


def _get(fs, uri: str, limit: int) -> bytes:
    """At most `limit` bytes of the object in one ranged GET. A store answers a range on an empty object with 416
    (S3's InvalidRange; Azure's status 416): that object is empty, which the decoder reports as such, like an empty
    file."""
    try:
        return fs.cat_file(uri, start=0, end=limit)
    except Exception as exc:
        error = _client_error(exc)
        if error is not None and error.response.get("Error", {}).get("Code") == "InvalidRange":
            return b""
        if error is None and _status_of(exc) == 416:
            return b""
        raise


def _client_error(exc: BaseException):
    """The botocore ClientError behind an s3fs exception, if any."""
    from botocore.exceptions import ClientError

    seen, depth = exc, 0
    while seen is not None and depth < 5:
        if isinstance(seen, ClientError):
            return seen
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return None


def retrying(config: StoreConfig, uri: str, deadline: float | None, call):
    """`call(fs)`, tried again after a transient failure with exponential backoff and jitter, at most
    `config.retries` more times and never sleeping past `deadline`."""
    fs = filesystem(config, protocol_of(uri))
    for attempt in range(config.retries + 1):
        try:
            return call(fs)
        except Exception as exc:  # noqa: BLE001 - sorted below: the item's fault, or the store's
            kind, reason = classify(exc)
            if kind == "missing":
                raise ImageError(f"object not found: {uri}") from None
            if kind == "denied":
                raise ImageError(f"access denied (403) to {uri}") from None
            if kind == "other":
                raise ImageError(f"cannot read {uri}: {reason}") from None
            pause = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt) * (0.5 + random.random() / 2)
            out_of_time = deadline is not None and time.monotonic() + pause >= deadline
            if attempt == config.retries or out_of_time:
                raise ObjectStoreUnavailable(f"the object store did not answer for {uri} "
                                             f"after {attempt + 1} tries: {reason}") from None
            log.info("object store: %s on %s, try %d of %d in %.1f s", reason, uri, attempt + 2, config.retries + 1,
                     pause)
            time.sleep(pause)
    raise AssertionError("unreachable")


def classify(exc: BaseException) -> tuple[str, str]:
    """("missing" | "denied" | "transient" | "other", a short reason) for an exception from s3fs or botocore."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    client_error = _client_error(exc)
    if client_error is not None:
        code = str(client_error.response.get("Error", {}).get("Code", ""))
        status = int(client_error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return _by_code(code, status), f"{code or status} from the store"
    if any(isinstance(err, (NoCredentialsError, PartialCredentialsError)) for err in chain):
        return "other", "no credentials for the object store (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, " \
                        "or AWS_PROFILE)"
    if isinstance(exc, FileNotFoundError):
        return "missing", "not found"
    if isinstance(exc, PermissionError):
        return "denied", "access denied"
    status = next((code for err in chain if isinstance(code := _status_of(err), int) and code >= 400), None)
    if status is not None:  # another library's HTTP error (adlfs' azure-core: status_code; gcsfs: code)
        return _by_code("", status), f"{status} from the store"
    if any(isinstance(err, _network_errors()) for err in chain):
        return "transient", f"{type(exc).__name__}: {str(exc)[:200]}"
    return "other", f"{type(exc).__name__}: {str(exc)[:200]}"


def _status_of(exc: BaseException):
    return getattr(exc, "status_code", None) or getattr(exc, "code", None)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors of the way to the store (connections, timeouts, cut-off bodies), never of the object or the file
    read from it (a bad gzip stream is an OSError too, and the manifest's fault)."""
    import asyncio

    import aiohttp
    from botocore.exceptions import BotoCoreError

    errors = (BotoCoreError, ConnectionError, TimeoutError, asyncio.TimeoutError, aiohttp.ClientError)
    try:  # adlfs's: a refused connection or a response cut off (ServiceResponseError) are the way's
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError
    except ImportError:
        return errors
    return (*errors, ServiceRequestError, ServiceResponseError)


def _by_code(code: str, status: int) -> str:
    if code in _MISSING_CODES or status == 404:
        return "missing"
    if code in _DENIED_CODES or status == 403:
        return "denied"
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return "transient"
    return "other"


@dataclass(frozen=True)
class ObjectFile:
    """A file-like object in the store, for readers that open it themselves (a manifest): its uri, already checked
    against the allowed prefixes, and how to reach it."""
    uri: str
    store: StoreConfig

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def folder(self) -> str:
        """The uri of its folder (`s3://bucket/prefix`), against which a manifest's relative image paths are read."""
        return self.uri.rsplit("/", 1)[0]

    def check(self) -> None:
        """Nothing if the object exists; else ImageError (missing, forbidden) or ObjectStoreUnavailable."""
        retrying(self.store, self.uri, None, lambda fs: fs.info(self.uri))

    def size(self) -> int:
        """Its size in bytes (one HEAD request); ImageError or ObjectStoreUnavailable as `check`."""
        return int(retrying(self.store, self.uri, None, lambda fs: fs.info(self.uri))["size"])

    def open(self):
        """A binary file object reading the object in blocks (the store is asked as the reader goes)."""
        return retrying(self.store, self.uri, None, lambda fs: fs.open(self.uri, "rb"))
