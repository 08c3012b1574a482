"""Rooms whose last store waited out the database's lock bound, refused at once for a while.

The sync consumers of a process share one thread, and a store waits for a locked room up
to DATABASE_LOCK_TIMEOUT_SECONDS, holding every other room of the process meanwhile. A
page retries a refused send every second, so without this a locked room would hold the
process most of the time. After one store timed out, the room's stores are refused at
once (store_failed, retried by the page) for COOL_OFF_FACTOR times the bound: a lock held
for long costs the process at most one bound in every 1 + COOL_OFF_FACTOR.

Explained in docs/faults.md, 'Services and processes'.
"""

import time

from django.conf import settings
from django.db import DatabaseError, connection

# The cool-off after a lock timeout, in lock bounds: 5 leaves the other rooms at least
# five sixths of the thread while one room stays locked, and a lock released meanwhile
# delays that room's messages by 5 s at most.
COOL_OFF_FACTOR = 5
# PostgreSQL's lock_timeout and statement_timeout (canceled statement) errors.
TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})
# On the sync thread only: the room (on SQLite, whose lock is the whole database's: "")
# and when its cool-off ends, by time.monotonic().
_cooling_off: dict[str, float] = {}


def _key(room_name: str) -> str:
    return "" if connection.vendor == "sqlite" else room_name


def is_lock_timeout(error: DatabaseError) -> bool:
    """Whether error is a wait given up at the bound (not the database being unreachable)."""
    if getattr(error.__cause__, "sqlstate", None) in TIMEOUT_SQLSTATES:
        return True
    return connection.vendor == "sqlite" and "database is locked" in str(error)


def cooling_off(room_name: str) -> bool:
    """Whether a store in this room would wait for a lock that just timed out: refuse it."""
    until = _cooling_off.get(_key(room_name))
    if until is None:
        return False
    if time.monotonic() < until:
        return True
    del _cooling_off[_key(room_name)]
    return False


def timed_out(room_name: str):
    """A store in this room waited out the lock bound: refuse its next ones for a while."""
    cool_off = COOL_OFF_FACTOR * settings.DATABASE_LOCK_TIMEOUT_SECONDS
    _cooling_off[_key(room_name)] = time.monotonic() + cool_off


def clear_for_testing():
    """Forget every cool-off."""
    _cooling_off.clear()
