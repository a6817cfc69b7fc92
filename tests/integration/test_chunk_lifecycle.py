"""Chunk claims, idempotent result writes, completion counting, cancel and the sweeper, on SQLite and
PostgreSQL for real (no Celery: the sweeper's enqueue is a recording function)."""
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared.core.db import session_scope
from shared.core.tables import Chunk, Job, JobItem, ModelVersion, Result, ScoreCache, utcnow
from shared.services import jobs
from worker import chunk_lifecycle
from worker.sweeper import sweep


@pytest.fixture
def model_id(db_url):
    with session_scope(db_url) as s:
        v = ModelVersion(name="m", version=1, task="regression", input_height=32, input_width=32,
                         resize_mode="stretch", pixel_scale="unit", output_names=["value"],
                         target_transform={"kind": "none"}, path="/nowhere.keras", sha256="0" * 64, size_bytes=1)
        s.add(v)
        s.flush()
        from shared.services.model_registry import set_alias

        set_alias(s, "m", "production", 1)
        return v.id


def make_job(url, n=10, chunk_size=4, **kw):
    with session_scope(url) as s:
        job = jobs.create_score_job(s, model_ref="m", pieces=[[(f"i{k:02d}", f"{k}.jpg") for k in range(n)]],
                                    source={"type": "items"}, use_cache=True, chunk_size=chunk_size, **kw)
        return job.id


def claim(url, job_id, no, timeout=60.0, attempts=3, worker="test"):
    with session_scope(url) as s:
        return chunk_lifecycle.claim(s, job_id, no, worker=worker, heartbeat_timeout=timeout, max_attempts=attempts)


def write(url, job_id, no, ids, status="ok"):
    with session_scope(url) as s:
        return chunk_lifecycle.record_batch(s, job_id, [
            {"item_id": i, "status": status, "outputs": {"value": 1.0} if status == "ok" else None,
             "error": None if status == "ok" else "broken", "content_hash": f"h{i}"} for i in ids],
            [{"content_hash": f"h{i}", "model_version_id": 1, "outputs": {"value": 1.0}} for i in ids
             if status == "ok"])


def age(url, table, column, seconds, **where):
    """Move a timestamp into the past (in Python: SQLite has no datetime arithmetic)."""
    with session_scope(url) as s:
        for row in s.scalars(select(table).filter_by(**where)):
            value = getattr(row, column)
            if value is not None:
                setattr(row, column, value - timedelta(seconds=seconds))


def job_row(url, job_id):
    with session_scope(url) as s:
        return s.get(Job, job_id)


def test_job_is_split_into_chunks(db_url, model_id):
    job_id = make_job(db_url, n=10, chunk_size=4)
    with session_scope(db_url) as s:
        counts = [c.item_count for c in s.scalars(select(Chunk).where(Chunk.job_id == job_id)
                                                  .order_by(Chunk.chunk_no))]
    assert counts == [4, 4, 2]
    assert job_row(db_url, job_id).total_items == 10


def test_a_chunk_delivered_twice_writes_and_counts_once(db_url, model_id):
    job_id = make_job(db_url, n=4, chunk_size=4)
    claimed = claim(db_url, job_id, 0)
    assert [i for i, _ in claimed.items] == ["i00", "i01", "i02", "i03"]
    assert write(db_url, job_id, 0, ["i00", "i01"]) == 2
    assert write(db_url, job_id, 0, ["i00", "i01"]) == 0  # redelivered batch: nothing new
    assert write(db_url, job_id, 0, ["i02"], status="error") == 1
    job = job_row(db_url, job_id)
    assert (job.done_items, job.failed_items, job.status) == (3, 1, "running")
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) == 3
        assert s.scalar(select(func.count()).select_from(ScoreCache)) == 2
    # the chunk's worker died; a second claim (after its heartbeat went stale) gets only the rest
    age(db_url, Chunk, "heartbeat_at", 300)
    again = claim(db_url, job_id, 0)
    assert [i for i, _ in again.items] == ["i03"] and again.attempt == 2
    write(db_url, job_id, 0, ["i03"])
    with session_scope(db_url) as s:
        assert not chunk_lifecycle.finish(s, job_id, 0, 1)  # the dead first attempt is fenced out
        assert chunk_lifecycle.finish(s, job_id, 0, 2)
    job = job_row(db_url, job_id)
    assert (job.status, job.done_items, job.failed_items) == ("succeeded", 4, 1)
    assert claim(db_url, job_id, 0) == "chunk already done"


