"""The submission service (shared/services/submission.py): one transaction per submission, sent only after
commit, one job per Idempotency-Key even when requests with the key race; and through the app factory, two
concurrent train submissions with one key answer two 202s for one job on PostgreSQL."""
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import pytest
from sqlalchemy import func, select

from shared.core import dispatch
from shared.core.db import session_scope
from shared.core.errors import InvalidRequest, Unprocessable
from shared.core.tables import Job, Sweep, TrainRun
from shared.schemas.training import SweepRequest, TrainRequest
from shared.services import submission, train_jobs
from tests.helpers import authorized_client
from web.app import create_app

BODY = {"model": "cats", "task": "classification", "input_size": 32, "epochs": 1,
        "dataset": {"path": "cats/items.csv", "label_column": "label"}, "base": {"architecture": "vgg"}}
REQUEST = TrainRequest.model_validate(BODY)
ON_POSTGRES = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


class Recorder:
    """An `enqueue` that notes which ids it was given and whether a session of its own saw them committed."""

    def __init__(self):
        self.sent: list[str] = []
        self.committed: list[bool] = []
        self._lock = threading.Lock()

    def __call__(self, job_ids: list[str]) -> int:
        with session_scope() as session:
            seen = set(session.scalars(select(Job.id).where(Job.id.in_(job_ids))))
        with self._lock:
            self.sent.extend(job_ids)
            self.committed.append(seen == set(job_ids))
        return len(job_ids)


def create_train(request: TrainRequest = REQUEST):
    return lambda session: train_jobs.create_train_job(session, request)


def keyed(key: str) -> submission.Origin:
    return submission.Origin(idempotency_key=key)


def job_count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job))


def concurrently(n: int, call):
    """call() from n threads released together; returns what each returned, in no particular order."""
    start = threading.Barrier(n, timeout=30)

    def run():
        start.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=120) for f in [pool.submit(run) for _ in range(n)]]


def test_a_job_is_committed_then_sent_once_and_described(configured):
    enqueue = Recorder()
    description, created = submission.submit(create_train(), enqueue=enqueue)
    assert created and (description["kind"], description["status"]) == ("train", "queued")
    assert enqueue.sent == [description["id"]] and enqueue.committed == [True]


def test_a_repeated_key_replays_the_first_job_without_sending_it_again(configured):
    enqueue, discarded = Recorder(), []
    first, created = submission.submit(create_train(), origin=keyed("k"), request_fingerprint="fp",
                                       enqueue=enqueue, discard=lambda: discarded.append("first"))
    again, replayed = submission.submit(create_train(), origin=keyed("k"), request_fingerprint="fp",
                                        enqueue=enqueue, discard=lambda: discarded.append("again"))
    assert created and not replayed and again["id"] == first["id"]
    assert enqueue.sent == [first["id"]] and job_count() == 1
    assert discarded == ["again"]  # what the replayed request staged is not needed


def test_a_key_reused_for_a_different_request_is_a_422_and_commits_nothing(configured):
    submission.submit(create_train(), origin=keyed("k"), request_fingerprint="fp", enqueue=Recorder())
    enqueue, discarded = Recorder(), []
    with pytest.raises(Unprocessable, match="Idempotency-Key"):
        submission.submit(create_train(), origin=keyed("k"), request_fingerprint="other",
                          enqueue=enqueue, discard=lambda: discarded.append(True))
    assert enqueue.sent == [] and discarded == [True] and job_count() == 1


def test_a_create_that_fails_commits_nothing_sends_nothing_and_discards(configured):
    def create(session):
        train_jobs.create_train_job(session, REQUEST)
        raise InvalidRequest("refused after the first insert")

    enqueue, discarded = Recorder(), []
    with pytest.raises(InvalidRequest):
        submission.submit(create, enqueue=enqueue, discard=lambda: discarded.append(True))
    assert enqueue.sent == [] and discarded == [True] and job_count() == 0


def test_concurrent_requests_with_one_key_make_one_job_sent_once(configured):
    for round_no in range(4):
        key, enqueue = f"key-{round_no}", Recorder()
        call = partial(submission.submit, create_train(), origin=keyed(key), request_fingerprint="fp",
                       enqueue=enqueue)
        results = concurrently(4, call)
        assert len({description["id"] for description, _ in results}) == 1
        assert sorted(created for _, created in results) == [False, False, False, True]
        assert enqueue.sent == [results[0][0]["id"]] and enqueue.committed == [True]
    assert job_count() == 4


@ON_POSTGRES
def test_a_request_that_loses_the_insert_race_returns_the_job_the_other_committed(configured):
    """Both requests find no job under the key, then both insert one: the unique key blocks the second insert
    until the first commits, and the second request answers with the first's job (not an IntegrityError)."""
    both_looked = threading.Barrier(2, timeout=30)

    def create(session):
        both_looked.wait()
        return create_train()(session)

    enqueue = Recorder()
    results = concurrently(2, lambda: submission.submit(create, origin=keyed("k"), request_fingerprint="fp",
                                                        enqueue=enqueue))
    assert results[0][0]["id"] == results[1][0]["id"]
    assert sorted(created for _, created in results) == [False, True]
    assert enqueue.sent == [results[0][0]["id"]] and enqueue.committed == [True] and job_count() == 1


