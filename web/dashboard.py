"""The dashboard: HTML pages under `/` for people watching jobs, training curves, models and similar images.

Each page is a shell (a Jinja template, autoescaped) holding no data: its script (web/static/*.js, no build step,
plots by the vendored uPlot) fetches the JSON API of the same origin and writes what it gets with `textContent`,
never `innerHTML`, so an item id, error reason or model name is shown as text whatever it holds. Pages are open
(web/auth.OPEN lists them): everything behind them is the API, scope-checked per endpoint as for any client.

Access, and why this way: the user signs in on /login with an API token, which the page keeps in sessionStorage
(this tab only, gone when it closes) and sends as `Authorization: Bearer` on every fetch. No cookie is ever read
for authentication, so no other site can make the browser act for the user: there is no CSRF surface to protect,
and the API keeps the one way of authenticating it has (web/auth.py). The cost is that a script injected into a
page could read the token; hence the escaping rule above and a Content-Security-Policy that allows scripts only
from this origin's files (no inline script, nothing from another host). A read-only token gets no write buttons
(the page asks /api/v1/tokens/me for its scopes), and its writes are refused by the API anyway.
"""
from __future__ import annotations

from flask import Blueprint, render_template

from shared.core.states import JobKind, JobStatus

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/assets")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@bp.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP  # uPlot sizes its elements through inline styles
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


PLOTTED = {"job", "models", "sweep"}  # pages that load uPlot


def _page(name: str, title: str, **data):
    """The page's shell; `data` becomes data-* attributes of its body (autoescaped) for its script to read."""
    return render_template(f"{name}.html", page=name, title=title, data=data, plots=name in PLOTTED,
                           kinds=[k.value for k in JobKind], statuses=[s.value for s in JobStatus])


@bp.get("/")
def jobs_page():
    return _page("jobs", "Jobs")


@bp.get("/login")
def login_page():
    return _page("login", "Sign in")


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    return _page("job", "Job", job_id=job_id)


@bp.get("/models")
def models_page():
    return _page("models", "Models")


@bp.get("/schedules")
def schedules_page():
    return _page("schedules", "Schedules and sweeps")


@bp.get("/sweeps/<sweep_id>")
def sweep_page(sweep_id: str):
    return _page("sweep", "Sweep", sweep_id=sweep_id)


@bp.get("/similar")
def similar_page():
    return _page("similar", "Similar images")


@bp.get("/operations")
def operations_page():
    return _page("operations", "Operations")
