"""The compose files (no docker engine needed): docker-compose.yml, deploy/main-host.compose.yml and
deploy/worker-host.compose.yml parse; every imgq service runs a command imgq's own parser accepts; MinIO and its
bucket creation come only with the `objectstore` profile; every variable given to imgq is one
shared/core/config.load_settings reads (or botocore's AWS credentials), and with compose's defaults filled in (and
the required variables given) the settings load; the worker host runs workers only, on the main host's PostgreSQL and
Redis, with the shared folders mounted."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from shared.core.config import load_settings
from shared.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAIN, MAIN_HOST, WORKER_HOST = (ROOT / "docker-compose.yml", ROOT / "deploy" / "main-host.compose.yml",
                                ROOT / "deploy" / "worker-host.compose.yml")
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                 "AWS_REGION", "AWS_PROFILE"}  # read by botocore, as docs/deployment.md says
GIVEN = {"MAIN_HOST": "10.0.0.5", "MAIN_BIND": "10.0.0.5", "IMGQ_SHARED_DIR": "/mnt/imgq"}  # the required ones
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def interpolated(value: str, given: dict) -> str:
    """`value` as compose fills it in: ${X} and ${X:?message} from `given`, ${X:-default} from `given` or default."""
    def fill(match):
        name, kind, default = match.groups()
        if name in given:
            return given[name]
        assert kind != "?", f"{name} is required, and the test gives no value for it"
        return default or ""
    return _VARIABLE.sub(fill, value).replace("$$", "$")


def settings_variables() -> set[str]:
    """Every environment variable shared/core/config.py names (the string literals load_settings reads)."""
    tree = ast.parse((ROOT / "shared" / "core" / "config.py").read_text())
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"(IMGQ_[A-Z0-9_]+|DATABASE_URL|BROKER_URL)", node.value)}


def imgq_services(document: dict) -> dict:
    return {name: s for name, s in document["services"].items() if str(s.get("image", "")).startswith(("imgq:",
                                                                                                     "${IMGQ_IMAGE"))}


@pytest.mark.parametrize("path", [MAIN, MAIN_HOST, WORKER_HOST], ids=lambda p: p.name)
def test_each_compose_file_parses_and_names_its_services(path):
    document = compose(path)
    assert isinstance(document["services"], dict) and document["services"]
    for name, service in document["services"].items():
        assert isinstance(service, dict), name


@pytest.mark.parametrize("path", [MAIN, WORKER_HOST], ids=lambda p: p.name)
def test_every_imgq_service_runs_a_command_imgqs_own_parser_accepts(path):
    services = imgq_services(compose(path))
    assert services
    parser = build_parser()
    for name, service in services.items():
        command = [interpolated(str(part), GIVEN) for part in service["command"]]
        args = parser.parse_args(command)  # an unknown command or option exits here
        assert args.command == command[0], name


@pytest.mark.parametrize("path", [MAIN, WORKER_HOST], ids=lambda p: p.name)
def test_every_variable_given_to_imgq_is_one_it_reads_and_the_settings_load(path):
    known = settings_variables() | AWS_VARIABLES
    for name, service in imgq_services(compose(path)).items():
        env = {key: interpolated(str(value), GIVEN) for key, value in service["environment"].items()}
        assert set(env) <= known, (name, set(env) - known)
        settings = load_settings(env)  # compose's defaults pass the range checks
        assert settings.broker_url.startswith("redis://") and settings.database_url.startswith("postgresql+psycopg://")
        assert settings.data_roots == (Path("/data/crawl"),) and settings.export_roots == ()
        assert settings.s3_endpoint_url is None  # no object store unless the variables name one


def test_minio_and_its_bucket_come_only_with_the_objectstore_profile():
    services = compose(MAIN)["services"]
    assert {name for name, s in services.items() if "objectstore" in s.get("profiles", [])} == {"minio", "minio-init"}
    init = services["minio-init"]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}} and init["restart"] == "no"
    assert "mc mb --ignore-existing" in " ".join(init["command"])
    with_minio = {key: interpolated(str(value), {"IMGQ_S3_ENDPOINT_URL": "http://minio:9000",
                                                  "IMGQ_DATA_ROOTS": "/data/crawl:s3://imgq/crawl/",
                                                  "IMGQ_EXPORT_ROOTS": "s3://imgq/exports/"})
                  for key, value in services["web"]["environment"].items()}
    settings = load_settings(with_minio)
    assert settings.s3_endpoint_url == "http://minio:9000" and settings.object_roots == ("s3://imgq/crawl/",)
    assert settings.export_roots == ("s3://imgq/exports/",)


def test_the_worker_host_runs_workers_only_against_the_main_hosts_servers_with_the_shared_folders():
    services = compose(WORKER_HOST)["services"]
    assert set(imgq_services(compose(WORKER_HOST))) == set(services)  # no PostgreSQL, Redis, web or maintenance
    assert {s["command"][0] for s in services.values()} == {"worker"}
    queues = {s["command"][s["command"].index("--queues") + 1] for s in services.values()}
    assert queues == {"score", "train", "queries"}
    for name, service in services.items():
        env = {key: interpolated(str(value), GIVEN) for key, value in service["environment"].items()}
        assert "@10.0.0.5:5432/" in env["DATABASE_URL"] and env["BROKER_URL"] == "redis://10.0.0.5:6379/0", name
        mounts = {interpolated(v, GIVEN).split(":")[1]: interpolated(v, GIVEN).split(":")[0]
                  for v in service["volumes"]}
        assert mounts["/data/models"] == "/mnt/imgq/models" and mounts["/data/uploads"] == "/mnt/imgq/uploads"
        assert mounts["/data/imgq/checkpoints"] == "/mnt/imgq/imgq/checkpoints", name
    hostnames = [interpolated(s["hostname"], {"WORKER_HOST": "gpuhost2"}) for s in services.values()]
    assert len(set(hostnames)) == len(hostnames) and all(h.startswith("gpuhost2-") for h in hostnames)


def test_the_main_host_file_publishes_postgresql_and_redis_only_on_the_address_given():
    services = compose(MAIN_HOST)["services"]
    assert set(services) == {"postgres", "redis"}
    published = [interpolated(port, GIVEN) for s in services.values() for port in s["ports"]]
    assert published == ["10.0.0.5:5432:5432", "10.0.0.5:6379:6379"]
    with pytest.raises(AssertionError, match="MAIN_BIND is required"):
        interpolated(services["redis"]["ports"][0], {})
