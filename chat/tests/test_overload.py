"""Shedding load: the refused senders' slots to come back in, and the hints that tell them."""

import pytest

from chat import overload, pipeline

# What one message recently cost the process, as the tests set it (seconds).
PER_MESSAGE = 0.004


@pytest.fixture(autouse=True)
async def no_sender_refused_yet():
    """Each test starts with no slot given on its loop."""
    overload.clear_for_testing()


@pytest.fixture
def drain(monkeypatch):
    """The process drains a message every PER_MESSAGE seconds, whatever ran before."""
    monkeypatch.setattr(pipeline, "drain_seconds_per_call", lambda: PER_MESSAGE)


def queues(monkeypatch, store: float, calls_ahead: int, layer: float):
    """The store's queue waits `store` s with `calls_ahead` calls; the layer's, `layer` s with
    nothing made, and PER_MESSAGE a call."""
    monkeypatch.setattr(pipeline, "store_queue_seconds", lambda: store)
    monkeypatch.setattr(pipeline, "store_queue_calls", lambda: calls_ahead)
    monkeypatch.setattr(
        pipeline, "layer_queue_seconds", lambda behind=0: max(layer, behind * PER_MESSAGE)
    )


async def test_a_message_waits_to_be_stored_then_for_the_broadcasts_ahead_of_it(monkeypatch):
    queues(monkeypatch, store=0.3, calls_ahead=10, layer=0.2)
    assert overload.path_wait() == pytest.approx(0.5)


async def test_a_message_waits_for_the_broadcasts_of_every_call_stored_ahead_of_it(monkeypatch):
    # Stored quickly, but behind 200 messages whose broadcasts go first, at 4 ms each.
    queues(monkeypatch, store=0.1, calls_ahead=200, layer=0.0)
    assert overload.path_wait() == pytest.approx(200 * PER_MESSAGE)


async def test_the_first_refused_sender_comes_back_when_the_queue_is_back_under_the_bound(
    drain, settings
):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    assert overload.return_slot(2.0, now=100.0) == pytest.approx(101.5)


async def test_refused_senders_come_back_one_drained_message_apart(drain, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    slots = [overload.return_slot(0.6, now=100.0) for _ in range(5)]
    first = 100.0 + overload.RETRY_AFTER_MIN_SECONDS  # the queue is nearly under the bound
    assert slots == pytest.approx([first + n * PER_MESSAGE for n in range(5)])
    # Once the slots are past, a sender refused then is not sent after them for nothing.
    assert overload.return_slot(0.6, now=200.0) == pytest.approx(first + 100)


async def test_a_sender_comes_back_after_every_message_refused_to_those_before_it(drain, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    first = overload.return_slot(0.6, now=100.0)
    for _ in range(9):  # nine more messages refused to that sender, each to come back
        overload.reserve_return()
    later = overload.return_slot(0.6, now=100.0)
    assert later == pytest.approx(first + 10 * PER_MESSAGE)
    # A sender back too soon with 20 refused messages: the next one comes after all of them.
    again = overload.return_slot(0.6, 20, now=100.0)
    assert overload.return_slot(0.6, now=100.0) == pytest.approx(again + 20 * PER_MESSAGE)


async def test_no_sender_is_told_to_wait_longer_than_the_longest_hint(drain, settings):
    settings.CHAT_STORE_QUEUE_SECONDS = 0.5
    slot = overload.return_slot(1000.0, now=100.0)
    assert slot == 100.0 + overload.RETRY_AFTER_MAX_SECONDS


def test_a_hint_is_never_before_its_slot_and_at_most_one_step_after_it():
    step = overload.RETRY_AFTER_STEP_SECONDS
    hints = {overload.retry_after(100.123, now=100.0) for _ in range(200)}
    assert hints == {0.13, 0.14}  # spread over the step after the slot, so not all at once
    assert overload.retry_after(99.0, now=100.0) == step  # a slot just past: at once
