"""Handing coroutines from a thread to the event loop: order, failures, the broadcast bound."""

import asyncio
import logging

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
