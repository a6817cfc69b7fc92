"""Errors that carry their meaning; web/errors.py is the one place that maps them to HTTP."""


class ImgqError(Exception):
    """Base class; `http_status` says how the web front reports it."""
    http_status = 400

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(ImgqError):
    http_status = 400


class Unauthorized(ImgqError):
    """No API token, or one imgq does not know (or that was revoked)."""
    http_status = 401


class Forbidden(ImgqError):
    """A known token without the scope the request needs."""
    http_status = 403


class NotFound(ImgqError):
    http_status = 404


class Conflict(ImgqError):
    http_status = 409


class RequestEntityTooLarge(ImgqError):
    """A JSON body over IMGQ_MAX_JSON_BYTES (werkzeug's error of the same name: a multipart body over
    IMGQ_MAX_UPLOAD_BYTES)."""
    http_status = 413


class RequestURITooLarge(ImgqError):
    """A URL longer than the web front reads (werkzeug's name for the status)."""
    http_status = 414


class OutsideRoot(InvalidRequest):
    """A file would be written outside the folder it belongs in (a name with '..' or a separator, or a link)."""


class TooManyRequests(ImgqError):
    """A token over its rate or its cap on concurrent jobs; `retry_after` (seconds) becomes Retry-After."""
    http_status = 429

    def __init__(self, message: str, retry_after: int, **details):
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class ServiceUnavailable(ImgqError):
    """A part the request needs is not up (no worker answered a query in time, the broker is away)."""
    http_status = 503


class ObjectStoreUnavailable(ServiceUnavailable):
    """The object store did not answer (refused or reset connections, 5xx, throttling) through every retry: no
    item's fault, so a worker gives its chunk back rather than record an error for the item."""


class Unprocessable(ImgqError):
    """Well-formed, but imgq cannot do it (e.g. an Idempotency-Key reused for another request)."""
    http_status = 422


class ModelRejected(ImgqError):
    """A model file that cannot be registered: unreadable, unsafe, or not matching its signature."""
    http_status = 422
