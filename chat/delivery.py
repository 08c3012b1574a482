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
# A read of changes: (after_change, limit, on_done); later, on the loop, on_done(events,
# newest_change): the chat.change events of the messages changed after `after_change` (their
# final state, in change order, at most `limit`), and the room's newest change number.
ReadChanges = Callable[[int, int, Callable[[list[dict], int], None]], None]


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
    """Deliver one socket's room messages in order, each once; fill gaps up to a bound.

    Edits and deletions (chat.change events) are numbered apart from messages, and
    delivered the same way: in change order, each once, never before the message they
    change; a gap in change numbers is filled by one read of the changes after the last.
    """

    # One per socket: slots instead of a __dict__ keep an idle socket's cost down.
    __slots__ = (
        "_send", "_read", "_call_later", "reorder_wait", "max_held", "recovery_limit",
        "_frames", "last", "started", "stopped", "held", "timer", "reading", "resync_wanted",
        "_read_changes", "last_change", "held_changes", "waiting_changes", "reading_changes",
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
        read_changes: ReadChanges | None = None,
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
        self._read_changes = read_changes
        # Every change numbered up to last_change was sent, or waits for its message.
        self.last_change = 0
        # Changes that arrived ahead of a missing one, by change number.
        self.held_changes: dict[int, dict] = {}
        # Changes in line whose message is not sent yet (its id is past `last`).
        self.waiting_changes: list[dict] = []
        self.reading_changes = False

    # --- Changes: edits and deletions --------------------------------------------------------

    @sides.on_loop
    def start_changes(self, last_change: int, waiting: list[dict] = ()):
        """The socket was sent (or told to fetch) every change up to `last_change`, but
        `waiting`: changes of messages it has not been sent yet, sent after them."""
        self.last_change = last_change
        self.waiting_changes.extend(waiting)
        self._deliver_changes()

    @sides.on_loop
    def change(self, event: dict[str, Any]):
        """A chat.change event from the room: send it, hold it, or drop a duplicate."""
        if self.stopped or event["change"] <= self.last_change:
            return
        self.held_changes[event["change"]] = event
        if self.reading_changes or not self.started:
            return
        self._deliver_changes()
        self._arm_timer_for_changes()

    @sides.on_loop
    def _arm_timer_for_changes(self):
        """A change out of line, or one whose message has not come: wait, then read; and
        once nothing waits, let the timer go."""
        if self.held_changes or self.waiting_changes:
            if self.timer is None:
                self.timer = self._call_later(self.reorder_wait, self._gap_timer_fired)
        elif not self.held:
            self._cancel_timer()

    @sides.on_loop
    def _deliver_changes(self):
        """Send the changes next in line whose message was sent; hold the others."""
        while (event := self.held_changes.pop(self.last_change + 1, None)) is not None:
            self.last_change = event["change"]
            self.waiting_changes.append(event)
        for number in [number for number in self.held_changes if number <= self.last_change]:
            del self.held_changes[number]
        still_waiting = []
        for event in self.waiting_changes:
            if event["id"] <= self.last:
                self._send(protocol.change_frame(event))
            else:
                still_waiting.append(event)
        self.waiting_changes = still_waiting

    @sides.on_loop
    def _fill_change_gap(self):
        """Read the changes after the last one in line (at most the bound, and one more)."""
        metrics.GAPS_FILLED.inc()
        self.reading_changes = True
        self._read_changes(self.last_change, self.recovery_limit + 1, self._changes_read)

    @sides.on_loop
    def _changes_read(self, page: list[dict], newest_change: int):
        """Apply a read of changes: send them (or leave them to the client), then the held."""
        self.reading_changes = False
        if self.stopped:
            return
        if len(page) > self.recovery_limit:
            self._send(
                protocol.catch_up_frame(
                    True, self.last, self.last, (False, self.last_change, newest_change)
                )
            )
        else:
            self.waiting_changes.extend(page)
        self.last_change = max(self.last_change, newest_change)
        self._deliver_changes()
        self._arm_timer_for_changes()

    # --- What the socket's consumer tells it --------------------------------------------

    @sides.on_loop
    def start(self, last: int):
        """The socket was sent (or told to fetch) everything up to `last`: go on from there."""
        self.last, self.started = last, True
        self._deliver_held()
        self._arm_timer_for_changes()

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
    def messages(self, events: list[dict[str, Any]]):
        """A chat.messages event's messages (a batch of the room's, in seq order): each as
        `message` takes it."""
        for event in events:
            self.message(event)

    @sides.on_loop
    def resync(self):
        """Send what was stored since the last message sent, and the changes since the last
        change (after Redis restarted)."""
        if self.stopped or not self.started:
            return  # the start reads it
        self._resync_changes()
        self._resync_messages()

    @sides.on_loop
    def catch_up_to(self, seq: int, change: int) -> bool:
        """Read what the socket was not sent of the room's messages up to `seq` and changes
        up to `change` (its newest a round ago: a broadcast lost with none after it);
        whether it was behind."""
        if self.stopped or not self.started:
            return False  # the start reads it
        changes_behind = self._read_changes is not None and self.last_change < change
        messages_behind = self.last < seq
        if changes_behind:
            self._resync_changes()
        if messages_behind:
            self._resync_messages()
        return changes_behind or messages_behind

    @sides.on_loop
    def _resync_changes(self):
        if self._read_changes is not None and not self.reading_changes:
            self._fill_change_gap()

    @sides.on_loop
    def _resync_messages(self):
        if self.reading:
            self.resync_wanted = True
            return
        self._start_read(self.recovery_limit + 1)

    @sides.on_loop
    def stop(self):
        """The socket left: send nothing more, and let the timer go."""
        self.stopped = True
        self.held.clear()
        self.held_changes.clear()
        self.waiting_changes.clear()
        self._cancel_timer()

    # --- Inside ----------------------------------------------------------------------------

    @sides.on_loop
    def _gap_timer_fired(self):
        """A held message waited long enough: the layer dropped what it waits for."""
        self.timer = None
        if self.stopped:
            return
        if (self.held or self.waiting_changes) and not self.reading:
            self._fill_gap()  # a change's message not come is a gap in messages too
        if self.held_changes and not self.reading_changes and self._read_changes is not None:
            self._fill_change_gap()

    @sides.on_loop
    def _fill_gap(self):
        """Read up to the newest held message, or message a change waits for (at most the
        bound, and one more)."""
        metrics.GAPS_FILLED.inc()
        self._cancel_timer()
        newest = max([*self.held, *(event["id"] for event in self.waiting_changes)])
        self._start_read(min(newest - self.last, self.recovery_limit + 1))

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
        else:
            self._arm_timer_for_changes()

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
        self._deliver_changes()
        if not self.held and not self.held_changes and not self.waiting_changes:
            self._cancel_timer()

    @sides.on_loop
    def _cancel_timer(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
