"""Each event loop's shared state, in one registry: one LoopState per loop, found by
of_loop, as channels_redis's pubsub layer keeps one layer per loop (`_get_layer`).

A process has one loop in production; tests make one per test. Every part of a loop's
state (its channel-layer slots, its batch of calls for the sync thread, that batch's
outbox and the messages it stores, its lane of bulk jobs, its upkeep) lives here, made by
its owner on first use, and goes with the loop.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import os
import threading
import time
import weakref
from typing import Any

from asgiref.sync import SyncToAsync

# The share of the latest time in a queue's recent time per call (QueueWait.took): a few
# calls' worth of memory, so that one slow call (a lock held) is not taken for a trend.
RECENT_CALL_WEIGHT = 0.2


class QueueWait:
    """How long a queue of calls served one after another makes them wait: the oldest call's
    wait so far, or the calls' work at the recent time per call, whichever is longer.

    Under overload each call (or batch) takes longer than the one before it gathered: a
    bound on the oldest call's wait alone would let the queue, and every call's wait, grow
    with the overload. The store's queue (chat.pipeline) and the channel layer's
    (mysite.channel_layers) are estimated here, the same way.
    """

    __slots__ = ("call_seconds",)

    def __init__(self):
        self.call_seconds = 0.0  # what a call has recently taken, on average (seconds)

    def took(self, seconds: float):
        """Count a call's time (or a batch's time per call) in the recent time per call."""
        self.call_seconds += RECENT_CALL_WEIGHT * (seconds - self.call_seconds)

    def waited(self, oldest_since: float | None, count: int, ahead: float = 0.0) -> float:
        """The wait of a call behind `count` calls, the oldest queued at `oldest_since`
        (time.monotonic(); None when none waits), and `ahead` seconds of work before them."""
        oldest = 0.0 if oldest_since is None else time.monotonic() - oldest_since
        return max(oldest, ahead + count * self.call_seconds)


class LoopState:
    """What the modules that serve one loop share about it; None until its owner makes it."""

    __slots__ = (
        "layer_slots",
        "layer_calls",
        "batches",
        "outbox",
        "after_batch",
        "posts",
        "lane",
        "upkeep",
        "limits",
        "return_slots",
        "__weakref__",
    )

    def __init__(self):
        self.layer_slots: asyncio.Semaphore | None = None  # mysite.channel_layers
        self.layer_calls: Any = None  # mysite.channel_layers: its calls not done yet
        self.batches: Any = None  # chat.pipeline: calls for the sync thread
        # chat.pipeline: while the loop's batch runs, what its calls hand to the loop.
        self.outbox: list | None = None
        # chat.pipeline: while the loop's batch runs, what its calls asked to run at its end.
        self.after_batch: list | None = None
        self.posts: list = []  # chat.commits: messages waiting for their batch's commit
        self.lane: Any = None  # chat.pipeline: bulk jobs, one at a time
        self.upkeep: Any = None  # chat.upkeep
        self.limits: dict | None = None  # chat.limits: Redis URL -> client and limiter
        self.return_slots: Any = None  # chat.overload: when refused senders come back


# Values never hold their loop, or it would never go.
_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = (
    weakref.WeakKeyDictionary()
)


def of_loop(loop: asyncio.AbstractEventLoop | None = None) -> LoopState:
    """The state of `loop` (by default the running one), made on first use."""
    if loop is None:
        loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = LoopState()
    return state


def in_a_servers_request_thread() -> bool:
    """Whether this thread was started by sync_to_async from a running server's loop, where
    async_to_sync hands work back to that loop (asgiref keeps it in SyncToAsync.threadlocal)."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return (
        loop is not None
        and getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid()
    )


_outside_loop: asyncio.AbstractEventLoop | None = None
_outside_loop_lock = threading.Lock()


def outside_loop() -> asyncio.AbstractEventLoop:
    """The process's loop for sync code that runs outside any server's (a management
    command, a script, a WSGI request), in a daemon thread started on first use.

    One for the process, for ever: async_to_sync would start a loop per call, and the
    channel layer (one per loop, channels_redis's pubsub) a Redis connection with it.
    """
    global _outside_loop
    with _outside_loop_lock:
        if _outside_loop is None or _outside_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="chat-outside-loop", daemon=True).start()
            _outside_loop = loop
        return _outside_loop
