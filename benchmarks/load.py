"""Load benchmark over real WebSockets: offered vs delivered, latency, loss, server cost.

    python3 dev.py bench                                   # the defaults below
    python3 dev.py bench --rooms 1 --clients 200 --rates 0.125,0.25
    python3 dev.py bench --idle 10000                      # memory per idle connection
    python3 dev.py bench --soak 600 --rates 1              # faults midway; see soak.py
    python3 dev.py bench --rates 10 --drain-seconds 120    # overload: is anything lost?

It starts the whole stack itself (embedded Redis, a fresh SQLite database or with
`--database postgres` a fresh PostgreSQL one, `serving.supervisor` with N daphne
processes), connects rooms x clients sockets, and runs one step per per-client send rate.
Every client sends at its rate; every message must reach every
socket in its room (the sender included). A delivery is one message arriving at one
socket, so offered deliveries/s = rooms x clients x clients x rate.

Per step it prints offered and delivered deliveries/s, latency percentiles (send to
arrival, one clock: sender and receiver live in this process), lost and duplicated
deliveries (counted after a final drain of up to --drain-seconds, so late is not lost),
refusals, and the server processes' CPU and memory; then a JSON line per step, and a PNG
plot at the end.
"""

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from benchmarks.soak import run_soak
from benchmarks.stack import DATABASES, DEFAULT_POSTGRES_URL, Stack, start_stack
from mysite.channel_layers import DEFAULT_LAYER, LAYER_BACKENDS
from serving.supervisor import raise_open_file_limit

DEFAULT_RATES = "1,2,4,6,8"
CONNECT_BATCH = 200  # sockets opened at once while setting up
CONNECT_TIMEOUT_SECONDS = 30
SETTLE_SECONDS = 3.0  # quiet time after each step, so its backlog lands in its own figures
DRAIN_POLL_SECONDS = 0.5
IDLE_ROOM_SIZE = 10
MAX_FRAME_BYTES = 2**20
APPLICATION = "mysite.asgi:application"
# A run's plot is an artefact of that run: .run/ is ignored by git. A figure worth keeping
# is committed deliberately, with --plot benchmarks/results/NAME.png.
DEFAULT_PLOT_DIR = Path(".run/bench")
REFERENCE_APPLICATION = "benchmarks.reference:application"


@dataclass
class Step:
    """What one step sent and what arrived for it."""

    rate: float
    sent: dict[tuple[int, int], int] = field(default_factory=dict)  # (room, msg no) -> sends
    arrivals: Counter = field(default_factory=Counter)  # (room, msg no, socket) -> count
    latencies: list[float] = field(default_factory=list)
    refused: int = 0
    out_of_order: int = 0  # arrivals whose room id is not above the socket's previous one
    delivered_in_window: int = 0
    window_seconds: float = 0.0
    cpu_seconds: float = 0.0
    load_cpu_seconds: float = 0.0
    rss_bytes: int = 0


