"""Which side a function runs on: the event loop, or the sync consumers' thread.

Declared where each is defined (@on_loop, @on_sync_thread), as the architecture has it
(docs/architecture.md): handlers that need the database run on the sync thread; room
events, frames and per-socket delivery state on the loop, where one owner needs no lock.
With CHAT_CHECK_SIDES=1 in the environment (the tests set it) every call checks its side
and raises WrongSide; otherwise the decorators return the function itself, free.
`async def` declares itself: a coroutine only ever runs on a loop.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import functools
import os
from collections.abc import Callable
from typing import TypeVar

# Read once, as the decorated modules are imported: checking costs a call per call.
CHECKING = os.environ.get("CHAT_CHECK_SIDES") == "1"

Function = TypeVar("Function", bound=Callable)


class WrongSide(RuntimeError):
    """A function was called on the side it does not run on."""


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _checked(function: Function, wants_loop: bool) -> Function:
    if not CHECKING:
        return function
    side = "the event loop" if wants_loop else "the sync thread"

    @functools.wraps(function)
    def checked(*args, **kwargs):
        if _on_a_loop() != wants_loop:
            raise WrongSide(f"{function.__qualname__} runs on {side} only")
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


def on_loop(function: Function) -> Function:
    """Declare that function runs on the event loop (it touches loop-owned state)."""
    return _checked(function, wants_loop=True)


def on_sync_thread(function: Function) -> Function:
    """Declare that function runs on the sync thread (it may block: the database, Redis)."""
    return _checked(function, wants_loop=False)