def test_a_batch_half_written_before_counts_and_stores_only_its_new_rows(db_url, model_id):
    job_id = make_job(db_url, n=4, chunk_size=4)
    claim(db_url, job_id, 0)
    assert write(db_url, job_id, 0, ["i00", "i01"]) == 2
    with session_scope(db_url) as s:
        assert chunk_lifecycle.record_batch(s, job_id, [
            {"item_id": "i01", "status": "ok", "outputs": {"value": 9.0}},  # already written: the first one wins
            {"item_id": "i02", "status": "ok", "outputs": {"value": 2.5, "label": "coat"}, "from_cache": True,
             "content_hash": "h2"},
            {"item_id": "i03", "status": "error", "error": "truncated image: x"}], []) == 2
    job = job_row(db_url, job_id)
    assert (job.done_items, job.failed_items, job.cached_items) == (4, 1, 1)
    with session_scope(db_url) as s:
        rows = {r.item_id: r for r in s.scalars(select(Result).where(Result.job_id == job_id))}
    assert rows["i01"].outputs == {"value": 1.0}
    assert (rows["i02"].outputs, rows["i02"].from_cache, rows["i02"].content_hash) == (
        {"value": 2.5, "label": "coat"}, True, "h2")
    assert (rows["i03"].status, rows["i03"].outputs, rows["i03"].error) == ("error", None, "truncated image: x")


def test_a_running_chunk_with_a_live_heartbeat_is_not_taken(db_url, model_id):
    job_id = make_job(db_url, n=2)
    assert not isinstance(claim(db_url, job_id, 0), str)
    assert claim(db_url, job_id, 0, worker="another") == "chunk is running on another worker"


def test_chunks_finishing_together_close_the_job_once(db_url, model_id):
    job_id = make_job(db_url, n=8, chunk_size=1)
    for no in range(8):
        claim(db_url, job_id, no)
    errors = []

    def finish(no):
        try:
            with session_scope(db_url) as s:
                chunk_lifecycle.finish(s, job_id, no, 1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(no,)) for no in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert job_row(db_url, job_id).status == "succeeded"


def test_cancel_stops_pending_chunks_and_keeps_results(db_url, model_id):
    job_id = make_job(db_url, n=12, chunk_size=4)
    claim(db_url, job_id, 0)
    write(db_url, job_id, 0, ["i00", "i01"])
    with session_scope(db_url) as s:
        jobs.cancel_job(s, job_id)
    assert claim(db_url, job_id, 1) == "chunk already canceled"
    write(db_url, job_id, 0, ["i02", "i03"])  # the running chunk finishes its work
    with session_scope(db_url) as s:
        chunk_lifecycle.finish(s, job_id, 0, 1)
        states = dict(s.execute(select(Chunk.chunk_no, Chunk.state).where(Chunk.job_id == job_id)).all())
    job = job_row(db_url, job_id)
    assert job.status == "canceled" and job.done_items == 4
    assert states == {0: "done", 1: "canceled", 2: "canceled"}


def test_sweeper_sends_unsent_chunks_and_retakes_dead_ones(db_url, model_id, configured):
    sent = []

    def enqueue(job_id, nos):
        sent.append((job_id, nos))
        return len(nos)

    job_id = make_job(db_url, n=8, chunk_size=4)
    assert sweep(configured, enqueue)["sent"] == 0  # too fresh: the web front is about to send them
    age(db_url, Job, "created_at", 60)
    assert sweep(configured, enqueue)["sent"] == 2
    assert sent == [(job_id, [0, 1])]
    with session_scope(db_url) as s:
        s.execute(update(Chunk).values(state="queued", enqueued_at=utcnow()))
    sent.clear()
    claim(db_url, job_id, 0)
    write(db_url, job_id, 0, ["i00"])
    age(db_url, Chunk, "heartbeat_at", configured.heartbeat_timeout + 5, chunk_no=0)  # the worker died
    assert sweep(configured, enqueue)["sent"] == 1
    assert sent == [(job_id, [0])]


