"""Overload benchmark: offered far past the knee for a while, then everything retried in.

    python3 dev.py bench overload                          # 10 x 10 at 20,000/s for 30 s
    python3 dev.py bench overload --rate 10 --seconds 10 --no-reference

Starts the whole stack (benchmarks.stack, limits lifted, the socket's own bucket too: a
client sends --rate messages a second, more than a person can) and connects rooms x
clients sockets. For --seconds each client "types" --rate messages a second; then it
types no more, and the run waits (at most --drain-seconds) until every typed message
reached every socket of its room. Each client behaves as the room page does
(chat/static/chat/room.js): a message refused with `overloaded` is sent again, with its
client_id, after the error's retry_after (the server's slot for it, 15 s at most);
meanwhile the client sends nothing, and then what it holds goes in the order typed. So
nothing typed may be lost or stored twice.

It prints, beside the tutorial's consumer (benchmarks.reference: stores nothing, refuses
nothing) on the same machine in the same run: the p99 of accepted messages (from the
send that was accepted to each arrival), of typed messages (from the first send, retries
included), refusals by code, deliveries lost and duplicated, arrivals out of the order
their sender typed them, and how long the drain took.
"""

import argparse
import asyncio
import json
import math
import os
import platform
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import websockets

from benchmarks.stack import start_stack
from serving.supervisor import raise_open_file_limit

APPLICATION = "mysite.asgi:application"
REFERENCE_APPLICATION = "benchmarks.reference:application"
CONNECT_TIMEOUT_SECONDS = 30
DRAIN_POLL_SECONDS = 0.5
# As the room page (room.js: BUSY_RETRY_MAX_MS).
BUSY_RETRY_MAX_SECONDS = 15.0
# Refusals the page sends again after RETRY_SECONDS (room.js: RATE_LIMITED_RETRY_MS): a
# store that met another process's SQLite write lock for DATABASE_LOCK_TIMEOUT_SECONDS.
RETRIED_AS_THE_PAGE_DOES = frozenset({"store_failed", "rate_limited"})
RETRY_SECONDS = 1.0
# The per-socket bucket, lifted: the clients offer more than a person types on purpose.
BUCKET_LIFTED = {"CHAT_RATE_BURST": "1000000", "CHAT_RATE_PER_SECOND": "1000000"}


@dataclass
class Client:
    """One socket, sending as the room page does: an ordered outbox, a pause when busy."""

    room: int
    index: int
    ws: websockets.ClientConnection
    outbox: dict[str, bool] = field(default_factory=dict)  # client_id -> sent, in typed order
    busy: asyncio.TimerHandle | None = None
    last_seen: dict[str, int] = field(default_factory=dict)  # sender -> its last number seen


@dataclass
class Run:
    """What was typed, sent, refused and delivered in one run."""

    typed_at: dict[str, float] = field(default_factory=dict)  # client_id -> first send
    sent_at: dict[str, float] = field(default_factory=dict)  # client_id -> latest send
    arrivals: Counter = field(default_factory=Counter)  # (client_id, socket) -> count
    accepted_latencies: list[float] = field(default_factory=list)
    typed_latencies: list[float] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # error code -> count
    out_of_order: int = 0
    sends: int = 0
    # Gaps the socket left to the client ({"catch_up": {"recovered": false}}), and the
    # deliveries read for them over HTTP, as the page reads them.
    gaps_read_over_http: int = 0
    read_over_http: int = 0


