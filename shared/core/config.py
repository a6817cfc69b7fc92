"""Settings read from environment variables, with defaults that run with no servers.

`load_settings` is the one place that reads the environment (every variable is listed in the README's
configuration table). Only entry points (the CLI's commands, `web/wsgi.py`, the training process, Alembic's
`migrations/env.py`) call `get_settings()`; everything else receives the `Settings` they pass down.
Importing this module reads nothing.

With no DATABASE_URL and no BROKER_URL, imgq keeps everything under one local data
directory: a SQLite database and kombu's filesystem transport as the message queue
(a real queue between separate processes, not Celery's eager mode).
"""
from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from shared.core.paths import object_root, split_roots

LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """An environment variable holds a value imgq cannot use."""


def _int(env: dict, name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env: dict, name: str, default: float, zero_allowed: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_allowed) or value != value:
        raise ConfigError(f"{name} must be {'zero or ' if zero_allowed else ''}positive, got {value}")
    return value


def _bounded(env: dict, name: str, default: float, *, maximum: float) -> float:
    value = _float(env, name, default)
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g}, got {value:g}")
    return value


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _rate(env: dict, name: str, default: str) -> str:
    """A flask-limiter rate such as '600 per minute' or '10/second'."""
    raw = (env.get(name) or default).strip()
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a rate such as '600 per minute', got {raw!r}") from None
    return raw


def _host(env: dict, name: str, default: str) -> str:
    """An address to listen on: a host name, an IPv4 or an IPv6 address (no scheme, port or path)."""
    raw = (env.get(name) or default).strip()
    if any(c.isspace() or c in "/@" for c in raw) or raw.count(":") == 1:
        raise ConfigError(f"{name} must be a host name or address such as 0.0.0.0, got {raw!r}")
    return raw


def _choice(env: dict, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip())


def _roots(env: dict, name: str) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    """The local folders and the object-store prefixes (`s3://bucket/prefix/`) a path list names, in its order."""
    local, remote = [], []
    for entry in split_roots(env.get(name) or ""):
        if "://" in entry:
            try:
                remote.append(object_root(entry))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        else:
            local.append(Path(entry).expanduser().resolve())
    return tuple(local), tuple(remote)


def _export_roots(env: dict, name: str) -> tuple[str, ...]:
    """URI prefixes only (`s3://bucket/prefix/`): a result export is written to a store, never to a local folder."""
    local, remote = _roots(env, name)
    if local:
        raise ConfigError(f"{name}: only object-store URI prefixes (s3://, az://...), not local folders: "
                          f"{', '.join(map(str, local))}")
    return remote


