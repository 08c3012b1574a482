"""Group commit: the messages of one batch of frames, checked and stored together.

The sync thread runs many sockets' frames in one batch (chat.pipeline.call_batched). Each
frame that brings a message submits a Post; at the batch's end (pipeline.after_batch) the
first of them to ask for its outcome commits them all: one round trip to Redis for their
limits (chat.limits.check_posts), one transaction for their rows
(chat.services.store_messages), each post then broadcast or refused by its own socket, in
the order the frames came. A lone frame is a batch of one: it waits for nothing.

Explained in docs/architecture.md, 'Group commit'.
"""

import asyncio
from dataclasses import dataclass

from . import limits, loops, services, sides
from .models import Message


@dataclass(eq=False)
class Post:
    """One message waiting for its batch's commit; then what came of it."""

    draft: services.Draft
    check: limits.PostCheck
    # (message, created) once committed, or what refused it (or failed the whole batch).
    outcome: tuple[Message, bool] | Exception | None = None


@sides.on_sync_thread
def submit(loop: asyncio.AbstractEventLoop, post: Post):
    """Add post to the loop's next commit."""
    loops.of_loop(loop).posts.append(post)


@sides.on_sync_thread
def outcome(loop: asyncio.AbstractEventLoop, post: Post) -> tuple[Message, bool]:
    """Post's (message, created), committing the loop's waiting posts first if need be.

    Raises what refused it: a FrameRefused over a limit, a LookalikeRoom, or the failure
    of the whole commit (a DatabaseError, an unreachable Redis).
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

    A post over a limit is refused and not stored; the others are stored in one
    transaction. A failure of either step is every post's outcome: then none is stored.
    """
    try:
        refusals = limits.check_posts([post.check for post in posts])
        accepted = [post for post, refusal in zip(posts, refusals, strict=True) if refusal is None]
        stored = services.store_messages([post.draft for post in accepted]) if accepted else []
    except Exception as error:
        for post in posts:
            post.outcome = error
        return
    for post, refusal in zip(posts, refusals, strict=True):
        post.outcome = refusal
    for post, result in zip(accepted, stored, strict=True):
        post.outcome = result
