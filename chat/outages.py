"""What counts as an outage of Redis or the database, and the 503 that answers one over HTTP.

An outage is not only a Redis that cannot be reached: a Redis that answers but refuses
every write (at maxmemory with noeviction, a read-only replica, too few replicas) stops
the chat as surely, and is answered the same way: sockets close with 4503 and reconnect
with backoff, HTTP answers 503, /healthz says so.

A database error is an outage only when the database cannot serve (unreachable, gone
read-only, out of room, a wait given up): a bad query or bad input (DataError,
IntegrityError, ProgrammingError, a failed transaction) is a bug and shows as one, a 500
over HTTP and a traceback in the log.

Explained in docs/faults.md, 'Services and processes'.
"""

import logging
import sqlite3

from django.db import InterfaceError, InternalError, OperationalError
from django.http import HttpRequest, HttpResponse

from . import protocol
from .redis_clients import OUTAGE_ERRORS, refuses_writes

logger = logging.getLogger(__name__)

# What an unreachable Redis or a database that cannot serve raises: psycopg's connection
# errors, timeouts, lock waits, shutdowns and full disks are OperationalError, a connection
# Django found closed is InterfaceError.
UNREACHABLE_ERRORS = (*OUTAGE_ERRORS, OperationalError, InterfaceError)
# The one InternalError that means the server cannot serve: a read-only transaction (25006),
# what a primary turned replica after a failover answers a write with; the rest of class 25
# (a failed or misused transaction) is a bug.
READ_ONLY_SQLSTATE = "25006"
# SQLite puts bugs under OperationalError too ("no such table", a syntax error: SQLITE_ERROR);
# these primary result codes are the database file that cannot serve: busy or locked,
# out of memory, read-only, I/O error, full, cannot be opened, a locking protocol error.
SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
# sqlite_errorcode is an extended result code; its low byte is the primary one.
SQLITE_PRIMARY_CODE_MASK = 0xFF
# How long an HTTP client should wait before asking again (Retry-After).
RETRY_AFTER_SECONDS = 5


def is_outage(error: BaseException) -> bool:
    """Whether error means Redis or the database cannot serve the chat now (not a bug)."""
    cause = error.__cause__
    if isinstance(cause, sqlite3.Error) and isinstance(error, OperationalError):
        code = getattr(cause, "sqlite_errorcode", None)
        return code is not None and code & SQLITE_PRIMARY_CODE_MASK in SQLITE_UNAVAILABLE
    if isinstance(error, InternalError):
        return getattr(cause, "sqlstate", None) == READ_ONLY_SQLSTATE
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
        response = protocol.http_refusal(request, 503, "service_unavailable", detail)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
