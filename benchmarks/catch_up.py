"""How much big catch-ups in one room delay the messages of another room.

Starts the stack (embedded Redis, a fresh SQLite database, `serving.supervisor`) from a checkout
(this one, or `--root` another speaking the same protocol; code from before the bounded
recovery is measured with its own copy of this file), stores --messages messages
of --text-chars characters in the room "big" (the report's 11,604 of about 4 KB: 46.7 MB),
then measures the echo latency of one client in the room "probe", which sends a message
every PROBE_INTERVAL_SECONDS and times each until its own echo:

- alone, for --baseline-seconds;
- while --catch-ups clients (in a process of their own, so that their reading does not
  slow the probe's loop) join "big" with ?after=0 and read all of it as the page does:
  the socket recovers at most CHAT_RECOVERY_LIMIT messages and says the rest was not
  recovered ({"catch_up": {"recovered": false, "after": A, "until": S}}), and the
  client reads (A, S] from GET /chat/big/messages/?after=, --page messages a page (the
  page asks for the endpoint's default, 100), one request after another; until every one
  has every message or --timeout passes. The benchmark stack lifts the endpoint's
  per-address limit (benchmarks.stack), as every reader comes from one address.

With --control, a third phase (or the second, with --control-first) is the control: the
same readers read the same bodies (encoded from the same stored messages by the same
chat.protocol functions, in the same pages), but from a plain `websockets` server in a
process of its own, not from the chat server: its socket says the same marker and its
HTTP answers the same pages, one page at a time, evenly spaced so that all pages take as
long as the real catch-ups did in the same run (or --control-seconds). The probe still
talks to the chat server, which then has nothing to do but the probe: what the probe
loses during the control is the machine's doing (the readers' and the sender's CPU on
shared cores); what it loses beyond that during the real catch-ups is the chat server's.

Prints p50, p99 and max of each phase in milliseconds, the CPU seconds each party used in
each phase, then one JSON line. Run from the project root:

    .venv/bin/python -m benchmarks.catch_up [--root /tmp/old-checkout] [--control]
"""

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psutil
import websockets

from benchmarks.stack import ROOT, Stack, start_stack
from serving.embedded_redis import free_port

BIG_ROOM = "big"
PROBE_ROOM = "probe"
# Under the per-connection rate limit (10 a second), so the probe is never refused.
PROBE_INTERVAL_SECONDS = 0.15
PROBE_TIMEOUT_SECONDS = 30.0
# Frames of ~4 KB; catch-up frames far bigger than this one are not expected.
MAX_FRAME_BYTES = 1024 * 1024


def seed(stack: Stack, root: Path, messages: int, text_chars: int):
    """Store `messages` messages in the big room, in bulk, in the stack's database."""
    code = f"""
from chat.models import Message, Room
room = Room.objects.create(name={BIG_ROOM!r}, last_seq={messages})
text = "x" * {text_chars}
seqs = range(1, {messages} + 1)
Message.objects.bulk_create(
    (Message(room=room, seq=seq, display_name="seeder", text=text) for seq in seqs),
    batch_size=1000,
)
"""
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=root, env=stack.env, check=True
    )


async def probe(ws_url: str, origin: str, stop: asyncio.Event) -> list[tuple[float, float]]:
    """(sent at, echo latency in ms) of each message of one probe-room client, until stop."""
    samples = []
    async with websockets.connect(f"{ws_url}/ws/chat/{PROBE_ROOM}/", origin=origin) as ws:
        number = 0
        while not stop.is_set():
            client_id = f"probe-{number}"
            started = time.perf_counter()
            await ws.send(json.dumps({"message": "ping", "client_id": client_id}))
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                while json.loads(await ws.recv()).get("client_id") != client_id:
                    pass
            if number:  # the first is a warm-up: the socket's first message pays for setup
                samples.append((started, (time.perf_counter() - started) * 1000))
            number += 1
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
    return samples


def last_id_in(raw: str) -> int:
    """The id of the last message in a frame or page, without json.loads (the readers' CPU
    is the probe's: parsing 4 KB frames would take it). In JSON text only a key has an
    unescaped quote before `id":`."""
    tail = raw[raw.rindex('"id": ') + len('"id": ') :]
    return int(tail[: min(tail.index(","), tail.index("}"))])


async def read_over_http(connection: http.client.HTTPConnection, after: int, until: int, page: int):
    """Read (after, until] from the messages endpoint, page after page, as the page does."""
    while after < until:

        def get(after=after) -> str:
            path = f"/chat/{BIG_ROOM}/messages/?after={after}&limit={page}"
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read().decode()
            if response.status != 200:
                raise RuntimeError(f"messages endpoint answered {response.status}: {body[:200]}")
            return body

        body = await asyncio.to_thread(get)
        if '"id": ' not in body:
            return
        after = last_id_in(body)