class Load:
    """Sockets in rooms, each sending at the current step's rate and recording arrivals."""

    def __init__(self, stack: Stack, rooms: int, clients: int):
        self.stack = stack
        self.rooms = rooms
        self.clients = clients
        self.sockets: list[tuple[int, int, websockets.ClientConnection]] = []
        self.steps: list[Step] = []
        self.current: Step | None = None
        self.next_message_no = 0

    async def connect(self):
        """Open every socket, CONNECT_BATCH at a time."""
        pairs = [(room, index) for room in range(self.rooms) for index in range(self.clients)]
        for start in range(0, len(pairs), CONNECT_BATCH):
            batch = pairs[start : start + CONNECT_BATCH]
            opened = await asyncio.gather(*(self._open(room) for room, _ in batch))
            self.sockets.extend(
                (room, index, ws) for (room, index), ws in zip(batch, opened, strict=True)
            )

    async def _open(self, room: int) -> websockets.ClientConnection:
        return await websockets.connect(
            f"{self.stack.ws_url}/ws/chat/bench-{room}/",
            origin=self.stack.url,
            open_timeout=CONNECT_TIMEOUT_SECONDS,
            max_size=MAX_FRAME_BYTES,
            ping_interval=None,
        )

    def start_receiving(self) -> list[asyncio.Task]:
        """A task per open socket recording what arrives (receive_forever); cancel them to stop."""
        return [
            asyncio.create_task(self.receive_forever(room, index, ws))
            for room, index, ws in self.sockets
        ]

    async def receive_forever(self, room: int, socket_no: int, ws):
        """Record each chat message that arrives at one socket."""
        last_id = 0
        async for raw in ws:
            frame = json.loads(raw)
            if "error" in frame:
                self._step_of(frame["error"].get("client_id")).refused += 1
                continue
            if "message" not in frame or frame.get("history"):
                continue
            step_no, message_no, sent_at = frame["message"].split(" ")
            step = self.steps[int(step_no)]
            if "id" in frame:  # the reference's frames carry the message alone
                if frame["id"] <= last_id:
                    step.out_of_order += 1
                last_id = frame["id"]
            step.arrivals[(room, int(message_no), socket_no)] += 1
            if step.arrivals[(room, int(message_no), socket_no)] == 1:
                step.latencies.append(time.perf_counter() - float(sent_at))
                if step is self.current:
                    step.delivered_in_window += 1

    def missing_deliveries(self) -> int:
        """Deliveries of every message sent so far that have not arrived yet."""
        return sum(len(step.sent) * self.clients - len(step.arrivals) for step in self.steps)

    async def drain(self, most_seconds: float):
        """Wait until every sent message reached every socket of its room, or most_seconds."""
        deadline = time.perf_counter() + most_seconds
        while self.missing_deliveries() > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    def _step_of(self, client_id: str | None) -> Step:
        return self.steps[int(client_id.split("-")[0])] if client_id else self.steps[-1]

    async def send_at_rate(self, room: int, ws, rate: float, seconds: float, step_no: int):
        """Send `rate` messages a second for `seconds`, on a fixed schedule."""
        interval = 1 / rate
        # Spread clients over the interval so the room's sends do not arrive in lockstep.
        next_send = time.perf_counter() + interval * (hash((room, id(ws))) % 1000) / 1000
        end = time.perf_counter() + seconds
        while next_send < end:
            await asyncio.sleep(max(next_send - time.perf_counter(), 0))
            message_no = self.next_message_no
            self.next_message_no += 1
            self.steps[step_no].sent[(room, message_no)] = 1
            text = f"{step_no} {message_no} {time.perf_counter()!r}"
            await ws.send(json.dumps({"message": text, "client_id": f"{step_no}-{message_no}"}))
            next_send += interval

    async def run_step(self, rate: float, seconds: float):
        """One step: everybody sends at `rate` for `seconds`, then a quiet settle."""
        step = Step(rate)
        self.steps.append(step)
        self.current = step
        cpu_before, _ = self.stack.server_usage()
        load_cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(
            *(
                self.send_at_rate(room, ws, rate, seconds, len(self.steps) - 1)
                for room, _, ws in self.sockets
            )
        )
        await asyncio.sleep(SETTLE_SECONDS)
        step.window_seconds = time.perf_counter() - started
        cpu_after, step.rss_bytes = self.stack.server_usage()
        step.cpu_seconds = cpu_after - cpu_before
        step.load_cpu_seconds = time.process_time() - load_cpu_before
        self.current = None


def summarize(step: Step, rooms: int, clients: int, step_seconds: float) -> dict:
    """The figures of one step, as printed and as its JSON line."""
    expected = {(room, no, s) for (room, no) in step.sent for s in range(clients)}
    arrived = {key for key in step.arrivals if key[:2] in step.sent}
    latencies = sorted(step.latencies)

    def percentile(fraction: float) -> float | None:
        if not latencies:
            return None
        return round(
            1000 * latencies[min(len(latencies) - 1, math.ceil(fraction * len(latencies)) - 1)], 1
        )

    return {
        "rate_per_client": step.rate,
        "offered_per_s": round(rooms * clients * clients * step.rate),
        "delivered_per_s": round(step.delivered_in_window / step_seconds),
        "messages_sent": len(step.sent),
        "deliveries_expected": len(expected),
        "lost": len(expected - arrived),
        "duplicates": sum(count - 1 for count in step.arrivals.values() if count > 1),
        "refused": step.refused,
        "out_of_order": step.out_of_order,
        "p50_ms": percentile(0.50),
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
        "server_cpu_percent": round(100 * step.cpu_seconds / step.window_seconds),
        "server_rss_mb": round(step.rss_bytes / 2**20, 1),
        "load_cpu_percent": round(100 * step.load_cpu_seconds / step.window_seconds),
    }


