"""Shedding load: when a message may join its path's queues, and when a refused sender returns.

A message accepted now waits in two queues of its process: in front of the store
(chat.pipeline.store_queue_seconds), then, stored, behind the broadcasts waiting for
Redis (chat.pipeline.layer_queue_seconds). Over CHAT_STORE_QUEUE_SECONDS together it is
refused as `overloaded`, and its sender is told when to send again from what the process
drains: once the queue is back under the bound, each refused sender in a slot of its own,
one message's recent drain time after the slot before, so that they neither come back all
at once (to be refused again) nor after the queue ran dry (the process idle while they
wait, as it was when clients doubled a fixed guess).

Explained in docs/protocol.md, 'Error codes'.
"""

import math
import random
import time

from django.conf import settings

from . import loops, pipeline, sides

# A retry hint's step (seconds): refused senders get slots a few milliseconds apart (what a
# message costs a busy process), so a coarser step would send dozens back at once.
RETRY_AFTER_STEP_SECONDS = 0.01
# The soonest return: a refusal's round trip and one batch of the sync thread, which a
# queue at the bound outlasts; sooner, a sender would mostly meet the same queue.
RETRY_AFTER_MIN_SECONDS = 0.1
# The latest return: a process whose schedule of returns reaches further than this drains
# almost nothing, and its senders ask again then (the room page waits no longer either).
RETRY_AFTER_MAX_SECONDS = 15.0


class ReturnSlots:
    """One loop's schedule of refused senders' returns (in chat.loops)."""

    __slots__ = ("next_free",)

    def __init__(self):
        self.next_free = -math.inf  # the next sender's slot starts here (time.monotonic())


@sides.on_loop
def path_wait() -> float:
    """How long a message accepted now would wait in this process's queues (seconds).

    Its wait to be stored and the broadcasts' queue's then, or, if the broadcasts are the
    slower, theirs with the broadcasts of every call ahead of it for the sync thread (each
    may be a message): they join the layer's queue before its own.
    """
    layer = pipeline.layer_queue_seconds
    return max(
        pipeline.store_queue_seconds() + layer(),
        layer(behind=pipeline.store_queue_calls()),
    )


@sides.on_loop
def return_slot(waited: float, messages: int = 1, now: float | None = None) -> float:
    """When a sender refused now, the queue having waited `waited`, should send again its
    `messages` refused messages.

    A time.monotonic(): its own slot, after the queue is back under the bound (and not
    before RETRY_AFTER_MIN_SECONDS) and after the messages of the senders refused before
    it, at the recent drain time per message (pipeline.drain_seconds_per_call): a client
    comes back with all it was refused, not one.
    """
    now = time.monotonic() if now is None else now
    slots = _slots()
    back_under = max(waited - settings.CHAT_STORE_QUEUE_SECONDS, RETRY_AFTER_MIN_SECONDS)
    slot = min(max(now + back_under, slots.next_free), now + RETRY_AFTER_MAX_SECONDS)
    slots.next_free = slot + messages * pipeline.drain_seconds_per_call()
    return slot


@sides.on_loop
def reserve_return():
    """One more message refused to a sender that has its slot: it will send it again then,
    so the senders refused after it come back one message's drain time later."""
    _slots().next_free += pipeline.drain_seconds_per_call()


def _slots() -> ReturnSlots:
    state = loops.of_loop()
    if state.return_slots is None:
        state.return_slots = ReturnSlots()
    return state.return_slots


def retry_after(slot: float, now: float | None = None) -> float:
    """The hint for a return at `slot` (seconds from now): rounded up to the step, plus up to
    one step at random, so that senders whose slots fall in one step come back spread over it."""
    now = time.monotonic() if now is None else now
    steps = math.ceil(max(slot - now, 0.0) / RETRY_AFTER_STEP_SECONDS + random.random())
    return round(max(steps, 1) * RETRY_AFTER_STEP_SECONDS, 2)


@sides.on_loop
def clear_for_testing():
    """Forget this loop's schedule of returns."""
    loops.of_loop().return_slots = None
