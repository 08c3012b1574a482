"""The whole server stack for a benchmark: embedded Redis, a fresh database, N processes.

The database is a fresh SQLite file, or with `database="postgres"` a fresh database on the
PostgreSQL server of BENCH_POSTGRES_URL (made, then dropped when the stack stops).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from serving.embedded_redis import EmbeddedRedis, free_port
from serving.processes import wait_for_http

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 30.0
BENCH_SECRET_KEY = "benchmark-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
# The PostgreSQL server (and a role that may create databases) for --database postgres:
# Debian's, as .ci/run and the test suite's PostgreSQL leg use it.
DEFAULT_POSTGRES_URL = "postgres://chat:chat@127.0.0.1:5432/chat"
DATABASES = ("sqlite", "postgres")


@dataclass
class Stack:
    """A running stack; `url` is its HTTP base, `server` the `serving.supervisor` parent process."""

    url: str
    server: subprocess.Popen
    redis: EmbeddedRedis
    workdir: str
    env: dict[str, str] = field(repr=False)
    postgres_database: str | None = None  # made for this stack, dropped with it

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://")

    def server_processes(self) -> list[psutil.Process]:
        """The daphne children (not the supervising parent)."""
        return psutil.Process(self.server.pid).children()

    def server_usage(self) -> tuple[float, int]:
        """Total CPU seconds and resident bytes of the daphne children."""
        cpu, rss = 0.0, 0
        for process in self.server_processes():
            try:
                times = process.cpu_times()
                cpu += times.user + times.system
                rss += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return cpu, rss

    def stop(self):
        """Stop the servers, Redis, and remove the database."""
        if self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.postgres_database is not None:
            drop_postgres_database(self.postgres_database)


def _postgres_admin() -> psycopg.Connection:
    url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True)


def create_postgres_database() -> tuple[str, str]:
    """A new, empty database on the benchmark's PostgreSQL server: (its name, its URL)."""
    name = f"chat_bench_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    return name, url.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(name: str):
    """Drop a database create_postgres_database made, whoever is still connected."""
    with _postgres_admin() as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# Every simulated client comes from one address without a session: lift the limits per
# address and per person (chat.limits), or the load would be refused.
LIMITS_LIFTED = {
    "CHAT_LIMIT_SOCKETS_PER_ADDRESS": "1000000/minute",
    "CHAT_LIMIT_MESSAGES_PER_PERSON": "1000000/second",
    "CHAT_LIMIT_NEW_ROOMS_PER_ADDRESS": "1000000/minute",
    # The soak's clients check what they received against the messages endpoint.
    "CHAT_LIMIT_API_PER_ADDRESS": "1000000/minute",
    # Every benchmark client is one address (and many are one guest session).
    "CHAT_LIMIT_OPEN_SOCKETS_PER_PERSON": "1000000",
    "CHAT_LIMIT_OPEN_SOCKETS_PER_ADDRESS": "1000000",
    "CHAT_LIMIT_ROOM_LIST_PER_ADDRESS": "1000000/minute",
    "CHAT_LIMIT_READ_REPORTS_PER_PERSON": "1000000/minute",
}


def start_stack(
    processes: int,
    layer: str,
    extra_env: dict[str, str] | None = None,
    root: Path = ROOT,
    application: str = "mysite.asgi:application",
    database: str = "sqlite",
    stderr=None,
) -> Stack:
    """Start Redis, migrate a fresh database (`database`: one of DATABASES), serve on a free port.

    `root` is the checkout whose server runs: another one compares old code with new;
    `application` another ASGI application (benchmarks.reference, the tutorial's);
    `stderr` a file for the servers' log lines (by default this process's stderr).
    """
    redis_server = EmbeddedRedis().start()
    workdir = tempfile.mkdtemp(prefix="chat-bench-")
    postgres_database, database_url = None, f"sqlite:///{workdir}/bench.sqlite3"
    if database == "postgres":
        postgres_database, database_url = create_postgres_database()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=BENCH_SECRET_KEY,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="false",
        REDIS_URL=redis_server.url,
        DATABASE_URL=database_url,
        CHAT_CHANNEL_LAYER=layer,
        CHAT_LOG_LEVEL="WARNING",
        DJANGO_LOG_LEVEL="WARNING",
        **LIMITS_LIFTED,
    )
    env.update(extra_env or {})
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
    subprocess.run(migrate, cwd=root, env=env, check=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.supervisor", "--processes", str(processes),
         "--bind", f"127.0.0.1:{port}", "--application", application,
         "--", "--verbosity", "0"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip
    stack = Stack(f"http://127.0.0.1:{port}", server, redis_server, workdir, env, postgres_database)
    try:
        # Every child must be up, not only the first to answer.
        wait_for_http(
            stack.url + "/chat/",
            server,
            READY_TIMEOUT_SECONDS,
            also=lambda: len(stack.server_processes()) == processes,
        )
    except BaseException:
        stack.stop()
        raise
    return stack
