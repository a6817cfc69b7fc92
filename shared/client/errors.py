"""What can go wrong talking to an imgq server, each error with the exit code the CLI gives it.

Exit codes a cron job can act on: 0 succeeded, 1 the job failed (or was canceled), 2 usage or a request the
server refused (4xx), 3 server unreachable or answering 5xx, 4 authentication or authorization (401, 403).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4


class ClientError(Exception):
    """Base class: `exit_code` is what the CLI exits with."""
    exit_code = EXIT_USAGE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ApiError(ClientError):
    """The server answered with an error body: {"error": {"type", "message", "problems": [...]}}."""

    def __init__(self, status: int, kind: str, message: str, problems: list[dict] | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.problems = problems or []
        self.body = body or {}

    def __str__(self) -> str:
        fields = ", ".join(p["field"] for p in self.problems if p.get("field"))
        return f"{self.status} {self.kind}: {self.message}" + (f" (at {fields})" if fields else "")


class AuthError(ApiError):
    """401 (no token, unknown or revoked token) or 403 (a token without the scope)."""
    exit_code = EXIT_AUTH


class ServerError(ApiError):
    """A 5xx answer: the server or a part it needs is down."""
    exit_code = EXIT_UNREACHABLE


class Unreachable(ClientError):
    """No answer at all: wrong address, server down, connection refused or timed out."""
    exit_code = EXIT_UNREACHABLE


class NotConfigured(ClientError):
    """No server address: neither --server, IMGQ_SERVER nor `imgq login`."""
    exit_code = EXIT_USAGE
