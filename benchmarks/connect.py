"""Connecting many idle sockets: this chat beside the tutorial's consumer, in one run.

    .venv/bin/python -m benchmarks.connect [--sockets 10000] [--processes 2] [--rounds 1]

For each application in turn (this chat's stack, limits lifted as benchmarks.stack does,
then the tutorial's consumer, benchmarks.reference, on the same supervisor and daphne),
it starts the whole stack, opens --sockets WebSockets over loopback, at most
--in-flight handshakes at a time, in rooms of --room-size, and holds them open without
sending. Then it prints, side by side: the time to connect them all, connects/s, the
server processes' CPU seconds per 1,000 connects, and their resident memory per open
socket (KB, counted after --settle-seconds, once the servers' upkeep ran). --rounds
alternates the two applications that many times, so that a machine shared with other
work weighs on both alike. Every handshake has --connect-timeout seconds; the run stops
by itself. A socket that fails to open is counted, not retried.
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import websockets

from benchmarks.load import REFERENCE_APPLICATION
from benchmarks.stack import start_stack
from serving.supervisor import raise_open_file_limit

APPLICATIONS = {"chat": "mysite.asgi:application", "reference": REFERENCE_APPLICATION}
# Handshakes in flight at once: a browser-sized burst per process, not a SYN flood.
DEFAULT_IN_FLIGHT = 200
DEFAULT_ROOM_SIZE = 10
# Long enough for a connect that waits its turn behind thousands, short enough to end.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 60.0
# Quiet time before measuring memory: the servers' presence and upkeep rounds settle.
DEFAULT_SETTLE_SECONDS = 5.0
# Where each server's warnings go (shutting down 10,000 sockets says a lot): git ignores .run/.
LOG_DIR = Path(".run/bench")


async def open_sockets(ws_url: str, origin: str, args) -> tuple[list, int]:
    """Open args.sockets sockets, at most args.in_flight at a time; (opened, failures)."""
    slots = asyncio.Semaphore(args.in_flight)
    failures = 0

    async def open_one(number: int):
        nonlocal failures
        async with slots:
            try:
                return await websockets.connect(
                    f"{ws_url}/ws/chat/connect-{number // args.room_size}/",
                    origin=origin,
                    open_timeout=args.connect_timeout,
                    ping_interval=None,
                )
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                failures += 1
                return None

    opened = await asyncio.gather(*(open_one(number) for number in range(args.sockets)))
    return [ws for ws in opened if ws is not None], failures


async def measure(name: str, args) -> dict:
    """Start one application's stack, connect every socket, and return its figures."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"connect-{name}.log", "w") as log:
        stack = start_stack(args.processes, "pubsub", application=APPLICATIONS[name], stderr=log)
        try:
            await asyncio.sleep(args.settle_seconds)  # the servers' start-up work is done
            cpu_before, rss_before = stack.server_usage()
            started = time.perf_counter()
            sockets, failures = await open_sockets(stack.ws_url, stack.url, args)
            seconds = time.perf_counter() - started
            cpu_after, _ = stack.server_usage()
            await asyncio.sleep(args.settle_seconds)
            _, rss_after = stack.server_usage()
            still_open = sum(1 for ws in sockets if ws.state is websockets.protocol.State.OPEN)
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        finally:
            stack.stop()
    return {
        "application": name,
        "sockets": args.sockets,
        "failed": failures,
        "open_after_settle": still_open,
        "connect_seconds": round(seconds, 1),
        "connects_per_s": round(len(sockets) / seconds),
        "server_cpu_s_per_1000": round(1000 * (cpu_after - cpu_before) / max(len(sockets), 1), 2),
        "kb_per_socket": round((rss_after - rss_before) / 1024 / max(still_open, 1), 1),
    }


COLUMNS = {
    "connect s": "connect_seconds",
    "connects/s": "connects_per_s",
    "cpu s/1000": "server_cpu_s_per_1000",
    "KB/socket": "kb_per_socket",
    "failed": "failed",
    "open": "open_after_settle",
}


def print_side_by_side(rows: list[dict]):
    """Each round's figures, this chat's beside the reference's, and their ratio."""
    print(f"{'round':>5} {'figure':>12} {'chat':>10} {'reference':>10} {'ratio':>7}")
    for number in range(0, len(rows), 2):
        ours, theirs = rows[number], rows[number + 1]
        for title, key in COLUMNS.items():
            ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
            print(
                f"{number // 2 + 1:>5} {title:>12} {ours[key]:>10} {theirs[key]:>10} {ratio:>7.2f}"
            )


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="daphne processes")
    parser.add_argument("--in-flight", type=int, default=DEFAULT_IN_FLIGHT)
    parser.add_argument("--room-size", type=int, default=DEFAULT_ROOM_SIZE)
    parser.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_SECONDS)
    parser.add_argument("--settle-seconds", type=float, default=DEFAULT_SETTLE_SECONDS)
    parser.add_argument("--rounds", type=int, default=1, help="chat, reference: this many times")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    raise_open_file_limit()  # this process holds every client socket
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version[:6]}")
    print(f"{args.sockets} idle sockets, {args.processes} processes, {args.in_flight} in flight")
    rows = []
    for _ in range(args.rounds):
        for name in APPLICATIONS:
            rows.append(asyncio.run(measure(name, args)))
            print(json.dumps({"bench": "connect", "processes": args.processes, **rows[-1]}))
    print_side_by_side(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