def die(url, seconds=3600):
    """The worker running the chunk died: its heartbeat is long stale."""
    age(url, Chunk, "heartbeat_at", seconds)


def suspect(url, job_id, no, attempt, item_id):
    with session_scope(url) as s:
        return chunk_lifecycle.name_suspect(s, job_id, no, attempt, item_id)


def test_a_chunk_that_keeps_killing_its_worker_fails_only_its_poison_item(db_url, model_id, configured):
    job_id = make_job(db_url, n=4, chunk_size=4)
    for attempt in range(configured.max_attempts):  # ordinary attempts, all dying
        claimed = claim(db_url, job_id, 0, attempts=configured.max_attempts)
        assert not claimed.isolate
        if attempt == 0:
            write(db_url, job_id, 0, ["i00"])  # the first attempt scored one item before dying
        die(db_url)
    assert sweep(configured, lambda job_id, nos: len(nos))["given_up"] == 0  # taken back, not given up
    isolated = claim(db_url, job_id, 0, attempts=configured.max_attempts)
    assert isolated.isolate and [i for i, _ in isolated.items] == ["i01", "i02", "i03"]
    assert suspect(db_url, job_id, 0, isolated.attempt, "i01")
    write(db_url, job_id, 0, ["i01"])  # i01 alone is fine
    assert suspect(db_url, job_id, 0, isolated.attempt, "i02")
    die(db_url)  # ... i02 kills the worker, once
    sweep(configured, lambda job_id, nos: len(nos))
    again = claim(db_url, job_id, 0, attempts=configured.max_attempts)
    assert [i for i, _ in again.items] == ["i02", "i03"]  # one death is not enough to blame it
    assert suspect(db_url, job_id, 0, again.attempt, "i02")
    die(db_url)  # ... and twice in a row: i02 is the poison
    last = claim(db_url, job_id, 0, attempts=configured.max_attempts)
    assert [i for i, _ in last.items] == ["i03"]
    assert suspect(db_url, job_id, 0, last.attempt, "i03")
    write(db_url, job_id, 0, ["i03"])
    with session_scope(db_url) as s:
        assert chunk_lifecycle.finish(s, job_id, 0, last.attempt)
        rows = {r.item_id: r for r in s.scalars(select(Result).where(Result.job_id == job_id))}
    assert {i for i, r in rows.items() if r.status == "ok"} == {"i00", "i01", "i03"}
    assert "died 2 times while scoring this item alone" in rows["i02"].error
    job = job_row(db_url, job_id)
    assert (job.status, job.done_items, job.failed_items) == ("succeeded", 4, 1)


def test_an_isolated_chunk_whose_worker_dies_before_any_item_is_given_up(db_url, model_id, configured):
    job_id = make_job(db_url, n=3, chunk_size=3)
    for _ in range(configured.max_attempts + 1):
        claim(db_url, job_id, 0, attempts=configured.max_attempts)
        die(db_url)
    stats = sweep(configured, lambda job_id, nos: len(nos))
    assert stats["given_up"] == 1
    with session_scope(db_url) as s:
        errors = [r.error for r in s.scalars(select(Result).where(Result.job_id == job_id))]
    assert len(errors) == 3 and all("gave up after 4 attempts" in e for e in errors)
    assert job_row(db_url, job_id).status == "succeeded"


def test_a_stale_attempt_changes_nothing(db_url, model_id):
    job_id = make_job(db_url, n=4, chunk_size=4)
    first = claim(db_url, job_id, 0)
    die(db_url)
    second = claim(db_url, job_id, 0)  # the first attempt was presumed dead
    assert second.attempt == first.attempt + 1
    with session_scope(db_url) as s:
        before = s.get(Chunk, (job_id, 0)).heartbeat_at
        assert not chunk_lifecycle.release(s, job_id, 0, first.attempt, "stale error")
        assert not chunk_lifecycle.heartbeat(s, job_id, 0, first.attempt)
        assert not chunk_lifecycle.name_suspect(s, job_id, 0, first.attempt, "i00")
        assert not chunk_lifecycle.finish(s, job_id, 0, first.attempt)
    with session_scope(db_url) as s:
        chunk = s.get(Chunk, (job_id, 0))
        assert (chunk.state, chunk.attempts, chunk.error, chunk.suspect_item) == ("running", 2, None, None)
        assert chunk.heartbeat_at == before
        assert chunk_lifecycle.heartbeat(s, job_id, 0, second.attempt)
    assert job_row(db_url, job_id).status == "running"


