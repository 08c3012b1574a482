"""Handing work between the event loop and the sync consumers' one thread, cheaply.

The sync handlers of every socket in a process run one at a time on one thread. Waiting
for the loop after every frame (what async_to_sync does) made that thread the bottleneck;
hand_to_loop queues a call on the loop, in call order, and returns at once; a socket's
frames go out in order through its FrameQueue. The other way, many sockets' frames (and
their gap fills) arrive at once, and a hop to the thread per call cost more than the
calls: call_batched runs them in one hop. Bulk work that must not hold everyone else up
(the messages endpoint's pages of history, chat.paced) waits its turn: run_in_turn runs
such jobs one at a time, paced.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from channels.db import database_sync_to_async

from . import loops, sides

logger = logging.getLogger(__name__)

# How long one socket's frames may hold the loop before it serves the others. A join's
# history or a recovery of 50 large messages takes about 1.5 ms to send; a live message
# waits 0.5 ms at most.
SEND_SLICE_SECONDS = 0.0005
# A bulk job (a page of history for the messages endpoint: read and encoded) is followed by
# a pause this many times as long as it took, so bulk work gets at most 1 / (1 + factor) of
# the process (benchmarks/catch_up.py).
BULK_PAUSE_FACTOR = 1.0


@sides.on_sync_thread
def hand_to_loop(loop: asyncio.AbstractEventLoop, function: Callable[..., Any], *args):
    """Call function(*args) on the loop after what was handed before it.

    While the loop's batch runs (call_batched: its calls are then the only sync code of the
    loop running), the call goes in the batch's outbox (loops.LoopState.outbox), handed
    over with the rest at its end: each hand-off wakes the loop.
    """
    outbox = loops.of_loop(loop).outbox
    if outbox is not None:
        outbox.append((function, args))
    else:
        loop.call_soon_threadsafe(_call_logged, function, args)


@sides.on_sync_thread
def after_batch(loop: asyncio.AbstractEventLoop, function: Callable[..., Any], *args):
    """Call function(*args) here once every call of the loop's running batch has run.

    It runs as part of the call that asked: what it raises is that call's failure. Calls
    can so gather their work and do it together (chat.commits stores a batch's messages
    in one transaction). Outside a batch, or from a call that runs at a batch's end, the
    call runs at once.
    """
    deferred = loops.of_loop(loop).after_batch
    if deferred is None:
        function(*args)
    else:
        deferred.append((function, args))


@sides.on_loop
def start_logged_task(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run the coroutine as a task whose failure is logged, on one line."""
    task = asyncio.get_running_loop().create_task(coroutine)
    task.add_done_callback(_log_failure)
    return task


class FrameQueue:
    """One socket's outbound ASGI messages, sent in order by one task at a time, on the loop.

    Frames queued from the loop and from the sync thread (through hand_to_loop) share it,
    so they leave in the order they were queued, without a task per frame. A long queue (a
    join's history, a recovery) is sent in slices of SEND_SLICE_SECONDS, letting the loop
    serve other sockets between them.
    """

    __slots__ = ("_send", "_waiting", "_broken", "_task")

    def __init__(self, send: Callable[[dict], Coroutine[Any, Any, Any]]):
        self._send = send
        # While a task sends: what waits behind its frame. None when idle, as most sockets
        # are most of the time: an empty deque would cost each of them 600 bytes.
        self._waiting: collections.deque[dict] | None = None
        self._broken = False  # a send failed: the connection is gone, and so is the rest
        self._task: asyncio.Task | None = None  # the task sending, while there is one

    @sides.on_loop
    def put(self, message: dict):
        """Send message after those queued before it."""
        if self._broken:
            return
        if self._waiting is None:
            self._waiting = collections.deque((message,))
            self._task = start_logged_task(self._drain(self._waiting))
        else:
            self._waiting.append(message)

    async def _drain(self, waiting: collections.deque[dict]):
        try:
            slice_ends = time.perf_counter() + SEND_SLICE_SECONDS
            while waiting:
                await self._send(waiting[0])
                waiting.popleft()
                if waiting and time.perf_counter() > slice_ends:
                    await asyncio.sleep(0)  # the loop's other sockets, then the rest
                    slice_ends = time.perf_counter() + SEND_SLICE_SECONDS
        except BaseException:
            self._broken = True
            raise  # logged once, by start_logged_task
        finally:
            self._waiting = self._task = None