class Overload:
    """rooms x clients sockets typing at a rate, retrying refusals as the page does."""

    def __init__(self, url: str, rooms: int, clients: int):
        self.url, self.rooms, self.clients = url, rooms, clients
        self.sockets: list[Client] = []
        self.run = Run()

    async def connect(self):
        """Open every socket, a room at a time."""
        for room in range(self.rooms):
            opened = await asyncio.gather(*(self._open(room) for _ in range(self.clients)))
            self.sockets.extend(Client(room, index, ws) for index, ws in enumerate(opened))

    async def _open(self, room: int) -> websockets.ClientConnection:
        return await websockets.connect(
            f"{self.url.replace('http://', 'ws://')}/ws/chat/overload-{room}/",
            origin=self.url,
            open_timeout=CONNECT_TIMEOUT_SECONDS,
            ping_interval=None,
        )

    def send(self, client: Client, client_id: str):
        """Send one message of the outbox (now, or in its turn after a busy pause)."""
        if client.busy is not None:
            client.outbox[client_id] = False
            return
        now = time.perf_counter()
        self.run.typed_at.setdefault(client_id, now)
        self.run.sent_at[client_id] = now
        self.run.sends += 1
        client.outbox[client_id] = True
        frame = json.dumps({"message": client_id, "client_id": client_id})
        sending = asyncio.ensure_future(client.ws.send(frame))
        sending.add_done_callback(_sent)

    def overloaded(self, client: Client, error: dict):
        """The page's answer to `overloaded`: hold everything, then send it again in order."""
        client.outbox[error["client_id"]] = False
        if client.busy is not None:
            return
        wait = min(error["retry_after"], BUSY_RETRY_MAX_SECONDS)
        client.busy = asyncio.get_running_loop().call_later(wait, self._after_busy, client)

    def _retry(self, client: Client, client_id: str):
        if client.outbox.get(client_id) is False:
            self.send(client, client_id)

    def _after_busy(self, client: Client):
        client.busy = None
        for client_id, sent in list(client.outbox.items()):
            if not sent:
                self.send(client, client_id)

    async def type_at_rate(self, client: Client, rate: float, seconds: float):
        """Type `rate` messages a second for `seconds`, on a fixed schedule."""
        interval = 1 / rate
        next_send = time.perf_counter() + interval * random.random()
        end = time.perf_counter() + seconds
        number = 0
        while next_send < end:
            await asyncio.sleep(max(next_send - time.perf_counter(), 0))
            self.send(client, f"{client.room}-{client.index}-{number}")
            number += 1
            next_send += interval

    async def receive_forever(self, client: Client):
        """Record what reaches one socket; answer refusals of its own messages."""
        run = self.run
        async for raw in client.ws:
            frame = json.loads(raw)
            if "error" in frame:
                run.refused[frame["error"]["code"]] += 1
                if frame["error"]["code"] == "overloaded":
                    self.overloaded(client, frame["error"])
                elif frame["error"]["code"] in RETRIED_AS_THE_PAGE_DOES:
                    client.outbox[frame["error"]["client_id"]] = False
                    loop = asyncio.get_running_loop()
                    loop.call_later(RETRY_SECONDS, self._retry, client, frame["error"]["client_id"])
                continue
            catch_up = frame.get("catch_up")
            if catch_up is not None and not catch_up["recovered"]:
                # Left to the client: read (after, until] over HTTP, as the page does.
                run.gaps_read_over_http += 1
                for client_id in await self._read_gap(client, catch_up["after"], catch_up["until"]):
                    run.read_over_http += 1
                    self._arrived(client, client_id)
                continue
            if "message" not in frame or frame.get("history"):
                continue
            self._arrived(client, frame["message"])

    def _arrived(self, client: Client, client_id: str):
        run = self.run
        now = time.perf_counter()
        run.arrivals[(client_id, client.index)] += 1
        if run.arrivals[(client_id, client.index)] == 1:
            run.accepted_latencies.append(now - run.sent_at[client_id])
            run.typed_latencies.append(now - run.typed_at[client_id])
        sender, number = client_id.rsplit("-", 1)
        if int(number) <= client.last_seen.get(sender, -1):
            run.out_of_order += 1
        client.last_seen[sender] = int(number)
        if client_id in client.outbox and sender == f"{client.room}-{client.index}":
            del client.outbox[client_id]

    async def _read_gap(self, client: Client, after: int, until: int) -> list[str]:
        """The texts of the room's messages (after, until], read page by page over HTTP."""
        texts = []
        while after < until:
            url = f"{self.url}/chat/overload-{client.room}/messages/?after={after}&limit=500"
            page = await asyncio.to_thread(_get_json, url)
            texts += [message["message"] for message in page["messages"] if message["id"] <= until]
            if page["next_after"] is None:
                break
            after = page["next_after"]
        return texts

    def missing(self) -> int:
        """Deliveries of every typed message that have not arrived yet."""
        return len(self.run.typed_at) * self.clients - len(self.run.arrivals)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _sent(sending: asyncio.Future):
    """A send to a socket that closed (as the run ends, with retries still due) is no news."""
    if not sending.cancelled():
        sending.exception()


