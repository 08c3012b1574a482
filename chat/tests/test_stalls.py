"""Rooms whose last store waited out the lock bound are refused at once for a while."""

import psycopg
import pytest
from django.db import OperationalError, connection

from chat import stalls


def wrapped(cause: Exception) -> OperationalError:
    """What Django raises for a driver's error: its own, caused by the driver's."""
    try:
        raise OperationalError(str(cause)) from cause
    except OperationalError as error:
        return error


@pytest.mark.parametrize(
    "cause", [psycopg.errors.LockNotAvailable("lock timeout"), psycopg.errors.QueryCanceled("x")]
)
def test_postgresqls_lock_and_statement_timeouts_are_lock_timeouts(cause):
    assert stalls.is_lock_timeout(wrapped(cause))


def test_an_unreachable_database_is_no_lock_timeout():
    assert not stalls.is_lock_timeout(OperationalError("connection refused"))


def test_a_room_is_refused_for_the_cool_off_after_a_timeout_then_tried_again(monkeypatch, settings):
    settings.DATABASE_LOCK_TIMEOUT_SECONDS = 1.0
    now = 1000.0
    monkeypatch.setattr(stalls.time, "monotonic", lambda: now)
    stalls.clear_for_testing()
    stalls.timed_out("locked")
    assert stalls.cooling_off("locked")
    # SQLite's lock is the whole database's; PostgreSQL's the room's row.
    assert stalls.cooling_off("free") == (connection.vendor == "sqlite")
    now += stalls.COOL_OFF_FACTOR * 1.0
    assert not stalls.cooling_off("locked")
    stalls.clear_for_testing()
