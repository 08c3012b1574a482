"""One socket's delivery of its room's messages: in order, each once, without the database
unless a message is missing.

A RoomDelivery belongs to one socket and is used on the event loop only: every method
runs there, so its state (the last id sent, the held messages, the gap timer, the
catch-up paging) has one owner and needs no lock. It does no I/O of its own: it is given
a `send` for frames, a `read` that fetches stored messages (the consumer runs it on the
sync thread and calls back on the loop), and a `call_later` for the gap timer. Tests
drive it with fakes of all three (chat/tests/test_delivery.py).

A message next in line is sent at once. One that overtook a missing one is held; the
missing one usually arrives within CHAT_REORDER_WAIT_SECONDS, and if not (the layer
dropped it) one read fills the gap. While a read is on its way, everything that arrives
is held, and the gap timer starts no second read: the reply is applied first, then the
held messages. A catch-up longer than CHAT_CATCH_UP_PAGE goes in pages the client asks
for; live messages meanwhile are left to those pages (they are stored before they are
broadcast).

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


# A read: (after, limit, in_turn, on_done); on_done(events) is called on the loop later.
Read = Callable[[int, int, bool, Callable[[list[dict]], None]], None]


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
    """Deliver one socket's room messages in order, each once; fill gaps and page catch-ups."""

    # One per socket: slots instead of a __dict__ keep an idle socket's cost down.
    __slots__ = (
        "_send", "_read", "_call_later", "reorder_wait", "max_held", "page_size", "_frames",
        "last", "started", "stopped", "held", "timer", "reading", "resync_wanted",
        "page_asked", "catching_up", "page_announced",
    )  # fmt: skip

    def __init__(
        self,
        send: Callable[[str], None],
        read: Read,
        call_later: Callable[[float, Callable[[], None]], TimerHandle],
        *,
        reorder_wait: float,
        max_held: int,
        page_size: int,
        frame_cache: FrameCache = frames,
    ):
        self._send = send
        self._read = read
        self._call_later = call_later
        self.reorder_wait = reorder_wait
        self.max_held = max_held
        self.page_size = page_size
        self._frames = frame_cache
        self.last = 0  # the id of the last message sent to the socket
        self.started = False
        self.stopped = False
        # Messages that arrived ahead of a missing one, by id.
        self.held: dict[int, dict] = {}
        self.timer: TimerHandle | None = None
        self.reading = False  # a read is on its way; its reply is applied before anything
        self.resync_wanted = False  # asked for while a read was on its way
        self.page_asked: int | None = None  # a page request that waits for the read
        # A page said "more": later messages wait for the client to ask for them...
        self.catching_up = False
        self.page_announced = False  # ...and the client has not asked for the next one yet

    # --- What the socket's consumer tells it --------------------------------------------

    @sides.on_loop
    def start(self, last: int, catch_up: bool = False):
        """The socket was sent everything up to `last`; with catch_up, page on from there."""
        self.last, self.started = last, True
        if catch_up:
            self.catching_up = True
            self._start_read(self.page_size + 1, in_turn=True, answer=True)
        else:
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
        if self.catching_up:
            return  # the client's next page request reads it
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
        if self.stopped or self.catching_up or not self.started:
            return  # the client's next page request, or the start, reads it
        if self.reading:
            self.resync_wanted = True
            return
        self._start_read(self.page_size + 1, in_turn=False)

    @sides.on_loop
    def take_announced_page(self) -> bool:
        """Whether a page request now is one the server announced (it costs no token)."""
        announced, self.page_announced = self.page_announced, False
        return announced

    @sides.on_loop
    def page_requested(self, after: int):
        """The client asks for what follows `after`: send a page, then whether there is more."""
        if self.stopped:
            return
        if after > self.last:
            refusal = protocol.FrameRefused(
                "invalid_catch_up",
                f'"after" is past the last message sent here ({self.last}): '
                'ask with the "next_after" you were given.',
            )
            metrics.FRAMES_REFUSED.labels(refusal.code).inc()
            self._send(protocol.error_frame(refusal))
            return
        if self.reading:
            self.page_asked = after
            return
        self._start_read(self.page_size + 1, in_turn=True, answer=True)

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
        if self.held and not self.reading and not self.catching_up and not self.stopped:
            self._fill_gap()

    @sides.on_loop
    def _fill_gap(self):
        """Read what is missing before the held messages (at most a page, and one more)."""
        metrics.GAPS_FILLED.inc()
        self._cancel_timer()
        limit = min(max(self.held) - self.last, self.page_size + 1)
        self._start_read(limit, in_turn=False)

    @sides.on_loop
    def _start_read(self, limit: int, *, in_turn: bool, answer: bool = False):
        self.reading = True
        self._read(self.last, limit, in_turn, lambda page: self._read_done(page, answer))

    @sides.on_loop
    def _read_done(self, page: list[dict], answer: bool):
        """Apply a read's reply: send its messages, then the held ones; or announce a page."""
        self.reading = False
        if self.stopped:
            return
        for event in page[: self.page_size]:
            if event["id"] > self.last:
                self._deliver(event)
        more = len(page) > self.page_size
        self.catching_up = self.page_announced = more
        if more:
            self.held.clear()  # all later than the page: the next pages read them
            self._cancel_timer()
            self.resync_wanted = False
            self._send(protocol.catch_up_frame(True, self.last))
        else:
            self._deliver_held()
            if answer:
                self._send(protocol.catch_up_frame(False, self.last))
        self._after_read()

    @sides.on_loop
    def _after_read(self):
        """What waited for the read: a page request, a resync, a gap still open."""
        if self.page_asked is not None:
            after, self.page_asked = self.page_asked, None
            self.page_requested(after)
        elif self.resync_wanted:
            self.resync_wanted = False
            self.resync()
        elif self.held and not self.catching_up:
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
