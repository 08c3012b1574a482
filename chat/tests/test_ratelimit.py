"""The per-connection token bucket, on a clock the test moves by hand."""

from chat.ratelimit import TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_is_allowed_then_refused():
    bucket = TokenBucket(burst=3, per_second=1, clock=FakeClock())
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_tokens_refill_at_the_rate_up_to_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(burst=2, per_second=10, clock=clock)
    assert bucket.allow() and bucket.allow() and not bucket.allow()
    clock.now += 0.1
    assert bucket.allow() and not bucket.allow()
    clock.now += 60
    assert [bucket.allow() for _ in range(3)] == [True, True, False]


def test_refusals_in_a_row_count_until_a_frame_is_allowed():
    clock = FakeClock()
    bucket = TokenBucket(burst=1, per_second=1, clock=clock)
    bucket.allow()
    bucket.allow()
    bucket.allow()
    assert bucket.refusals_in_a_row == 2
    clock.now += 1
    assert bucket.allow()
    assert bucket.refusals_in_a_row == 0
