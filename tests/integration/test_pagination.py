"""One pagination style for every list, through the app factory on SQLite and PostgreSQL: `limit` (at most
MAX_LIMIT) and an opaque `after` taken from the `next` link, which keeps the filters; following `next` yields every
row once; anything a list does not know is a 400 in the one error shape. And each resource looks the same in a
list as by itself."""
from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import update

from shared.core.db import session_scope
from shared.core.tables import Job, Result, Schedule, Sweep, utcnow
from shared.services import jobs, tokens, workers
from tests.helpers import assert_error, seed_embeddings, seed_version
from web.pagination import MAX_LIMIT

N = 5  # rows of each list, at least
ONE_INSTANT = datetime(2026, 1, 1, tzinfo=timezone.utc)  # jobs and sweeps share it: only their ids break ties

# endpoint, URL, the body's key, the key that tells rows apart
LISTS = [
    ("jobs.list_jobs", "/api/v1/jobs", "jobs", "id"),
    ("jobs.get_results", "/api/v1/jobs/{job}/results", "results", "id"),
    ("models.list_models", "/api/v1/models", "models", "name"),
    ("models.list_versions", "/api/v1/models/many/versions", "versions", "version"),
    ("schedules.list_schedules", "/api/v1/schedules", "schedules", "id"),
    ("sweeps.list_sweeps", "/api/v1/sweeps", "sweeps", "id"),
    ("catalogs.list_catalogs", "/api/v1/catalogs", "catalogs", "name"),
    ("tokens.list_tokens", "/api/v1/tokens", "tokens", "id"),
    ("workers.list_workers", "/api/v1/workers", "workers", "name"),
]


@pytest.fixture
def seeded(configured):
    """At least N rows in every list: versions of `many` and other models, score jobs (the first with results,
    three ok and two errors), embed jobs and their catalogs, schedules, sweeps, tokens and workers seen now."""
    version_id = seed_version("many")
    for number in range(2, N + 1):
        seed_version("many", number, production=False)
    for i in range(N - 1):
        seed_version(f"model-{i}")
    for i in range(N):
        seed_embeddings(f"catalog-{i}", version_id, "many@1", 2)
    with session_scope() as session:
        job_ids = [jobs.create_score_job(session, model_ref="many", pieces=[[("a", "a.jpg")]], source={"type": "items"},
                                         use_cache=True, chunk_size=10).id for _ in range(N)]
        session.add_all(Result(job_id=job_ids[0], item_id=f"item-{i}", status="ok" if i < 3 else "error",
                               outputs={"v": 1.0} if i < 3 else None, error=None if i < 3 else "bad")
                        for i in range(N))
        session.add_all(Schedule(name=f"nightly-{i}", cron="0 2 * * *", timezone="UTC", model_name="many",
                                 train={}, gate={}) for i in range(N))
        session.add_all(Sweep(id=f"sweep-{i}", base={}, grid={}, created_at=ONE_INSTANT) for i in range(N))
        session.flush()
        session.execute(update(Job).values(created_at=ONE_INSTANT))
        for i in range(N):
            tokens.create_token(session, f"token-{i}", "read")
            workers.record_worker(session, name=f"cpu-{i}@host", hostname="host", pid=i + 1, role="worker",
                                  queues=["score"], started_at=ONE_INSTANT, at=utcnow())
    return {"job": job_ids[0]}


def url_of(template: str, seeded: dict) -> str:
    return template.format(**seeded)


def follow(client, url: str, plural: str, key: str) -> list:
    """Every row's key, page after page along the `next` links."""
    keys, pages = [], 0
    while url is not None:
        resp = client.get(url)
        assert resp.status_code == 200, resp.json
        keys += [row[key] for row in resp.json[plural]]
        url, pages = resp.json["next"], pages + 1
        assert pages <= 50, "the next links go round"
    return keys