TABLE_COLUMNS = {
    "offered/s": "offered_per_s",
    "delivered/s": "delivered_per_s",
    "p50 ms": "p50_ms",
    "p90 ms": "p90_ms",
    "p99 ms": "p99_ms",
    "max ms": "max_ms",
    "lost": "lost",
    "dup": "duplicates",
    "refused": "refused",
    "order": "out_of_order",
    "cpu %": "server_cpu_percent",
    "rss MB": "server_rss_mb",
    "load cpu %": "load_cpu_percent",
}


def median_p99_ms(rows: list[dict]) -> float:
    """The steps' median p99, to 0.1 ms as every figure (the mean of two is not)."""
    return round(statistics.median(row["p99_ms"] or 0 for row in rows), 1)


def print_table(rows: list[dict]):
    print(" ".join(f"{title:>11}" for title in TABLE_COLUMNS))
    for row in rows:
        print(" ".join(f"{row[key]!s:>11}" for key in TABLE_COLUMNS.values()))


def print_ratios(ours: list[dict], reference: list[dict]):
    """Each step's p99 and CPU as ours / the reference's, side by side."""
    print(f"{'offered/s':>11} {'p99 ours':>11} {'p99 ref':>11} {'p99 ratio':>11} {'cpu ratio':>11}")
    for row, ref in zip(ours, reference, strict=True):
        p99_ratio = row["p99_ms"] / ref["p99_ms"] if row["p99_ms"] and ref["p99_ms"] else None
        cpu_ratio = row["server_cpu_percent"] / max(ref["server_cpu_percent"], 1)
        print(
            f"{row['offered_per_s']:>11} {row['p99_ms']!s:>11} {ref['p99_ms']!s:>11} "
            f"{'-' if p99_ratio is None else f'{p99_ratio:.2f}':>11} {cpu_ratio:>11.2f}"
        )


