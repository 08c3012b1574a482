"""Soak: steady chat for a while, with Redis restarted and a server process killed midway.

    python3 dev.py bench --soak 600 --rooms 10 --clients 10 --rates 1

Clients behave like the room page: they reconnect with backoff, ask for `?after=<last id>`,
keep unacknowledged sends (with their client_id) and send them again after a reconnect.
At a third of the run Redis is stopped for 5 s and started again, empty; at two thirds
one daphne process is killed with SIGKILL (serving.supervisor starts another). At the end each
client's messages are compared with what the room stored: expected, received, lost,
duplicated, per client; and the server's memory at start and end.
"""

import asyncio
import json
import random
import signal
import time
import urllib.request
from dataclasses import dataclass, field

import websockets

from benchmarks.stack import Stack, start_stack

REDIS_OUTAGE_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 5.0
DRAIN_SECONDS = 15.0
API_PAGE = 500


# Refusals of a message that was not stored, which the room page sends again (docs/protocol.md).
RESENT_ERRORS = ("overloaded", "store_failed")


@dataclass
class SoakClient:
    """One socket that reconnects and catches up, as chat/static/chat/room.js does."""

    stack: Stack
    room: str
    number: int
    last_id: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    reconnects: int = 0
    pending: dict[str, str] = field(default_factory=dict)  # client_id -> frame
    sent: int = 0
    ws: websockets.ClientConnection | None = None

    async def stay_connected(self, stop: asyncio.Event):
        failures = 0
        while not stop.is_set():
            url = f"{self.stack.ws_url}/ws/chat/{self.room}/?after={self.last_id}"
            try:
                async with websockets.connect(url, origin=self.stack.url, open_timeout=30) as ws:
                    self.ws, failures = ws, 0
                    for frame in list(self.pending.values()):
                        await ws.send(frame)
                    async for raw in ws:
                        frame = json.loads(raw)
                        self._receive(frame)
                        marker = frame.get("catch_up", {})
                        if marker.get("recovered") is False:
                            # Left out by the socket: read over HTTP, while the socket's
                            # later frames wait unread, as the page holds them.
                            await self._read_over_http(marker["after"], marker["until"])
            except (TimeoutError, OSError, websockets.WebSocketException):
                pass
            self.ws = None
            if stop.is_set():
                return
            self.reconnects += 1
            ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2**failures)
            failures += 1
            await asyncio.sleep(ceiling / 2 + random.random() * ceiling / 2)

    async def _read_over_http(self, after: int, until: int):
        async for page in pages(self.stack, self.room, after):
            for message in page:
                if message["id"] <= until:
                    self._receive(message)
            if not page or page[-1]["id"] >= until:
                return

    def _receive(self, frame: dict):
        error = frame.get("error", {})
        if error.get("code") in RESENT_ERRORS and error.get("client_id") in self.pending:
            # Not stored: sent again after the hint (1 s for a store that failed), as the page does.
            delay = error.get("retry_after", 1.0)
            asyncio.get_running_loop().call_later(delay, self._resend, error["client_id"])
        if "message" not in frame:
            return
        self.pending.pop(frame.get("client_id") or "", None)
        message_id = frame["id"]
        if message_id in self.seen:
            own_retry = (frame.get("client_id") or "").startswith(f"{self.room}-{self.number}-")
            self.duplicates += 0 if own_retry else 1
            return
        self.seen.add(message_id)
        self.last_id = max(self.last_id, message_id)

    def _resend(self, client_id: str):
        """Send a refused message again; on a closed socket it stays pending for the reconnect."""
        if client_id in self.pending and self.ws is not None:
            sending = asyncio.ensure_future(self.ws.send(self.pending[client_id]))
            sending.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def talk(self, rate: float, stop: asyncio.Event):
        while not stop.is_set():
            await asyncio.sleep(random.expovariate(rate))
            client_id = f"{self.room}-{self.number}-{self.sent}"
            self.sent += 1
            frame = json.dumps({"message": f"soak {client_id}", "client_id": client_id})
            self.pending[client_id] = frame
            if self.ws is not None:
                try:
                    await self.ws.send(frame)
                except websockets.WebSocketException:
                    pass  # sent again after the reconnect