def test_a_redelivered_message_of_this_process_takes_its_chunk_back_at_once(db_url, model_id):
    job_id = make_job(db_url, n=2)
    first = claim(db_url, job_id, 0)  # then the task failed without releasing (the database went away)
    again = claim(db_url, job_id, 0)  # the same pool process gets the requeued message
    assert not isinstance(again, str) and again.attempt == first.attempt + 1
    with session_scope(db_url) as s:
        other = chunk_lifecycle.claim(s, job_id, 0, worker="other", heartbeat_timeout=60, max_attempts=3)
    assert other == "chunk is running on another worker"


def test_a_model_that_cannot_load_fails_the_job(db_url, model_id):
    job_id = make_job(db_url, n=8, chunk_size=4)
    claim(db_url, job_id, 0)
    with session_scope(db_url) as s:
        chunk_lifecycle.fail_job(s, job_id, "cannot load model m@1: file missing")
    job = job_row(db_url, job_id)
    assert job.status == "failed" and "file missing" in job.error
    assert claim(db_url, job_id, 1) == "chunk already failed"


def test_a_worker_killed_between_taking_a_message_and_claiming_does_not_strand_the_chunk(
        db_url, model_id, configured):
    job_id = make_job(db_url, n=8, chunk_size=4)
    with session_scope(db_url) as s:
        s.execute(update(Chunk).values(state="queued", enqueued_at=utcnow()))
        chunk_lifecycle.mark_delivered(s, job_id, 1, worker="w1")  # taken off the queue; then the worker died
    sent = []
    assert sweep(configured, lambda j, nos: sent.append((j, nos)) or len(nos))["sent"] == 0  # not silent yet
    age(db_url, Chunk, "heartbeat_at", configured.heartbeat_timeout + 1, chunk_no=1)
    assert sweep(configured, lambda j, nos: sent.append((j, nos)) or len(nos))["sent"] == 1
    assert sent == [(job_id, [1])]
    claimed = claim(db_url, job_id, 1)
    assert not isinstance(claimed, str) and claimed.attempt == 1  # never started: no attempt was spent


def test_sweeper_resends_queued_chunks_the_broker_no_longer_holds(db_url, model_id, configured):
    job_id = make_job(db_url, n=12, chunk_size=4)
    with session_scope(db_url) as s:
        s.execute(update(Chunk).values(state="queued", enqueued_at=utcnow()))
    sent = []

    def enqueue(j, nos):
        sent.append((j, nos))
        return len(nos)

    age(db_url, Chunk, "enqueued_at", configured.lost_after + 1, chunk_no=0)
    age(db_url, Chunk, "enqueued_at", configured.lost_after + 1, chunk_no=1)
    assert sweep(configured, enqueue, queue_depth=lambda queue: 3)["sent"] == 0  # all messages are there
    assert sweep(configured, enqueue, queue_depth=lambda queue: None)["sent"] == 0  # broker unknown: wait
    assert sweep(configured, enqueue, queue_depth=lambda queue: 0)["sent"] == 2  # Redis restarted empty
    assert sent == [(job_id, [0, 1])]  # chunk 2 was sent too recently to tell