@pytest.mark.parametrize("endpoint, template, plural, key", LISTS, ids=[e for e, *_ in LISTS])
def test_every_list_pages_with_limit_and_next_and_refuses_what_it_does_not_know(client, seeded, endpoint, template,
                                                                                plural, key):
    url = url_of(template, seeded)
    whole = client.get(url, query_string={"limit": MAX_LIMIT})
    assert whole.status_code == 200 and whole.json["next"] is None, whole.json
    every = [row[key] for row in whole.json[plural]]
    assert len(every) >= N and len(set(every)) == len(every)
    assert client.get(url).json[plural] == whole.json[plural]  # the default limit (100) holds them all

    first = client.get(url, query_string={"limit": 2})
    assert len(first.json[plural]) == 2
    link = urlsplit(first.json["next"])
    assert link.path == urlsplit(url).path and not link.netloc  # relative, to this list
    assert parse_qs(link.query)["limit"] == ["2"] and parse_qs(link.query)["after"]
    assert follow(client, f"{url}?limit=2", plural, key) == every  # each row once, in one stable order
    assert follow(client, f"{url}?limit=1", plural, key) == every

    for query, field in [({"limit": 1001}, "limit"), ({"limit": 0}, "limit"), ({"limit": "all"}, "limit"),
                         ([("limit", "2"), ("limit", "3")], "limit"), ({"after": "not-a-cursor"}, "after"),
                         ({"after": "W10"}, "after"), ({"before": "x"}, "before"), ({"offset": "2"}, "offset")]:
        assert_error(client.get(url, query_string=query), 400, "InvalidRequest", field)


# URL, filter, a value outside its vocabulary, a value it knows, what a row then says
FILTERS = [
    ("/api/v1/jobs", "status", "bogus", "queued", lambda row: row["status"] == "queued"),
    ("/api/v1/jobs", "kind", "bogus", "score", lambda row: row["kind"] == "score"),
    ("/api/v1/jobs", "model", "x" * 121, "many", lambda row: row["model"]["ref"].startswith("many@")),
    ("/api/v1/jobs/{job}/results", "status", "bogus", "error", lambda row: row["status"] == "error"),
    ("/api/v1/jobs/{job}/results", "format", "xml", "json", lambda row: True),
]


@pytest.mark.parametrize("template, name, bad, good, holds", FILTERS, ids=[f"{t}?{n}" for t, n, *_ in FILTERS])
def test_every_filter_refuses_an_unknown_value_and_the_next_link_keeps_it(client, seeded, template, name, bad, good,
                                                                          holds):
    url = url_of(template, seeded)
    assert_error(client.get(url, query_string={name: bad}), 400, "InvalidRequest", name)
    plural = "results" if "results" in url else "jobs"
    whole = client.get(url, query_string={name: good, "limit": MAX_LIMIT}).json[plural]
    assert len(whole) >= 2 and all(holds(row) for row in whole)
    first = client.get(url, query_string={name: good, "limit": 1})
    assert parse_qs(urlsplit(first.json["next"]).query)[name] == [good]
    assert follow(client, f"{url}?{name}={good}&limit=1", plural, "id") == [row["id"] for row in whole]


def test_the_table_above_names_every_list(app):
    """A list added later joins the parametrized test, or this fails."""
    lists = {rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint.split(".")[-1].startswith("list_")}
    assert lists | {"jobs.get_results"} == {endpoint for endpoint, *_ in LISTS}


# the list, its key, the URL of one resource by that key
BY_ID = [
    ("/api/v1/jobs", "jobs", "id", "/api/v1/jobs/{}"),
    ("/api/v1/models/many/versions", "versions", "version", "/api/v1/models/many/versions/{}"),
    ("/api/v1/schedules", "schedules", "id", "/api/v1/schedules/{}"),
    ("/api/v1/sweeps", "sweeps", "id", "/api/v1/sweeps/{}"),
    ("/api/v1/catalogs", "catalogs", "name", "/api/v1/catalogs/{}"),
]


@pytest.mark.parametrize("url, plural, key, one", BY_ID, ids=[plural for _, plural, *_ in BY_ID])
def test_a_resource_in_a_list_is_the_resource_by_itself(client, seeded, url, plural, key, one):
    rows = client.get(url).json[plural]
    assert rows
    for row in rows:
        alone = client.get(one.format(row[key]))
        assert alone.status_code == 200 and alone.json == row