async def pages(stack: Stack, room: str, after: int):
    """The room's messages after `after`, page by page, from the HTTP endpoint."""
    while after is not None:
        url = f"{stack.url}/chat/{room}/messages/?after={after}&limit={API_PAGE}"
        page = await asyncio.to_thread(lambda u=url: json.load(urllib.request.urlopen(u)))
        yield page["messages"]
        after = page["next_after"]


async def stored_ids(stack: Stack, room: str) -> set[int]:
    """Every message id the room stored, through the HTTP endpoint."""
    ids = set()
    async for page in pages(stack, room, 0):
        ids.update(message["id"] for message in page)
    return ids


async def inject_faults(stack: Stack, seconds: float, log: list[str]):
    await asyncio.sleep(seconds / 3)
    log.append(f"{time.strftime('%X')} stopping Redis for {REDIS_OUTAGE_SECONDS:g} s")
    await asyncio.to_thread(stack.redis.stop)
    await asyncio.sleep(REDIS_OUTAGE_SECONDS)
    await asyncio.to_thread(stack.redis.start)
    log.append(f"{time.strftime('%X')} Redis is back, empty")
    await asyncio.sleep(seconds / 3 - REDIS_OUTAGE_SECONDS)
    victim = stack.server_processes()[0]
    victim.send_signal(signal.SIGKILL)
    log.append(f"{time.strftime('%X')} killed daphne pid {victim.pid} with SIGKILL")


async def run_soak(args) -> dict:
    """Run the soak; print per-client figures; return the totals."""
    stack = start_stack(args.processes, args.layer)
    try:
        _, rss_start = stack.server_usage()
        rooms = [f"soak-{room}" for room in range(args.rooms)]
        clients = [SoakClient(stack, room, n) for room in rooms for n in range(args.clients)]
        stop_talking, stop_listening, faults = asyncio.Event(), asyncio.Event(), []
        listeners = [asyncio.create_task(c.stay_connected(stop_listening)) for c in clients]
        await asyncio.sleep(2)
        talkers = [asyncio.create_task(c.talk(args.rates[0], stop_talking)) for c in clients]
        await inject_faults(stack, args.soak, faults)
        await asyncio.sleep(args.soak / 3)
        stop_talking.set()
        await asyncio.gather(*talkers)
        await asyncio.sleep(DRAIN_SECONDS)
        _, rss_end = stack.server_usage()
        stop_listening.set()
        for client in clients:
            if client.ws is not None:
                await client.ws.close()
        await asyncio.gather(*listeners, return_exceptions=True)

        expected = {room: await stored_ids(stack, room) for room in rooms}
        print("\n".join(faults))
        print(f"{'client':>14} {'sent':>6} {'expected':>9} {'received':>9} {'lost':>5} "
              f"{'dup':>4} {'unsent':>7} {'reconnects':>11}")  # fmt: skip
        totals = {"expected": 0, "received": 0, "lost": 0, "duplicates": 0, "unsent": 0}
        for client in clients:
            want = expected[client.room]
            got = client.seen & want
            row = {
                "expected": len(want),
                "received": len(got),
                "lost": len(want - client.seen),
                "duplicates": client.duplicates,
                "unsent": len(client.pending),
            }
            for key in totals:
                totals[key] += row[key]
            print(f"{client.room + '/' + str(client.number):>14} {client.sent:>6} "
                  f"{row['expected']:>9} {row['received']:>9} {row['lost']:>5} "
                  f"{row['duplicates']:>4} {row['unsent']:>7} {client.reconnects:>11}")  # fmt: skip
        return {
            **totals,
            "clients": len(clients),
            "seconds": args.soak,
            "server_rss_start_mb": round(rss_start / 2**20, 1),
            "server_rss_end_mb": round(rss_end / 2**20, 1),
        }
    finally:
        stack.stop()