def plot(rows: list[dict], path: Path, title: str):
    """delivered/s and p99 against offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [row["offered_per_s"] for row in rows]
    figure, left = plt.subplots(figsize=(7, 4))
    left.plot(offered, offered, ":", color="grey", label="offered")
    left.plot(offered, [row["delivered_per_s"] for row in rows], "o-", label="delivered/s")
    left.set_xlabel("offered deliveries/s")
    left.set_ylabel("delivered deliveries/s")
    right = left.twinx()
    right.plot(
        offered, [row["p99_ms"] or 0 for row in rows], "s--", color="tab:red", label="p99 ms"
    )
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    left.legend(loc="upper left")
    left.set_title(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


async def run_load(args, application: str = APPLICATION) -> list[dict]:
    stack = start_stack(args.processes, args.layer, application=application, database=args.database)
    try:
        load = Load(stack, args.rooms, args.clients)
        await load.connect()
        receivers = load.start_receiving()
        for rate in args.rates:
            await load.run_step(rate, args.step_seconds)
        await load.drain(args.drain_seconds)
        rows = [summarize(step, args.rooms, args.clients, args.step_seconds) for step in load.steps]
        for task in receivers:
            task.cancel()
        await asyncio.gather(*(ws.close() for _, _, ws in load.sockets), return_exceptions=True)
        return rows
    finally:
        stack.stop()


async def run_idle(args, application: str | None = None) -> dict:
    """Open `args.idle` sockets that never send; report server memory per socket."""
    stack = start_stack(args.processes, args.layer, application=application or APPLICATION)
    try:
        load = Load(stack, math.ceil(args.idle / IDLE_ROOM_SIZE), IDLE_ROOM_SIZE)
        await asyncio.sleep(2)
        _, rss_before = stack.server_usage()
        started = time.perf_counter()
        await load.connect()
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(5)
        _, rss_after = stack.server_usage()
        alive = sum(1 for _, _, ws in load.sockets if ws.state is websockets.protocol.State.OPEN)
        await asyncio.gather(*(ws.close() for _, _, ws in load.sockets), return_exceptions=True)
        return {
            "idle_sockets": len(load.sockets),
            "open_after_5s": alive,
            "connect_seconds": round(connect_seconds, 1),
            "server_rss_before_mb": round(rss_before / 2**20, 1),
            "server_rss_after_mb": round(rss_after / 2**20, 1),
            "kb_per_socket": round((rss_after - rss_before) / 1024 / len(load.sockets), 1),
        }
    finally:
        stack.stop()


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10, help="clients per room")
    parser.add_argument(
        "--rates", default=DEFAULT_RATES, help="per-client messages/s, comma-separated steps"
    )
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=10.0,
        help="after the last step, wait up to this long for late deliveries before counting lost",
    )
    parser.add_argument("--processes", type=int, default=2, help="daphne processes")
    parser.add_argument("--layer", choices=sorted(LAYER_BACKENDS), default=DEFAULT_LAYER)
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="a fresh SQLite file, or a fresh database on BENCH_POSTGRES_URL's PostgreSQL "
        f"(default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--idle", type=int, default=0, help="idle mode: this many sockets")
    parser.add_argument(
        "--soak", type=float, default=0, help="soak mode: seconds, at the first --rates rate"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"where the PNG goes (default {DEFAULT_PLOT_DIR}/load-LAYER.png, ignored by git;"
        " the figures benchmarks/RESULTS.md shows are committed from benchmarks/results/)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run the tutorial's async consumer (benchmarks.reference) on pubsub, "
        "and print each figure as ours / its",
    )
    args = parser.parse_args(argv)
    args.rates = [float(rate) for rate in args.rates.split(",")]
    args.plot = args.plot or DEFAULT_PLOT_DIR / f"load-{args.layer}.png"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    raise_open_file_limit()  # this process holds every client socket
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    setup = {"processes": args.processes, "layer": args.layer}
    if args.soak:
        result = asyncio.run(run_soak(args))
        print(json.dumps({"bench": "soak", **setup, **result}))
        return 0
    if args.idle:
        result = asyncio.run(run_idle(args))
        print(json.dumps({"bench": "idle", **setup, **result}))
        if args.reference:
            reference_args = argparse.Namespace(**{**vars(args), "layer": "pubsub"})
            reference = asyncio.run(run_idle(reference_args, REFERENCE_APPLICATION))
            print(json.dumps({"bench": "idle-reference", "processes": args.processes,
                              "layer": "pubsub", **reference}))  # fmt: skip
            for figure in ("kb_per_socket", "connect_seconds"):
                ratio = result[figure] / reference[figure] if reference[figure] else math.nan
                print(f"{figure}: ours {result[figure]}, reference {reference[figure]}, "
                      f"ratio {ratio:.2f}")  # fmt: skip
        return 0
    title = f"{args.rooms} rooms x {args.clients} clients, {args.processes} processes, {args.layer}"
    print(f"{title} layer, {args.database}, {args.step_seconds:g} s steps")
    rows = asyncio.run(run_load(args))
    print_table(rows)
    setup = {
        "rooms": args.rooms,
        "clients": args.clients,
        "processes": args.processes,
        "database": args.database,
    }
    for row in rows:
        print(json.dumps({"bench": "load", **setup, "layer": args.layer, **row}))
    if args.reference:
        reference_args = argparse.Namespace(**{**vars(args), "layer": "pubsub"})
        reference = asyncio.run(run_load(reference_args, REFERENCE_APPLICATION))
        print("reference: the tutorial's async consumer, pubsub layer")
        print_table(reference)
        print_ratios(rows, reference)
        for row in reference:
            print(json.dumps({"bench": "load-reference", **setup, "layer": "pubsub", **row}))
    plot(rows, args.plot, title + " layer")
    print(f"plot: {args.plot}")
    print(f"median p99 over steps: {median_p99_ms(rows)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
