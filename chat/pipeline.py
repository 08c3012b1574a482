"""Handing work between the event loop and the sync consumers' one thread, cheaply.

The sync handlers of every socket in a process run one at a time on one thread. Waiting
for the loop after every frame (what async_to_sync does) made that thread the bottleneck;
hand_to_loop queues the work on the loop, in call order, and returns at once. The other
way, one room message reaches many sockets of a process at once, and a hop to the thread
per socket cost more than the handlers: call_batched runs them in one hop. Bulk work that
must not hold everyone else up (catch-up pages) waits its turn: call_in_turn runs such
calls one per batch.
"""

import asyncio
import collections
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Coroutine
from typing import Any

from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)

# Broadcasts in flight per process: each holds a Redis connection, and channels_redis's
# pool (100 by default) raises MaxConnectionsError instead of waiting when it runs out.
BROADCASTS_IN_FLIGHT = 16
_broadcast_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_batch_in_progress = threading.local()  # on the sync thread: the running batch's outbox


def hand_to_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]):
    """From another thread: run the coroutine on the loop after what was handed before it."""
    outbox = getattr(_batch_in_progress, "outbox", None)
    if outbox is not None:
        outbox.append(coroutine)  # handed over with the rest of its batch's, at its end
    else:
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

    It joins the batch of handlers due then (call_batched), so it never runs alongside a
    handler of the consumer it belongs to, and its frames go out with the batch's.
    """

    def start():
        _start_logged_task(loop, call_batched(function, *args))

    loop.call_soon_threadsafe(loop.call_later, delay, start)


class _LoopBatches:
    """One loop's calls for the sync thread: one batch runs at a time, the next gathers.

    While a batch runs, the sync thread is busy anyway: calls made meanwhile wait in the
    next batch, so the busier the process, the fewer hops per call.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiting: list = []
        self.busy = False

    async def call(self, function, args: tuple):
        done = self.loop.create_future()
        self.waiting.append((function, args, done))
        if not self.busy:
            self.busy = True
            self._start_soon()
        await done

    def _start_soon(self):
        # After every task this iteration woke, so they all join the batch. In a fresh
        # context: asgiref refuses a sync call from a context already inside one.
        self.loop.call_soon(self._start, context=contextvars.Context())

    def _start(self):
        calls, self.waiting = self.waiting, []
        _start_logged_task(self.loop, self._run(calls))

    async def _run(self, calls: list):
        try:
            errors = await database_sync_to_async(_call_each)(self.loop, calls)
        except BaseException as error:
            # Not one call's failure (those come back as errors): none of them is known to
            # have run, or to ever run. Their callers must not wait for ever.
            errors = [error] * len(calls)
            raise
        finally:
            _settle(calls, errors)
            if self.waiting:
                self._start_soon()
            else:
                self.busy = False


_loop_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Lane:
    """One loop's bulk calls: one at a time, each followed by a pause as long as it took.

    A batch with ten sockets' catch-up pages in it would hold every other handler of the
    process up for all ten; in the lane, a live message waits for one page at most, and
    the pauses leave the process at least half its time for everything else.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiting: collections.deque = collections.deque()
        self.running = False

    def add(self, function, args: tuple):
        self.waiting.append((function, args))
        if not self.running:
            self.running = True
            _start_logged_task(self.loop, self._run())

    async def _run(self):
        try:
            while self.waiting:
                function, args = self.waiting.popleft()
                started = time.perf_counter()
                try:
                    await call_batched(function, *args)
                except Exception as error:  # that call's failure only: the lane goes on
                    logger.warning("call in turn failed: %r", error)
                await asyncio.sleep(time.perf_counter() - started)
        finally:
            self.running = False


_lanes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def call_in_turn(loop: asyncio.AbstractEventLoop, function, *args):
    """From the sync thread: run function(*args) there later, one such call per batch."""
    loop.call_soon_threadsafe(_add_to_lane, loop, function, args)


def _add_to_lane(loop: asyncio.AbstractEventLoop, function, args: tuple):
    if loop not in _lanes:
        _lanes[loop] = _Lane(loop)
    _lanes[loop].add(function, args)


async def call_batched(function, *args):
    """Run function(*args) on the sync thread, in one hop with the calls made alongside.

    Returns (or raises) once it ran, like database_sync_to_async; calls run in the order
    they were made, and never alongside another sync handler.
    """
    loop = asyncio.get_running_loop()
    if loop not in _loop_batches:
        _loop_batches[loop] = _LoopBatches(loop)
    await _loop_batches[loop].call(function, args)


def _settle(calls: list, errors: list[BaseException | None]):
    """Wake each caller with its call's outcome."""
    for (_, _, done), error in zip(calls, errors, strict=True):
        if done.done():
            continue  # its caller was cancelled
        if error is None:
            done.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(error)


def _call_each(loop: asyncio.AbstractEventLoop, calls: list) -> list[BaseException | None]:
    """On the sync thread: every call in order, each one's failure kept for its caller.

    What they hand to the loop goes in one hand-off, not one each: a room message sends a
    frame to every socket of the batch, and each hand-off wakes the loop.
    """
    errors: list[BaseException | None] = []
    _batch_in_progress.outbox = outbox = []
    try:
        for function, args, _ in calls:
            try:
                function(*args)
            except Exception as error:
                errors.append(error)
            else:
                errors.append(None)
    finally:
        _batch_in_progress.outbox = None
        if outbox:
            loop.call_soon_threadsafe(_start_each, loop, outbox)
    return errors


def _start_each(loop: asyncio.AbstractEventLoop, coroutines: list[Coroutine[Any, Any, Any]]):
    # A task each, started in order: a broadcast that waits for Redis must not hold back
    # the frames handed after it, nor let a later batch's frames overtake them.
    for coroutine in coroutines:
        _start_logged_task(loop, coroutine)


def _start_logged_task(loop: asyncio.AbstractEventLoop, coroutine):
    loop.create_task(coroutine).add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task):
    """A failed hand-off is logged once, on one line: the message is stored either way."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("handed-off send failed: %r", task.exception())
