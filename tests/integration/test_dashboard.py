"""The dashboard in a real browser (Debian's chromium driven by playwright, never a downloaded browser) against real
processes on PostgreSQL and Redis: sign in, a score job's bar reaching 100 %, a training curve gaining points while
the job runs, promote with the button (and a read-only token seeing no button, its forged write refused), a
similar-image query from an uploaded file, and user-supplied text (an item id holding <script>) shown as text.
Screenshots go to $IMGQ_TEST_ARTIFACTS (or the test's tmp folder); $IMGQ_README_SHOTS=<folder> writes the README's
two small screenshots there."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

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
        self.page.on("request", lambda r: self.requests.append(r.url))
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
    counts = []
    deadline = time.monotonic() + 600
    while True:
        assert time.monotonic() < deadline, counts
        counts.append(int(page.locator("#curves").get_attribute("data-epochs") or 0))
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
