"""Cost of counting a delivery (chat.metrics) beside the cost of the delivery itself.

    python3 dev.py bench metrics_cost

Prints nanoseconds per call of: one room message through a socket's RoomDelivery on the
event loop (its frame cached, its send a list append: our side of a delivery, without
the socket write), chat.metrics.LoopCounter.inc (what a delivery pays now), and a
prometheus_client Counter.inc kept in memory and kept in a multiprocess file (what it
would pay without LoopCounter). No server, no Redis.
"""

import asyncio
import os
import sys
import tempfile
import timeit

from prometheus_client import CollectorRegistry, Counter, values

from benchmarks.frame_encoding import event
from chat.delivery import FrameCache, RoomDelivery
from chat.metrics import LoopCounter

CALLS = 200_000
DELIVERIES = 20_000  # each a message of its own, encoded beforehand
REPEATS = 5


def per_call_ns(function, calls: int = CALLS) -> float:
    """The fastest of REPEATS runs of `calls` calls, in nanoseconds per call."""
    return 1e9 * min(timeit.repeat(function, number=calls, repeat=REPEATS)) / calls


def delivery_cost() -> float:
    """One in-order room message through RoomDelivery.message, its frame already encoded."""
    sent = []
    delivery = RoomDelivery(sent.append, None, None, reorder_wait=0.25, max_held=100, page_size=50)
    delivery.start(0)
    events = [event(seq) for seq in range(1, DELIVERIES * REPEATS + 1)]
    cache = FrameCache(len(events))
    for message in events:
        cache.frame(message)  # as when another socket of the process got it first
    delivery._frames = cache
    feed = iter(events)

    def one():
        delivery.message(next(feed))
        sent.clear()

    return per_call_ns(one, DELIVERIES)


async def costs() -> dict[str, float]:
    """Each cost, measured on a running loop (LoopCounter's timer needs one)."""
    in_memory = Counter("in_memory", "a benchmark's", registry=CollectorRegistry())
    loop_counter = LoopCounter(Counter("loop", "a benchmark's", registry=CollectorRegistry()))
    with tempfile.TemporaryDirectory() as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        values.ValueClass = values.MultiProcessValue()  # as a process started with it set
        in_file = Counter("in_file", "a benchmark's", registry=CollectorRegistry())
        result = {
            "a delivery (RoomDelivery.message)": delivery_cost(),
            "LoopCounter.inc": per_call_ns(loop_counter.inc),
            "Counter.inc, in memory": per_call_ns(in_memory.inc),
            "Counter.inc, multiprocess file": per_call_ns(in_file.inc),
        }
        loop_counter.flush()
    return result


def main(argv: list[str]) -> int:
    for name, nanoseconds in asyncio.run(costs()).items():
        print(f"{name:>34}: {nanoseconds:7.0f} ns per call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
