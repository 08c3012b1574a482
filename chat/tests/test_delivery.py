"""RoomDelivery without sockets: a manual timer, a fake store, and the frames it sends."""

import json
import random

import pytest

from chat.delivery import FrameCache, RoomDelivery

REORDER_WAIT = 0.25
MAX_HELD = 3
BOUND = 4  # the most a socket recovers (CHAT_RECOVERY_LIMIT)


def event(seq: int) -> dict:
    return {"type": "chat.message", "message": f"m{seq}", "id": seq}


class ManualTimers:
    """call_later that runs nothing until the test says the time has come."""

    def __init__(self):
        self.armed: list[ManualTimers.Timer] = []

    class Timer:
        def __init__(self, callback):
            self.callback = callback
            self.cancelled = False

        def cancel(self):
            self.cancelled = True

    def call_later(self, delay: float, callback):
        assert delay == REORDER_WAIT
        timer = self.Timer(callback)
        self.armed.append(timer)
        return timer

    def fire(self):
        """The wait is over: run every timer armed and not cancelled."""
        armed, self.armed = self.armed, []
        for timer in armed:
            if not timer.cancelled:
                timer.callback()

    @property
    def pending(self) -> int:
        return sum(not timer.cancelled for timer in self.armed)


class FakeStore:
    """The room's stored messages; reads wait until the test answers them."""

    def __init__(self, stored: int = 0):
        self.stored = stored
        self.reads: list[tuple[int, int, object]] = []
        self.most_at_once = 0
        # Edits and deletions: each message's final state, numbered as the room's changes.
        self.last_change = 0
        self.changed: dict[int, dict] = {}
        self.change_reads: list[tuple[int, int, object]] = []

    def store(self, count: int = 1) -> list[dict]:
        """Store `count` more messages; their events, as the layer would carry them."""
        first = self.stored + 1
        self.stored += count
        return [event(seq) for seq in range(first, self.stored + 1)]

    def read(self, after: int, limit: int, on_done):
        self.reads.append((after, limit, on_done))
        self.most_at_once = max(self.most_at_once, len(self.reads))

    def edit(self, seq: int) -> dict:
        """Edit message seq; the change event, as the layer would carry it."""
        self.last_change += 1
        self.changed[seq] = change = {
            "type": "chat.change",
            "id": seq,
            "change": self.last_change,
            "message": f"m{seq} edit {self.last_change}",
            "edited": "2026-12-07T12:00:00+00:00",
            "deleted": False,
        }
        return change

    def read_changes(self, after_change: int, limit: int, on_done):
        self.change_reads.append((after_change, limit, on_done))

    def answer_changes(self):
        after_change, limit, on_done = self.change_reads.pop(0)
        page = sorted(
            (event for event in self.changed.values() if event["change"] > after_change),
            key=lambda event: event["change"],
        )
        on_done(page[:limit], self.last_change)

    def answer(self, index: int = 0):
        """The read's queries run now, on what is stored now; their reply comes back."""
        after, limit, on_done = self.reads.pop(index)
        page = [event(seq) for seq in range(after + 1, min(after + limit, self.stored) + 1)]
        on_done(page, self.stored)


class Socket:
    """A RoomDelivery with its fakes, and what it sent."""

    def __init__(self, stored: int = 0):
        self.timers = ManualTimers()
        self.store = FakeStore(stored)
        self.frames: list[dict] = []
        self.delivery = RoomDelivery(
            lambda frame: self.frames.append(json.loads(frame)),
            self.store.read,
            self.timers.call_later,
            reorder_wait=REORDER_WAIT,
            max_held=MAX_HELD,
            recovery_limit=BOUND,
            frame_cache=FrameCache(),
            read_changes=self.store.read_changes,
        )
        self.delivery.start(stored)

    @property
    def ids(self) -> list[int]:
        return [frame["id"] for frame in self.frames if "id" in frame]

    def take(self) -> list[dict]:
        frames, self.frames = self.frames, []
        return frames


async def test_messages_in_order_are_sent_at_once_with_no_read_and_no_timer():
    socket = Socket()
    for message in socket.store.store(3):
        socket.delivery.message(message)
    assert socket.frames == [{"message": f"m{n}", "id": n} for n in (1, 2, 3)]
    assert socket.store.reads == [] and socket.timers.pending == 0


async def test_a_message_that_overtook_another_waits_for_it_and_the_timer_is_let_go():
    socket = Socket()
    first, second = socket.store.store(2)
    socket.delivery.message(second)
    assert socket.ids == [] and socket.timers.pending == 1
    socket.delivery.message(first)
    assert socket.ids == [1, 2]
    assert socket.timers.pending == 0 and socket.store.reads == []


