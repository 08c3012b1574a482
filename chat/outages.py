"""What counts as an outage of Redis or the database, and the 503 that answers one over HTTP.

An outage is not only a Redis that cannot be reached: a Redis that answers but refuses
every write (at maxmemory with noeviction, a read-only replica, too few replicas) stops
the chat as surely, and is answered the same way: sockets close with 4503 and reconnect
with backoff, HTTP answers 503, /healthz says so.

Explained in docs/faults.md, 'Services and processes'.
"""

import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse

from .redis_clients import OUTAGE_ERRORS, refuses_writes

logger = logging.getLogger(__name__)

# What an unreachable Redis or database raises.
UNREACHABLE_ERRORS = (*OUTAGE_ERRORS, DatabaseError)
# How long an HTTP client should wait before asking again (Retry-After).
RETRY_AFTER_SECONDS = 5


def is_outage(error: BaseException) -> bool:
    """Whether error means Redis or the database cannot serve the chat now (not a bug)."""
    return isinstance(error, UNREACHABLE_ERRORS) or refuses_writes(error)


class OutageMiddleware:
    """Answer a request that met an outage with a clear 503 and Retry-After, not a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A 503 for an outage (JSON for the API, text for pages); anything else as before."""
        if not is_outage(exception):
            return None
        logger.warning("answered 503 to %s %s: %r", request.method, request.path, exception)
        detail = "The chat server is having trouble. Try again in a few seconds."
        if "text/html" in request.headers.get("Accept", ""):  # a browser loading a page
            response = HttpResponse(detail, status=503, content_type="text/plain; charset=utf-8")
        else:
            error = {"code": "service_unavailable", "detail": detail}
            response = JsonResponse({"error": error}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
