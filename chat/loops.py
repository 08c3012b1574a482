"""Each event loop's shared state, in one registry: one LoopState per loop, found by
of_loop, as channels_redis's pubsub layer keeps one layer per loop (`_get_layer`).

A process has one loop in production; tests make one per test. Every part of a loop's
state (its channel-layer slots, its batch of calls for the sync thread and that batch's
outbox, its lane of bulk jobs, its upkeep) lives here, made by its owner on first use,
and goes with the loop.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import weakref
from typing import Any


class LoopState:
    """What the modules that serve one loop share about it; None until its owner makes it."""

    __slots__ = ("layer_slots", "batches", "outbox", "lane", "upkeep", "limits", "__weakref__")

    def __init__(self):
        self.layer_slots: asyncio.Semaphore | None = None  # mysite.channel_layers
        self.batches: Any = None  # chat.pipeline: calls for the sync thread
        # chat.pipeline: while the loop's batch runs, what its calls hand to the loop.
        self.outbox: list | None = None
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