async def test_a_batch_of_messages_is_sent_in_order_around_those_sent_alone():
    socket = Socket()
    socket.delivery.message(event(3))
    socket.delivery.messages([event(1), event(2)])
    socket.delivery.messages([event(4), event(5)])
    assert socket.ids == [1, 2, 3, 4, 5]
    assert socket.store.reads == [] and socket.timers.pending == 0


async def test_a_duplicate_is_sent_once():
    socket = Socket()
    (message,) = socket.store.store()
    socket.delivery.message(message)
    socket.delivery.message(message)
    assert socket.ids == [1]


async def test_when_the_wait_is_over_one_read_fills_the_gap_then_the_held_are_sent():
    socket = Socket()
    _, second, third = socket.store.store(3)  # the layer dropped the first
    socket.delivery.message(second)
    socket.delivery.message(third)
    socket.timers.fire()
    assert [(after, limit) for after, limit, *_ in socket.store.reads] == [(0, 3)]
    socket.store.answer()
    assert socket.ids == [1, 2, 3]
    assert socket.timers.pending == 0


async def test_too_many_held_messages_fill_the_gap_without_waiting():
    socket = Socket()
    _, *later = socket.store.store(MAX_HELD + 1)
    for message in later:
        socket.delivery.message(message)
    assert len(socket.store.reads) == 1  # before the timer
    socket.store.answer()
    assert socket.ids == list(range(1, MAX_HELD + 2))


def _filling_a_gap() -> Socket:
    """A socket whose layer dropped message 1: it held 2, waited, and a fill of 1..2 is on
    its way."""
    socket = Socket()
    _, second = socket.store.store(2)
    socket.delivery.message(second)
    socket.timers.fire()
    return socket


async def test_the_gap_timer_live_messages_and_a_pending_fill_interleave_in_order_once_each():
    """The spike's bug: a gap fill applied beside live delivery sent 15-92 out of order."""
    socket = _filling_a_gap()
    assert len(socket.store.reads) == 1
    # Meanwhile the room goes on: 3 and 4 arrive live, and 1 turns up late after all.
    third, fourth = socket.store.store(2)
    socket.delivery.message(third)
    socket.delivery.message(event(1))
    socket.delivery.message(fourth)
    socket.timers.fire()  # a timer that fires now starts no second read
    assert socket.ids == [] and len(socket.store.reads) == 1
    (fifth,) = socket.store.store()
    socket.store.answer()  # its query saw 1..5 stored; it was asked for 1..2
    socket.delivery.message(fifth)
    assert socket.ids == [1, 2, 3, 4, 5]
    assert socket.store.most_at_once == 1
    assert socket.store.reads == [] and socket.timers.pending == 0


async def test_a_gap_still_open_after_a_fill_waits_again_then_fills_again():
    socket = Socket()
    _, second, _, fourth = socket.store.store(4)  # 1 and 3 dropped
    socket.delivery.message(second)
    socket.timers.fire()
    socket.delivery.message(fourth)  # held while the fill is on its way
    socket.store.answer()  # brings 1..2: 3 is still missing
    assert socket.ids == [1, 2] and socket.timers.pending == 1
    socket.timers.fire()
    socket.store.answer()
    assert socket.ids == [1, 2, 3, 4]


async def test_a_gap_longer_than_the_bound_is_left_to_the_client_and_delivery_goes_on_after_it():
    socket = Socket()
    *_, last = socket.store.store(BOUND + 3)  # all but the last dropped
    socket.delivery.message(last)
    socket.timers.fire()
    assert [(after, limit) for after, limit, _ in socket.store.reads] == [(0, BOUND + 1)]
    socket.store.answer()
    # Not one of them on the socket: the client reads 1..BOUND + 3 over HTTP.
    assert socket.take() == [{"catch_up": {"recovered": False, "after": 0, "until": BOUND + 3}}]
    (live,) = socket.store.store()
    socket.delivery.message(live)
    assert socket.take() == [{"message": f"m{BOUND + 4}", "id": BOUND + 4}]
    assert socket.store.reads == [] and socket.timers.pending == 0


async def test_a_gap_of_the_bound_is_filled_on_the_socket():
    socket = Socket()
    *_, last = socket.store.store(BOUND + 1)  # the bound dropped, then one more
    socket.delivery.message(last)
    socket.timers.fire()
    socket.store.answer()
    assert socket.take() == [{"message": f"m{n}", "id": n} for n in range(1, BOUND + 2)]