class _LoopBatches:
    """One loop's calls for the sync thread: one batch runs at a time, the next gathers.

    While a batch runs, the sync thread is busy anyway: calls made meanwhile wait in the
    next batch, so the busier the process, the fewer hops per call.
    """

    def __init__(self):
        self.waiting: list = []
        self.busy = False
        # When the oldest call of `waiting` joined it (time.monotonic()); None while empty.
        self.waiting_since: float | None = None
        self.wait = loops.QueueWait()  # of the calls waiting for the sync thread
        # When the running batch started (time.monotonic()), and how many calls it has.
        self.running_since = 0.0
        self.running = 0

    @sides.on_loop
    def submit(self, function, args: tuple) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        if not self.waiting:
            self.waiting_since = time.monotonic()
        self.waiting.append((function, args, done))
        if not self.busy:
            self.busy = True
            self._start_soon()
        return done

    @sides.on_loop
    def waited(self) -> float:
        """How long a call made now waits for the sync thread: the waiting calls' wait, with
        what is left of the running batch ahead of them at the recent time per call (a call
        made now waits for it to end too, and a bound blind to it let one batch's time in)."""
        running_left = self.running_since + self.running * self.wait.call_seconds
        ahead = max(running_left - time.monotonic(), 0.0)
        return self.wait.waited(self.waiting_since, len(self.waiting), ahead)

    @sides.on_loop
    def calls_ahead(self) -> int:
        """How many calls a call made now comes after: the running batch's and the waiting."""
        return self.running + len(self.waiting)

    @sides.on_loop
    def _start_soon(self):
        # After every task this iteration woke, so they all join the batch. In a fresh
        # context: asgiref refuses a sync call from a context already inside one.
        asyncio.get_running_loop().call_soon(self._start, context=contextvars.Context())

    @sides.on_loop
    def _start(self):
        calls, self.waiting, self.waiting_since = self.waiting, [], None
        self.running_since, self.running = time.monotonic(), len(calls)
        start_logged_task(self._run(calls))

    async def _run(self, calls: list):
        outcomes: list = []
        try:
            outcomes = await database_sync_to_async(_call_each)(asyncio.get_running_loop(), calls)
            self.wait.took((time.monotonic() - self.running_since) / len(calls))
        except BaseException as error:
            # Not one call's failure (those come back as outcomes): none of them is known
            # to have run, or to ever run. Their callers must not wait for ever.
            outcomes = [(None, error)] * len(calls)
            raise
        finally:
            self.running = 0
            _settle(calls, outcomes)
            if self.waiting:
                self._start_soon()
            else:
                self.busy = False


class _Lane:
    """One loop's bulk jobs: one at a time, each followed by a pause as long as it took.

    Ten readers' pages of history at once would hold every other socket of the process up
    for all ten; in the lane, a live message waits for one page at most, and the pauses
    leave the process at least half its time for everything else.
    """

    def __init__(self):
        self.waiting: collections.deque = collections.deque()
        self.running = False

    async def run(self, job, args: tuple):
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((job, args, done))
        if not self.running:
            self.running = True
            start_logged_task(self._run())
        return await done

    async def _run(self):
        try:
            while self.waiting:
                job, args, done = self.waiting.popleft()
                if done.done():
                    continue  # its caller was cancelled
                started = time.perf_counter()
                try:
                    result = await job(*args)
                except Exception as error:  # that job's failure only: the lane goes on
                    if not done.done():
                        done.set_exception(error)
                else:
                    if not done.done():
                        done.set_result(result)
                await asyncio.sleep((time.perf_counter() - started) * BULK_PAUSE_FACTOR)
        finally:
            self.running = False


async def run_in_turn(job: Callable[..., Coroutine[Any, Any, Any]], *args):
    """`await job(*args)` when its turn comes, after the bulk jobs before it.

    Returns its result (or raises its failure). The job's time counts from its start to
    its end.
    """
    state = loops.of_loop()
    if state.lane is None:
        state.lane = _Lane()
    return await state.lane.run(job, args)


async def call_batched(function, *args):
    """Run function(*args) on the sync thread, in one hop with the calls made alongside.

    Returns its result (or raises) once it ran, like database_sync_to_async; calls run in
    the order they were made, and never alongside another sync handler.
    """
    return await submit_batched(function, *args)