async def catch_up_fully(ws_url: str, origin: str | None, messages: int, page: int) -> int:
    """Read the big room from the start until every message came, as the page does.

    What the socket leaves out is read over HTTP; a close for reading too slowly (4408)
    is followed by a reconnect with ?after=. Returns how many messages it has.
    """
    server = urlsplit(ws_url)
    connection = http.client.HTTPConnection(server.hostname, server.port)
    last_id = 0
    try:
        while last_id < messages:
            url = f"{ws_url}/ws/chat/{BIG_ROOM}/?after={last_id}"
            try:
                async with websockets.connect(url, origin=origin, max_size=MAX_FRAME_BYTES) as ws:
                    while last_id < messages:
                        raw = await ws.recv()
                        if raw.startswith('{"message"'):
                            last_id = max(last_id, last_id_in(raw))
                        elif raw.startswith('{"catch_up"'):
                            marker = json.loads(raw)["catch_up"]
                            if not marker["recovered"]:
                                until = marker["until"]
                                await read_over_http(connection, marker["after"], until, page)
                                last_id = max(last_id, marker["until"])
            except websockets.ConnectionClosed:
                continue
    finally:
        connection.close()
    return last_id


def run_catch_ups(
    ws_url: str, origin: str | None, count: int, messages: int, page: int, timeout: float, results
):
    """In a process of its own: `count` catch-ups at once; puts (seconds, got, CPU s) in results."""

    async def all_of_them():
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(catch_up_fully(ws_url, origin, messages, page))
            for _ in range(count)
        ]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        received = [task.result() for task in done if task.exception() is None]
        return time.perf_counter() - started, received

    seconds, received = asyncio.run(all_of_them())
    results.put((seconds, received, time.process_time()))


def stored_pages(env: dict[str, str], page_size: int) -> list[str]:
    """The big room's messages as the messages endpoint answers them, `page_size` a page."""
    os.environ.update(env)
    import django

    django.setup()
    from chat import protocol, services

    messages = services.messages_after(BIG_ROOM, 0)
    return [
        json.dumps(
            {
                "room": BIG_ROOM,
                "messages": [protocol.message_fields(m) for m in messages[at : at + page_size]],
                "next_after": at + page_size if at + page_size < len(messages) else None,
            }
        )
        for at in range(0, len(messages), page_size)
    ]


def serve_control(env: dict[str, str], port: int, page_size: int, interval: float, ready):
    """In a process of its own: serve the big room's catch-up, paced, until killed.

    Not the chat server: the socket sends the marker at once, and the HTTP pages are
    pre-encoded, no database, no Django on the sending path; one page at a time for all
    readers, at most one every `interval` seconds. No compression, as daphne negotiates
    none.
    """
    from chat import protocol

    pages = stored_pages(env, page_size)
    newest = sum(body.count('"id": ') for body in pages)

    async def serve():
        loop = asyncio.get_running_loop()
        turns: asyncio.Queue = asyncio.Queue()

        async def lane():
            granted = 0.0
            while True:
                turn = await turns.get()
                await asyncio.sleep(max(0.0, granted + interval - time.perf_counter()))
                granted = time.perf_counter()
                turn.set_result(None)

        async def page(connection, request):
            if "/messages/" not in request.path:
                return None  # the socket's handshake
            turn = loop.create_future()
            turns.put_nowait(turn)
            await turn
            after = int(parse_qs(urlsplit(request.path).query)["after"][0])
            response = connection.respond(200, pages[after // page_size])
            response.headers["Content-Type"] = "application/json"
            return response

        async def catch_up(ws):
            after = int(parse_qs(urlsplit(ws.request.path).query).get("after", ["0"])[0])
            if after < newest:
                await ws.send(protocol.catch_up_frame(False, after, newest))
            await ws.wait_closed()

        pacing = asyncio.create_task(lane())
        async with websockets.serve(
            catch_up, "127.0.0.1", port, compression=None, process_request=page
        ):
            ready.set()
            await asyncio.Future()
        pacing.cancel()

    asyncio.run(serve())


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies) or [float("nan")]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "samples": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(ordered[-1], 1),
        "slowest_ms": [round(latency, 1) for latency in ordered[-5:]],
    }


async def read_big_room(ws_url: str, origin: str | None, args) -> tuple[float, list[int], float]:
    """Run the readers against ws_url until done: (seconds, messages each got, their CPU s)."""
    results = multiprocessing.Queue()
    readers = multiprocessing.Process(
        target=run_catch_ups,
        args=(ws_url, origin, args.catch_ups, args.messages, args.page, args.timeout, results),
    )
    readers.start()
    seconds, received, cpu = await asyncio.to_thread(results.get)
    readers.join()
    return seconds, received, cpu


