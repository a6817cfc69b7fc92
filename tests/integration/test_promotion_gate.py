"""The promotion gate and the crawl check with real training through the API: candidates whose holdout answers
their training data fixes (one image better on a 270-image holdout, kept as not significant; as accurate with a much
worse log-loss, kept naming the guard), a clearly better one on digits promoted, whose score jobs through the API
drift below the threshold on its held-out digits and above it on the same digits inverted, and a nightly schedule's
slot (fired through beat's hook with a fake clock) over a crawl with shuffled labels quarantined before training, the
next night trained."""
from __future__ import annotations

import os
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared.core.config import get_settings
from shared.core.db import session_scope
from shared.core.dispatch import enqueue_train
from shared.core.tables import Schedule, ScheduleRun
from shared.images.datasets import split_of
from shared.services import schedules
from tests.helpers import configure_like_beat

HOLDOUT = 270


# --------------------------------------------------------------------------------------------- through the API


def post(stack, body, expect=202):
    resp = stack.http.post(stack.url("/api/v1/jobs/train"), json=body, timeout=120)
    assert resp.status_code == expect, resp.text
    return resp.json()


def digits_request(name, manifest, **over):
    body = {"model": name, "task": "classification", "input_size": 16, "epochs": 8, "batch_size": 32,
            "dataset": {"path": f"digits/{manifest}", "id_column": "id", "label_column": "label"},
            "base": {"architecture": "vgg", "width": 8}, "optimizer": {"name": "adam", "learning_rate": 0.003},
            "splits": {"validation": 0.1, "holdout": 0.15}}
    body.update(over)
    return body




# --------------------------------------------------------- candidates whose holdout answers their data fixes

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
SPLITS = {"validation": 0.1, "holdout": 0.3}


def colour_items(name: str) -> list[tuple[str, str, str]]:
    """(id, split, colour) of a catalog whose holdout (under the model name `name`, shared.images.datasets.split_of)
    is exactly HOLDOUT items, one of them blue; one in 15 of the other items is blue, the rest red or green."""
    items, held = [], 0
    for k in range(10_000):
        item_id = f"{name}-{k:04d}"
        split = split_of(item_id, salt=name, **SPLITS)
        if split == "holdout":
            colour = "blue" if held == 0 else ("red", "green")[held % 2]
            held += 1
        else:
            colour = "blue" if len(items) % 15 == 0 else ("red", "green")[len(items) % 2]
        items.append((item_id, split, colour))
        if held == HOLDOUT:
            return items
    raise AssertionError("unreachable: the hash spreads ids evenly")


def colour_manifest(folder, name: str, file: str, *, blue: str, noise: float) -> None:
    """One flat colour per image (three files in all): red is "a", green "b", blue `blue`. Off the holdout, exactly
    `noise` of each colour's rows carry the other label, so a model's best answer on that colour is 1 - noise."""
    for colour, rgb in COLOURS.items():
        Image.new("RGB", (16, 16), rgb).save(folder / f"{colour}.png")
    truth = {"red": "a", "green": "b", "blue": blue}
    rows, seen = [], dict.fromkeys(COLOURS, 0)
    for item_id, split, colour in colour_items(name):
        label = truth[colour]
        if split != "holdout":
            seen[colour] += 1
            if int(seen[colour] * noise) > int((seen[colour] - 1) * noise):
                label = "b" if label == "a" else "a"
        rows.append({"id": item_id, "image": f"{colour}.png", "label": label})
    pd.DataFrame(rows).to_csv(folder / file, index=False)


def colour_request(name: str, manifest: str, **over) -> dict:
    return {"model": name, "task": "classification", "input_size": 16, "epochs": 5, "batch_size": 32,
            "dataset": {"path": manifest, "id_column": "id", "label_column": "label"},
            "base": {"architecture": "vgg", "width": 8}, "optimizer": {"name": "adam", "learning_rate": 0.003},
            "splits": SPLITS, **over}


@pytest.fixture(scope="module")
def colours(pg_stack):
    """A production version trained (through the API) on a catalog of flat colours with one label in ten flipped
    off the holdout: it answers every holdout item right, about 90 % sure, blue as "a"."""
    name = f"colours-{uuid.uuid4().hex[:6]}"
    folder = pg_stack.data / name
    folder.mkdir()
    colour_manifest(folder, name, "production.csv", blue="a", noise=0.1)
    job = pg_stack.wait_job(post(pg_stack, colour_request(name, f"{name}/production.csv"))["id"], timeout=300,
                            poll=1.0)
    assert job["status"] == "succeeded" and job["holdout_metrics"]["accuracy"] == 1.0, job
    return name, folder