@sides.on_loop
def submit_batched(function, *args) -> asyncio.Future:
    """Queue function(*args) for the sync thread as call_batched does, without waiting.

    Returns the future of its outcome; the call keeps its place in the order of calls.
    """
    return _batches().submit(function, args)


@sides.on_loop
def store_queue_seconds() -> float:
    """How long the calls waiting for this loop's sync thread have waited, or will take there
    (seconds): the oldest one's wait so far, or the work ahead of a call made now (the
    running batch's rest, then the waiting calls) at the recent time per call."""
    return _batches().waited()


@sides.on_loop
def store_queue_calls() -> int:
    """How many calls for this loop's sync thread a call made now comes after."""
    return _batches().calls_ahead()


def _batches() -> _LoopBatches:
    state = loops.of_loop()
    if state.batches is None:
        state.batches = _LoopBatches()
    return state.batches


@sides.on_loop
def drain_seconds_per_call() -> float:
    """What a call has recently taken in the slower of a message's two queues (seconds): the
    sync thread's time per call, or the channel layer's."""
    calls = loops.of_loop().layer_calls
    return max(_batches().wait.call_seconds, 0.0 if calls is None else calls.wait.call_seconds)


@sides.on_loop
def layer_queue_seconds(behind: int = 0) -> float:
    """How long this loop's channel-layer calls not done yet have waited, or will take.

    The oldest one's wait so far, or the calls' work at the recent time per call, whichever
    is longer (seconds; 0 when none waits): a broadcast made now is done after all of them,
    and a burst of calls made at once has waited for nothing yet. With `behind` calls more
    made before it (the broadcasts of the messages stored ahead of one), their work too.
    The layers count their calls (mysite.channel_layers) in the loop's state.
    """
    calls = loops.of_loop().layer_calls
    return 0.0 if calls is None else calls.waited(behind)


async def call_batched_whole(function, *args):
    """call_batched, except that a cancelled caller first waits for the call to have run.

    Then the cancellation is raised. What the call does (a connect joining its room) is
    never left to happen after its caller gave up on it, as asgiref's sync_to_async, which
    channels runs handlers in, also waits.
    """
    call = asyncio.ensure_future(call_batched(function, *args))
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        if not call.done():
            await asyncio.wait([call])
        raise


@sides.on_loop
def _settle(calls: list, outcomes: list[tuple[Any, BaseException | None]]):
    """Wake each caller with its call's outcome."""
    for (_, _, done), (result, error) in zip(calls, outcomes, strict=True):
        if done.done():
            continue  # its caller was cancelled
        if error is None:
            done.set_result(result)
        elif isinstance(error, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(error)


@sides.on_sync_thread
def _call_each(loop: asyncio.AbstractEventLoop, calls: list) -> list:
    """Every call in order, each one's (result, failure) kept for its caller; then what
    they asked to run at the batch's end (after_batch), each as part of its call.

    What they hand to the loop goes in one hand-off, not one each: each hand-off wakes
    the loop.
    """
    outcomes: list[tuple[Any, BaseException | None]] = []
    state = loops.of_loop(loop)
    state.outbox = outbox = []
    state.after_batch = deferred = []
    askers: list[int] = []  # for each deferred call, the index of the call that asked
    try:
        for function, args, _ in calls:
            asked_before = len(deferred)
            try:
                outcomes.append((function(*args), None))
            except Exception as error:
                outcomes.append((None, error))
            askers.extend([len(outcomes) - 1] * (len(deferred) - asked_before))
        state.after_batch = None
        for asker, (function, args) in zip(askers, deferred, strict=True):
            try:
                function(*args)
            except Exception as error:
                if outcomes[asker][1] is None:  # the call's own failure comes first
                    outcomes[asker] = (None, error)
    finally:
        state.outbox = state.after_batch = None
        if outbox:
            loop.call_soon_threadsafe(_call_each_logged, outbox)
    return outcomes


@sides.on_loop
def _call_each_logged(calls: list[tuple[Callable[..., Any], tuple]]):
    # In order: a broadcast started first must not be overtaken by the frames after it.
    for function, args in calls:
        _call_logged(function, args)


@sides.on_loop
def _call_logged(function: Callable[..., Any], args: tuple):
    try:
        function(*args)
    except Exception as error:
        logger.warning("handed-off call failed: %r", error)


def _log_failure(task: asyncio.Task):
    """A failed hand-off is logged once, on one line: the message is stored either way."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("handed-off send failed: %r", task.exception())