async def test_a_resync_further_behind_than_the_bound_leaves_the_newest_it_read_to_the_client():
    socket = Socket(stored=2)
    socket.store.store(BOUND * 3)  # Redis restarted: none of them was broadcast
    socket.delivery.resync()
    socket.store.store()  # stored while the read was on its way: its newest counts it
    socket.store.answer()
    until = BOUND * 3 + 3
    assert socket.take() == [{"catch_up": {"recovered": False, "after": 2, "until": until}}]
    assert socket.delivery.last == until


async def test_messages_held_during_a_read_past_the_bound_are_left_to_the_client_with_the_rest():
    socket = Socket()
    *_, seventh = socket.store.store(BOUND + 3)  # 1..6 dropped
    socket.delivery.message(seventh)
    socket.timers.fire()  # a read of 1..5 is on its way
    *_, ninth = socket.store.store(2)  # 8 dropped too
    socket.delivery.message(ninth)
    socket.store.answer()  # 5 missed, past the bound; the room's newest is 9 by now
    assert socket.take() == [{"catch_up": {"recovered": False, "after": 0, "until": BOUND + 5}}]
    assert socket.delivery.held == {} and socket.timers.pending == 0
    (live,) = socket.store.store()
    socket.delivery.message(live)
    assert socket.take() == [{"message": f"m{BOUND + 6}", "id": BOUND + 6}]


async def test_a_resync_while_a_read_is_on_its_way_runs_after_it():
    socket = _filling_a_gap()
    socket.delivery.resync()
    assert len(socket.store.reads) == 1
    socket.store.store(2)  # stored, their broadcasts lost
    socket.store.answer()
    assert socket.ids == [1, 2] and len(socket.store.reads) == 1
    socket.store.answer()
    assert socket.ids == [1, 2, 3, 4]


async def test_a_stopped_delivery_sends_nothing_more():
    socket = _filling_a_gap()
    socket.delivery.stop()
    socket.store.answer()
    socket.delivery.message(event(3))
    assert socket.frames == []


async def test_a_frame_is_encoded_once_for_every_socket_and_again_for_other_content():
    cache = FrameCache(size=2)
    first = cache.frame(event(1))
    assert cache.frame(dict(event(1))) is first
    assert json.loads(cache.frame({**event(1), "message": "room made again"}))["message"] == (
        "room made again"
    )


@pytest.mark.parametrize("seed", range(200))
async def test_any_interleaving_of_drops_reorders_timers_and_replies_sends_every_id_once_in_order(
    seed,
):
    rng = random.Random(seed)
    socket = Socket()
    on_the_way: list[dict] = []
    for _ in range(60):
        step = rng.random()
        if step < 0.35:
            for message in socket.store.store(rng.randint(1, 3)):
                if rng.random() > 0.2:  # the layer drops one in five
                    on_the_way.append(message)
        elif step < 0.65 and on_the_way:  # the layer delivers any of them next
            socket.delivery.message(on_the_way.pop(rng.randrange(len(on_the_way))))
        elif step < 0.8:
            socket.timers.fire()
        elif step < 0.9 and socket.store.reads:
            socket.store.answer()
        assert socket.store.most_at_once <= 1
    for message in on_the_way:
        socket.delivery.message(message)
    while socket.store.reads or socket.timers.pending:
        socket.timers.fire()
        if socket.store.reads:
            socket.store.answer()
    socket.delivery.resync()  # the upkeep's round, for a dropped last message
    while socket.store.reads:
        socket.store.answer()
    # Every id once, in order: sent, or in a range left to the client, which comes in turn.
    shown = 0
    for frame in socket.frames:
        if "catch_up" in frame:
            assert frame["catch_up"]["after"] == shown and not frame["catch_up"]["recovered"]
            shown = frame["catch_up"]["until"]
        else:
            assert frame["id"] == shown + 1
            shown += 1
    assert shown == socket.store.stored


async def test_ids_gone_to_retention_are_filled_by_the_read_and_never_waited_on():
    socket = Socket(stored=2)
    socket.store.store(4)  # 3-6, which retention deletes before any reaches the socket
    (seventh,) = socket.store.store()
    socket.delivery.message(seventh)
    socket.timers.fire()
    ((after, limit, on_done),) = socket.store.reads
    socket.store.reads.clear()
    on_done([seventh], 7)  # the read finds 7 alone: 3-6 are gone
    assert socket.ids == [7]
    assert socket.timers.pending == 0 and socket.store.reads == []
    (eighth,) = socket.store.store()
    socket.delivery.message(eighth)
    assert socket.ids == [7, 8]


