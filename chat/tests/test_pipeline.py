"""Handing work between the loop and the sync thread: order, batches, failures, bounds."""

import asyncio
import logging
import threading

from channels.db import database_sync_to_async

from chat import pipeline


async def test_handed_coroutines_run_in_the_order_they_were_handed():
    loop = asyncio.get_running_loop()
    ran = []

    async def record(number: int):
        ran.append(number)

    def hand_from_a_thread():
        for number in range(50):
            pipeline.hand_to_loop(loop, record(number))

    await loop.run_in_executor(None, hand_from_a_thread)
    await asyncio.sleep(0.05)
    assert ran == list(range(50))


async def test_a_failed_hand_off_is_logged_once_without_a_traceback(caplog):
    loop = asyncio.get_running_loop()

    async def fail():
        raise ConnectionError("redis is gone")

    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        await loop.run_in_executor(None, pipeline.hand_to_loop, loop, fail())
        await asyncio.sleep(0.05)
    assert [record.getMessage() for record in caplog.records] == [
        "handed-off send failed: ConnectionError('redis is gone')"
    ]
    assert not [record for record in caplog.records if record.exc_info]


async def test_broadcasts_in_flight_are_bounded():
    in_flight, most = 0, 0

    class SlowLayer:
        async def group_send(self, group, event):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    layer = SlowLayer()
    await asyncio.gather(*(pipeline.broadcast(layer, "g", {}) for _ in range(100)))
    assert most == pipeline.BROADCASTS_IN_FLIGHT


async def test_calls_made_together_run_in_one_hop_in_order_on_the_sync_thread(monkeypatch):
    hops, ran = [], []
    call_each = pipeline._call_each

    def counting_call_each(loop, calls):
        hops.append(len(calls))
        return call_each(loop, calls)

    monkeypatch.setattr(pipeline, "_call_each", counting_call_each)
    await asyncio.gather(
        *(
            pipeline.call_batched(lambda n: ran.append((n, threading.get_ident())), n)
            for n in range(20)
        )
    )
    sync_thread = await database_sync_to_async(threading.get_ident)()
    assert hops == [20]
    assert ran == [(n, sync_thread) for n in range(20)]


async def test_a_failing_call_raises_in_its_caller_only():
    ran = []

    def fail(number):
        raise ValueError(f"bad {number}")

    results = await asyncio.gather(
        pipeline.call_batched(ran.append, 1),
        pipeline.call_batched(fail, 2),
        pipeline.call_batched(ran.append, 3),
        return_exceptions=True,
    )
    assert ran == [1, 3]
    assert results[0] is None and results[2] is None
    assert repr(results[1]) == "ValueError('bad 2')"


async def test_a_cancelled_caller_leaves_the_others_of_its_batch_alone():
    ran = []
    first = asyncio.ensure_future(pipeline.call_batched(ran.append, 1))
    second = asyncio.ensure_future(pipeline.call_batched(ran.append, 2))
    await asyncio.sleep(0)  # both joined the batch
    first.cancel()
    await second
    assert ran == [1, 2]  # a call that joined a batch still runs, as a sync handler would
    assert first.cancelled()


async def test_what_a_batch_hands_to_the_loop_runs_in_order_and_one_failure_stops_nothing(caplog):
    loop = asyncio.get_running_loop()
    sent = []

    async def send(number: int):
        if number == 3:
            raise ConnectionError("socket gone")
        sent.append(number)

    def handler(first: int):
        for number in (first, first + 1):
            pipeline.hand_to_loop(loop, send(number))

    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        await asyncio.gather(*(pipeline.call_batched(handler, first) for first in (0, 2, 4)))
        await asyncio.sleep(0.05)
    assert sent == [0, 1, 2, 4, 5]
    assert [record.getMessage() for record in caplog.records] == [
        "handed-off send failed: ConnectionError('socket gone')"
    ]


async def test_a_handed_coroutine_that_waits_holds_back_nothing_handed_after_it():
    loop = asyncio.get_running_loop()
    order = []

    async def wait_then_record(label: str):
        await asyncio.sleep(0.05)  # a broadcast waiting for Redis
        order.append(label)

    async def record(label: str):
        order.append(label)

    def first_handler():
        pipeline.hand_to_loop(loop, wait_then_record("broadcast"))
        pipeline.hand_to_loop(loop, record("frame 1"))

    def second_handler():
        pipeline.hand_to_loop(loop, record("frame 2"))

    await pipeline.call_batched(first_handler)
    await pipeline.call_batched(second_handler)
    await asyncio.sleep(0.1)
    assert order == ["frame 1", "frame 2", "broadcast"]


async def test_calls_in_turn_run_one_per_batch_and_let_other_calls_go_between():
    loop = asyncio.get_running_loop()
    ran = []
    all_done = asyncio.Event()

    def page(number: int):
        ran.append(f"page {number}")
        if number == 0:  # while the first page runs, a live message comes in
            pipeline.hand_to_loop(loop, call_live())
        if number == 2:
            loop.call_soon_threadsafe(all_done.set)

    async def call_live():
        await pipeline.call_batched(ran.append, "live")

    def queue_pages():
        for number in range(3):
            pipeline.call_in_turn(loop, page, number)

    await loop.run_in_executor(None, queue_pages)
    await asyncio.wait_for(all_done.wait(), 5)
    assert ran == ["page 0", "live", "page 1", "page 2"]


async def test_a_failed_call_in_turn_is_logged_and_the_next_one_runs(caplog):
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def fail():
        raise ValueError("broken page")

    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        pipeline.call_in_turn(loop, fail)
        pipeline.call_in_turn(loop, loop.call_soon_threadsafe, done.set)
        await asyncio.wait_for(done.wait(), 5)
    assert [record.getMessage() for record in caplog.records] == [
        "call in turn failed: ValueError('broken page')"
    ]
