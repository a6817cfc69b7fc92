"""The workers' metrics without servers: the reason classes of the errors the real pipeline writes, and the figures a
scored batch, a counted write, an epoch and a scrape of the queues produce (read from prometheus-client's registry)."""
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from tests.helpers import write_jpeg
from worker import metrics
from worker.scoring import ScoreOptions, score_items


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def score(items, model, root, **options) -> dict:
    """{item id: result} of score_items over `items` [(id, uri)], nothing cached."""
    written = []
    opts = ScoreOptions(**{"roots": (root,), "batch_size": 4, "max_pixels": 10_000_000, "max_bytes": 10_000_000,
                           "threads": 2, "use_cache": False, **options})
    score_items(items, model, opts, lambda hashes: {}, lambda results, rows: written.append(results))
    return {r["item_id"]: r for batch in written for r in batch}


def broken_items(root):
    """(id, uri, the reason class its error must have): every way an item fails that a test can provoke."""
    good = write_jpeg(root / "good.jpg", size=(64, 48), seed=1)
    (root / "text.jpg").write_text("hello")
    (root / "empty.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(write_jpeg(root / "whole.jpg", size=(400, 300), seed=2).read_bytes()[:600])
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(root / "noise.png")
    Image.new("RGB", (3000, 3000), "white").save(root / "wide.png")  # few bytes, many pixels
    (root / "folder.jpg").mkdir()
    os.mkfifo(root / "stuck.jpg")  # opening it blocks: the read times out
    return [("good", str(good), None), ("text", "text.jpg", "not_an_image"), ("empty", "empty.jpg", "not_an_image"),
            ("trunc", "trunc.jpg", "truncated"), ("noise", "noise.png", "too_large"), ("wide", "wide.png", "too_large"),
            ("missing", "none.jpg", "not_found"), ("folder", "folder.jpg", "not_found"),
            ("escape", "../../etc/passwd", "outside_roots"), ("url", "https://example.com/a.jpg", "outside_roots"),
            ("stuck", "stuck.jpg", "timeout")]


def test_each_error_the_pipeline_writes_has_its_reason_class(tmp_path, regression):
    items = broken_items(tmp_path)
    results = score([(i, u) for i, u, _ in items], regression, tmp_path, max_pixels=4_000_000, max_bytes=200_000,
                    read_timeout=1)
    got = {i: metrics.failure_reason(results[i].get("error")) if results[i]["status"] == "error" else None
           for i, _, _ in items}
    assert got == {i: reason for i, _, reason in items}, {i: results[i].get("error") for i in results}


@pytest.mark.parametrize("message, reason", [
    ("file not found: photos/reading the image timed out.jpg", "not_found"),  # the uri never decides
    ("decoding the image timed out after 60 s", "timeout"),
    ("fetching the image URL timed out after 30 s: https://shop.example/a.jpg", "timeout"),
    ("image URL not found (HTTP 404): https://shop.example/a.jpg", "not_found"),
    ("image URL refused: 10.0.0.1 resolves to 10.0.0.1, a private address", "outside_roots"),
    ("image URL too large: over the limit of 1,000 bytes: https://shop.example/a.jpg", "too_large"),
    ("image URL TLS failed (CERTIFICATE_VERIFY_FAILED): https://shop.example/a.jpg", "read_error"),
    ("cannot decode image: broken data stream", "decode_error"),
    ("cannot read a.jpg: Input/output error", "read_error"),
    ("permission denied: a.jpg", "read_error"),
    ("the model output is not finite (NaN or infinity)", "model_error"),
    ("the embedding is the zero vector: it has no direction to compare", "model_error"),
    ("the worker died 2 times while scoring this item alone (a poison item: it crashes or hangs the process)",
     "worker_died"),
    ("gave up after 3 attempts: the worker scoring this chunk died", "worker_died"),
    ("something new", "other"),
    (None, "other"),
])
def test_a_message_is_classed_by_how_it_starts(message, reason):
    assert metrics.failure_reason(message) == reason
    assert reason in metrics.REASONS


def test_a_scored_batch_moves_the_pipeline_figures(tmp_path, regression):
    before = {name: sample(name) for name in ("imgq_batch_size_images_count", "imgq_batch_size_images_sum",
                                              "imgq_batch_inference_seconds_count", "imgq_decode_seconds_count")}
    items = [(f"sku-{i}", str(write_jpeg(tmp_path / f"{i}.jpg", seed=i))) for i in range(10)]
    score(items, regression, tmp_path)
    assert sample("imgq_batch_size_images_count") - before["imgq_batch_size_images_count"] == 3  # 4 + 4 + 2
    assert sample("imgq_batch_size_images_sum") - before["imgq_batch_size_images_sum"] == 10
    assert sample("imgq_batch_inference_seconds_count") - before["imgq_batch_inference_seconds_count"] == 3
    assert sample("imgq_decode_seconds_count") - before["imgq_decode_seconds_count"] == 10


@dataclass
class Work:
    record: object
    model: object = None


def test_a_counted_write_counts_its_results_once_they_are_recorded():
    recorded = []
    work = metrics.counted(Work(lambda session, results, rows: recorded.append(results) or len(results)), "embed")
    before = (sample("imgq_items_scored_total", kind="embed", source="model"),
              sample("imgq_items_scored_total", kind="embed", source="cache"),
              sample("imgq_items_failed_total", kind="embed", reason="not_an_image"))
    results = [{"item_id": "a", "status": "ok"}, {"item_id": "b", "status": "ok", "from_cache": True},
               {"item_id": "c", "status": "ok"}, {"item_id": "d", "status": "error", "error": "empty file"}]
    assert work.record(None, results, []) == 4 and recorded == [results]
    after = (sample("imgq_items_scored_total", kind="embed", source="model"),
             sample("imgq_items_scored_total", kind="embed", source="cache"),
             sample("imgq_items_failed_total", kind="embed", reason="not_an_image"))
    assert [a - b for a, b in zip(after, before)] == [2, 1, 1]


def test_a_write_that_fails_counts_nothing():
    def failing(session, results, rows):
        raise RuntimeError("database away")

    work = metrics.counted(Work(failing), "score")
    before = sample("imgq_items_scored_total", kind="score", source="model")
    with pytest.raises(RuntimeError):
        work.record(None, [{"item_id": "a", "status": "ok"}], [])
    assert sample("imgq_items_scored_total", kind="score", source="model") == before


def test_an_epoch_sets_the_last_epoch_and_its_metrics_after_it_is_recorded():
    recorded = []
    record = metrics.observed_epochs("pageviews", lambda *args: recorded.append(args))
    count = sample("imgq_train_epoch_seconds_count")
    record(3, {"loss": 0.5, "val_mae": 1.25}, 12.0, "/ckpt/epoch-0003.keras")
    assert recorded == [(3, {"loss": 0.5, "val_mae": 1.25}, 12.0, "/ckpt/epoch-0003.keras")]
    assert sample("imgq_train_epoch_seconds_count") == count + 1
    assert sample("imgq_train_last_epoch", model="pageviews") == 3
    assert sample("imgq_train_last_epoch_metric", model="pageviews", metric="val_mae") == 1.25


def test_a_scrape_of_the_queues_leaves_out_what_does_not_answer():
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    depths = {"score": 7, "train": None}
    collector = metrics.QueueCollector(depths.get, ("score", "train"), lambda: {"score": when})
    families = {f.name: f for f in collector.collect()}
    assert [(s.labels, s.value) for s in families["imgq_queue_depth"].samples] == [({"queue": "score"}, 7)]
    assert [(s.labels, s.value) for s in families["imgq_queue_oldest_enqueued_timestamp_seconds"].samples] == \
        [({"queue": "score"}, when.timestamp())]

    def database_away():
        raise ConnectionError("no database")

    families = {f.name: f for f in metrics.QueueCollector(depths.get, ("score",), database_away).collect()}
    assert families["imgq_queue_oldest_enqueued_timestamp_seconds"].samples == []
    assert len(families["imgq_queue_depth"].samples) == 1
