"""Shedding load: the refused senders' slots to come back in, and the hints that tell them."""

import pytest

from chat import overload, pipeline

# What one message recently cost the process, as the tests set it (seconds).
PER_MESSAGE = 0.004


@pytest.fixture
def drain(monkeypatch):
    """The process drains a message every PER_MESSAGE seconds, whatever ran before."""
    monkeypatch.setattr(pipeline, "drain_seconds_per_call", lambda: PER_MESSAGE)


async def test_the_first_refused_sender_comes_back_when_the_queue_is_back_under_the_bound(
    drain, settings
):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    assert overload.return_slot(waited=2.0, now=100.0) == pytest.approx(101.5)


async def test_refused_senders_come_back_one_drained_message_apart(drain, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    slots = [overload.return_slot(waited=0.6, now=100.0) for _ in range(5)]
    first = 100.0 + overload.RETRY_AFTER_MIN_SECONDS  # the queue is nearly under the bound
    assert slots == pytest.approx([first + n * PER_MESSAGE for n in range(5)])
    # Once the slots are past, a sender refused then is not sent after them for nothing.
    assert overload.return_slot(waited=0.6, now=200.0) == pytest.approx(first + 100)


async def test_no_sender_is_told_to_wait_longer_than_the_longest_hint(drain, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    slot = overload.return_slot(waited=1000.0, now=100.0)
    assert slot == 100.0 + overload.RETRY_AFTER_MAX_SECONDS


def test_a_hint_is_never_before_its_slot_and_at_most_one_step_after_it():
    step = overload.RETRY_AFTER_STEP_SECONDS
    hints = {overload.retry_after(100.123, now=100.0) for _ in range(200)}
    assert hints == {0.13, 0.14}  # spread over the step after the slot, so not all at once
    assert overload.retry_after(99.0, now=100.0) == step  # a slot just past: at once
