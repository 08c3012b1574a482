"""A client that floods 125-byte pings and never reads: the server's memory, bounded or not.

    python -m benchmarks.ping_flood [--seconds 15]

Runs the flood for a bounded time against three fresh single-process servers in turn:
plain daphne (the control), serving.chat_daphne with its ping limit lifted (so that only the
backlog bound holds the pongs), and serving.chat_daphne as configured. For each it prints the
server's resident memory before the flood, at its peak, at its end, and after the client
closed its socket, with how the socket ended.
"""

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from dataclasses import dataclass

import psutil

from benchmarks.stack import BENCH_SECRET_KEY, ROOT
from serving.embedded_redis import EmbeddedRedis, free_port
from serving.processes import stop_processes, wait_for_http

PING_PAYLOAD = b"p" * 125  # the largest a control frame carries
PINGS_PER_WRITE = 500
SETTLE_SECONDS = 3.0  # for daphne's once-a-second clean-up of closed connections
READY_TIMEOUT_SECONDS = 30.0
LIFTED = str(10**9)


class PingingClient:
    """A raw WebSocket client that sends masked pings and reads only when asked."""

    def __init__(self, host: str, port: int, path: str, origin: str):
        self.sock = socket.socket()
        # A tiny receive window: the kernel holds next to nothing for us either.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        key = b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n".encode()
        )
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head[:60]!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def send_pings(self, count: int, payload: bytes = PING_PAYLOAD):
        """Send `count` ping frames at once (masked with zeros, as RFC 6455 allows)."""
        frame = bytes([0x89, 0x80 | len(payload)]) + b"\0\0\0\0" + payload
        self.sock.sendall(frame * count)

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        first, second = self._read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exactly(8))
        return first & 0x0F, self._read_exactly(length)

    def read_until_close(self, timeout: float) -> tuple[int, int | None]:
        """Read for up to `timeout` s: (pongs read, the close code, or None if none came)."""
        self.sock.settimeout(timeout)
        pongs = 0
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == 0xA:
                    pongs += 1
                elif opcode == 0x8:
                    return pongs, struct.unpack("!H", payload[:2])[0]
        except (TimeoutError, EOFError, ConnectionError):
            return pongs, None

    def close(self):
        self.sock.close()


@dataclass
class Run:
    name: str
    pings: int
    rss_before: int
    rss_peak: int
    rss_end: int
    rss_closed: int
    ended: str


def start_server(module: str, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """One server process on a free loopback port, serving mysite.asgi."""
    port = free_port()
    command = [sys.executable, "-m", module, "-b", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*command, "mysite.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_http(f"http://127.0.0.1:{port}/chat/", process, READY_TIMEOUT_SECONDS)
    return process, port


def flood(name: str, module: str, env: dict[str, str], seconds: float) -> Run:
    """Ping without reading for `seconds` (or until the server cuts us off), measuring RSS."""
    process, port = start_server(module, env)
    try:
        server = psutil.Process(process.pid)
        rss_before = rss_peak = server.memory_info().rss
        client = PingingClient("127.0.0.1", port, "/ws/chat/flood/", f"http://127.0.0.1:{port}")
        client.sock.settimeout(seconds)
        pings, ended = 0, "open at the end"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                client.send_pings(PINGS_PER_WRITE)
            except OSError as error:  # cut off: reset, or it stopped reading our pings
                ended = f"cut off ({type(error).__name__})"
                break
            pings += PINGS_PER_WRITE
            rss_peak = max(rss_peak, server.memory_info().rss)
        rss_end = server.memory_info().rss
        if "Reset" not in ended:  # after a reset, what the kernel held for us is gone
            _, code = client.read_until_close(timeout=2.0)
            ended = f"closed with {code}" if code else ended
        client.close()
        time.sleep(SETTLE_SECONDS)
        rss_closed = server.memory_info().rss
        return Run(name, pings, rss_before, rss_peak, rss_end, rss_closed, ended)
    finally:
        stop_processes([process], 10.0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="chat-ping-flood-")
    with EmbeddedRedis() as redis_server:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="mysite.settings",
            DJANGO_DEBUG="false",
            DJANGO_SECRET_KEY=BENCH_SECRET_KEY,
            DJANGO_ALLOWED_HOSTS="127.0.0.1",
            DJANGO_SECURE_SSL_REDIRECT="false",
            REDIS_URL=redis_server.url,
            DATABASE_URL=f"sqlite:///{workdir}/flood.sqlite3",
            DJANGO_LOG_LEVEL="WARNING",
            CHAT_LOG_LEVEL="WARNING",
        )
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
        subprocess.run(migrate, cwd=ROOT, env=env, check=True)
        lifted = {**env, "CHAT_PING_BURST": LIFTED, "CHAT_PING_PER_SECOND": LIFTED}
        runs = [
            flood("daphne (control)", "daphne", env, args.seconds),
            flood(
                "serving.chat_daphne, ping limit lifted",
                "serving.chat_daphne",
                lifted,
                args.seconds,
            ),
            flood("serving.chat_daphne", "serving.chat_daphne", env, args.seconds),
        ]
    mib = 1024 * 1024
    print(f"{args.seconds:.0f} s of 125-byte pings, never read; server RSS in MiB")
    header = ("server", "pings sent", "before", "peak", "end", "closed", "socket")
    print("{:34} {:>10} {:>7} {:>7} {:>7} {:>7}  {}".format(*header))
    for run in runs:
        rss = [run.rss_before, run.rss_peak, run.rss_end, run.rss_closed]
        print(
            "{:34} {:>10,} {:>7.0f} {:>7.0f} {:>7.0f} {:>7.0f}  {}".format(
                run.name, run.pings, *(value / mib for value in rss), run.ended
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
