"""The server's Prometheus metrics: each named once here, counted with one line where it happens.

prometheus_client keeps them per process, or, where PROMETHEUS_MULTIPROC_DIR is set (as
serving.supervisor sets it for its children), in files there that /metrics
(mysite.metrics) adds up over every process. A write to such a file costs about 2 µs, so
the one counter bumped per delivery on the event loop counts in the process instead and
writes its total out once per LOOP_FLUSH_SECONDS (LoopCounter).

Explained in docs/operations.md, 'Metrics'.
"""

import asyncio

from django.db import DatabaseError
from prometheus_client import Counter, Gauge, Histogram

# A scrape every 15 s (Prometheus's default) sees deliveries at most this late.
LOOP_FLUSH_SECONDS = 1.0
# Storing is one transaction (a few ms on SQLite, waiting for another process's write
# lock included); a broadcast one PUBLISH, or four round trips on the redis layer, plus
# the wait for a layer slot. Buckets from 0.5 ms to 5 s cover both, and an outage.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class LoopCounter:
    """A counter for the event loop's hot path: counted in the process, written out later.

    inc() costs an attribute increment; the total goes to the shared counter at most
    LOOP_FLUSH_SECONDS later, from a timer on the running loop (at once where none runs).
    Used on the event loop only, as RoomDelivery is.
    """

    __slots__ = ("counter", "pending", "timer")

    def __init__(self, counter: Counter):
        self.counter = counter
        self.pending = 0
        self.timer: asyncio.TimerHandle | None = None

    def inc(self):
        """Count one."""
        self.pending += 1
        if self.timer is None:
            self._arm()

    def _arm(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs (a test driving RoomDelivery by hand)
            self.flush()
        else:
            self.timer = loop.call_later(LOOP_FLUSH_SECONDS, self.flush)

    def flush(self):
        """Write what was counted since the last flush to the shared counter."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, 0
        if pending:
            self.counter.inc(pending)


SOCKETS_OPEN = Gauge(
    "chat_sockets_open",
    "WebSockets in a room now, over every process",
    multiprocess_mode="livesum",
)
HANDSHAKES_REFUSED = Counter(
    "chat_handshakes_refused", "WebSocket handshakes refused (HTTP 403), by reason", ["reason"]
)
MESSAGES_STORED = Counter("chat_messages_stored", "Chat messages stored (retries not counted)")
DELIVERIES = LoopCounter(
    Counter(
        "chat_deliveries", "Chat message frames sent to sockets, live or read from the database"
    )
)
GAPS_FILLED = Counter(
    "chat_gaps_filled", "Reads from the database of messages that a socket missed in flight"
)
CATCH_UP_READS = Counter(
    "chat_catch_up_reads", "Reconnects' recoveries (?after=) read from the database"
)
FRAMES_REFUSED = Counter("chat_frames_refused", "Frames answered with an error, by code", ["code"])
SOCKETS_CLOSED = Counter(
    "chat_sockets_closed",
    "WebSockets ended, by the close code of their close handshake (1006: none)",
    ["code"],
)
STORE_SECONDS = Histogram(
    "chat_store_seconds", "Time to store one batch of messages", buckets=LATENCY_BUCKETS
)
BROADCAST_SECONDS = Histogram(
    "chat_broadcast_seconds",
    "Time of one room event's group_send (a batch's messages of one room, an edit, a typing"
    " signal), its wait for a layer slot included",
    buckets=LATENCY_BUCKETS,
)
SLOW_CLIENTS_CUT = Counter(
    "chat_slow_clients_cut", "WebSockets closed with 4408 for not reading their frames"
)
OUTAGES = Counter(
    "chat_outages",
    "Operations on the socket path that failed because Redis or the database was unreachable",
    ["service"],
)


# Label values known in advance exist from the start, at 0: a dashboard's rate() of them
# reads 0 instead of "no data" until the first one happens.
for reason in ("origin", "path", "too_many_sockets"):
    HANDSHAKES_REFUSED.labels(reason)
# Shed load: messages refused at once because the queue in front of the store was too old.
FRAMES_REFUSED.labels("overloaded")
for service in ("redis", "database"):
    OUTAGES.labels(service)


def outage(error: BaseException):
    """Count one failure of an unreachable Redis or database, by which of the two."""
    OUTAGES.labels("database" if isinstance(error, DatabaseError) else "redis").inc()


def flush():
    """Write out what the loop counted so far: as the server stops, and in tests."""
    DELIVERIES.flush()
