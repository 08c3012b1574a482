"""Posting from Python: a view, a signal handler, a background worker or a command stores a
message in a room as a user or a named bot, and it reaches the room's sockets as a socket's
message does.

The same rules and path as ChatConsumer.receive: the room-name rule, the message rule
(protocol.chat_frame), the per-person limits (chat.limits), services.store_message (ids,
idempotent client_id), then, once committed, the same event (protocol.chat_message_event)
through the channel layer to the room's group; a dropped broadcast is filled by each
socket's delivery from the database.

Edits and deletions go the same way (edit_message, delete_message; remove_message for
the admin): chat.services, then the change event (protocol.chat_change_event) once
committed.

Explained in docs/programs.md, 'Posting from Python'.
"""

import asyncio
import logging
import os
import threading
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from . import identity, limits, permissions, protocol, rooms, services, sides
from .models import Message
from .redis_clients import OUTAGE_ERRORS

logger = logging.getLogger(__name__)

# How long a synchronous caller waits for its broadcast: longer than the layer's Redis
# timeout (redis_clients.LAYER_TIMEOUT_SECONDS, 15 s) with its one retry, so the layer
# gives up first and says why. The message is stored either way.
BROADCAST_WAIT_SECONDS = 35.0


class PostRefused(Exception):
    """A post the rules refuse; `code` is the socket's error code, `detail` is for people."""

    def __init__(self, code: str, detail: str, retry_after: int | None = None):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.retry_after = retry_after  # a limit's: the seconds until it lets one through


@dataclass(frozen=True)
class Posted:
    """A stored message, and whether this call stored it (False: a known client_id)."""

    message: Message
    created: bool

    @property
    def fields(self) -> dict:
        """The message as frames and the HTTP API show it (protocol.message_fields)."""
        return protocol.message_fields(self.message)


@sides.on_sync_thread
def post_message(
    room: str,
    text: str,
    *,
    as_user=None,
    as_bot: str | None = None,
    client_id: str | None = None,
    address: str | None = None,
) -> Posted:
    """Store text in room as a user or a named bot; broadcast it once committed.

    Inside a transaction (a signal handler, an atomic view) the broadcast waits for the
    commit, and a rollback sends nothing. `address` is the client's (limits.client_network),
    when a request is behind the post: new rooms count against it, else against the author.
    Raises PostRefused; an unreachable Redis or database raises as it does.
    """
    posted = _store(room, text, as_user, as_bot, client_id, address)
    if posted.created:
        message = posted.message
        group, event = rooms.group_name(message.room_id), protocol.chat_message_event(message)
        transaction.on_commit(lambda: _broadcast_from_sync(group, event))
    return posted


async def apost_message(
    room: str,
    text: str,
    *,
    as_user=None,
    as_bot: str | None = None,
    client_id: str | None = None,
    address: str | None = None,
) -> Posted:
    """post_message for async code: stores on the sync thread, broadcasts on this loop."""
    posted = await database_sync_to_async(_store)(room, text, as_user, as_bot, client_id, address)
    if posted.created:
        message = posted.message
        await _broadcast(rooms.group_name(message.room_id), protocol.chat_message_event(message))
    return posted


@sides.on_sync_thread
def _store(room, text, as_user, as_bot, client_id, address) -> Posted:
    author = _author(as_user, as_bot)
    try:
        room_address = rooms.normalize_address(room)
    except rooms.InvalidRoomName as refusal:
        raise PostRefused("invalid_room_name", str(refusal)) from None
    # As the socket's handshake and each of its posts: a stranger to a private room is
    # told what a room that does not exist would tell.
    room_name = permissions.room_for(author, room_address)
    if room_name is not None and (gone := permissions.deactivated_partner(author, room_name)):
        raise PostRefused("recipient_deactivated", permissions.read_only_notice(gone))
    if room_name is None or not permissions.may_post(author, room_name):
        raise PostRefused("no_such_room", "There is no such room.")
    if refusal := permissions.sanction_refusal(author, room_name, address or ""):
        raise PostRefused(refusal.code, refusal.detail)
    try:
        frame = protocol.chat_frame(text, client_id, max_chars=settings.CHAT_MESSAGE_MAX_CHARS)
        limits.check_post(author.key, address or author.key, room_name, True, frame.client_id)
    except protocol.FrameRefused as refusal:
        raise PostRefused(refusal.code, refusal.detail, refusal.retry_after) from None
    try:
        message, created = services.store_message(room_name, author, frame.message, frame.client_id)
    except services.LookalikeRoom as lookalike:
        raise PostRefused(
            "lookalike_room",
            f'This room\'s name looks too much like the room "{lookalike.existing}".',
        ) from None
    return Posted(message, created)


