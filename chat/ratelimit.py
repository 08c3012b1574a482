"""Flood control: a token bucket per connection.

Explained in docs/protocol.md, 'Limits'.
"""

import time
from collections.abc import Callable


class TokenBucket:
    """Allows `burst` frames at once, refilled at `per_second`; counts refusals in a row."""

    # One per socket: slots keep 10,000 of them small.
    __slots__ = ("burst", "per_second", "_clock", "_tokens", "_updated", "refusals_in_a_row")

    def __init__(self, burst: int, per_second: float, clock: Callable[[], float] = time.monotonic):
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self.refusals_in_a_row = 0

    def allow(self) -> bool:
        """Take one token if there is one; False means the frame is over the limit."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.per_second)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.refusals_in_a_row = 0
            return True
        self.refusals_in_a_row += 1
        return False
