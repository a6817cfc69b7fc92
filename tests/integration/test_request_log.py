"""The web front's request ids, access lines and request metrics, on the app factory's test client."""
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.core.logs import ContextFilter


@pytest.fixture
def access(caplog):
    """The access log's records, with the role and context the web front's handler would copy onto them."""
    caplog.set_level(logging.INFO, logger="web.access_log")
    caplog.handler.addFilter(ContextFilter("web"))
    return lambda: [r for r in caplog.records if r.name == "web.access_log"]


def test_a_plain_request_id_is_kept_and_echoed_on_every_line(client, access):
    resp = client.get("/api/v1/jobs", headers={"X-Request-ID": "crawler-42.a:b_c"})
    assert resp.headers["X-Request-ID"] == "crawler-42.a:b_c"
    (record,) = access()
    assert (record.request_id, record.route, record.method, record.status) == ("crawler-42.a:b_c", "jobs.list_jobs",
                                                                               "GET", resp.status_code)
    assert record.duration_ms >= 0 and record.role == "web"
    assert record.getMessage() == f"GET jobs.list_jobs {resp.status_code} {record.duration_ms:.1f} ms"


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "<script>", "\u00e9t\u00e9"])
def test_any_other_request_id_is_replaced_by_a_new_one(client, access, given):
    resp = client.get("/api/v1/jobs", headers={"X-Request-ID": given} if given else {})
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])
    assert access()[-1].request_id == resp.headers["X-Request-ID"]


def test_access_lines_hold_neither_the_token_nor_the_url(client, access):
    token = client.environ_base["HTTP_AUTHORIZATION"].split()[1]
    client.get("/api/v1/jobs/no-such-job?secret=hunter2")
    client.get("/no/such/route")
    records = access()
    assert [(r.route, r.status) for r in records] == [("jobs.get_job", 404), ("unmatched", 404)]
    for record in records:
        shown = f"{record.getMessage()} {vars(record)}"
        assert token not in shown and "hunter2" not in shown and "no-such-job" not in shown


def test_request_durations_are_counted_by_route_method_and_status(client):
    for _ in range(2):
        client.get("/healthz")
    client.open("/healthz", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    counts = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
              for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == "imgq_http_request_duration_seconds_count"}
    assert counts[("healthz", "GET", "200")] >= 2
    # a method outside HTTP's own is "other", and a URL no route serves for it "unmatched": the label values stay few
    assert ("unmatched", "other", "405") in counts
