"""How much big catch-ups in one room delay the messages of another room.

Starts the stack (embedded Redis, a fresh SQLite database, `serving.supervisor`) from a checkout
(this one, or `--root` another, to compare old code with new), stores --messages messages
of --text-chars characters in the room "big" (the report's 11,604 of about 4 KB: 46.7 MB),
then measures the echo latency of one client in the room "probe", which sends a message
every PROBE_INTERVAL_SECONDS and times each until its own echo:

- alone, for --baseline-seconds;
- while --catch-ups clients (in a process of their own, so that their reading does not
  slow the probe's loop) join "big" with ?after=0 and read all of it, asking for each next
  page when the server says there is more; until every one has every message or
  --timeout passes.

Prints p50, p99 and max of each phase in milliseconds, then one JSON line. Run from the
project root:

    .venv/bin/python -m benchmarks.catch_up [--root /tmp/old-checkout]
"""

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets

from benchmarks.stack import ROOT, Stack, start_stack

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


async def catch_up_fully(ws_url: str, origin: str, messages: int) -> int:
    """Read the big room from the start until every message came, as the page does.

    It asks for each next page, and reconnects with ?after= if the server closes it for
    reading too slowly (4408). Returns how many messages it has.
    """
    last_id = 0
    while last_id < messages:
        url = f"{ws_url}/ws/chat/{BIG_ROOM}/?after={last_id}"
        try:
            async with websockets.connect(url, origin=origin, max_size=MAX_FRAME_BYTES) as ws:
                while last_id < messages:
                    raw = await ws.recv()
                    if raw.startswith('{"message"'):
                        # Not json.loads: parsing 4 KB frames would take the probe's CPU.
                        # In JSON text only a key has an unescaped quote before `id":`.
                        tail = raw[raw.rindex('"id": ') + len('"id": ') :]
                        last_id = max(last_id, int(tail[: tail.index(",")]))
                    elif raw.startswith('{"catch_up"'):
                        page_end = json.loads(raw)["catch_up"]
                        if page_end["more"]:
                            after = page_end["next_after"]
                            await ws.send(json.dumps({"catch_up": {"after": after}}))
        except websockets.ConnectionClosed:
            continue
    return last_id


def run_catch_ups(ws_url: str, origin: str, count: int, messages: int, timeout: float, results):
    """In a process of its own: `count` catch-ups at once; puts (seconds, received) in results."""

    async def all_of_them():
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(catch_up_fully(ws_url, origin, messages)) for _ in range(count)
        ]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        received = [task.result() for task in done if task.exception() is None]
        return time.perf_counter() - started, received

    results.put(asyncio.run(all_of_them()))


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


async def measure(args) -> dict:
    root = Path(args.root).resolve()
    stack = start_stack(args.processes, args.layer, root=root)
    try:
        seed(stack, root, args.messages, args.text_chars)
        stop = asyncio.Event()
        probing = asyncio.create_task(probe(stack.ws_url, stack.url, stop))
        await asyncio.sleep(args.baseline_seconds)
        catch_ups_started = time.perf_counter()
        results = multiprocessing.Queue()
        readers = multiprocessing.Process(
            target=run_catch_ups,
            args=(stack.ws_url, stack.url, args.catch_ups, args.messages, args.timeout, results),
        )
        readers.start()
        seconds, received = await asyncio.to_thread(results.get)
        readers.join()
        stop.set()  # a message in flight was sent during the catch-ups, and counts there
        samples = await probing
    finally:
        stack.stop()
    return {
        "root": str(root),
        "messages": args.messages,
        "text_chars": args.text_chars,
        "catch_ups": args.catch_ups,
        "catch_ups_complete": sum(count == args.messages for count in received),
        "catch_up_seconds": round(seconds, 1),
        "probe_alone": summary([ms for sent, ms in samples if sent < catch_ups_started]),
        "probe_during_catch_ups": summary(
            [ms for sent, ms in samples if sent >= catch_ups_started]
        ),
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
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    print(f"server code: {result['root']}")
    print(
        f"{result['catch_ups']} catch-ups of {result['messages']:,} messages of "
        f"{result['text_chars']:,} characters: {result['catch_ups_complete']} complete "
        f"in {result['catch_up_seconds']} s"
    )
    print("probe room echo | samples | p50 ms | p99 ms | max ms")
    for phase in ("probe_alone", "probe_during_catch_ups"):
        row = result[phase]
        print(f"{phase} | {row['samples']} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
