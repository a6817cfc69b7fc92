"""/readyz and /metrics say when the sweeper stopped (beat or the maintenance worker is down)."""
from datetime import timedelta

from shared.core.db import session_scope
from shared.core.tables import MaintenanceBeat
from worker.sweeper import sweep


def test_readyz_fails_until_the_sweeper_runs_and_again_when_it_stops(configured, client):
    assert client.get("/healthz").status_code == 200
    before = client.get("/readyz")
    assert before.status_code == 503 and "the sweeper has never run" in before.json["problems"][0]
    sweep(configured, lambda job_id, nos: 0)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["ready"] is True and ready.json["sweeper_age_seconds"] < 5
    metric = next(line for line in client.get("/metrics").text.splitlines()
                  if line.startswith("imgq_sweeper_last_run_timestamp_seconds "))
    with session_scope() as s:
        row = s.get(MaintenanceBeat, "sweeper")
        assert float(metric.split()[1]) == row.last_at.timestamp()
        row.last_at -= timedelta(seconds=configured.sweep_max_age + 1)  # beat stopped long ago
    stale = client.get("/readyz")
    assert stale.status_code == 503
    assert "the sweeper last ran" in stale.json["problems"][0] and stale.json["ready"] is False
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_metrics_answers_without_the_database_figures_when_the_database_fails(configured, client):
    from sqlalchemy import text

    client.get("/healthz")  # a request, so the request histogram has a sample
    assert "imgq_chunks" in client.get("/metrics").text
    with session_scope() as s:  # the database answers every figure's query with an error
        s.execute(text("ALTER TABLE chunks RENAME TO chunks_away"))
    try:
        scrape = client.get("/metrics")
    finally:
        with session_scope() as s:
            s.execute(text("ALTER TABLE chunks_away RENAME TO chunks"))
    assert scrape.status_code == 200
    assert "imgq_http_request_duration_seconds_count" in scrape.text
    assert not any(line.startswith(("imgq_chunks{", "imgq_sweeper_last_run")) for line in scrape.text.splitlines())