def test_sweeper_removes_expired_and_orphan_upload_folders_only(db_url, model_id, configured):
    import os
    import time

    from worker.sweeper import remove_old_uploads

    def folder(name, age_seconds=0):
        path = configured.upload_dir / name
        path.mkdir(parents=True)
        (path / "000000-a.jpg").write_bytes(b"x")
        os.utime(path, (time.time() - age_seconds,) * 2)
        return path

    with session_scope(db_url) as s:
        for name, status in (("running", "running"), ("expired", "succeeded"), ("recent", "succeeded")):
            job = jobs.create_score_job(s, model_ref="m", pieces=[[("a", "a.jpg")]], chunk_size=4, use_cache=True,
                                        source={"type": "upload", "count": 1, "folder": name})
            job.status, job.finished_at = status, utcnow() if status != "running" else None
            if name == "expired":
                job.finished_at = utcnow() - timedelta(seconds=configured.upload_retention + 60)
    paths = {name: folder(name, age_seconds=10 * 24 * 3600) for name in ("running", "expired", "recent")}
    paths["orphan-old"] = folder("orphan-old", configured.orphan_upload_after + 60)
    paths["orphan-new"] = folder("orphan-new")  # an upload in flight: its job is not committed yet
    assert remove_old_uploads(configured) == 2
    assert {name for name, p in paths.items() if p.exists()} == {"running", "recent", "orphan-new"}


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_retry_finds_its_unscored_items_by_primary_key_whatever_the_statistics_say(pg_url):
    """The query plan of a retry's claim (and of give_up) must not read the job's other results, even when
    the tables were last analyzed empty, as on a fresh database whose autovacuum has not run yet."""
    from sqlalchemy import text

    from shared.core.migrate import upgrade

    upgrade(pg_url)
    with session_scope(pg_url) as s:
        s.execute(text("ANALYZE"))  # statistics say: every table is empty
        s.add(ModelVersion(name="m", version=1, task="regression", input_height=32, input_width=32,
                           resize_mode="stretch", pixel_scale="unit", output_names=["value"],
                           target_transform={"kind": "none"}, path="/nowhere.keras", sha256="0" * 64,
                           size_bytes=1))
        s.flush()
        from shared.services.model_registry import set_alias

        set_alias(s, "m", "production", 1)
    job_id = make_job(pg_url, n=20_000, chunk_size=256)
    with session_scope(pg_url) as s:
        for start in range(0, 19_968, 1024):
            chunk_lifecycle.record_batch(s, job_id, [{"item_id": f"i{k:02d}", "status": "ok", "outputs": {"value": 1.0}}
                                          for k in range(start, min(start + 1024, 19_968))], [])
    last_chunk = 19_999 // 256
    with session_scope(pg_url) as s:
        ids = list(s.scalars(select(JobItem.item_id).where(JobItem.job_id == job_id,
                                                                  JobItem.chunk_no == last_chunk)))
        query, params = chunk_lifecycle.scored_among(s, job_id, ids)
        plan = s.execute(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {query.text}"), params).scalar_one()[0]["Plan"]
    nodes = list(_plan_nodes(plan))
    assert all(n["Node Type"] != "Seq Scan" and "Hash" not in n["Node Type"] for n in nodes), nodes
    assert any(n.get("Index Name") == "results_pkey" for n in nodes), nodes
    assert max(n["Actual Rows"] * n.get("Actual Loops", 1) for n in nodes) <= len(ids), nodes  # no other rows
    # the retry itself: the chunk's 32 unscored items, and nothing else
    age(pg_url, Chunk, "heartbeat_at", 0)
    with session_scope(pg_url) as s:
        s.execute(update(Chunk).where(Chunk.job_id == job_id, Chunk.chunk_no == last_chunk)
                  .values(state="queued", attempts=1))
    again = claim(pg_url, job_id, last_chunk)
    assert [i for i, _ in again.items] == [f"i{k:02d}" for k in range(19_968, 20_000)]


@pytest.mark.parametrize("pieces", [[[("a", "1.jpg"), ("b", "2.jpg"), ("a", "3.jpg")]],
                                    [[("a", "1.jpg")], [("b", "2.jpg"), ("a", "3.jpg")]]])
def test_a_job_with_a_repeated_item_id_is_refused_and_leaves_nothing(db_url, model_id, pieces):
    from shared.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="unique within a job"), session_scope(db_url) as s:
        jobs.create_score_job(s, model_ref="m", pieces=pieces, source={"type": "items"}, use_cache=True,
                              chunk_size=2)
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(JobItem)) == 0


def test_item_ids_and_paths_with_tabs_quotes_and_backslashes_are_stored_as_given(db_url, model_id):
    odd = [("a\tb", "dir\\x.jpg"), ('q"uote', "new\nline.jpg"), ("ünï", "\\N")]
    with session_scope(db_url) as s:
        job_id = jobs.create_score_job(s, model_ref="m", pieces=[odd], source={"type": "items"}, use_cache=True,
                                       chunk_size=2).id
    with session_scope(db_url) as s:
        stored = set(s.execute(select(JobItem.item_id, JobItem.uri).where(JobItem.job_id == job_id)))
    assert stored == set(odd)
