"""One registry of per-loop state: every part of a loop's state in its one entry, gone with it."""

import asyncio
import gc
import threading
import time
import weakref

from chat import loops, pipeline, upkeep
from mysite.channel_layers import layer_slot


async def test_every_part_of_a_loops_state_is_in_its_one_entry(caplog):
    await pipeline.call_batched(lambda: None)
    await pipeline.run_in_turn(asyncio.sleep, 0)
    async with layer_slot():
        pass
    await upkeep.run_round()  # with no Redis here: it logs, and goes on
    state = loops.of_loop()
    assert None not in (state.batches, state.lane, state.layer_slots, state.upkeep)
    await upkeep.stop()
    assert state.upkeep is None


def test_a_loops_state_goes_with_the_loop():
    loop = asyncio.new_event_loop()

    async def use_it() -> loops.LoopState:
        await pipeline.run_in_turn(asyncio.sleep, 0)
        async with layer_slot():
            pass
        return loops.of_loop()

    state = weakref.ref(loop.run_until_complete(use_it()))

    async def rest():  # the lane's pause after its job
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))

    loop.run_until_complete(rest())
    assert loops.of_loop(loop) is state()
    loop.close()
    del loop
    gc.collect()
    assert state() is None


async def test_a_batch_hands_its_calls_to_the_loop_in_one_hand_off_at_its_end(monkeypatch):
    loop = asyncio.get_running_loop()
    handed, wakes = [], []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            wakes.append(callback)
        return call_soon_threadsafe(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)

    def handler(number: int):
        pipeline.hand_to_loop(loop, handed.append, number)
        assert handed == []  # not yet: at the batch's end

    await asyncio.gather(*(pipeline.call_batched(handler, number) for number in range(5)))
    while len(handed) < 5:
        await asyncio.sleep(0)
    assert handed == [0, 1, 2, 3, 4]
    assert len(wakes) <= 2  # the batch's result and its one hand-off, not one per call
    assert loops.of_loop().outbox is None  # and after the batch, hand-offs go at once


def test_a_queues_wait_is_its_oldest_calls_wait_or_its_calls_work_whichever_is_longer():
    wait = loops.QueueWait()
    assert wait.waited(None, 0) == 0.0
    wait.took(0.1)  # the recent time per call moves a share of the way to each call's time
    assert wait.call_seconds == loops.RECENT_CALL_WEIGHT * 0.1
    a_second_ago = time.monotonic() - 1.0
    assert 1.0 <= wait.waited(a_second_ago, 3) < 1.5  # three calls' work is less: the oldest's
    assert wait.waited(time.monotonic(), 100) == 100 * wait.call_seconds  # a burst made now
