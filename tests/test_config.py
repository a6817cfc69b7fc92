from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings


def test_defaults_need_no_servers(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'imgq.db'}"
    assert s.broker_url == "filesystem://"
    assert s.embedded
    assert s.broker_transport_options["data_folder_in"] == str(tmp_path / "broker")
    assert s.data_roots == (tmp_path / "data",)
    assert s.model_store == tmp_path / "models"
    assert s.upload_dir not in s.readable_roots()  # no job reads another job's uploads
    assert s.readable_roots("f00") == (*s.data_roots, s.upload_dir / "f00")
    assert (s.max_json_bytes, s.max_upload_bytes) == (20 * 1024 ** 2, 2 * 1024 ** 3)  # two limits, apart


def test_postgres_and_redis_urls(tmp_path):
    s = load_settings({"IMGQ_HOME": str(tmp_path), "DATABASE_URL": "postgres://u:p@db:5432/imgq",
                       "BROKER_URL": "redis://redis:6379/0", "IMGQ_VISIBILITY_TIMEOUT": "7200"})
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/imgq"
    assert not s.embedded
    assert s.broker_transport_options == {"visibility_timeout": 7200}
    prefixed = load_settings({"IMGQ_HOME": str(tmp_path), "BROKER_URL": "redis://r:6379/0",
                              "IMGQ_BROKER_PREFIX": "shop-a:"})
    assert prefixed.broker_transport_options["global_keyprefix"] == "shop-a:"


def test_data_roots_are_a_path_list(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    s = load_settings({"IMGQ_HOME": str(tmp_path), "IMGQ_DATA_ROOTS": f"{a}:{b}:"})
    assert s.data_roots == (a.resolve(), b.resolve())


@pytest.mark.parametrize("name, value, message", [
    ("IMGQ_CHUNK_SIZE", "many", "IMGQ_CHUNK_SIZE must be an integer"),
    ("IMGQ_CHUNK_SIZE", "0", "IMGQ_CHUNK_SIZE must be at least 1"),
    ("IMGQ_HEARTBEAT_TIMEOUT", "-3", "IMGQ_HEARTBEAT_TIMEOUT must be positive"),
    ("IMGQ_SWEEP_INTERVAL", "soon", "IMGQ_SWEEP_INTERVAL must be a number"),
    ("IMGQ_MAX_JSON_BYTES", "100", "IMGQ_MAX_JSON_BYTES must be at least 1024"),
])
def test_bad_values_are_named(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"IMGQ_HOME": str(tmp_path), name: value})


def test_relative_home_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings({})
    assert s.data_dir == Path(tmp_path / ".imgq").resolve()
