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
