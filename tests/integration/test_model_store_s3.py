"""A model store in a bucket of a real S3 server (moto's server mode on loopback): a registered version is uploaded
and recorded by its URI; a machine gets its own copy into IMGQ_MODEL_CACHE_DIR once, checked against the version's
hash, and never downloads it again while it is unchanged; a copy damaged on disk is downloaded again; an object
whose bytes are not the version's is refused; a missing object is the model's error and a store that does not
answer is the store's (ObjectStoreUnavailable). Local stores work as before (the path is the file)."""
from __future__ import annotations

import threading

import pytest

from shared.core.config import ConfigError, load_settings
from shared.core.errors import ObjectStoreUnavailable
from shared.core.tables import ModelVersion
from shared.services.model_files import sha256_file, version_file
from shared.services.model_registry import Signature, import_model, inspect_file
from shared.tools.local_stack import free_port
from tests.helpers import migrated_database

pytestmark = pytest.mark.integration

BUCKET, PREFIX = "model-bucket", "store/"


def settings_for(tmp_path, server, home: str = "home", **extra):
    env = {**server.env, "IMGQ_HOME": str(tmp_path / home), "IMGQ_MODEL_STORE": f"s3://{BUCKET}/{PREFIX}",
           "IMGQ_S3_RETRIES": "1", **extra}
    return load_settings(env)


@pytest.fixture(scope="module")
def shapes(model_files):
    """What the registry's inspection says of the test model: read once, not in every test's import."""
    return inspect_file(model_files["regression"])


@pytest.fixture
def stored(s3_server, tmp_path, monkeypatch, model_files, shapes):
    """A version of `pageviews` registered with the model store in the bucket; returns the row and the settings of
    another machine (another IMGQ_HOME) that reads it; then the registering machine's."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3_server.put_files(BUCKET, "", {})
    settings = settings_for(tmp_path, s3_server)
    settings.model_store.mkdir(parents=True)
    with migrated_database("sqlite", tmp_path) as url:
        from shared.core.db import session_scope

        with session_scope(url) as session:
            row = import_model(session, model_files["regression"], "pageviews",
                               Signature(task="regression", input_height=32, input_width=32), settings.model_store,
                               settings=settings, shapes=shapes)
            session.expunge(row)
    return row, settings_for(tmp_path, s3_server, home="reader"), settings  # the reader is another machine


def key_of(row) -> str:
    return row.path.removeprefix(f"s3://{BUCKET}/")


def test_a_registered_version_is_uploaded_and_recorded_by_its_uri(stored, s3_server, model_files):
    row, _, _ = stored
    assert row.path == f"s3://{BUCKET}/{PREFIX}pageviews/v1-{row.sha256[:12]}.keras"
    body = s3_server.client().get_object(Bucket=BUCKET, Key=key_of(row))["Body"].read()
    assert body == model_files["regression"].read_bytes()


def test_the_registering_machine_keeps_its_copy_as_its_cache_and_others_download_once(stored, s3_server, tmp_path):
    row, settings, registering = stored
    assert not any(registering.model_store.rglob("*.keras"))  # moved into its cache, not kept twice
    assert version_file(row, registering) == registering.model_cache_dir / f"{row.sha256}.keras"
    assert s3_server.gets_of(BUCKET, key_of(row)) == 0
    first = version_file(row, settings)
    assert first == settings.model_cache_dir / f"{row.sha256}.keras"
    assert sha256_file(first) == row.sha256
    assert s3_server.gets_of(BUCKET, key_of(row)) == 1
    for _ in range(3):  # the same machine again: its copy, checked, and no request to the store
        assert version_file(row, settings) == first
    assert s3_server.gets_of(BUCKET, key_of(row)) == 1
    other = settings_for(tmp_path, s3_server, home="third-machine")  # another IMGQ_HOME: another cache
    assert version_file(row, other) == other.model_cache_dir / f"{row.sha256}.keras"
    assert s3_server.gets_of(BUCKET, key_of(row)) == 2


def test_processes_of_one_machine_share_one_download(stored, s3_server):
    row, settings, _ = stored
    copies, errors = [], []

    def fetch():
        try:
            copies.append(version_file(row, settings))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(copies)) == 1
    assert s3_server.gets_of(BUCKET, key_of(row)) == 1
    assert [p.name for p in settings.model_cache_dir.iterdir() if p.suffix != ".lock"] == [f"{row.sha256}.keras"]


def test_a_damaged_copy_is_downloaded_again(stored, s3_server):
    row, settings, _ = stored
    copy = version_file(row, settings)
    copy.write_bytes(copy.read_bytes()[:-100])  # cut short on disk
    assert sha256_file(version_file(row, settings)) == row.sha256
    assert s3_server.gets_of(BUCKET, key_of(row)) == 2


def test_an_object_whose_bytes_are_not_the_versions_is_refused_and_not_cached(stored, s3_server):
    row, settings, _ = stored
    s3_server.put_files(BUCKET, "", {key_of(row): b"not the model at all"})
    with pytest.raises(ValueError, match="pageviews@1 does not match its checksum"):
        version_file(row, settings)
    assert [p for p in settings.model_cache_dir.iterdir() if p.suffix != ".lock"] == []


def test_a_missing_object_is_the_models_error(stored, s3_server):
    row, settings, _ = stored
    s3_server.client().delete_object(Bucket=BUCKET, Key=key_of(row))
    with pytest.raises(FileNotFoundError, match=f"model file of pageviews@1 is missing: {row.path}"):
        version_file(row, settings)


def test_a_store_that_does_not_answer_is_the_stores_error(stored, tmp_path):
    row, _, _ = stored
    gone = load_settings({"IMGQ_HOME": str(tmp_path / "third"), "IMGQ_MODEL_STORE": f"s3://{BUCKET}/{PREFIX}",
                          "IMGQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "IMGQ_S3_RETRIES": "1"})
    with pytest.raises(ObjectStoreUnavailable, match="did not answer"):
        version_file(row, gone)


def test_a_local_store_keeps_the_file_where_it_is(tmp_path, model_files):
    settings = load_settings({"IMGQ_HOME": str(tmp_path)})
    assert settings.model_store_uri is None
    row = ModelVersion(name="m", version=1, path=str(model_files["regression"]), sha256="x")
    assert version_file(row, settings) == model_files["regression"]
    assert not settings.model_cache_dir.exists()


@pytest.mark.parametrize("raw, problem", [("s3://Bad_Bucket/x", "is not a bucket name"),
                                          ("s3://bucket/../x", "may not hold '.' or '..'"),
                                          ("ftp://bucket/x", "only s3://, az://")])
def test_a_bad_model_store_uri_is_a_configuration_error(tmp_path, raw, problem):
    with pytest.raises(ConfigError, match=problem):
        load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_MODEL_STORE": raw})
