import sqlite3

import psycopg
import pytest
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.test import RequestFactory

from chat import outages


def wrapped(kind: type[DatabaseError], cause: Exception) -> DatabaseError:
    """What Django raises for cause: its own kind of error, from the driver's."""
    try:
        try:
            raise cause
        except Exception as driver_error:
            raise kind(str(driver_error)) from driver_error
    except DatabaseError as error:
        return error


def sqlite_error(tmp_path, sql: str) -> sqlite3.Error:
    """The error a real SQLite raises for sql, run while another connection holds the file."""
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    try:
        with pytest.raises(sqlite3.Error) as raised:
            other.execute(sql)
        return raised.value
    finally:
        other.close()
        holder.close()


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("connection refused"),
        InterfaceError("connection already closed"),
        OperationalError("lock timeout"),
    ],
)
def test_a_database_that_cannot_be_reached_is_an_outage(error):
    assert outages.is_outage(error)


@pytest.mark.parametrize(
    "cause",
    [
        psycopg.errors.AdminShutdown(),
        psycopg.errors.QueryCanceled(),
        psycopg.errors.LockNotAvailable(),
        psycopg.errors.TooManyConnections(),
        psycopg.errors.DiskFull(),
    ],
)
def test_postgresqls_unavailability_errors_are_outages(cause):
    assert outages.is_outage(wrapped(OperationalError, cause))


def test_a_read_only_replica_after_failover_is_an_outage():
    cause = psycopg.errors.ReadOnlySqlTransaction()
    assert outages.is_outage(wrapped(InternalError, cause))


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        (IntegrityError, psycopg.errors.UniqueViolation()),
        (DataError, psycopg.errors.StringDataRightTruncation()),
        (ProgrammingError, psycopg.errors.UndefinedTable()),
        (InternalError, psycopg.errors.InFailedSqlTransaction()),
        (DatabaseError, Exception("no kind")),
    ],
)
def test_a_bug_or_bad_input_is_no_outage(kind, cause):
    assert not outages.is_outage(wrapped(kind, cause))


def test_a_locked_sqlite_database_is_an_outage(tmp_path):
    locked = sqlite_error(tmp_path, "INSERT INTO t VALUES (1)")
    assert "database is locked" in str(locked)
    assert outages.is_outage(wrapped(OperationalError, locked))


@pytest.mark.django_db
def test_a_bad_query_is_no_outage():
    # SQLite says OperationalError (SQLITE_ERROR), PostgreSQL ProgrammingError: a bug either way.
    with pytest.raises(DatabaseError) as raised, connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert not outages.is_outage(raised.value)


@pytest.mark.django_db
def test_a_write_refused_by_a_read_only_postgresql_is_an_outage():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's read-only transaction, as a replica answers a write")
    with pytest.raises(InternalError) as raised, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute("INSERT INTO chat_room (name) VALUES ('x')")
    assert raised.value.__cause__.sqlstate == outages.READ_ONLY_SQLSTATE
    assert outages.is_outage(raised.value)


def test_http_answers_an_outage_with_503_and_a_bug_with_the_usual_500():
    middleware = outages.OutageMiddleware(lambda request: None)
    request = RequestFactory().get("/api/rooms/")
    assert middleware.process_exception(request, OperationalError("gone")).status_code == 503
    assert middleware.process_exception(request, IntegrityError("duplicate key")) is None
