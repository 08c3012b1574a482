"""Handing work between the loop and the sync thread: order, batches, failures, bounds."""

import asyncio
import itertools
import logging
import threading
import time

import pytest
from channels.db import database_sync_to_async

from chat import pipeline
from chat.models import Room


async def test_handed_calls_run_on_the_loop_in_the_order_they_were_handed():
    loop = asyncio.get_running_loop()
    ran, all_ran = [], asyncio.Event()

    def record(number: int):
        ran.append((number, threading.get_ident()))
        if number == 49:
            all_ran.set()

    def hand_from_a_thread():
        for number in range(50):
            pipeline.hand_to_loop(loop, record, number)

    await loop.run_in_executor(None, hand_from_a_thread)
    await asyncio.wait_for(all_ran.wait(), 5)
    assert ran == [(number, threading.get_ident()) for number in range(50)]


async def test_a_failed_hand_off_is_logged_once_without_a_traceback(caplog):
    loop = asyncio.get_running_loop()
    after = asyncio.Event()

    def fail():
        raise ConnectionError("redis is gone")

    def hand_both():
        pipeline.hand_to_loop(loop, fail)
        pipeline.hand_to_loop(loop, after.set)

    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        await loop.run_in_executor(None, hand_both)
        await asyncio.wait_for(after.wait(), 5)
    assert [record.getMessage() for record in caplog.records] == [
        "handed-off call failed: ConnectionError('redis is gone')"
    ]
    assert not [record for record in caplog.records if record.exc_info]


async def test_a_frame_queue_sends_in_order_and_after_a_failed_send_sends_nothing(caplog):
    sent, failed = [], asyncio.Event()

    async def send(message: dict):
        await asyncio.sleep(0)  # a send that yields lets later puts queue up behind it
        if message["n"] == 2:
            failed.set()
            raise ConnectionError("socket gone")
        sent.append(message["n"])

    frames = pipeline.FrameQueue(send)
    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        for number in range(4):
            frames.put({"n": number})
        await asyncio.wait_for(failed.wait(), 5)
        frames.put({"n": 4})
        while not caplog.records:  # the failure is logged as its task ends
            await asyncio.sleep(0)
    assert sent == [0, 1]
    assert [record.getMessage() for record in caplog.records] == [
        "handed-off send failed: ConnectionError('socket gone')"
    ]


async def test_a_long_frame_queue_lets_the_loop_serve_others_between_slices():
    sent, others_ran_after = [], []

    all_sent = asyncio.Event()

    async def send(message: dict):
        time.sleep(0.0002)  # writing a large frame: the loop is held while it lasts
        sent.append(message["n"])
        if len(sent) == 50:
            all_sent.set()

    frames = pipeline.FrameQueue(send)
    for number in range(50):
        frames.put({"n": number})
    # Another socket's frame, ready on the loop just after the backlog was queued.
    asyncio.get_running_loop().call_soon(lambda: others_ran_after.append(len(sent)))
    await asyncio.wait_for(all_sent.wait(), 5)
    assert sent == list(range(50))
    # It ran after one slice (SEND_SLICE_SECONDS: 0.5 ms, a few of these frames), not after 50.
    assert others_ran_after and others_ran_after[0] < 50


async def test_calls_made_together_run_in_one_hop_in_order_on_the_sync_thread(monkeypatch):
    hops, ran = [], []
    hop = pipeline.database_sync_to_async

    def counting_hop(function):
        hops.append(function)
        return hop(function)

    monkeypatch.setattr(pipeline, "database_sync_to_async", counting_hop)
    results = await asyncio.gather(
        *(
            pipeline.call_batched(lambda n: ran.append((n, threading.get_ident())) or n, n)
            for n in range(20)
        )
    )
    sync_thread = await database_sync_to_async(threading.get_ident)()
    assert len(hops) == 1
    assert ran == [(n, sync_thread) for n in range(20)]
    assert results == list(range(20))


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