def test_a_candidate_one_image_better_on_270_is_kept_as_not_significant(pg_stack, colours):
    """The candidate's catalog calls blue "b", its holdout's one blue image included: production (blue is "a")
    misses that image alone, the candidate gets all 270 right. Fixed by the data, not by luck: each model
    answers a flat colour as the majority of its training labels for it; and as the candidate is trained on clean
    labels, its log-loss is below production's (trained with one label in ten flipped)."""
    name, folder = colours
    colour_manifest(folder, name, "blue-is-b.csv", blue="b", noise=0.0)
    job = pg_stack.wait_job(post(pg_stack, colour_request(name, f"{name}/blue-is-b.csv", gate={}))["id"],
                            timeout=300, poll=1.0)
    assert job["status"] == "succeeded", job
    result = job["comparison"]
    decision = result["gate"]
    assert result["candidate_metrics"]["n"] == HOLDOUT and result["candidate_metrics"]["accuracy"] == 1.0
    assert result["production_metrics"]["accuracy"] == pytest.approx(1 - 1 / HOLDOUT)
    assert decision["improvement"] == pytest.approx(1 / HOLDOUT)  # what a bare difference promoted
    assert (decision["test"]["candidate_only_right"], decision["test"]["production_only_right"]) == (1, 0)
    assert decision["test"]["p_value"] == 0.5 and decision["test"]["candidate_wins_needed"] is None  # 1 of 1: p 0.5
    assert decision["decision"] == "kept" and "not significant at 95%" in decision["reason"], decision
    assert all(g["passed"] for g in decision["guards"]), decision["guards"]
    assert job["model"]["result"] == f"{name}@2"
    versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]
    assert [v["aliases"] for v in versions] == [["production"], []]  # version 1 kept, version 2 registered


def test_a_candidate_as_accurate_with_a_much_worse_log_loss_is_kept_naming_the_guard(pg_stack, colours):
    """The candidate's catalog has the same truth as production's, with three labels in ten flipped off the
    holdout (production's: one in ten): it answers every holdout item right (the majority) but about 70 % sure at
    best, against production's 90 %. Fixed by the data: no model can be surer of identical images than the share of
    their labels that agree, without a higher training loss. How close each training comes to those shares varies
    between runs on 2 busy cores: the candidate's log-loss was 1.7 to 3 times production's in CI runs, far past
    the guard's 10 %."""
    name, folder = colours
    colour_manifest(folder, name, "noisy.csv", blue="a", noise=0.3)
    job = pg_stack.wait_job(post(pg_stack, colour_request(name, f"{name}/noisy.csv", gate={}))["id"], timeout=300,
                            poll=1.0)
    assert job["status"] == "succeeded", job
    result = job["comparison"]
    decision = result["gate"]
    assert result["candidate_metrics"]["accuracy"] == result["production_metrics"]["accuracy"] == 1.0
    assert result["candidate_metrics"]["log_loss"] > 1.5 * result["production_metrics"]["log_loss"]
    [guard] = [g for g in decision["guards"] if g["name"] == "log_loss"]
    assert not guard["passed"] and guard["tolerance"] == 0.1
    assert decision["decision"] == "kept" and "guard log_loss" in decision["reason"], decision
    assert decision["test"]["candidate_only_right"] == decision["test"]["production_only_right"] == 0


@pytest.fixture(scope="module")
def promoted(pg_stack, digits):
    """A model trained twice on digits through the API: a barely trained version 1 (one epoch of SGD at 1e-5), then
    a properly trained version 2 with a gate; returns (name, version 2's train job)."""
    name = f"gate-{uuid.uuid4().hex[:6]}"
    weak = pg_stack.wait_job(post(pg_stack, digits_request(name, "all.csv", epochs=1, optimizer={
        "name": "sgd", "learning_rate": 1e-5}))["id"], timeout=300, poll=1.0)
    assert weak["status"] == "succeeded", weak
    strong = pg_stack.wait_job(post(pg_stack, digits_request(name, "all.csv", gate={"min_improvement": 0.05}))["id"],
                               timeout=300, poll=1.0)
    assert strong["status"] == "succeeded", strong
    return name, strong


def test_a_clearly_better_candidate_is_promoted(pg_stack, promoted):
    name, strong = promoted
    decision = strong["comparison"]["gate"]
    assert decision["decision"] == "promoted", decision
    assert decision["test"]["name"] == "mcnemar_exact" and decision["test"]["p_value"] < 1e-6
    assert decision["test"]["n"] == strong["comparison"]["candidate_metrics"]["n"] > 200
    assert {g["name"] for g in decision["guards"]} == {"log_loss", "worst_class_recall", "shadow_large_changes"}
    assert strong["model"]["result"] == f"{name}@2"
    versions = pg_stack.http.get(pg_stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]
    assert [v["aliases"] for v in versions] == [[], ["production"]]  # version 1, version 2


