"""The model registry on a real database, with real Keras files inspected in a subprocess."""
import pytest

from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, ModelRejected, NotFound
from shared.services import model_registry as registry


def sig(task="regression", size=32, **kw):
    return registry.Signature(task=task, input_height=size, input_width=size, **kw)


def test_versions_aliases_and_resolution(db_url, tmp_path, model_files):
    store = tmp_path / "store"
    with session_scope(db_url) as s:
        v1 = registry.import_model(s, model_files["regression"], "pageviews",
                                   sig(target_transform={"kind": "log1p"}), store)
        v2 = registry.import_model(s, model_files["regression"], "pageviews", sig(), store)
        assert (v1.version, v2.version) == (1, 2)
        assert v1.output_names == ["value"]
        assert v1.target_transform == {"kind": "log1p"}
        assert registry.resolve(s, "pageviews").version == 1  # the first version became production
        assert registry.resolve(s, "pageviews@2").id == v2.id
        registry.set_alias(s, "pageviews", "production", 2)
        assert registry.resolve(s, "pageviews").version == 2
        assert registry.resolve(s, "pageviews@production").version == 2
        with pytest.raises(NotFound, match="has no version 7"):
            registry.resolve(s, "pageviews@7")
        with pytest.raises(NotFound, match="no model named 'nope'"):
            registry.resolve(s, "nope")
        with pytest.raises(NotFound, match="has no alias 'staging'"):
            registry.resolve(s, "pageviews@staging")
    stored = sorted(p.name for p in (store / "pageviews").iterdir())
    assert len(stored) == 2 and all(p.endswith(".keras") for p in stored)


def test_a_file_asking_for_code_is_refused(sqlite_url, tmp_path, model_files):
    from shared.core.migrate import upgrade

    upgrade(sqlite_url)
    with session_scope(sqlite_url) as s, pytest.raises(ModelRejected, match="arbitrary Python code"):
        registry.import_model(s, model_files["unsafe"], "evil", sig(), tmp_path / "store")


@pytest.mark.parametrize("signature, message", [
    (sig(size=40), "the model input is 32x32 but the signature says 40x40"),
    (sig("classification", class_names=["a", "b"]), "3 outputs but 2 class names"),
    (sig("classification"), "needs class_names"),
    (sig(task="segmentation"), "task must be one of"),
    (sig(target_transform={"kind": "cube"}), "unknown target transform"),
])
def test_signature_mismatches_are_refused(sqlite_url, tmp_path, model_files, signature, message):
    from shared.core.migrate import upgrade

    upgrade(sqlite_url)
    file = model_files["classification" if signature.task == "classification" else "regression"]
    with session_scope(sqlite_url) as s, pytest.raises((ModelRejected, InvalidRequest), match=message):
        registry.import_model(s, file, "m", signature, tmp_path / "store")


def test_refs_are_parsed():
    assert registry.parse_ref("pageviews") == ("pageviews", "production")
    assert registry.parse_ref("pageviews@3") == ("pageviews", 3)
    assert registry.parse_ref("pageviews@staging") == ("pageviews", "staging")
    with pytest.raises(InvalidRequest):
        registry.parse_ref("bad name!")
