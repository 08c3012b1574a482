"""Group commit: the messages of one batch of frames, checked and stored together.

The sync thread runs many sockets' frames in one batch (chat.pipeline.call_batched). Each
frame that brings a message submits a Post; at the batch's end (pipeline.after_batch) the
first of them to ask for its outcome commits them all: one round trip to Redis for their
limits (chat.limits.start_checks), during which their sockets' sessions and users are read
(chat.revocation.speak_as_now: each still speaks as its author) and their rows made
(chat.services.new_rows), then one transaction for their rows (chat.services.store_messages),
each post then refused or acknowledged by its own socket, in the order the frames came.
The new messages of one room travel to its group as one event (a RoomBroadcast, sent by
the first of their sockets to ask): one publish, and one wake-up of each receiving socket,
for the batch, not one a message. A lone frame is a batch of one: it waits for nothing.

Explained in docs/architecture.md, 'Group commit'.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

from . import limits, loops, protocol, revocation, services, sides
from .identity import Author
from .models import Message


@dataclass(eq=False)
class RoomBroadcast:
    """A batch's new messages of one room: their chat.message events, in seq order."""

    events: list[dict]
    # The sockets whose messages these are: each is closed if the broadcast meets an outage.
    senders: list = field(default_factory=list)
    sent: bool = False  # handed to the loop, by the first of its posts' sockets to ask (take)

    @sides.on_sync_thread
    def take(self, sender) -> bool:
        """Count sender among the broadcast's senders; True for the first, who sends it."""
        self.senders.append(sender)
        first, self.sent = not self.sent, True
        return first


@dataclass(eq=False)
class Post:
    """One message waiting for its batch's commit; then what came of it."""

    draft: services.Draft
    check: limits.PostCheck
    # (message, created) once committed, or what refused it (or failed the whole batch).
    outcome: tuple[Message, bool] | Exception | None = None
    # Once stored as a new message: its room's broadcast, shared with the batch's others.
    broadcast: RoomBroadcast | None = None
    # The socket's author and session, checked afresh with the batch's others before it is
    # stored (revocation.speak_as_now); None when the socket checked it already.
    speaker: tuple[Author, Any] | None = None


@sides.on_sync_thread
def submit(loop: asyncio.AbstractEventLoop, post: Post):
    """Add post to the loop's next commit."""
    loops.of_loop(loop).posts.append(post)


@sides.on_sync_thread
def outcome(loop: asyncio.AbstractEventLoop, post: Post) -> tuple[Message, bool]:
    """Post's (message, created), committing the loop's waiting posts first if need be.

    Raises what refused it: revocation.NoLongerSpeaks, a FrameRefused over a limit, a
    LookalikeRoom, or the failure of the whole commit (a DatabaseError, an unreachable Redis).
    """
    if post.outcome is None:
        state = loops.of_loop(loop)
        posts, state.posts = state.posts, []
        commit(posts)
    if isinstance(post.outcome, Exception):
        raise post.outcome
    return post.outcome


def commit(posts: list[Post]):
    """Check and store posts together, in order, and give each its outcome.

    A post whose socket no longer speaks as its author, or over a limit, is refused and not
    stored; the others are stored in one transaction. A failure of any step is every
    post's outcome: then none is stored. Each new message's post gets its room's broadcast.
    Every post counts against its person's limit, one refused as no longer speaking too:
    the limits are counted while the sessions are read.
    """
    try:
        # The limits' hits go to Redis first; the sessions are read and the rows made while
        # Redis counts, and its answers are read last: the thread waits for Redis no longer
        # than that work takes.
        checks = limits.start_checks([post.check for post in posts])
        try:
            stale = _no_longer_speaking(posts)
            rows = services.new_rows([post.draft for post in posts])
        finally:
            refusals = checks.refusals()
        accepted = [
            (post, row)
            for post, row, refusal in zip(posts, rows, refusals, strict=True)
            if refusal is None and post not in stale
        ]
        stored = (
            services.store_messages([post.draft for post, _ in accepted], [r for _, r in accepted])
            if accepted
            else []
        )
    except Exception as error:
        for post in posts:
            post.outcome = error
        return
    for post, refusal in zip(posts, refusals, strict=True):
        post.outcome = revocation.NoLongerSpeaks() if post in stale else refusal
    broadcasts: dict[str, RoomBroadcast] = {}
    for (post, _), result in zip(accepted, stored, strict=True):
        post.outcome = result
        if isinstance(result, tuple) and result[1]:
            # A room's drafts are stored in their order: their events come in seq order.
            room = post.draft.room_name
            post.broadcast = broadcasts.setdefault(room, RoomBroadcast([]))
            post.broadcast.events.append(protocol.chat_message_event(result[0]))


def _no_longer_speaking(posts: list[Post]) -> set[Post]:
    """The posts whose socket's session no longer speaks as their author, read together."""
    asking = [post for post in posts if post.speaker is not None]
    speaking = revocation.speak_as_now([post.speaker for post in asking])
    return {post for post, speaks in zip(asking, speaking, strict=True) if not speaks}
