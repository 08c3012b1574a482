"""One socket's delivery of its room's messages: in order, each once, without the database
unless a message is missing.

A RoomDelivery belongs to one socket and is used on the event loop only: every method
runs there, so its state (the last id sent, the held messages, the gap timer) has one
owner and needs no lock. It does no I/O of its own: it is given a `send` for frames, a
`read` that fetches stored messages (the consumer runs it on the sync thread and calls
back on the loop), and a `call_later` for the gap timer. Tests drive it with fakes of all
three (chat/tests/test_delivery.py).

A message next in line is sent at once. One that overtook a missing one is held; the
missing one usually arrives within CHAT_REORDER_WAIT_SECONDS, and if not (the layer
dropped it) one read fills the gap. While a read is on its way, everything that arrives
is held, and the gap timer starts no second read: the reply is applied first, then the
held messages. Recovery is bounded: a gap of more than CHAT_RECOVERY_LIMIT messages is not
sent; a catch_up frame (recovered: false) tells the client to fetch it from the messages
endpoint, and delivery goes on after it (docs/protocol.md).

Explained in docs/architecture.md, 'The delivery path'.
"""

import collections
from collections.abc import Callable
from typing import Any, Protocol

from . import metrics, protocol, sides

# Frames encoded per process, not per socket: a room message reaches every socket of the
# room in this process, all within a moment. Enough for a burst across many rooms.
FRAME_CACHE_SIZE = 4096


class TimerHandle(Protocol):
    """What call_later returns: asyncio.TimerHandle, or a test's manual timer."""

    def cancel(self) -> None: ...


# A read: (after, limit, on_done); later, on the loop, on_done(events, newest): at most
# `limit` events after `after`, and the room's newest id, read after them.
Read = Callable[[int, int, Callable[[list[dict], int], None]], None]


class FrameCache:
    """Encoded chat.message frames: json.dumps once per process per message, not per socket.

    Keyed by the event's whole content, of which the frame is a pure function: a room
    deleted and made again, its ids starting over, can never be sent a stale frame.
    """

    def __init__(self, size: int = FRAME_CACHE_SIZE):
        self.size = size
        self._frames: collections.OrderedDict[tuple, str] = collections.OrderedDict()

    @sides.on_loop
    def frame(self, event: dict[str, Any]) -> str:
        """The live frame of a chat.message event, encoded on first use."""
        key = tuple(event.items())
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = protocol.message_frame(event)
            if len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame


# Used on the event loop only, as the RoomDeliveries that share it.
frames = FrameCache()


class RoomDelivery:
    """Deliver one socket's room messages in order, each once; fill gaps up to a bound."""

    # One per socket: slots instead of a __dict__ keep an idle socket's cost down.
    __slots__ = (
        "_send", "_read", "_call_later", "reorder_wait", "max_held", "recovery_limit",
        "_frames", "last", "started", "stopped", "held", "timer", "reading", "resync_wanted",
    )  # fmt: skip

    def __init__(
        self,
        send: Callable[[str], None],
        read: Read,
        call_later: Callable[[float, Callable[[], None]], TimerHandle],
        *,
        reorder_wait: float,
        max_held: int,
        recovery_limit: int,
        frame_cache: FrameCache = frames,
    ):
        self._send = send
        self._read = read
        self._call_later = call_later
        self.reorder_wait = reorder_wait
        self.max_held = max_held
        self.recovery_limit = recovery_limit
        self._frames = frame_cache
        self.last = 0  # the id of the last message sent to the socket (or left to the client)
        self.started = False
        self.stopped = False
        # Messages that arrived ahead of a missing one, by id.
        self.held: dict[int, dict] = {}
        self.timer: TimerHandle | None = None
        self.reading = False  # a read is on its way; its reply is applied before anything
        self.resync_wanted = False  # asked for while a read was on its way

    # --- What the socket's consumer tells it --------------------------------------------

    @sides.on_loop
    def start(self, last: int):
        """The socket was sent (or told to fetch) everything up to `last`: go on from there."""
        self.last, self.started = last, True
        self._deliver_held()

    @sides.on_loop
    def message(self, event: dict[str, Any]):
        """A chat.message event from the room: send it, hold it, or drop a duplicate."""
        seq = event["id"]
        if self.stopped or seq <= self.last:
            return  # a duplicate
        if self.reading or not self.started:
            self.held[seq] = event  # applied after the read's reply, or at the start
            return
        if seq == self.last + 1:
            self._deliver(event)
            self._deliver_held()
            return
        self.held[seq] = event
        if len(self.held) >= self.max_held:
            self._fill_gap()
        elif self.timer is None:
            # A timer in this process, not a message through the layer: under load the
            # layer would refuse it (ChannelFull) just when it is needed most.
            self.timer = self._call_later(self.reorder_wait, self._gap_timer_fired)

    @sides.on_loop
    def resync(self):
        """Send what was stored since the last message sent (after Redis restarted, or a lag)."""
        if self.stopped or not self.started:
            return  # the start reads it
        if self.reading:
            self.resync_wanted = True
            return
        self._start_read(self.recovery_limit + 1)

    @sides.on_loop
    def stop(self):
        """The socket left: send nothing more, and let the timer go."""
        self.stopped = True
        self.held.clear()
        self._cancel_timer()

    # --- Inside ----------------------------------------------------------------------------

    @sides.on_loop
    def _gap_timer_fired(self):
        """A held message waited long enough: the layer dropped what it waits for."""
        self.timer = None
        if self.held and not self.reading and not self.stopped:
            self._fill_gap()

    @sides.on_loop
    def _fill_gap(self):
        """Read up to the newest held message (at most the bound, and one more)."""
        metrics.GAPS_FILLED.inc()
        self._cancel_timer()
        self._start_read(min(max(self.held) - self.last, self.recovery_limit + 1))

    @sides.on_loop
    def _start_read(self, limit: int):
        self.reading = True
        self._read(self.last, limit, self._read_done)

    @sides.on_loop
    def _read_done(self, page: list[dict], newest: int):
        """Apply a read's reply: send its messages, or leave them to the client; then the held."""
        self.reading = False
        if self.stopped:
            return
        missed = sum(event["id"] not in self.held for event in page)
        if missed > self.recovery_limit:
            # More than the socket recovers: the client reads (last, newest] over HTTP. All
            # of them are stored (ids commit in order), and later ones come here.
            self._send(protocol.catch_up_frame(False, self.last, newest))
            self.last = newest
        else:
            for event in page:
                if event["id"] > self.last:
                    self._deliver(event)
        self._deliver_held()
        self._after_read()

    @sides.on_loop
    def _after_read(self):
        """What waited for the read: a resync, a gap still open."""
        if self.resync_wanted:
            self.resync_wanted = False
            self.resync()
        elif self.held:
            if len(self.held) >= self.max_held:
                self._fill_gap()
            elif self.timer is None:
                self.timer = self._call_later(self.reorder_wait, self._gap_timer_fired)

    @sides.on_loop
    def _deliver(self, event: dict[str, Any]):
        self._send(self._frames.frame(event))
        metrics.DELIVERIES.inc()
        self.last = event["id"]

    @sides.on_loop
    def _deliver_held(self):
        """Send held messages that are next in line now; forget those already sent."""
        while self.last + 1 in self.held:
            self._deliver(self.held.pop(self.last + 1))
        for seq in [seq for seq in self.held if seq <= self.last]:
            del self.held[seq]
        if not self.held:
            self._cancel_timer()

    @sides.on_loop
    def _cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