async def real_phase(stack: Stack, args) -> dict:
    """The readers catch up from the chat server."""
    server_cpu = stack.server_usage()[0]
    seconds, received, readers_cpu = await read_big_room(stack.ws_url, stack.url, args)
    return {
        "catch_ups_complete": sum(count == args.messages for count in received),
        "seconds": round(seconds, 1),
        "cpu_seconds": {
            "chat_server": round(stack.server_usage()[0] - server_cpu, 1),
            "readers": round(readers_cpu, 1),
        },
    }


async def control_phase(stack: Stack, args, seconds: float) -> dict:
    """The readers catch up from the control server, its pages spread over `seconds`."""
    pages = args.catch_ups * -(-args.messages // args.page)
    port = free_port()
    ready = multiprocessing.Event()
    control = multiprocessing.Process(
        target=serve_control, args=(stack.env, port, args.page, seconds / pages, ready)
    )
    control.start()
    try:
        await asyncio.to_thread(ready.wait)
        sender = psutil.Process(control.pid)
        sender_cpu, server_cpu = cpu_seconds(sender), stack.server_usage()[0]
        taken, received, readers_cpu = await read_big_room(f"ws://127.0.0.1:{port}", None, args)
        sender_cpu = cpu_seconds(sender) - sender_cpu
    finally:
        control.kill()
        control.join()
    return {
        "catch_ups_complete": sum(count == args.messages for count in received),
        "seconds": round(taken, 1),
        "cpu_seconds": {
            "chat_server": round(stack.server_usage()[0] - server_cpu, 1),
            "readers": round(readers_cpu, 1),
            "control_sender": round(sender_cpu, 1),
        },
    }


async def measure(args) -> dict:
    root = Path(args.root).resolve()
    stack = start_stack(args.processes, args.layer, root=root)
    try:
        seed(stack, root, args.messages, args.text_chars)
        stop = asyncio.Event()
        probing = asyncio.create_task(probe(stack.ws_url, stack.url, stop))
        await asyncio.sleep(args.baseline_seconds)
        phases, starts = {}, []
        order = ["control", "catch_ups"] if args.control_first else ["catch_ups", "control"]
        for name in order if args.control else ["catch_ups"]:
            starts.append((time.perf_counter(), name))
            if name == "catch_ups":
                phases[name] = await real_phase(stack, args)
            else:
                seconds = args.control_seconds or phases["catch_ups"]["seconds"]
                phases[name] = await control_phase(stack, args, seconds)
        stop.set()  # a message in flight was sent during the last phase, and counts there
        samples = await probing
    finally:
        stack.stop()
    ends = [start for start, _ in starts[1:]] + [float("inf")]
    probe_rows = {"alone": summary([ms for sent, ms in samples if sent < starts[0][0]])}
    for (start, name), end in zip(starts, ends, strict=True):
        probe_rows[name] = summary([ms for sent, ms in samples if start <= sent < end])
    return {
        "root": str(root),
        "messages": args.messages,
        "text_chars": args.text_chars,
        "catch_ups": args.catch_ups,
        "page": args.page,
        "phases": phases,
        "probe": probe_rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="checkout whose server runs")
    parser.add_argument("--messages", type=int, default=11_604)
    parser.add_argument("--text-chars", type=int, default=4000)
    parser.add_argument("--catch-ups", type=int, default=10)
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=180.0, help="for all the catch-ups")
    parser.add_argument("--processes", type=int, default=1, help="one: the rooms share it")
    parser.add_argument("--layer", default="pubsub", choices=["pubsub", "redis"])
    parser.add_argument(
        "--page", type=int, default=100, help="messages per HTTP page, real and control"
    )
    parser.add_argument(
        "--control", action="store_true", help="also read the same frames from a plain server"
    )
    parser.add_argument(
        "--control-first", action="store_true", help="the control before the real catch-ups"
    )
    parser.add_argument(
        "--control-seconds",
        type=float,
        default=0.0,
        help="spread the control's pages over this (default: as long as the real catch-ups)",
    )
    args = parser.parse_args()
    if args.control_first and not (args.control and args.control_seconds):
        parser.error("--control-first needs --control and --control-seconds")
    result = asyncio.run(measure(args))
    print(f"server code: {result['root']}, pages of {result['page']}")
    for name, phase in result["phases"].items():
        cpu = ", ".join(f"{who} {sec}" for who, sec in phase["cpu_seconds"].items())
        print(
            f"{name}: {result['catch_ups']} catch-ups of {result['messages']:,} messages of "
            f"{result['text_chars']:,} characters: {phase['catch_ups_complete']} complete "
            f"in {phase['seconds']} s; CPU seconds: {cpu}"
        )
    print("probe room echo | samples | p50 ms | p99 ms | max ms")
    for name, row in result["probe"].items():
        print(f"{name} | {row['samples']} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
