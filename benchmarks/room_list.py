"""What the rooms sidebar's polling of GET /api/rooms/ costs the server.

Starts the real stack (benchmarks.stack: embedded Redis, a fresh SQLite database,
serving.supervisor with one daphne process, so its CPU is the one server's), fills
--rooms rooms with --messages messages each, and makes a user who has read every room
(a read position each, a few messages behind) with a logged-in session. Then, one phase
of --seconds each, one keep-alive connection asks as fast as it can, as that user:

- floor: GET /favicon.ico, the cheapest Django view (a redirect) through the same
  middleware, for what any request costs before the view does anything;
- rooms 200: GET /api/rooms/?room=... naming --recent rooms, as the page used to ask
  (the newest CHAT_ROOM_LIST_SIZE rooms, the named ones, the ones the user has read, with
  people online in each);
- sidebar 200: the same with ?online=0, as the sidebar asks now (no presence);
- sidebar 304: that with If-None-Match: the ETag of its 200, as a tab whose list has not
  changed asks (skipped when the server sends no ETag: older code).

Per phase it prints requests/s, the server's CPU milliseconds per request (its CPU time
over the phase divided by the requests) and the client's median latency; then what N
open tabs polling every P seconds cost the server in percent of one core: before (every
tab asks every P seconds and gets the whole list) and after (hidden tabs do not ask at
all; a visible tab whose list did not change gets a 304). `--before CHECKOUT` also
measures another checkout's server (say, main exported with `git archive`) the same way
and prints its rooms 200 beside ours.

    .venv/bin/python -m benchmarks.room_list [--rooms 50] [--idle-rooms 300000] [--seconds 5]
        [--before DIR]
    python3 dev.py bench room_list
"""

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from benchmarks.stack import ROOT, Stack, start_stack

DEFAULT_ROOMS = 50
DEFAULT_MESSAGES = 20
DEFAULT_SECONDS = 5.0
# The page names the rooms you opened last (sidebar.js: RECENT_ROOMS_MAX).
DEFAULT_RECENT = 10
# How far behind the user has read in each room: every room shows an unread count.
UNREAD_PER_ROOM = 3
POLL_SECONDS = 5  # sidebar.js: ROOMS_REFRESH_MS
TABS = (10, 100, 1000)
MS_PER_SECOND = 1000
PERCENT = 100

SEED = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from datetime import timedelta
from django.utils import timezone
from chat import activity, services
from chat.models import Message, Room

user = get_user_model().objects.create_user("bench", password="bench-only-password-42")
for number in range({rooms}):
    name = f"room-{{number:02d}}"
    for index in range({messages}):
        services.store_message(name, services.Author(f"user{{index % 5}}", user_id=None,
                               guest_key=f"k{{index % 5}}"), f"message {{index}} in {{name}}",
                               None)
    activity.mark_read(user, name, {messages} - {unread})
# Rooms nobody has spoken in lately (one message each, a day old): what a site that has
# run for years holds, and what no request for the list should read.
day_old = timezone.now() - timedelta(days=1)
for start in range(0, {idle_rooms}, 10000):
    names = [f"idle-{{n:07d}}" for n in range(start, min(start + 10000, {idle_rooms}))]
    Room.objects.bulk_create(Room(name=n, last_seq=1, last_message_at=day_old) for n in names)
    Message.objects.bulk_create(
        Message(room_id=n, seq=1, display_name="old", text="old", created=day_old)
        for n in names
    )
session = SessionStore()
session.update({{"_auth_user_id": str(user.pk),
                "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
                "_auth_user_hash": user.get_session_auth_hash()}})