@sides.on_sync_thread
def edit_message(room: str, seq: int, text: str, *, as_user) -> Message:
    """Edit message `seq` of room as its author; broadcast the edit once committed.

    The socket's rules: the room's address as post_message reads it, the message rule
    for the text, the per-person limit, permissions.may_edit. Raises PostRefused.
    """
    author = _author(as_user, None)
    room_name = _room_for(author, room)
    try:
        frame = protocol.chat_frame(text, None, max_chars=settings.CHAT_MESSAGE_MAX_CHARS)
    except protocol.FrameRefused as refusal:
        raise PostRefused(refusal.code, refusal.detail) from None
    return _change(room_name, seq, author, frame.message)


@sides.on_sync_thread
def delete_message(room: str, seq: int, *, as_user) -> Message:
    """Delete message `seq` of room as its author, a room moderator or staff; broadcast the
    deletion once committed. Raises PostRefused."""
    author = _author(as_user, None)
    return _change(_room_for(author, room), seq, author, None)


@sides.on_sync_thread
def remove_message(message: Message, staff_user) -> Message:
    """Delete a stored message as site staff (the admin), in whatever room; broadcast the
    deletion once committed. Raises PostRefused."""
    return _change(message.room_id, message.seq, _author(staff_user, None), None, limited=False)


def _room_for(author: identity.Author, room: str) -> str:
    """The key of the room at address `room` the author may post in, or PostRefused."""
    try:
        room_address = rooms.normalize_address(room)
    except rooms.InvalidRoomName as refusal:
        raise PostRefused("invalid_room_name", str(refusal)) from None
    room_name = permissions.room_for(author, room_address)
    if room_name is None or not permissions.may_post(author, room_name):
        raise PostRefused("no_such_room", "There is no such room.")
    return room_name


def _change(
    room_name: str, seq: int, author: identity.Author, text: str | None, *, limited: bool = True
) -> Message:
    """Edit (text) or delete (None) through chat.services, then broadcast once committed.

    A change takes a message's token of the per-person limit (chat.limits), unless it is
    the admin's: a bulk deletion of spam is one click.
    """
    try:
        if limited:
            limits.check_post(author.key, author.key, room_name, False, None)
        if text is None:
            message = services.delete_message(room_name, seq, author)
        else:
            message = services.edit_message(room_name, seq, author, text)
    except (protocol.FrameRefused, services.ChangeRefused) as refusal:
        retry_after = getattr(refusal, "retry_after", None)
        raise PostRefused(refusal.code, refusal.detail, retry_after) from None
    group, event = rooms.group_name(room_name), protocol.chat_change_event(message)
    transaction.on_commit(lambda: _broadcast_from_sync(group, event))
    return message


def _author(user, bot_name: str | None) -> identity.Author:
    if (user is None) == (bot_name is None):
        raise TypeError("post as exactly one of as_user= and as_bot=")
    if bot_name is not None:
        try:
            return identity.bot_author(bot_name)
        except identity.InvalidDisplayName as refusal:
            raise PostRefused("invalid_bot_name", str(refusal)) from None
    if not user.is_authenticated or not user.is_active:
        raise PostRefused("inactive_user", "Only an active, logged-in user can post.")
    return identity.author_for(user, None)


async def _broadcast(group: str, event: dict):
    """Send to the room's group; an outage is logged: the message is stored, sockets fill it."""
    try:
        await get_channel_layer().group_send(group, event)
    except OUTAGE_ERRORS as error:
        logger.warning("posted %s %s not broadcast: %r", event["type"], event["id"], error)


def _broadcast_from_sync(group: str, event: dict):
    """Broadcast on the process's posting loop, and wait for it: posts stay in order.

    Not async_to_sync: outside a server's sync thread (a worker thread, a command, a WSGI
    process) it runs each call on a new event loop in a new thread, and the layer opens a
    new Redis connection for every loop (channels_redis keeps one layer per loop), closed
    with it: a connection and a thread per message.
    """
    future = asyncio.run_coroutine_threadsafe(_broadcast(group, event), _posting_loop())
    try:
        future.result(timeout=BROADCAST_WAIT_SECONDS)
    except TimeoutError:
        future.cancel()
        logger.warning("posted %s %s not broadcast: timed out", event["type"], event["id"])


_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None  # (its process id, the loop)


def _posting_loop() -> asyncio.AbstractEventLoop:
    """This process's posting loop, in a daemon thread, started on first use.

    Per process id: a forked worker (Celery's prefork, gunicorn's) inherits the variable
    but not the thread, and starts its own.
    """
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="chat-posting", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]