# ------------------------------------------------------------------------- drift of the promoted model's scores


def score_drift(stack, name: str, items: list[dict]) -> tuple[str, dict]:
    """A score job of `items` by the model's production version, run by the stack's worker: (its id, its drift).
    The worker records the drift just after the job succeeds, so a read in between finds none yet."""
    resp = stack.http.post(stack.url("/api/v1/jobs/score"), json={"model": name, "items": items}, timeout=60)
    assert resp.status_code == 202, resp.text
    job = stack.wait_job(resp.json()["id"], timeout=300, poll=0.5)
    assert job["status"] == "succeeded" and job["progress"]["failed"] == 0, job
    deadline = time.monotonic() + 60
    while job["drift"] is None:
        assert time.monotonic() < deadline, f"job {job['id']}: no drift recorded a minute after it succeeded"
        time.sleep(0.3)
        job = stack.http.get(stack.url(f"/api/v1/jobs/{job['id']}"), timeout=10).json()
    return job["id"], job["drift"]


def test_a_score_job_of_inverted_digits_drifts_above_the_threshold_and_one_of_held_out_digits_stays_below(
        pg_stack, digits, promoted):
    """The promoted version's reference is its outputs on its validation and holdout digits (recorded when it was
    registered). Its holdout digits, scored through the API, are that same distribution; the same digits inverted
    (dark strokes on white), never seen in training, push its answers onto a few classes."""
    name, _ = promoted
    frame = pd.read_csv(digits / "all.csv", dtype=str)
    held = frame[[split_of(i, salt=name, validation=0.1, holdout=0.15) == "holdout" for i in frame["id"]]]
    inverted = pg_stack.data / f"{name}-inverted"
    inverted.mkdir()
    for image in held["image"]:
        Image.fromarray(255 - np.asarray(Image.open(digits / image))).save(inverted / image)

    like_id, like = score_drift(pg_stack, name, [{"id": i, "uri": f"digits/{image}"}
                                                 for i, image in zip(held["id"], held["image"])])
    assert like["reference"] == "training" and like["items"] == len(held) > 200
    assert like["threshold"] == 0.2 and like["value"] < like["threshold"] and like["exceeded"] is False, like

    unlike_id, unlike = score_drift(pg_stack, name, [{"id": i, "uri": f"{inverted.name}/{image}"}
                                                     for i, image in zip(held["id"], held["image"])])
    assert unlike["reference"] == "training" and unlike["items"] == len(held)
    assert unlike["value"] > unlike["threshold"] == 0.2 and unlike["exceeded"] is True, unlike

    # the warning is logged by whoever wrote the figure: the worker, or the sweeper if it caught the job first
    logs = "".join(p.read_text(errors="replace") for p in sorted(pg_stack.log_dir.glob("*.log")))
    assert re.search(rf"job {unlike_id}: output drift psi \S+ against the training reference is above the threshold",
                     logs)
    assert not re.search(rf"job {like_id}: output drift .* above the threshold", logs)
    metrics = pg_stack.http.get(pg_stack.url("/metrics"), timeout=10).text  # the latest job's figure
    [gauge] = [s for f in text_string_to_metric_families(metrics) if f.name == "imgq_score_drift"
               for s in f.samples if s.labels == {"model": name}]
    assert gauge.value == pytest.approx(unlike["value"])


def write_night(folder, name: str, night: datetime, rows: pd.DataFrame, shuffle: bool) -> None:
    """The night's crawl as the crawler leaves it, an hour before the night's slot: the manifest's time is what
    `added_since` reads."""
    rows = rows.copy()
    if shuffle:  # a shifted or shuffled label column: every label from another row
        rows["label"] = np.roll(rows["label"].to_numpy(), 7)
    path = folder / f"{name}-{night:%Y-%m-%d}.csv"
    rows.to_csv(path, index=False)
    written = (night - timedelta(hours=1)).timestamp()
    os.utime(path, (written, written))


def fire(schedule_id: int, stack, slot: datetime) -> dict:
    """Beat's schedule tick at `slot` (a fake clock; the stack's own tick, on the real one, finds the slot before
    the schedule existed): the slot's job created and sent, then run to its end by the stack's trainer."""
    assert schedules.dispatch_due(enqueue_train, now=slot + timedelta(seconds=30))["created"] == 1
    with session_scope() as session:
        job_id = session.scalar(select(ScheduleRun.job_id).where(ScheduleRun.schedule_id == schedule_id,
                                                                 ScheduleRun.slot_at == slot))
    assert job_id is not None
    return stack.wait_job(job_id, timeout=300, poll=1.0)