def percentile_ms(values: list[float], fraction: float) -> float | None:
    """The fraction's percentile of values, in ms to 0.1."""
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)], 1)


async def run_overload(args, application: str) -> dict:
    """One run on a fresh stack; its figures."""
    stack = start_stack(args.processes, "pubsub", BUCKET_LIFTED, application=application)
    try:
        load = Overload(stack.url, args.rooms, args.clients)
        await load.connect()
        receivers = [asyncio.create_task(load.receive_forever(c)) for c in load.sockets]
        cpu_before, _ = stack.server_usage()
        started = time.perf_counter()
        await asyncio.gather(*(load.type_at_rate(c, args.rate, args.seconds) for c in load.sockets))
        typed_for = time.perf_counter() - started
        delivered_while_typing = len(load.run.arrivals)
        cpu_after, rss = stack.server_usage()
        drain_started = time.perf_counter()
        deadline = drain_started + args.drain_seconds
        while load.missing() > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        drained_in = time.perf_counter() - drain_started
        closed_early = Counter(c.ws.close_code for c in load.sockets if c.ws.close_code)
        for task in receivers:
            task.cancel()
        await asyncio.gather(*(c.ws.close() for c in load.sockets), return_exceptions=True)
        run = load.run
        return {
            "offered_per_s": round(args.rooms * args.clients**2 * args.rate),
            "typed": len(run.typed_at),
            "sends": run.sends,
            "delivered_per_s_while_typing": round(delivered_while_typing / typed_for),
            "accepted_p50_ms": percentile_ms(run.accepted_latencies, 0.5),
            "accepted_p99_ms": percentile_ms(run.accepted_latencies, 0.99),
            "typed_p99_ms": percentile_ms(run.typed_latencies, 0.99),
            "refused": dict(run.refused),
            "lost": load.missing(),
            "duplicates": sum(count - 1 for count in run.arrivals.values() if count > 1),
            "out_of_order": run.out_of_order,
            "gaps_read_over_http": run.gaps_read_over_http,
            "read_over_http": run.read_over_http,
            "drained_in_s": round(drained_in, 1),
            "closed_by_server": dict(closed_early),
            "server_cpu_percent": round(100 * (cpu_after - cpu_before) / typed_for),
            "server_rss_mb": round(rss / 2**20, 1),
        }
    finally:
        stack.stop()


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10, help="clients per room")
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s each client types")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they type")
    parser.add_argument(
        "--drain-seconds", type=float, default=120.0, help="then wait at most this long"
    )
    parser.add_argument("--processes", type=int, default=2, help="daphne processes")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the tutorial's consumer's run"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    raise_open_file_limit()
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    setup = {"rooms": args.rooms, "clients": args.clients, "processes": args.processes}
    runs = [("overload", APPLICATION)]
    if not args.no_reference:
        runs.append(("overload-reference", REFERENCE_APPLICATION))
    for name, application in runs:
        result = asyncio.run(run_overload(args, application))
        print(json.dumps({"bench": name, **setup, "seconds": args.seconds, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
