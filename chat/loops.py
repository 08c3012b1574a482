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
import weakref
from typing import Any

from asgiref.sync import SyncToAsync


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