def _folder_or_store(env: dict, name: str, default: Path) -> tuple[Path, str | None]:
    """IMGQ_MODEL_STORE, IMGQ_UPLOAD_DIR: a local folder (files there), or an s3:// prefix (objects there; the local
    folder `default` then only stages and holds temporary files)."""
    raw = (env.get(name) or "").strip()
    if "://" not in raw:
        return Path(raw or default).expanduser().resolve(), None
    try:
        uri = object_root(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return default.resolve(), uri


def _networks(env: dict, name: str) -> str:
    """A comma-separated list of IP addresses and networks, checked here and parsed where it is used."""
    raw = (env.get(name) or "").strip()
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: not an IP address or network: {part!r}") from None
    return raw


def _url(env: dict, name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if raw and not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw or None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    broker_url: str
    broker_transport_options: dict = field(hash=False)
    data_roots: tuple[Path, ...]
    object_roots: tuple[str, ...]  # IMGQ_DATA_ROOTS's URI prefixes (s3://bucket/prefix/), normalised
    export_roots: tuple[str, ...]  # IMGQ_EXPORT_ROOTS: URI prefixes a job's results may be exported to (written)
    s3_endpoint_url: str | None
    web_items: str  # IMGQ_WEB_ITEMS: "https" (default), "http" (http:// too) or "off"
    web_allow_networks: str  # IMGQ_WEB_ALLOW_NETWORKS: addresses the image-URL guard lets through (comma-separated)
    web_per_host: int
    s3_retries: int
    read_threads: int
    upload_dir: Path  # the local upload folder (unused when upload_store_uri is set)
    upload_store_uri: str | None  # IMGQ_UPLOAD_DIR as an s3:// prefix: uploads are objects there (upload_files.py)
    model_store: Path  # the local model folder: every version's file, or (with model_store_uri) staging and temp
    model_store_uri: str | None  # IMGQ_MODEL_STORE as an s3:// prefix: versions are stored there, read via the cache
    model_cache_dir: Path  # IMGQ_MODEL_CACHE_DIR: this machine's copies of stored versions, one per content hash
    chunk_size: int
    inline_manifest_bytes: int
    chain_seconds: float
    batch_size: int
    decode_threads: int
    fast_jpeg: bool
    max_image_pixels: int
    max_image_bytes: int
    max_attempts: int
    heartbeat_timeout: float
    requeue_after: float
    sweep_interval: float
    model_cache_size: int
    max_upload_bytes: int
    max_json_bytes: int
    schedule_tick: float
    max_train_seconds: int
    read_timeout: float
    decode_timeout: float
    worker_start_timeout: float
    outage_retry_delay: float
    store_outage_wait: float  # IMGQ_STORE_OUTAGE_WAIT: how long a worker holds a batch while the object store is away
    lost_after: float
    upload_retention: float
    orphan_upload_after: float
    sweep_max_age: float
    auth_enabled: bool
    metrics_public: bool
    rate_limit: str
    max_active_jobs: int
    limiter_storage: str
    preload: bool
    auto_migrate: bool
    host: str
    port: int
    query_timeout: float
    exact_index_below: int
    result_backend: str
    log_format: str
    metrics_port: int
    metrics_host: str
    metrics_dir: Path
    drift_threshold: float

    @property
    def embedded(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    def readable_roots(self, upload_folder: str | None = None) -> tuple[Path, ...]:
        """Folders a job may read images from: the configured roots, and its own upload folder only."""
        own = (self.upload_dir / upload_folder,) if upload_folder and self.upload_store_uri is None else ()
        return (*self.data_roots, *own)

    def readable_object_roots(self, upload_folder: str | None = None) -> tuple[str, ...]:
        """Object-store prefixes a job may read images from: the configured ones, and its own upload folder's."""
        own = (f"{self.upload_store_uri}{upload_folder}/",) if upload_folder and self.upload_store_uri else ()
        return (*self.object_roots, *own)


def load_settings(env: dict | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("IMGQ_HOME") or Path.cwd() / ".imgq").expanduser().resolve()
    database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'imgq.db'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://"):]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    broker_url = env.get("BROKER_URL") or "filesystem://"
    heartbeat_timeout = _float(env, "IMGQ_HEARTBEAT_TIMEOUT", 120.0)
    sweep_interval = _float(env, "IMGQ_SWEEP_INTERVAL", 15.0)
    options: dict = {}
    if broker_url.startswith("filesystem://"):
        queue_dir = str(data_dir / "broker")
        options = {"data_folder_in": queue_dir, "data_folder_out": queue_dir,
                   "control_folder": str(data_dir / "broker-control"),
                   "polling_interval": _float(env, "IMGQ_BROKER_POLL", 0.2)}
    elif broker_url.startswith(("redis://", "rediss://")):
        # Far longer than the longest chunk: a message is redelivered by Redis only when
        # its consumer is truly gone; the sweeper usually takes a dead chunk up first.
        options = {"visibility_timeout": _int(env, "IMGQ_VISIBILITY_TIMEOUT", 6 * 3600)}
        if env.get("IMGQ_BROKER_PREFIX"):  # several imgq installations (or test runs) on one Redis
            options["global_keyprefix"] = env["IMGQ_BROKER_PREFIX"]
    data_roots, object_roots = _roots(env, "IMGQ_DATA_ROOTS")
    if not data_roots and not object_roots:
        data_roots = (data_dir / "data",)
    decode_threads = _int(env, "IMGQ_DECODE_THREADS", max(2, os.cpu_count() or 2))
    model_store, model_store_uri = _folder_or_store(env, "IMGQ_MODEL_STORE", data_dir / "models")
    upload_dir, upload_store_uri = _folder_or_store(env, "IMGQ_UPLOAD_DIR", data_dir / "uploads")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=broker_url,
        broker_transport_options=options,
        data_roots=data_roots,
        object_roots=object_roots,
        # where a job's `export` may write its results: URI prefixes of their own, never the data roots (which are
        # read, and a job must not overwrite the catalog it reads); none: exports are refused
        export_roots=_export_roots(env, "IMGQ_EXPORT_ROOTS"),
        # an S3-compatible store (MinIO, moto, Ceph); unset: AWS. Credentials and region: the standard AWS variables
        s3_endpoint_url=_url(env, "IMGQ_S3_ENDPOINT_URL"),
        # further tries of an object read after a 5xx, throttling, a refused or reset connection (backoff between)
        s3_retries=_int(env, "IMGQ_S3_RETRIES", 5, minimum=0, maximum=20),
        # items named by image URLs (shared/images/https_items.py): https:// by default, http:// only when asked
        web_items=_choice(env, "IMGQ_WEB_ITEMS", "https", ("https", "http", "off")),
        web_allow_networks=_networks(env, "IMGQ_WEB_ALLOW_NETWORKS"),
        web_per_host=_int(env, "IMGQ_WEB_PER_HOST", 8, maximum=256),
        # item reads in flight per worker process (object-store reads wait on the network: more than the decoders)
        read_threads=_int(env, "IMGQ_READ_THREADS", decode_threads, maximum=256),
        upload_dir=upload_dir,
        upload_store_uri=upload_store_uri,
        # a local folder (the default), or an s3:// prefix that every machine reads (shared/services/model_files.py)
        model_store=model_store,
        model_store_uri=model_store_uri,
        model_cache_dir=Path(env.get("IMGQ_MODEL_CACHE_DIR") or data_dir / "model-cache").expanduser().resolve(),
        chunk_size=_int(env, "IMGQ_CHUNK_SIZE", 256),
        inline_manifest_bytes=_int(env, "IMGQ_INLINE_MANIFEST_BYTES", 1024 ** 2, minimum=0),
        chain_seconds=_float(env, "IMGQ_CHAIN_SECONDS", 60.0, zero_allowed=True),
        batch_size=_int(env, "IMGQ_BATCH_SIZE", 128),
        decode_threads=decode_threads,
        fast_jpeg=_bool(env, "IMGQ_FAST_JPEG", True),
        max_image_pixels=_int(env, "IMGQ_MAX_IMAGE_PIXELS", 40_000_000),
        max_image_bytes=_int(env, "IMGQ_MAX_IMAGE_BYTES", 50 * 1024 * 1024),
        max_attempts=_int(env, "IMGQ_MAX_ATTEMPTS", 3),
        heartbeat_timeout=heartbeat_timeout,
        requeue_after=_float(env, "IMGQ_REQUEUE_AFTER", 3600.0),
        sweep_interval=sweep_interval,
        model_cache_size=_int(env, "IMGQ_MODEL_CACHE_SIZE", 3),
        max_upload_bytes=_int(env, "IMGQ_MAX_UPLOAD_BYTES", 2 * 1024 ** 3),
        # 10,000 inline items with long paths, or 100,000 ordinary ones, fit (about 8 MB)
        max_json_bytes=_int(env, "IMGQ_MAX_JSON_BYTES", 20 * 1024 ** 2, minimum=1024),
        schedule_tick=_float(env, "IMGQ_SCHEDULE_TICK", 30.0),
        max_train_seconds=_int(env, "IMGQ_MAX_TRAIN_SECONDS", 24 * 3600),
        read_timeout=_float(env, "IMGQ_READ_TIMEOUT", 30.0),
        decode_timeout=_float(env, "IMGQ_DECODE_TIMEOUT", 60.0),
        worker_start_timeout=_float(env, "IMGQ_WORKER_START_TIMEOUT", 300.0),
        outage_retry_delay=_float(env, "IMGQ_OUTAGE_RETRY_DELAY", 2.0),
        # a batch whose reads find the object store away (after IMGQ_S3_RETRIES) is read again, its chunk held and
        # heartbeating, for this long before the chunk's attempt ends: an outage is waited out, not counted
        store_outage_wait=_float(env, "IMGQ_STORE_OUTAGE_WAIT", 300.0, zero_allowed=True),
        lost_after=_float(env, "IMGQ_LOST_AFTER", 30.0),
        upload_retention=_float(env, "IMGQ_UPLOAD_RETENTION", 7 * 24 * 3600.0),
        orphan_upload_after=_float(env, "IMGQ_ORPHAN_UPLOAD_AFTER", 3600.0),
        sweep_max_age=_float(env, "IMGQ_SWEEP_MAX_AGE", max(120.0, 8 * sweep_interval)),
        auth_enabled=_bool(env, "IMGQ_AUTH", True),
        metrics_public=_bool(env, "IMGQ_METRICS_PUBLIC", True),
        rate_limit=_rate(env, "IMGQ_RATE_LIMIT", "1200 per minute"),
        max_active_jobs=_int(env, "IMGQ_MAX_ACTIVE_JOBS", 100),
        limiter_storage=env.get("IMGQ_LIMITER_STORAGE") or (
            broker_url if broker_url.startswith(("redis://", "rediss://")) else "memory://"),
        preload=_bool(env, "IMGQ_PRELOAD", True),
        auto_migrate=_bool(env, "IMGQ_AUTO_MIGRATE", True),
        host=_host(env, "IMGQ_HOST", "127.0.0.1"),
        port=_int(env, "IMGQ_PORT", 8000, maximum=65535),
        query_timeout=_float(env, "IMGQ_QUERY_TIMEOUT", 10.0),
        exact_index_below=_int(env, "IMGQ_EXACT_INDEX_BELOW", 20_000),
        # where a worker leaves a query image's vector for the process that waits for it (only query tasks
        # keep a result): the broker's Redis, or a folder of the data directory on the embedded default
        result_backend=env.get("IMGQ_RESULT_BACKEND") or (
            broker_url if broker_url.startswith(("redis://", "rediss://")) else f"file://{data_dir / 'results'}"),
        log_format=_choice(env, "IMGQ_LOG_FORMAT", "text", LOG_FORMATS),
        # a worker's or the maintenance process's /metrics (0: none); the web front serves its own on IMGQ_PORT
        metrics_port=_int(env, "IMGQ_METRICS_PORT", 0, minimum=0, maximum=65535),
        metrics_host=_host(env, "IMGQ_METRICS_HOST", "127.0.0.1"),
        # where each process tree keeps prometheus-client's multiprocess files (shared/core/prometheus.py): local
        # and fast, never a volume several hosts share
        metrics_dir=Path(env.get("IMGQ_METRICS_DIR") or tempfile.gettempdir()).expanduser().resolve(),
        # a score job's output drift (PSI) above this is flagged and logged as a warning (0.1: worth a look,
        # 0.2: a real shift, by the usual reading of PSI)
        drift_threshold=_bounded(env, "IMGQ_DRIFT_THRESHOLD", 0.2, maximum=10.0),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment; for entry points only."""
    return load_settings()


def ensure_dirs(settings: Settings) -> None:
    """Create the data folders (and the embedded broker's); entry points call it, never an import."""
    for path in (settings.data_dir, settings.upload_dir, settings.model_store, *settings.data_roots):
        path.mkdir(parents=True, exist_ok=True)
    if settings.result_backend.startswith("file://"):
        Path(settings.result_backend[len("file://"):]).mkdir(parents=True, exist_ok=True)
    if settings.embedded:
        for key in ("data_folder_in", "control_folder"):
            Path(settings.broker_transport_options[key]).mkdir(parents=True, exist_ok=True)