def versions_of(stack, name: str) -> list[dict]:
    return stack.http.get(stack.url(f"/api/v1/models/{name}/versions"), timeout=10).json()["versions"]


def test_a_scheduled_night_with_shuffled_labels_is_quarantined_before_training_and_the_next_night_trains(
        pg_stack, digits, monkeypatch):
    """A nightly fine-tune schedule over digits, driven through beat's hook with a fake clock: the first night trains
    on its whole crawl; the second night's crawl has its labels shuffled: its slot's job fails quarantined, naming the
    check and its figures, with nothing trained, and the report is on the job and the schedule's run; the third night
    is clean and trains as usual."""
    name = f"crawl-{uuid.uuid4().hex[:6]}"
    base = pg_stack.wait_job(post(pg_stack, digits_request(name, "first-night.csv"))["id"], timeout=300, poll=1.0)
    assert base["status"] == "succeeded" and base["holdout_metrics"]["accuracy"] > 0.8, base
    frame = pd.read_csv(digits / "all.csv", dtype=str)
    nights = [datetime(2031, 10, day, 3, tzinfo=timezone.utc) for day in (21, 22, 23)]  # before other tests' slots
    configure_like_beat(monkeypatch, pg_stack)
    train = {k: v for k, v in digits_request(name, f"{name}-{{date:%Y-%m-%d}}.csv", base={"version": name},
                                             epochs=3).items() if k != "model"}
    train["dataset"]["added_since_last_run"] = True
    body = {"name": name, "cron": "0 3 * * *", "timezone": "UTC", "model": name, "train": train, "gate": {}}
    resp = pg_stack.http.post(pg_stack.url("/api/v1/schedules"), json=body, timeout=30)
    assert resp.status_code == 201, resp.text
    sid = resp.json()["id"]
    try:
        with session_scope() as session:
            session.get(Schedule, sid).created_at = datetime(2031, 10, 1, tzinfo=timezone.utc)
        write_night(digits, name, nights[0], frame.iloc[900:1100], shuffle=False)
        first = fire(sid, pg_stack, nights[0])  # the first night: its whole crawl, nothing to check it against
        assert first["status"] == "succeeded" and first["crawl_check"] is None, first
        trained = len(versions_of(pg_stack, name))

        write_night(digits, name, nights[1], frame.iloc[1100:1450], shuffle=True)
        shuffled = fire(sid, pg_stack, nights[1])
        assert shuffled["status"] == "failed", shuffled
        report = shuffled["crawl_check"]
        assert report["quarantined"] and report["rows"] == 350
        agreement = next(c for c in report["checks"] if c["name"] == "agreement")
        assert agreement["value"] < 0.3 < agreement["holdout_accuracy"] - 0.25 and not agreement["passed"]
        assert "agreement" in shuffled["error"] and "nothing trained" in shuffled["error"]
        assert f"{agreement['value']:.4g}" in shuffled["error"]  # the figures, in words
        epochs = pg_stack.http.get(pg_stack.url(f"/api/v1/jobs/{shuffled['id']}/epochs"), timeout=10).json()
        assert epochs["epochs"] == [] and shuffled["model"]["result"] is None
        assert len(versions_of(pg_stack, name)) == trained

        write_night(digits, name, nights[2], frame.iloc[1450:], shuffle=False)
        clean = fire(sid, pg_stack, nights[2])
        assert clean["status"] == "succeeded", (clean["error"], clean["crawl_check"])
        assert not clean["crawl_check"]["quarantined"] and clean["crawl_check"]["rows"] == len(frame) - 1450
        assert {c["name"] for c in clean["crawl_check"]["checks"]} == {
            "agreement", "class_agreement", "distribution", "holdout_duplicates", "unreadable"}
        assert clean["model"]["result"] == f"{name}@{trained + 1}" and "gate" in clean["comparison"]

        described = pg_stack.http.get(pg_stack.url(f"/api/v1/schedules/{sid}"), timeout=10).json()
        runs = described["runs"]  # newest first
        assert [r["job_id"] for r in runs] == [clean["id"], shuffled["id"], first["id"]]
        assert runs[1]["decision"] == "quarantined" and runs[1]["reason"] == shuffled["error"]
        assert runs[1]["crawl_check"] == report
        assert runs[0]["decision"] in ("promoted", "kept") and runs[0]["crawl_check"]["quarantined"] is False
    finally:
        pg_stack.http.patch(pg_stack.url(f"/api/v1/schedules/{sid}"), json={"enabled": False}, timeout=10)
        get_settings.cache_clear()