async def test_work_asked_for_after_the_batch_runs_once_every_call_ran_in_order():
    loop, ran = asyncio.get_running_loop(), []

    def call(number):
        ran.append(("call", number))
        pipeline.after_batch(loop, ran.append, ("after", number))

    await asyncio.gather(*(pipeline.call_batched(call, n) for n in range(3)))
    assert ran == [("call", 0), ("call", 1), ("call", 2), ("after", 0), ("after", 1), ("after", 2)]


async def test_a_failure_after_the_batch_raises_in_the_call_that_asked_only():
    loop = asyncio.get_running_loop()

    def fail_later(number):
        raise ValueError(f"bad {number}")

    def call(number):
        if number == 1:
            pipeline.after_batch(loop, fail_later, number)
        return number

    results = await asyncio.gather(
        *(pipeline.call_batched(call, n) for n in range(3)), return_exceptions=True
    )
    assert [str(result) for result in results] == ["0", "bad 1", "2"]


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
    sent, all_sent = [], asyncio.Event()

    def send(number: int):
        if number == 3:
            raise ConnectionError("socket gone")
        sent.append(number)
        if number == 5:
            all_sent.set()

    def handler(first: int):
        for number in (first, first + 1):
            pipeline.hand_to_loop(loop, send, number)

    with caplog.at_level(logging.WARNING, logger="chat.pipeline"):
        await asyncio.gather(*(pipeline.call_batched(handler, first) for first in (0, 2, 4)))
        await asyncio.wait_for(all_sent.wait(), 5)
    assert sent == [0, 1, 2, 4, 5]
    assert [record.getMessage() for record in caplog.records] == [
        "handed-off call failed: ConnectionError('socket gone')"
    ]


async def test_a_handed_off_task_that_waits_holds_back_nothing_handed_after_it():
    loop = asyncio.get_running_loop()
    order, redis_answers, all_done = [], asyncio.Event(), asyncio.Event()

    async def broadcast():
        await redis_answers.wait()  # a broadcast waiting for Redis
        order.append("broadcast")
        all_done.set()

    def record(label: str):
        order.append(label)
        if label == "frame 2":
            redis_answers.set()

    def first_handler():
        pipeline.hand_to_loop(loop, pipeline.start_logged_task, broadcast())
        pipeline.hand_to_loop(loop, record, "frame 1")

    def second_handler():
        pipeline.hand_to_loop(loop, record, "frame 2")

    await pipeline.call_batched(first_handler)
    await pipeline.call_batched(second_handler)
    await asyncio.wait_for(all_done.wait(), 5)
    assert order == ["frame 1", "frame 2", "broadcast"]


async def test_jobs_in_turn_run_one_at_a_time_and_live_calls_go_between_them():
    loop = asyncio.get_running_loop()
    ran, live = [], []

    def read(number: int):
        ran.append(f"read {number}")
        if number == 0:  # while the first page is read, a live message comes in
            call = pipeline.call_batched(ran.append, "live")
            live.append(asyncio.run_coroutine_threadsafe(call, loop))
        return number

    async def page(number: int):
        return await pipeline.call_batched(read, number)

    pages = [asyncio.ensure_future(pipeline.run_in_turn(page, number)) for number in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*pages), 5) == [0, 1, 2]
    await asyncio.wrap_future(live[0])
    assert ran == ["read 0", "live", "read 1", "read 2"]


async def test_each_job_in_turn_is_followed_by_a_pause_in_proportion_to_the_job(monkeypatch):
    monkeypatch.setattr(pipeline, "BULK_PAUSE_FACTOR", 2.0)
    spans = []

    async def job(seconds: float):
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        spans.append((started, time.perf_counter()))

    await asyncio.wait_for(
        asyncio.gather(*(pipeline.run_in_turn(job, seconds) for seconds in (0.05, 0.01, 0.01))),
        5,
    )
    gaps = [start - end for (_, end), (start, _) in itertools.pairwise(spans)]
    lengths = [end - start for start, end in spans]
    # Never shorter than the factor asks (the clock may round by a millisecond).
    assert gaps[0] >= 2.0 * lengths[0] - 0.001
    assert gaps[1] >= 2.0 * lengths[1] - 0.001