def test_a_sweep_commits_all_its_jobs_before_any_is_sent(configured):
    enqueue = Recorder()
    sweep = SweepRequest.model_validate({"base": BODY, "grid": {"optimizer.learning_rate": [0.1, 0.01]}})
    job_ids, sent = submission.commit_and_send(
        lambda session: train_jobs.create_sweep(session, "sweep-1", sweep), enqueue)
    assert len(job_ids) == 2 and sent == 2 and enqueue.sent == job_ids and enqueue.committed == [True]
    with session_scope() as session:
        assert set(session.scalars(select(TrainRun.job_id).where(TrainRun.sweep_id == "sweep-1"))) == set(job_ids)


def test_concurrent_sweeps_with_one_key_make_one_sweep_whose_jobs_are_sent_once(configured):
    enqueue = Recorder()
    sweep = SweepRequest.model_validate({"base": BODY, "grid": {"optimizer.learning_rate": [0.1, 0.01]}})
    call = partial(submission.submit_sweep, sweep, origin=keyed("sweep-key"), request_fingerprint="fp", enqueue=enqueue)
    results = concurrently(4, call)
    assert len({description["id"] for description, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len(enqueue.sent) == 2 and enqueue.committed == [True] and job_count() == 2
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1


def test_nothing_to_commit_sends_nothing(configured):
    enqueue = Recorder()
    assert submission.commit_and_send(lambda session: [], enqueue) == ([], 0)
    assert enqueue.sent == [] and enqueue.committed == []


def test_the_default_sender_routes_each_job_by_kind(configured, monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "enqueue_train", lambda ids: calls.append(("train", ids)) or len(ids))
    monkeypatch.setattr(dispatch, "enqueue_imports", lambda ids: calls.append(("import", ids)) or len(ids))
    monkeypatch.setattr(dispatch, "enqueue_chunks", lambda job_id, nos: calls.append(("score", nos)) or len(nos))
    description, _ = submission.submit_train(REQUEST)
    assert calls == [("train", [description["id"]])]


@ON_POSTGRES
def test_two_concurrent_train_submissions_with_one_key_get_two_202s_for_one_job(configured, monkeypatch):
    enqueue = Recorder()
    monkeypatch.setattr(dispatch, "enqueue_train", enqueue)
    app = create_app(replace(configured, rate_limit="100000 per minute"))
    clients = [authorized_client(app, "train,read", f"client-{i}") for i in range(2)]
    turn = iter(clients)
    lock = threading.Lock()

    def post(key: str, body: dict):
        with lock:
            client = next(turn)
        return client.post("/api/v1/jobs/train", json=body, headers={"Idempotency-Key": key})

    job_ids = set()
    for round_no in range(8):
        key = f"train-race-{round_no}"
        turn = iter(clients)
        responses = concurrently(2, lambda key=key: post(key, BODY))
        assert [r.status_code for r in responses] == [202, 202], [r.json for r in responses]
        assert responses[0].json["id"] == responses[1].json["id"]
        assert sorted(r.headers.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]
        assert responses[0].headers["Location"] == f"/api/v1/jobs/{responses[0].json['id']}"
        job_ids.add(responses[0].json["id"])
        other = clients[0].post("/api/v1/jobs/train", json={**BODY, "epochs": 2}, headers={"Idempotency-Key": key})
        assert other.status_code == 422 and other.json["error"]["problems"][0]["field"] == "Idempotency-Key"
    assert len(job_ids) == 8 and job_count() == 8
    assert sorted(enqueue.sent) == sorted(job_ids) and all(enqueue.committed)


@ON_POSTGRES
def test_train_submissions_that_both_pass_the_replay_check_still_get_two_202s(configured, monkeypatch):
    """The race forced: each request waits, after finding no job under the key, until the other found none too."""
    enqueue, create = Recorder(), train_jobs.create_train_job
    both_looked = threading.Barrier(2, timeout=30)

    def create_after_both_looked(*args, **kwargs):
        both_looked.wait()
        return create(*args, **kwargs)

    monkeypatch.setattr(dispatch, "enqueue_train", enqueue)
    monkeypatch.setattr(train_jobs, "create_train_job", create_after_both_looked)
    app = create_app(configured)
    clients = iter([authorized_client(app, "train,read", f"client-{i}") for i in range(2)])
    lock = threading.Lock()

    def post():
        with lock:
            client = next(clients)
        return client.post("/api/v1/jobs/train", json=BODY, headers={"Idempotency-Key": "forced"})

    responses = concurrently(2, post)
    assert [r.status_code for r in responses] == [202, 202], [r.json for r in responses]
    assert responses[0].json["id"] == responses[1].json["id"]
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in responses) == ["", "true"]
    assert enqueue.sent == [responses[0].json["id"]] and enqueue.committed == [True] and job_count() == 1
