"""Sides declared where defined: a call on the wrong side raises, in every test."""

import asyncio

import pytest

from chat import pipeline, sides
from chat.consumers import ChatConsumer
from chat.delivery import RoomDelivery


def test_the_tests_check_every_declared_side():
    assert sides.CHECKING


def test_a_loop_method_called_from_the_sync_thread_raises():
    consumer = ChatConsumer()
    with pytest.raises(sides.WrongSide, match="ChatConsumer.send_from_loop runs on the event loop"):
        consumer.send_from_loop("{}")
    delivery = RoomDelivery(print, print, print, reorder_wait=1, max_held=1, recovery_limit=1)
    with pytest.raises(sides.WrongSide, match="RoomDelivery.message"):
        delivery.message({"id": 1})


async def test_a_sync_thread_method_called_on_the_loop_raises():
    consumer = ChatConsumer()
    with pytest.raises(sides.WrongSide, match="ChatConsumer.receive runs on the sync thread"):
        consumer.receive(text_data="{}")
    with pytest.raises(sides.WrongSide, match="hand_to_loop"):
        pipeline.hand_to_loop(asyncio.get_running_loop(), print)


async def test_a_call_on_its_own_side_runs():
    ran = []

    @sides.on_loop
    def on_the_loop():
        ran.append("loop")

    @sides.on_sync_thread
    def on_the_thread():
        ran.append("thread")

    on_the_loop()
    await asyncio.to_thread(on_the_thread)
    assert ran == ["loop", "thread"]