async def test_a_failed_job_in_turn_raises_in_its_caller_and_the_next_one_runs():
    async def fail():
        raise ValueError("broken page")

    async def next_job():
        return "next"

    failed = asyncio.ensure_future(pipeline.run_in_turn(fail))
    next_one = asyncio.ensure_future(pipeline.run_in_turn(next_job))
    results = await asyncio.wait_for(asyncio.gather(failed, next_one, return_exceptions=True), 5)
    assert repr(results[0]) == "ValueError('broken page')"
    assert results[1] == "next"


async def test_the_store_queue_wait_counts_from_the_oldest_call_waiting_until_its_batch_starts():
    assert pipeline.store_queue_seconds() == 0.0
    release = threading.Event()
    holding = pipeline.submit_batched(release.wait, 30)  # a batch that holds the thread
    while pipeline.store_queue_seconds() > 0:  # until its batch starts: nothing waits then
        await asyncio.sleep(0)
    waiting = pipeline.submit_batched(time.monotonic)
    started = time.monotonic()
    while pipeline.store_queue_seconds() < 0.05:  # the queued call's wait grows...
        await asyncio.sleep(0.01)
    assert pipeline.store_queue_seconds() <= time.monotonic() - started + 0.01
    release.set()
    await holding
    ran_at = await waiting
    assert ran_at - started >= 0.05
    assert pipeline.store_queue_seconds() == 0.0  # ...until its batch took it


async def test_the_store_queue_wait_counts_the_work_queued_ahead_at_the_recent_time_per_call():
    for _ in range(10):  # batches of one call that takes 10 ms at least
        await pipeline.call_batched(time.sleep, 0.01)
    release = threading.Event()
    holding = pipeline.submit_batched(release.wait, 30)
    while pipeline.store_queue_seconds() > 0:  # until its batch starts
        await asyncio.sleep(0)
    queued = [pipeline.submit_batched(time.monotonic) for _ in range(100)]
    # Nothing has waited yet, but 100 calls at about 9 ms each (the average so far) wait.
    assert pipeline.store_queue_seconds() > 0.5
    release.set()
    await asyncio.gather(holding, *queued)


async def test_the_store_queue_wait_counts_what_is_left_of_the_running_batch():
    for _ in range(10):  # batches of one call that takes 10 ms at least
        await pipeline.call_batched(time.sleep, 0.01)
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(30)

    batch = [pipeline.submit_batched(hold)]
    batch += [pipeline.submit_batched(time.monotonic) for _ in range(199)]
    assert await asyncio.to_thread(started.wait, 5)  # the batch runs: none of its calls waits
    # Yet a call made now comes after the batch's 200 calls, at about 9 ms each.
    assert pipeline.store_queue_seconds() > 0.5
    assert pipeline.store_queue_calls() == 200
    release.set()
    await asyncio.gather(*batch)
    assert (pipeline.store_queue_calls(), pipeline.store_queue_seconds()) == (0, 0.0)


async def test_the_drain_time_per_call_is_the_slower_queues_recent_time_per_call():
    for _ in range(10):  # batches of one call that takes 10 ms at least
        await pipeline.call_batched(time.sleep, 0.01)
    assert pipeline.drain_seconds_per_call() > 0.008  # the store's: no layer call was made


# --- The sync thread outlives each test: the connections a test opens there close with it ---


@pytest.mark.django_db(transaction=True)
async def test_a_test_that_reads_the_database_on_the_sync_thread():
    assert not await database_sync_to_async(Room.objects.exists)()


async def test_the_next_test_hops_to_the_sync_thread_without_database_access():
    # Runs right after the one above: its connection, left open on the thread, would
    # make this hop's close_old_connections a database access, refused here.
    assert await database_sync_to_async(threading.get_ident)() != threading.get_ident()