session.create()
print(session.session_key)
"""


def seed(stack: Stack, root: Path, rooms: int, messages: int, idle_rooms: int) -> str:
    """Store the rooms' messages and the user's read positions; return a logged-in session key."""
    code = SEED.format(
        rooms=rooms, messages=messages, unread=UNREAD_PER_ROOM, idle_rooms=idle_rooms
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=root, env=stack.env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


def hammer(stack: Stack, path: str, headers: dict[str, str], seconds: float) -> dict:
    """Ask for path on one keep-alive connection for `seconds`; the server's cost per request."""
    address = urllib.parse.urlsplit(stack.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    statuses: dict[int, int] = {}
    latencies = []
    cpu_before, _ = stack.server_usage()
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < seconds:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        latencies.append(time.perf_counter() - now)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        last = (response, body)
    elapsed = time.perf_counter() - started
    cpu_after, _ = stack.server_usage()
    connection.close()
    response, body = last
    try:
        listed = len(json.loads(body)["rooms"])
    except (ValueError, KeyError, TypeError):
        listed = None
    return {
        "listed": listed,
        "requests": len(latencies),
        "per_second": len(latencies) / elapsed,
        "cpu_ms_per_request": (cpu_after - cpu_before) * MS_PER_SECOND / len(latencies),
        "median_ms": statistics.median(latencies) * MS_PER_SECOND,
        "statuses": statuses,
        "bytes": len(body),
        "etag": response.getheader("ETag"),
    }


def measure(root: Path, args) -> dict[str, dict]:
    """Every phase against the server of one checkout."""
    stack = start_stack(processes=1, layer="pubsub", root=root)
    try:
        key = seed(stack, root, args.rooms, args.messages, args.idle_rooms)
        cookie = {"Cookie": f"sessionid={key}"}
        recent = [("room", f"room-{number:02d}") for number in range(args.recent)]
        path = "/api/rooms/?" + urllib.parse.urlencode(recent)
        sidebar_path = "/api/rooms/?" + urllib.parse.urlencode([("online", "0"), *recent])
        hammer(stack, path, cookie, 1.0)  # warm up: connections, caches
        phases = {"floor": hammer(stack, "/favicon.ico", cookie, args.seconds)}
        phases["rooms 200"] = hammer(stack, path, cookie, args.seconds)
        phases["sidebar 200"] = hammer(stack, sidebar_path, cookie, args.seconds)
        etag = phases["sidebar 200"]["etag"]
        if etag:
            conditional = {**cookie, "If-None-Match": etag}
            phases["sidebar 304"] = hammer(stack, sidebar_path, conditional, args.seconds)
        return phases
    finally:
        stack.stop()


def cost_percent(tabs: int, poll_seconds: float, cpu_ms: float) -> float:
    """Percent of one core that `tabs` tabs asking every poll_seconds take."""
    return tabs / poll_seconds * cpu_ms / MS_PER_SECOND * PERCENT


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=DEFAULT_ROOMS)
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument("--recent", type=int, default=DEFAULT_RECENT)
    parser.add_argument(
        "--idle-rooms", type=int, default=0, help="rooms with one day-old message each, beside"
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--poll", type=float, default=POLL_SECONDS)
    parser.add_argument("--before", type=Path, help="another checkout to measure first")
    args = parser.parse_args()

    results = {}
    if args.before is not None:
        results["before"] = measure(args.before.resolve(), args)
    results["this"] = measure(ROOT, args)

    print(
        f"{args.rooms} rooms x {args.messages} messages and {args.idle_rooms} idle rooms, a"
        f" logged-in user who read the first all ({UNREAD_PER_ROOM} unread each),"
        f" {args.recent} recent rooms named; one daphne process"
    )
    print(f"{'server':<8}{'phase':<13}{'req/s':>8}{'CPU ms/req':>12}{'median ms':>11}"
          f"{'bytes':>8}  statuses")  # fmt: skip
    for server, phases in results.items():
        for phase, figures in phases.items():
            print(
                f"{server:<8}{phase:<13}{figures['per_second']:>8.0f}"
                f"{figures['cpu_ms_per_request']:>12.2f}{figures['median_ms']:>11.2f}"
                f"{figures['bytes']:>8}  {figures['statuses']}"
            )
    full = results.get("before", results["this"])["rooms 200"]["cpu_ms_per_request"]
    ours = results["this"]
    unchanged = ours.get("sidebar 304", ours["sidebar 200"])["cpu_ms_per_request"]
    changed = ours["sidebar 200"]["cpu_ms_per_request"]
    print(f"\nServer CPU, % of one core, for N open tabs polling every {args.poll:g} s:")
    print(f"{'tabs':>6}{'before: every tab, 200':>26}{'after: visible, 304':>22}"
          f"{'after: visible, 200':>22}{'after: hidden':>15}")  # fmt: skip
    for tabs in TABS:
        print(
            f"{tabs:>6}{cost_percent(tabs, args.poll, full):>25.1f}%"
            f"{cost_percent(tabs, args.poll, unchanged):>21.1f}%"
            f"{cost_percent(tabs, args.poll, changed):>21.1f}%{0:>14.1f}%"
        )
    for server, phases in results.items():
        for phase, figures in phases.items():
            print(
                json.dumps(
                    {
                        "server": server,
                        "phase": phase,
                        "rooms": args.rooms,
                        "idle_rooms": args.idle_rooms,
                        **figures,
                    }
                )
            )


if __name__ == "__main__":
    main()
