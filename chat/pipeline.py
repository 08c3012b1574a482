"""Handing work from the sync consumer's thread to the event loop without waiting for it.

The sync handlers of every socket in a process run one at a time on one thread. Waiting
for the loop after every frame (what async_to_sync does) made that thread the bottleneck;
these functions queue the work on the loop, in call order, and return at once.
"""

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Coroutine
from typing import Any

from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)

# Broadcasts in flight per process: each holds a Redis connection, and channels_redis's
# pool (100 by default) raises MaxConnectionsError instead of waiting when it runs out.
BROADCASTS_IN_FLIGHT = 16
_broadcast_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hand_to_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]):
    """From another thread: run the coroutine on the loop after what was handed before it."""
    loop.call_soon_threadsafe(_start_logged_task, loop, coroutine)


async def broadcast(channel_layer, group: str, event: dict[str, Any]):
    """group_send once one of this loop's BROADCASTS_IN_FLIGHT slots is free."""
    loop = asyncio.get_running_loop()
    if loop not in _broadcast_slots:
        _broadcast_slots[loop] = asyncio.Semaphore(BROADCASTS_IN_FLIGHT)
    async with _broadcast_slots[loop]:
        await channel_layer.group_send(group, event)


def call_later_on_sync_thread(loop: asyncio.AbstractEventLoop, delay: float, function, *args):
    """From the sync thread: run function(*args) on that same thread after `delay` seconds.

    Sync consumers all run on asgiref's one thread per process, so the function never runs
    alongside a handler of the consumer it belongs to.
    """

    def start():
        _start_logged_task(loop, database_sync_to_async(function)(*args))

    # In a fresh context: the sync thread's own says a sync call is in progress, and asgiref
    # would refuse the new one ("would deadlock").
    loop.call_soon_threadsafe(loop.call_later, delay, start, context=contextvars.Context())


def _start_logged_task(loop: asyncio.AbstractEventLoop, coroutine):
    loop.create_task(coroutine).add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task):
    """A failed hand-off is logged once, on one line: the message is stored either way."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("handed-off send failed: %r", task.exception())
