"""The batched scoring pipeline, without Celery or a database: real images, a real Keras model."""
from dataclasses import replace

import numpy as np
import pytest

from shared.core.tables import ModelVersion
from shared.images.imaging import Preprocessing, load_for_model
from shared.services.model_registry import sha256_file
from tests.helpers import write_jpeg
from worker import scoring
from worker.model_cache import ModelCache, load
from worker.scoring import ScoreOptions, score_items


def version(file, task="regression", **kw):
    fields = dict(id=7, name="m", version=1, task=task, input_height=32, input_width=32, resize_mode="stretch",
                  pixel_scale="unit", output_names=["value"], class_names=None,
                  target_transform={"kind": "log1p"}, path=str(file), sha256=sha256_file(file), size_bytes=1)
    fields.update(kw)
    return ModelVersion(**fields)


@pytest.fixture(scope="module")
def regression(model_files):
    return load(version(model_files["regression"]))


def catalog(root, n, bad=True):
    items = []
    for i in range(n):
        size = (40 + 7 * i, 90 - 3 * i)
        items.append((f"sku-{i:03d}", str(write_jpeg(root / f"{i}.jpg", size=size, seed=i))))
    if bad:
        (root / "bad.jpg").write_bytes(b"not an image")
        items += [("bad", str(root / "bad.jpg")), ("missing", "nowhere/missing.jpg"),
                  ("escape", "../../etc/passwd")]
    return items


def run(items, model, root, *, batch_size=8, cache=None, use_cache=True):
    written, lookups = [], []
    cache = cache or {}

    def lookup(hashes):
        lookups.append(list(hashes))
        return {h: cache[h] for h in hashes if h in cache}

    def write(results, cache_rows):
        written.append((results, cache_rows))

    opts = ScoreOptions(roots=(root,), batch_size=batch_size, max_pixels=10_000_000, max_bytes=10_000_000,
                        threads=2, use_cache=use_cache)
    score_items(items, model, opts, lookup, write)
    return written, lookups


def test_scores_equal_model_predict_on_the_same_tensors(tmp_path, regression):
    items = catalog(tmp_path, 21)
    written, _ = run(items, regression, tmp_path, batch_size=8)
    results = {r["item_id"]: r for batch, _ in written for r in batch}
    assert set(results) == {i for i, _ in items}
    assert len(written) == 3  # 24 items in batches of 8: one write per batch
    prep = Preprocessing(32, 32)
    good = [(i, u) for i, u in items if i.startswith("sku")]
    x = np.stack([load_for_model(open(u, "rb").read(), prep, max_pixels=10**7)[0] for _, u in good])
    expected = np.expm1(regression.model.predict(x, verbose=0)[:, 0])
    got = np.array([results[i]["outputs"]["value"] for i, _ in good])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert all(results[i]["status"] == "ok" and len(results[i]["content_hash"]) == 64 for i, _ in good)


def test_bad_items_get_reasons_and_the_rest_goes_on(tmp_path, regression):
    written, _ = run(catalog(tmp_path, 3), regression, tmp_path)
    results = {r["item_id"]: r for batch, _ in written for r in batch}
    assert results["bad"]["status"] == "error"
    assert "not an image" in results["bad"]["error"]
    assert "file not found" in results["missing"]["error"]
    assert "outside the data roots" in results["escape"]["error"]
    assert [results[f"sku-{i:03d}"]["status"] for i in range(3)] == ["ok"] * 3


def test_cache_hits_are_not_decoded_or_predicted(tmp_path, regression):
    items = catalog(tmp_path, 6, bad=False)
    first, _ = run(items, regression, tmp_path)
    cache = {row["content_hash"]: row["outputs"] for _, rows in first for row in rows}
    assert len(cache) == 6
    # change one photo: only that one is scored again
    write_jpeg(tmp_path / "0.jpg", size=(50, 50), seed=99)
    second, lookups = run(items, regression, tmp_path, cache=cache)
    results = {r["item_id"]: r for batch, _ in second for r in batch}
    assert sum(r["from_cache"] for r in results.values() if "from_cache" in r) == 5
    assert "from_cache" not in results["sku-000"]
    assert [row["content_hash"] for _, rows in second for row in rows] == [results["sku-000"]["content_hash"]]
    third, lookups = run(items, regression, tmp_path, cache=cache, use_cache=False)
    assert lookups == []
    assert not any(r.get("from_cache") for batch, _ in third for r in batch)


