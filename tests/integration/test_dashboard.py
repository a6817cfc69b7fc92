"""The dashboard in a real browser (Debian's chromium driven by playwright, never a downloaded browser) against real
processes on PostgreSQL and Redis: sign in, a score job's bar reaching 100 % and its Parquet download, a training
curve gaining points while the job runs, promote with the button (and a read-only token seeing no button, its forged
write refused), a similar-image query from an uploaded file, a sweep's heatmap and shadow diff, the schedules and
operations pages (the stack's workers seen) without console errors, and user-supplied text (an item id, a sweep's
grid value holding <script>) shown as text.
Screenshots go to $IMGQ_TEST_ARTIFACTS (or the test's tmp folder); $IMGQ_README_SHOTS=<folder> writes the README's
two small screenshots there."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from tests.helpers import import_model_http, write_jpeg

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
PAGES = ["/", "/login", "/jobs/x", "/models", "/schedules", "/sweeps/x", "/similar", "/operations"]
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("IMGQ_TEST_ARTIFACTS") or tmp_path_factory.mktemp("dashboard-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Visitor:
    """A browser context signed in with one token; it records every request the pages make and every dialog."""

    def __init__(self, browser, stack, token: str):
        self.stack = stack
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []  # console errors and uncaught exceptions (a CSP violation is one)
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{self.page.url}: {m.text} ({m.location.get('url')})"))
        self.page.on("pageerror", lambda e: self.errors.append(f"{self.page.url}: {e}"))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(stack.url("/login?next=/models"))
        self.page.fill("#token", token)
        self.page.click("#sign-in")
        self.page.wait_for_url(stack.url("/models"))

    def goto(self, path: str):
        self.page.goto(self.stack.url(path))
        return self.page

    def close(self):
        foreign = [u for u in self.requests if not u.startswith((self.stack.base, "blob:", "data:"))]
        self.context.close()
        assert not foreign, f"the pages fetched from another host: {foreign}"


@pytest.fixture
def admin(browser, pg_stack):
    visitor = Visitor(browser, pg_stack, pg_stack.token)
    yield visitor
    visitor.close()


@pytest.fixture(scope="module")
def scorer(pg_stack, model_files):
    return import_model_http(pg_stack, model_files["regression"], "dash-scorer")


def submit(stack, path, body) -> dict:
    resp = stack.http.post(stack.url(path), json=body, timeout=60)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_no_page_refers_to_another_host_and_each_sends_a_strict_content_policy(pg_stack):
    for path in PAGES:
        resp = requests.get(pg_stack.url(path), timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/html"), path
        assert not re.findall(r"https?://", resp.text), (path, re.findall(r"https?://\S+", resp.text))
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


def test_a_score_job_bar_reaches_100_percent_and_a_script_id_shows_as_text(admin, pg_stack, scorer, artifacts):
    folder = pg_stack.data / "dash"
    items = [{"id": f"photo-{i:03d}", "uri": str(write_jpeg(folder / f"{i}.jpg", seed=i).relative_to(pg_stack.data))}
             for i in range(48)]
    items.append({"id": XSS, "uri": "dash/missing.jpg"})
    job = submit(pg_stack, "/api/v1/jobs/score", {"model": "dash-scorer", "items": items})
    page = admin.goto("/")
    bar = page.locator(f'tr[data-job="{job["id"]}"] [role=progressbar]')
    bar.wait_for()
    seen = {bar.get_attribute("aria-valuenow")}
    deadline = time.monotonic() + 180
    while bar.get_attribute("aria-valuenow") != "100.0":  # refreshed in place: no reload
        assert time.monotonic() < deadline, f"the bar stayed at {bar.get_attribute('aria-valuenow')}"
        seen.add(bar.get_attribute("aria-valuenow"))
        time.sleep(0.3)
    assert page.locator(f'tr[data-job="{job["id"]}"] .status').inner_text() in ("succeeded", "failed")
    page.screenshot(path=str(artifacts / "jobs.png"))
    _readme_shot(page, "jobs.png")

    page = admin.goto(f"/jobs/{job['id']}")
    failed = page.locator("#failed tbody tr td").first
    failed.wait_for()
    page.locator(".thumb img[src^='blob:']").first.wait_for()
    assert failed.inner_text() == XSS  # the id, as text
    assert page.locator("#failed tbody tr td").nth(1).inner_text()  # and its reason
    page.locator("#histograms .plot").first.wait_for()
    assert page.evaluate("window.__pwned") is None and not admin.dialogs
    assert page.locator("main script, main img[src=x]").count() == 0  # nothing injected
    with page.expect_download() as downloaded:
        page.click("#parquet")
    assert downloaded.value.suggested_filename == f"{job['id']}.parquet"
    table = pq.read_table(downloaded.value.path())
    assert table.num_rows == 49 and XSS in table.column("id").to_pylist()
    page.screenshot(path=str(artifacts / "score-job.png"), full_page=True)


def _readme_shot(page, name: str) -> None:
    folder = os.environ.get("IMGQ_README_SHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def test_a_training_curve_gains_points_while_the_job_runs(admin, pg_stack, digits, artifacts):
    job = submit(pg_stack, "/api/v1/jobs/train", {
        "model": "dash-digits", "task": "classification",
        # the page polls the curves every 2 s: all 1,797 digits for 10 epochs keep the job running over several
        # polls (5 epochs of 900 once ended between two polls on CI)
        "dataset": {"path": "digits/all.csv", "image_column": "image", "id_column": "id",
                    "label_column": "label"},
        "base": {"architecture": "vgg", "width": 8}, "input_size": 32, "epochs": 10, "batch_size": 32,
        "optimizer": {"name": "adam", "learning_rate": 0.003}})
    page = admin.goto(f"/jobs/{job['id']}")
    page.evaluate("window.__sameDocument = true")
    counts, holders = [], set()
    deadline = time.monotonic() + 600
    while True:
        assert time.monotonic() < deadline, counts
        counts.append(int(page.locator("#curves").get_attribute("data-epochs") or 0))
        holders |= {w["role"] for w in pg_stack.http.get(pg_stack.url("/api/v1/workers"), timeout=10).json()["workers"]
                    if job["id"] in w["current_jobs"]}
        if page.locator("#job-status").count() and page.locator("#job-status").inner_text() in \
                ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.5)
    time.sleep(2.5)  # the last poll draws the final epoch
    final = int(page.locator("#curves").get_attribute("data-epochs"))
    grew = sorted(set(counts + [final]))
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    assert final == 10 and len([c for c in grew if 0 < c < 10]) >= 1, grew  # seen part-way, then complete
    assert holders == {"worker"}  # while it ran, the workers list named the job as the worker's
    assert page.locator("#curves .plot").count() >= 2  # loss and accuracy, train against validation
    assert "accuracy" in page.locator("#holdout").inner_text()
    assert page.locator("#gate").inner_text().strip()
    page.screenshot(path=str(artifacts / "train-job.png"), full_page=True)
    _readme_shot(page, "train-job.png")


def test_promote_with_the_button_and_a_read_only_token_sees_none_and_is_refused(admin, browser, pg_stack,
                                                                                model_files, artifacts):
    for _ in range(2):
        import_model_http(pg_stack, model_files["regression"], "dash-promote")
    production = lambda: pg_stack.http.get(pg_stack.url("/api/v1/models"), params={"limit": 1000},  # noqa: E731
                                           timeout=10).json()["models"]
    assert {m["name"]: m["production"] for m in production()}["dash-promote"] == 1
    page = admin.goto("/models")
    section = page.locator('section[data-model="dash-promote"]')
    section.locator('button.promote[data-version="2"]').click()
    page.locator("#confirm-ok").click()
    section.locator('.version.production[data-ref="dash-promote@2"]').wait_for()
    assert {m["name"]: m["production"] for m in production()}["dash-promote"] == 2
    page.screenshot(path=str(artifacts / "models.png"), full_page=True)

    reader_token = pg_stack.create_token("dash-reader", "read")
    reader = Visitor(browser, pg_stack, reader_token)
    try:
        page = reader.goto("/models")
        page.locator("#models[data-ready='1']").wait_for()
        assert page.locator('section[data-model="dash-promote"]').count() == 1
        assert page.locator("button.promote, button.rollback").count() == 0
        page.goto(pg_stack.url("/"))
        page.locator("#jobs tbody tr").first.wait_for()
        assert page.locator("button.cancel").count() == 0
        status = page.evaluate("""async (token) => (await fetch('/api/v1/models/dash-promote/aliases/production',
            {method: 'POST', headers: {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'},
             body: JSON.stringify({version: 1})})).status""", reader_token)
        assert status == 403
        assert requests.post(pg_stack.url("/api/v1/models/dash-promote/rollback"), timeout=10,
                             headers={"Authorization": f"Bearer {reader_token}"}).status_code == 403
        assert {m["name"]: m["production"] for m in production()}["dash-promote"] == 2
    finally:
        reader.close()


def test_a_similar_image_query_from_an_uploaded_file(admin, pg_stack, model_files, artifacts):
    import csv

    from tests.helpers import tiny_cnn

    embedder = artifacts / "dash-embedder.keras"
    tiny_cnn(32, 8, seed=3).save(embedder)
    import_model_http(pg_stack, embedder, "dash-embedder", task="embedding")
    folder = pg_stack.data / "dash-catalog"
    with open(folder.parent / "dash-catalog.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "category"])
        for i in range(12):
            write_jpeg(folder / f"{i}.jpg", seed=100 + i)
            writer.writerow([f"shoe-{i}", f"dash-catalog/{i}.jpg", "shoes" if i % 2 else "hats"])
    job = submit(pg_stack, "/api/v1/jobs/embed", {"model": "dash-embedder", "catalog": "dashcat",
                                                  "manifest": "dash-catalog.csv"})
    assert pg_stack.wait_job(job["id"], timeout=300)["status"] == "succeeded"
    index = submit(pg_stack, "/api/v1/catalogs/dashcat/indexes", {})
    assert pg_stack.wait_job(index["id"], timeout=300)["status"] == "succeeded"

    page = admin.goto("/similar")
    page.locator("#catalog option[value=dashcat]").wait_for(state="attached")
    page.select_option("#catalog", "dashcat")
    page.set_input_files("#image", str(folder / "3.jpg"))
    page.fill("#category", "shoes")
    page.fill("#k", "4")
    page.click("#search")
    page.locator("#hits[data-count]").wait_for(timeout=60_000)
    hits = page.locator("#hits .hit")
    assert hits.count() == 4
    assert hits.first.get_attribute("data-item") == "shoe-3"  # the image itself, first
    assert all(int(hits.nth(i).get_attribute("data-item").split("-")[1]) % 2 for i in range(4))  # shoes only
    page.locator("#hits .hit img[src^='blob:']").first.wait_for()
    page.screenshot(path=str(artifacts / "similar.png"), full_page=True)


def test_sweep_schedules_and_operations_pages_show_real_data_and_hostile_text_as_text(admin, pg_stack, digits,
                                                                                       artifacts):
    """Schedule and model names are Names (letters, digits, - _ .): they cannot hold '<'. A sweep has no name, but
    its grid's values are free text that every page shows (here a dataset path, a real file under a hostile
    name), and so are an item's id and error reason (the score job test)."""
    rows = (digits / "first-night.csv").read_text().splitlines()[:241]  # 240 digits: one quick epoch
    hostile = 'x<img src=x onerror="window.__pwned=3"><script>window.__pwned=4</script>.csv'.replace("/", "|")
    for name in ("sweep-small.csv", hostile):
        (digits / name).write_text("\n".join(rows) + "\n")
    base = {"model": "dash-sweep", "task": "classification", "input_size": 32, "epochs": 1, "batch_size": 64,
            "dataset": {"path": "digits/sweep-small.csv", "image_column": "image", "id_column": "id",
                        "label_column": "label"}, "base": {"architecture": "vgg", "width": 4}, "gate": {}}
    resp = pg_stack.http.post(pg_stack.url("/api/v1/sweeps"), timeout=60, json={"base": base, "grid": {
        "dataset.path": ["digits/sweep-small.csv", f"digits/{hostile}"], "optimizer.learning_rate": [0.003]}})
    assert resp.status_code == 202, resp.text
    sweep = resp.json()
    # one train worker runs them in turn: the first becomes production, the second is compared with it
    runs = [pg_stack.wait_job(run["job_id"], timeout=300) for run in sweep["runs"]]
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"]
    compared = [run for run in runs if (run["comparison"] or {}).get("shadow")]
    assert len(compared) == 1, [run["comparison"] for run in runs]
    schedule = pg_stack.http.post(pg_stack.url("/api/v1/schedules"), timeout=30, json={
        "name": "dash-nightly", "cron": "0 3 * * *", "model": "dash-sweep", "enabled": False,
        "train": {key: value for key, value in base.items() if key not in ("model", "gate")}})
    assert schedule.status_code == 201, schedule.text

    page = admin.goto(f"/sweeps/{sweep['id']}")
    cells = page.locator("#heatmap tbody td")
    cells.first.wait_for()
    assert cells.count() == 2 and page.locator("#heatmap").get_attribute("data-metric")
    assert all(cells.nth(i).inner_text() not in ("", "–") for i in range(2))  # each grid point's metric
    assert page.locator("#heatmap tbody th").nth(1).inner_text() == json.dumps(f"digits/{hostile}")  # as text
    assert page.locator("#runs tbody tr").count() == 2
    page.screenshot(path=str(artifacts / "sweep.png"), full_page=True)

    page = admin.goto(f"/jobs/{compared[0]['id']}")  # the run compared with production: its shadow diff
    page.locator("#shadow-confusion tbody tr").first.wait_for()
    assert page.locator("#shadow-confusion thead th").count() >= 2
    assert "agreement" in page.locator("#shadow").inner_text()
    page.locator("#lineage", has_text="onerror").wait_for()  # drawn after the shadow diff: wait for it
    assert hostile in page.locator("#lineage").inner_text()

    page = admin.goto("/schedules")
    page.locator(f'#schedules tr[data-schedule="{schedule.json()["id"]}"]').wait_for()
    assert page.locator(f'#schedules tr[data-schedule="{schedule.json()["id"]}"] td').first.inner_text() == \
        "dash-nightly"
    assert json.dumps(f"digits/{hostile}") in page.locator(f'#sweeps tr[data-sweep="{sweep["id"]}"]').inner_text()

    page = admin.goto("/operations")
    row = page.locator(f'#workers tr[data-worker$="-{pg_stack.worker.pid}@{socket.gethostname()}"]')
    row.wait_for()
    assert row.locator("td").nth(1).inner_text() == "worker"
    assert page.locator('#workers tr td:text-is("maintenance")').count() >= 1
    assert page.locator("#ready-state").inner_text() in ("ready", "not ready")
    page.screenshot(path=str(artifacts / "operations.png"), full_page=True)
    assert page.evaluate("window.__pwned") is None and not admin.dialogs
    assert page.locator("main script").count() == 0
    assert not admin.errors, admin.errors