# --- Changes: edits and deletions --------------------------------------------------------


def edits(frames: list[dict]) -> list[tuple[int, int]]:
    """(message id, change number) of each edit frame sent."""
    return [(frame["edit"]["id"], frame["edit"]["change"]) for frame in frames if "edit" in frame]


async def test_a_change_of_a_sent_message_is_sent_at_once_as_an_edit_frame():
    socket = Socket(stored=2)
    socket.delivery.change(socket.store.edit(1))
    assert socket.frames == [
        {
            "edit": {
                "id": 1,
                "message": "m1 edit 1",
                "edited": "2026-12-07T12:00:00+00:00",
                "change": 1,
            }
        }
    ]
    assert socket.timers.pending == 0


async def test_a_change_that_overtook_its_message_is_sent_right_after_it():
    socket = Socket()
    (message,) = socket.store.store()
    socket.delivery.change(socket.store.edit(1))
    assert socket.frames == [] and socket.timers.pending == 1
    socket.delivery.message(message)
    assert [("id" in f, "edit" in f) for f in socket.frames] == [(True, False), (False, True)]
    assert socket.timers.pending == 0 and socket.store.reads == []


async def test_changes_out_of_order_wait_for_the_missing_one_and_are_each_sent_once():
    socket = Socket(stored=3)
    first, second, third = (socket.store.edit(seq) for seq in (1, 2, 3))
    socket.delivery.change(third)
    socket.delivery.change(second)
    assert socket.frames == []
    socket.delivery.change(first)
    socket.delivery.change(second)
    assert edits(socket.frames) == [(1, 1), (2, 2), (3, 3)]
    assert socket.timers.pending == 0 and socket.store.change_reads == []


async def test_a_lost_change_is_read_after_the_wait_then_the_held_ones_follow():
    socket = Socket(stored=3)
    socket.store.edit(1)  # the layer dropped it
    second = socket.store.edit(2)
    socket.delivery.change(second)
    socket.timers.fire()
    assert [(after, limit) for after, limit, _ in socket.store.change_reads] == [(0, BOUND + 1)]
    socket.store.answer_changes()
    third = socket.store.edit(3)
    socket.delivery.change(second)
    socket.delivery.change(third)
    assert edits(socket.frames) == [(1, 1), (2, 2), (3, 3)]


async def test_a_change_whose_message_was_lost_reads_the_message_then_sends_the_change():
    socket = Socket()
    socket.store.store()  # its broadcast was lost
    socket.delivery.change(socket.store.edit(1))
    socket.timers.fire()
    assert [(after, limit) for after, limit, _ in socket.store.reads] == [(0, 1)]
    socket.store.answer()
    assert [next(iter(frame)) for frame in socket.frames] == ["message", "edit"]


async def test_more_changes_missed_than_the_bound_are_left_to_the_client_in_a_catch_up():
    socket = Socket(stored=BOUND + 2)
    for seq in range(1, BOUND + 3):
        socket.store.edit(seq)
    socket.delivery.change(socket.store.edit(1))  # change BOUND + 3: the rest were lost
    socket.timers.fire()
    socket.store.answer_changes()
    assert socket.frames[0] == {
        "catch_up": {
            "recovered": True,
            "after": BOUND + 2,
            "until": BOUND + 2,
            "changes": {"recovered": False, "after": 0, "until": BOUND + 3},
        }
    }
    assert edits(socket.frames) == []
    socket.delivery.change(socket.store.edit(2))
    assert edits(socket.frames) == [(2, BOUND + 4)]


async def test_a_resync_reads_the_changes_since_the_last_one_too():
    socket = Socket(stored=2)
    socket.store.edit(2)  # lost with Redis, and no later change reveals it
    socket.delivery.resync()
    socket.store.answer()
    socket.store.answer_changes()
    assert edits(socket.frames) == [(2, 1)]


@pytest.mark.parametrize(
    "stored, changed, reads, change_reads",
    [(3, 0, 1, 0), (2, 1, 0, 1), (3, 1, 1, 1), (2, 0, 0, 0)],
    ids=["a message", "a change", "both", "nothing"],
)
async def test_a_catch_up_reads_only_what_the_socket_is_behind_in(
    stored, changed, reads, change_reads
):
    socket = Socket(stored=2)
    assert socket.delivery.catch_up_to(stored, changed) == bool(reads or change_reads)
    assert (len(socket.store.reads), len(socket.store.change_reads)) == (reads, change_reads)