def test_letterboxed_keypoints_map_back_to_original_pixels(tmp_path, model_files):
    model = load(version(model_files["keypoints"], task="keypoints", resize_mode="letterbox",
                         output_names=["a", "b"], target_transform={"kind": "none"}))
    items = [("wide", str(write_jpeg(tmp_path / "w.jpg", size=(120, 40), seed=3)))]
    written, _ = run(items, model, tmp_path)
    out = written[0][0][0]["outputs"]
    prep = Preprocessing(32, 32, resize_mode="letterbox")
    x, geom = load_for_model(open(items[0][1], "rb").read(), prep, max_pixels=10**7)
    raw = model.model.predict(x[None], verbose=0)[0]
    ex, ey = geom.to_original(raw[0::2], raw[1::2])
    assert out["a_x"] == pytest.approx(float(ex[0]), abs=1e-3)
    assert out["b_y"] == pytest.approx(float(ey[1]), abs=1e-3)
    assert 0 <= out["a_x"] <= 120 and out["a_y"] >= 0 - 1e-6  # sigmoid outputs land in the image frame


def test_model_cache_loads_once_and_evicts_least_recent(model_files):
    loads = []

    def fake_loader(v):
        loads.append(v.id)
        return object()

    cache = ModelCache(2, loader=fake_loader)
    a, b, c = (version(model_files["regression"], id=i) for i in (1, 2, 3))
    cache.get(a), cache.get(b), cache.get(a), cache.get(c)
    assert loads == [1, 2, 3]
    assert 1 in cache and 3 in cache and 2 not in cache


def test_a_tampered_model_file_is_refused(tmp_path, model_files):
    v = version(model_files["regression"], sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match its checksum"):
        load(v)


class _NaNModel:
    """Stands in for a model that diverged: every output is NaN or overflows the inverse transform."""
    def __init__(self, real):
        self.signature, self.preprocessing, self.version_id = real.signature, real.preprocessing, real.version_id

    def predict(self, batch):
        out = np.full((len(batch), 1), np.nan, dtype=np.float32)
        out[1::2] = 1e6  # expm1(1e6) overflows to infinity
        return out


def test_non_finite_outputs_become_item_errors(tmp_path, regression):
    written, _ = run(catalog(tmp_path, 4, bad=False), _NaNModel(regression), tmp_path)
    results, cache_rows = written[0]
    assert [r["status"] for r in results] == ["error"] * 4
    assert all("not finite" in r["error"] for r in results)
    assert cache_rows == []


def test_an_item_whose_read_hangs_becomes_its_error_and_the_rest_score(tmp_path, regression):
    import os
    import time

    items = catalog(tmp_path, 10, bad=False)
    os.mkfifo(tmp_path / "stuck.jpg")  # opening it blocks until a writer comes: none will
    items.insert(3, ("stuck", str(tmp_path / "stuck.jpg")))
    written = []
    opts = ScoreOptions(roots=(tmp_path,), batch_size=4, max_pixels=10_000_000, max_bytes=10_000_000, threads=2,
                        read_timeout=1.0)
    started = time.monotonic()
    score_items(items, regression, opts, lambda h: {}, lambda results, _: written.extend(results))
    assert time.monotonic() - started < 10
    results = {r["item_id"]: r for r in written}
    assert set(results) == {i for i, _ in items}
    assert results["stuck"]["status"] == "error"
    assert results["stuck"]["error"] == "reading the image timed out after 1 s"
    assert all(r["status"] == "ok" for i, r in results.items() if i != "stuck")


def test_a_batch_is_read_again_while_the_store_is_away_and_the_outage_is_raised_past_the_wait(monkeypatch):
    from shared.core.errors import ObjectStoreUnavailable

    outcomes = [ObjectStoreUnavailable("refused"), ObjectStoreUnavailable("refused"), ["read"]]
    calls, pauses = [], []

    def read(batch, opts, reads):
        calls.append(batch)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(scoring, "_read", read)
    opts = ScoreOptions(roots=(), batch_size=2, max_pixels=10**6, max_bytes=10**6, threads=1, outage_wait=60)
    assert scoring._read_through_outages(["a", "b"], opts, None, sleep=pauses.append) == ["read"]
    assert calls == [["a", "b"]] * 3 and pauses == [1.0, 2.0]  # the same batch, whole, after growing pauses

    outcomes[:] = [ObjectStoreUnavailable("refused")] * 3
    with pytest.raises(ObjectStoreUnavailable):
        scoring._read_through_outages(["a"], replace(opts, outage_wait=0.5), None, sleep=pauses.append)
    assert pauses == [1.0, 2.0]  # no wait fits in half a second: raised at once
