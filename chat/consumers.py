"""The chat WebSocket consumer: the tutorial's synchronous ChatConsumer, made robust.

It only parses, delegates and sends: the rules live in rooms, protocol, ratelimit,
identity, services and presence. connect, receive and disconnect run on the sync thread,
as the tutorial's do; room events that need no database run on the event loop, where
the socket's RoomDelivery (chat.delivery) sends them without a hop to that thread.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import contextlib
import functools
import logging
import math
import time

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import WebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from . import (
    commits,
    deactivation,
    identity,
    limits,
    metrics,
    moderation,
    outages,
    overload,
    permissions,
    pipeline,
    presence,
    protocol,
    revocation,
    rooms,
    sanctions,
    services,
    sides,
    stalls,
    tokens,
    upkeep,
)
from .delivery import RoomDelivery
from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)

# Room events handled on the event loop, by handlers that neither block nor touch the
# database: a new kind of room event that needs none is added here and given a handler.
LOOP_EVENTS = frozenset(
    {"chat.message", "chat.messages", "chat.change", "chat.presence", "chat.typing"}
)
# A moderator's actions that close their target's sockets (chat.moderation), and the
# reason each close gives.
MODERATION_CLOSES = {"kick": protocol.CLOSE_KICKED, "ban": protocol.CLOSE_BANNED}
MODERATION_REASONS = {
    protocol.CLOSE_KICKED: "a moderator removed you from this room",
    protocol.CLOSE_BANNED: "a moderator banned you from this room",
}
# Events whose sync handlers run batched with other sockets' (chat.pipeline.call_batched),
# taken in as they arrive, without waiting for the one before (ChatConsumer.take_frame).
# A connect is too, once it joined its groups (dispatch): sockets connect by the thousand
# when a server restarts, and a hop each cost more than their handlers. Disconnecting
# runs on its own, after the frames taken in before it.
BATCHED_EVENTS = frozenset({"websocket.receive"})
# After refusing a message as overloaded, a socket refuses its later messages until that one
# comes back (its client_id), so that none overtakes it; at most this long, longer than the
# room page's longest wait between retries (overload.RETRY_AFTER_MAX_SECONDS, plus a fifth
# of it in jitter).
ORDER_HOLD_SECONDS = 30.0


def _stored_kind(frame: protocol.StoredFrame) -> str:
    """What a frame stores, as its store_failed refusal names it."""
    return "message" if isinstance(frame, protocol.ChatFrame) else "change"


class ChatConsumer(WebsocketConsumer):
    """One socket in one room: joins the room's group and fans its messages out."""

    room_group_name: str | None = None
    room_name: str | None = None
    left_room = False
    closing = False
    # The room's group and the socket's identity groups (chat.revocation), once joined.
    joined_groups: tuple[str, ...] = ()
    session_timer: asyncio.TimerHandle | None = None
    # The socket's delivery of room messages (its methods declare the loop).
    delivery: RoomDelivery | None = None
    # On the sync thread: the room had a message when the socket joined, or it sent one.
    room_exists = False
    presence_member = ""  # the socket's entry in its room's presence list (chat.presence)
    # The caps of open sockets this socket counts against (chat.limits.take_open_slots),
    # or why it may not open (a cap is full): taken on the loop, before connect.
    open_slots: tuple[str, ...] = ()
    too_many_sockets: limits.TooManySockets | None = None
    # When this socket's last "typing" went to the room (time.monotonic()).
    typing_sent_at = -math.inf
    # Who its address counts as (limits.client_network): a guest's ban holds it.
    network = ""
    # A guest's address is kept for bans (chat.moderation) once its socket has posted.
    address_kept = False
    # On the loop: the outcome of the last frame taken in for receive, while it may be pending.
    receiving: asyncio.Future | None = None
    # On the loop: until then (time.monotonic()), or until every message refused meanwhile
    # (`held`: their client_ids, in the order refused) came back in that order, the socket's
    # messages are refused as overloaded, as the first was: none overtakes one refused before.
    hold_until = -math.inf
    held: list[str] | None = None
    # On the loop: when the held message's sender was told to send it again (overload's slot).
    return_at = -math.inf
    # A frame's receive failed (a bug, an outage): the consumer ends with it (see __call__).
    failure: Exception | None = None

    async def __call__(self, scope, receive, send):
        """Run the consumer; however it ends, it leaves its room (leave_room).

        An outage of Redis or the database (chat.outages: a Redis refusing writes too)
        closes the socket with 4503, any other failure with 4500 (logged once, with its
        traceback: it is a bug); a cancellation (the server stopping) goes on after the
        cleanup.
        """
        # The loop, and the queue that every frame of this socket leaves through, in order.
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.asgi_send = send
        self.frames = pipeline.FrameQueue(send)
        try:
            return await self._serve(scope, receive, send)
        except Exception as error:
            # Ending with this failure: a frame's failure reported meanwhile (_received)
            # must not cancel the cleanup below as well.
            self.failure = error
            await self._close_now(self._failed(error, "service unavailable", "its consumer failed"))
        except asyncio.CancelledError:
            if self.failure is None:
                raise
            # Cancelled by _received, for a frame's failure: that is how this consumer ends.
            self.task.uncancel()
            code = self._failed(self.failure, "service unavailable", "its consumer failed")
            await self._close_now(code)
        finally:
            if self.room_group_name is not None and not self.left_room:
                # Here on the loop, not through the sync thread, which a stopping server
                # may have shut already: a skipped leave would keep the dead socket in its
                # room's presence list for ever.
                self.left_room = True
                self._left_on_loop()
            if self.joined_groups:
                await asyncio.shield(self._discard_from_groups())
            # Then the channel itself: channels_redis alone would keep the channel of a
            # socket that left with a message on its way to it (mysite.channel_layers).
            if hasattr(self, "channel_name") and hasattr(self.channel_layer, "clean_channel"):
                await self.channel_layer.clean_channel(self.channel_name)

    async def _serve(self, scope, receive, send):
        """channels' AsyncConsumer.__call__, except that an idle socket keeps neither the last
        message dispatched to it nor the task that brought it.

        channels' await_many_dispatch holds both in its frame until the next message comes:
        for a socket idle in a room, a presence update and its task, about 1 KB each of
        10,000 idle sockets (benchmarks/connect.py). As there, a source's next message is
        awaited only once its last one was dispatched.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        # No base_send (channels' async_to_sync of send, an object each): accept, send and
        # close go through the socket's FrameQueue.
        sources = (receive, self.channel_receive)
        waiting = [asyncio.ensure_future(source()) for source in sources]
        try:
            while True:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for index, source in enumerate(sources):
                    if waiting[index].done():
                        await self._dispatch_next(waiting, index, source)
        except StopConsumer:
            pass
        finally:
            for task in waiting:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _dispatch_next(self, waiting: list[asyncio.Future], index: int, source):
        # A frame of its own: the message goes with it once dispatched.
        await self.dispatch(waiting[index].result())
        waiting[index] = asyncio.ensure_future(source())

    async def _close_now(self, code: int):
        with contextlib.suppress(Exception):  # the connection may be gone already
            await self.asgi_send({"type": "websocket.close", "code": code})

    async def dispatch(self, message):
        """Run the handler; then honour a cancellation.

        Room events that need no database (LOOP_EVENTS) are handled here on the loop: a
        room message reaches every socket of the process at once, and a hop to the sync
        thread each cost more than the handlers. Everything else runs on the sync thread,
        as channels does; under load frames and connects arrive from many clients at once,
        and their handlers run together, in one hop (chat.pipeline.call_batched).

        asgiref swallows a cancellation that arrives while the handler waits in
        async_to_sync: the handler finishes and the consumer would carry on, so a server
        stopping it would wait for it for ever. Re-raise it once the handler is done.
        """
        if message["type"] in LOOP_EVENTS:
            if self.room_events_wanted():
                getattr(self, get_handler_name(message))(message)
        elif message["type"] == "websocket.connect":
            # AuthMiddleware loaded the session and the user: who speaks needs no database.
            self.author = identity.author_for(self.scope.get("user"), self.scope.get("session"))
            self.room_name = await self._room_for_socket()
            if self.room_name is not None:  # or connect refuses it, having joined nothing
                await asyncio.gather(self._join_groups(), self._take_open_slots())
            await pipeline.call_batched_whole(self.websocket_connect, message)
            if self.delivery is None:  # connect refused the socket: it wants no room events
                await self._discard_from_groups()
                self.joined_groups = ()
        elif message["type"] in BATCHED_EVENTS:
            self.take_frame(message)
        else:
            if self.receiving is not None:  # the frames before it first, as they came
                await asyncio.wait([self.receiving])
            await super().dispatch(message)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    @sides.on_loop
    def room_events_wanted(self) -> bool:
        """Whether room events reach this socket: connect accepted it, and it is not closing.

        The socket joins its groups before connect runs (see _join_groups), so events may
        arrive for a socket that connect then refuses, or that is closing meanwhile.
        """
        return self.delivery is not None and not self.closing

    @sides.on_loop
    def take_frame(self, message: dict):
        """Queue a frame for receive on the sync thread, or refuse its message now (overloaded).

        Taken in as it arrives, without waiting for the frame before it (which keeps its
        place ahead of it): every frame waiting for the store waits in one queue, where
        its wait is seen (chat.pipeline.store_queue_seconds), not unseen in the server's
        queue of this socket's frames.
        """
        if self._refused_as_overloaded(message):
            return
        self.receiving = pipeline.submit_batched(getattr(self, get_handler_name(message)), message)
        self.receiving.add_done_callback(self._received)

    @sides.on_loop
    def _received(self, outcome: asyncio.Future):
        if outcome is self.receiving:
            self.receiving = None
        if outcome.cancelled() or outcome.exception() is None or self.failure is not None:
            return
        # As if receive had raised in dispatch: the consumer ends, closing with 4503 or 4500.
        self.failure = outcome.exception()
        self.closing = True  # and its frames still queued store nothing
        self.task.cancel()

    @sides.on_loop
    def _refused_as_overloaded(self, message: dict) -> bool:
        """Refuse a chat message at once, on the loop, when its path's queues are over the bound.

        A message accepted now waits in two queues of this process: in front of the store
        (pipeline.store_queue_seconds), then, stored, in front of Redis, its broadcast
        behind the channel-layer calls not done yet (pipeline.layer_queue_seconds): see
        chat.overload.path_wait. When that wait is over CHAT_STORE_QUEUE_SECONDS, a message
        is answered with `overloaded` and is not stored, its sender told to send it again in
        a slot of its own (chat.overload.return_slot); the socket's later messages are
        refused too, with the same slot, until every one refused came back, in the order
        refused (ORDER_HOLD_SECONDS at most; without a client_id, until its slot), so none
        overtakes one refused before it, even one whose refusal the client read late. A
        typing signal is dropped (stale by the time a queue that old reaches it). Pings,
        edits and deletions, and frames that are not valid, take their turn on the sync
        thread as ever.
        """
        now = time.monotonic()
        waited = overload.path_wait()
        over = waited > settings.CHAT_STORE_QUEUE_SECONDS
        holding = now < self.hold_until
        if not (over or holding) or self.closing:
            return False
        try:
            frame = protocol.parse_chat_frame(
                message.get("text"),
                message.get("bytes"),
                max_chars=settings.CHAT_MESSAGE_MAX_CHARS,
                max_frame_chars=settings.CHAT_FRAME_MAX_CHARS,
            )
        except protocol.FrameRefused:
            return False
        if isinstance(frame, protocol.TypingSignal):
            return over
        if not isinstance(frame, protocol.ChatFrame):
            return False  # a ping, an edit or a deletion: each takes its turn
        held = self.held if holding else None
        comes_back = bool(held) and frame.client_id == held[0]
        if not over and comes_back:
            held.pop(0)  # its turn: the next one refused must come back next
            if not held:
                self.hold_until, self.held = -math.inf, None  # all back: the hold is over
            return False
        new = frame.client_id is not None and frame.client_id not in (held or ())
        if not holding:  # a sender refused anew: its own slot to come back in
            self.held = held = []
            self.return_at = overload.return_slot(waited, 1, now)
            hold = ORDER_HOLD_SECONDS if frame.client_id is not None else self.return_at - now
            self.hold_until = now + hold
        elif comes_back:  # back while still over: a new slot, for all that it holds
            self.return_at = overload.return_slot(waited, len(held), now)
            self.hold_until = now + ORDER_HOLD_SECONDS
        elif new:
            overload.reserve_return()  # one more message it will send again in its slot
        if new:
            held.append(frame.client_id)
        refusal = protocol.overloaded(frame.client_id, overload.retry_after(self.return_at, now))
        metrics.FRAMES_REFUSED.labels(refusal.code).inc()
        self.send_from_loop(protocol.error_frame(refusal))
        return True

    @sides.on_sync_thread
    def send(self, text_data=None, bytes_data=None, close=False):
        """Queue a frame for this socket, in order, without waiting."""
        assert text_data is not None and bytes_data is None and not close
        pipeline.hand_to_loop(
            self.loop, self.frames.put, {"type": "websocket.send", "text": text_data}
        )

    @sides.on_loop
    def send_from_loop(self, text_data: str):
        """Queue a frame for this socket, after those queued before it."""
        self.frames.put({"type": "websocket.send", "text": text_data})

    @sides.on_loop
    def close_from_loop(self, code: int):
        """Close the socket once the frames queued before have gone."""
        self.frames.put({"type": "websocket.close", "code": code})

    @sides.on_sync_thread
    def accept(self, subprotocol=None, headers=None):
        """Accept the socket, ahead of the frames queued after (see send), without waiting.

        channels' accept waits for the loop to send it (async_to_sync), holding the sync
        thread, and every socket's connect batched with this one, for a turn of the loop.
        """
        message = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers:
            message["headers"] = list(headers)
        pipeline.hand_to_loop(self.loop, self.frames.put, message)

    @sides.on_sync_thread
    def close(self, code=None, reason=None):
        """Close the socket once the frames queued before have gone (see send)."""
        message = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        pipeline.hand_to_loop(self.loop, self.frames.put, message)

    @sides.on_sync_thread
    def connect(self):
        """Join the room's group, accept, then send the backlog and who is here."""
        if deactivation.deactivated_user(self.scope.get("user"), self.scope.get("session")):
            # A browser signed in as a deactivated account: accepted, so that the page
            # reads the close code and explains it instead of reconnecting as a guest.
            self.accept(tokens.accepted_subprotocol(self.scope))
            self._close_deactivated()
            return
        if self.room_name is None:
            # A private room it may not read: refused as one that does not exist is.
            self.close()
            return
        if not self._signed_in_as_the_page_was():
            # The page was loaded under another sign-in (a logout or login while it was
            # offline): what it holds to send was typed as someone else. Store nothing.
            self.accept(tokens.accepted_subprotocol(self.scope))
            self._close_for_identity("the page's sign-in is not the socket's")
            return
        self.network = limits.client_network(self.scope)
        refusal = permissions.sanction_refusal(self.author, self.room_name, self.network)
        if refusal is not None and refusal.code == "banned":
            # Accepted, so that the close code and its reason reach the page or program.
            self.accept(tokens.accepted_subprotocol(self.scope))
            self.closing = True
            self.close(code=protocol.CLOSE_BANNED, reason=refusal.detail)
            return
        room = services.room_on_join(self.room_name)
        if (existing := room.lookalike) is not None:
            # A new public room's address (private ones have their own keys, no look-alikes);
            # not an empty ghost of that room: told where it is, as the page redirects.
            self.accept(tokens.accepted_subprotocol(self.scope))
            self.closing = True
            self.send(text_data=protocol.error_frame(protocol.lookalike_room_refusal(existing)))
            self.close(code=protocol.CLOSE_LOOKALIKE_ROOM)
            return
        if self.too_many_sockets is not None:
            # Accepted, so that the close code and its reason reach the page or program.
            self.accept(tokens.accepted_subprotocol(self.scope))
            self.closing = True
            self.close(code=protocol.CLOSE_TOO_MANY_SOCKETS, reason=str(self.too_many_sockets))
            return
        self.room_group_name = rooms.group_name(self.room_name)
        metrics.SOCKETS_OPEN.inc()  # and dec() in _left_on_loop, once
        self.rate_limit = TokenBucket(settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND)
        # Built here, started on the loop once the backlog is queued: from then on only
        # the loop touches it.
        self.delivery = RoomDelivery(
            self.send_from_loop,
            self._read_after,
            self.loop.call_later,
            reorder_wait=settings.CHAT_REORDER_WAIT_SECONDS,
            max_held=settings.CHAT_REORDER_MAX_HELD,
            recovery_limit=settings.CHAT_RECOVERY_LIMIT,
            read_changes=self._read_changes_after,
        )
        self._arm_session_timer()
        self.accept(tokens.accepted_subprotocol(self.scope))
        query_string = self.scope.get("query_string", b"")
        try:
            after = protocol.parse_after(query_string)
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            after = None
        try:
            changes = protocol.parse_changes(query_string)
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            changes = None
        self._send_backlog(room, after, changes)
        label = identity.presence_label(self.author)
        self.presence_member = presence.member(self.channel_name, self.author.key, label)
        pipeline.hand_to_loop(self.loop, upkeep.socket_joined, self)  # and so into presence

    def _signed_in_as_the_page_was(self) -> bool:
        """Whether the socket speaks as the page's ?as= says it was loaded (if it says)."""
        expected = protocol.parse_sign_in(self.scope.get("query_string", b""))
        return expected is None or expected == identity.sign_in_of(self.author)

    async def _take_open_slots(self):
        """On the loop, before connect: count the socket against the caps of open sockets,
        unless connect will refuse it for its sign-in (then it never counted)."""
        if not self._signed_in_as_the_page_was():
            return
        try:
            self.open_slots = await limits.take_open_slots(
                self.scope, self.author, self.channel_name
            )
        except limits.TooManySockets as refusal:
            self.too_many_sockets = refusal

    @sides.on_sync_thread
    def disconnect(self, close_code):
        """Leave the room's group and its presence list."""
        self.leave_room()

    @sides.on_sync_thread
    def leave_room(self):
        """Leave the presence list and the upkeep, once (the groups: see __call__).

        Runs from disconnect, on the sync thread; when a handler raised or the consumer
        was cancelled, __call__ does the same on the loop (channels calls disconnect only
        for a websocket.disconnect event).
        """
        if self.room_group_name is None or self.left_room:
            return
        self.left_room = True
        # On the loop, first: the upkeep forgets the socket even when Redis is down (or it
        # would keep refreshing a dead socket's presence), then records and announces it.
        pipeline.hand_to_loop(self.loop, self._left_on_loop)
        # The groups are left by __call__, on the loop: this thread waits for no Redis.

    @sides.on_loop
    def _left_on_loop(self):
        metrics.SOCKETS_OPEN.dec()
        self._disarm_session_timer()  # or the timer would keep this consumer for weeks
        if self.delivery is not None:  # nothing more is sent to this socket, gaps or not
            self.delivery.stop()
        upkeep.socket_left(self)

    async def _room_for_socket(self) -> str | None:
        """On the loop, before connect: the key of the room the socket's address names, if
        its author may read it (chat.permissions.room_for); a public room needs no hop."""
        address = self.scope["url_route"]["kwargs"]["room_name"]
        if (room_key := permissions.open_to_all(address)) is not None:
            return room_key
        return await pipeline.call_batched(self._room_for_author, address)

    @sides.on_sync_thread
    def _room_for_author(self, address: str) -> str | None:
        return permissions.room_for(self.author, address)

    async def _join_groups(self):
        """On the loop, before connect: the room's group, and the groups that close the
        socket when who it speaks as changes (chat.revocation).

        Before connect reads the backlog, so that no message falls between the two; here,
        so that the sync thread waits for no Redis. The user is the one AuthMiddleware
        loaded, the session key the cookie's: neither needs the database.
        """
        user, session = self.scope.get("user"), self.scope.get("session")
        self.joined_groups = (
            rooms.group_name(self.room_name),
            *revocation.identity_groups(user, session, self.scope.get("api_token")),
        )
        # Side by side; the layer bounds how many are in flight (mysite.channel_layers).
        add = self.channel_layer.group_add
        await asyncio.gather(*(add(group, self.channel_name) for group in self.joined_groups))

    async def _discard_from_groups(self):
        discard = self.channel_layer.group_discard
        try:
            await asyncio.gather(*(discard(g, self.channel_name) for g in self.joined_groups))
        except Exception as error:
            if not outages.is_outage(error):
                raise
            # Redis forgets the member on its own: group_expiry, or the restart itself.
            logger.warning("group_discard failed, Redis unreachable: %r", error)

    @sides.on_sync_thread
    def chat_identity_changed(self, event):
        """This socket's session or user changed: close, so the page reconnects as it now is."""
        self._close_for_identity(event["reason"])

    @sides.on_sync_thread
    def chat_account_deactivated(self, event):
        """This socket's user was deactivated (chat.deactivation): close with 4412."""
        self._close_deactivated()

    @sides.on_sync_thread
    def _close_deactivated(self):
        if not self.closing:
            logger.info("closing socket in room %r: account deactivated", self.room_name)
            self.closing = True  # and store nothing more from it meanwhile
            self.close(code=protocol.CLOSE_ACCOUNT_DEACTIVATED, reason=deactivation.DETAIL)

    @sides.on_sync_thread
    def chat_membership_ended(self, event):
        """A user left the room or was removed: if it is this socket's, close it (4403)."""
        if event["user_id"] == self.author.user_id and not self.closing:
            logger.info("closing socket in room %r: %s", self.room_name, event["reason"])
            self.closing = True  # and store nothing more from it meanwhile
            self.close(code=protocol.CLOSE_NOT_A_MEMBER, reason=event["reason"])

    @sides.on_sync_thread
    def chat_moderated(self, event):
        """A moderator acted in the room: forget its sanctions; close if kicked or banned."""
        sanctions.forget(self.room_name)
        code = MODERATION_CLOSES.get(event["action"])
        if code is None or self.closing or not self._is_target(event):
            return
        logger.info(
            "closing socket in room %r: %s",
            self.room_name,
            event["action"],
            extra=self._log_extra(code),
        )
        self.closing = True  # and store nothing more from it meanwhile
        self.close(code=code, reason=MODERATION_REASONS[code])

    @sides.on_sync_thread
    def _is_target(self, event) -> bool:
        """Whether a moderator's action names this socket: its account, or (a guest) its
        session or, for a ban, its address."""
        if self.author.user_id is not None:
            return event["user_id"] == self.author.user_id
        if self.author.is_bot:
            return False
        if event["guest_key"] and event["guest_key"] == self.author.guest_key:
            return True
        return (
            event["action"] == "ban" and bool(event["network"]) and event["network"] == self.network
        )

    @sides.on_sync_thread
    def _close_for_identity(self, reason: str):
        if self.closing:
            return
        logger.info(
            "closing socket in room %r: %s",
            self.room_name,
            reason,
            extra=self._log_extra(protocol.CLOSE_IDENTITY_CHANGED),
        )
        self.closing = True  # and store nothing more from it meanwhile
        self.close(code=protocol.CLOSE_IDENTITY_CHANGED, reason=reason)

    @sides.on_sync_thread
    def _arm_session_timer(self):
        """Close the socket when its stored session expires (chat.revocation)."""
        expires = revocation.session_expires_at(self.scope.get("session"))
        if expires is not None:
            delay = max((expires - timezone.now()).total_seconds(), 0.0)
            self.loop.call_soon_threadsafe(self._start_session_timer, delay)

    @sides.on_loop
    def _start_session_timer(self, delay: float):
        if not self.left_room:
            self.session_timer = self.loop.call_later(delay, self._session_timer_fired)

    @sides.on_loop
    def _disarm_session_timer(self):
        if self.session_timer is not None:
            self.session_timer.cancel()

    @sides.on_loop
    def _session_timer_fired(self):
        self.session_check = self.loop.create_task(pipeline.call_batched(self._check_session))

    @sides.on_sync_thread
    def _check_session(self):
        """The session's time is up, unless it was saved (and so extended) meanwhile."""
        if self.left_room:
            return
        expires = revocation.session_expires_at(self.scope.get("session"))
        if expires is None or expires <= timezone.now():
            self._close_for_identity("session expired")
        else:
            self._arm_session_timer()

    @sides.on_sync_thread
    def receive(self, text_data=None, bytes_data=None):
        """Validate one frame, store its message (or edit, or deletion), then broadcast it;
        or refuse it."""
        if self.closing:
            return
        try:
            frame = protocol.parse_chat_frame(
                text_data,
                bytes_data,
                max_chars=settings.CHAT_MESSAGE_MAX_CHARS,
                max_frame_chars=settings.CHAT_FRAME_MAX_CHARS,
            )
        except protocol.FrameRefused as refusal:
            self.rate_limit.allow()  # garbage spends a token too, so any flood ends in a close
            self._refuse(refusal)
            return
        # Every frame spends a token, so any flood ends in a close.
        if not self._spend_token(getattr(frame, "client_id", None)):
            return
        if isinstance(frame, protocol.TypingSignal):
            self._typing()
            return
        if isinstance(frame, protocol.Ping):
            self.send(text_data=protocol.pong_frame())
            return
        # A message's session is read at its batch's commit, with the batch's others'.
        batched = isinstance(frame, protocol.ChatFrame) and self.scope.get("api_token") is None
        if not self._may_write(getattr(frame, "client_id", None), speaker_checked=batched):
            return
        if stalls.cooling_off(self.room_name):  # its lock just held the thread for the bound
            self._refuse(self._not_stored(frame))
            return
        if not isinstance(frame, protocol.ChatFrame):
            # An edit or a deletion: stored at once, on its own (chat.services.change_message);
            # it takes the same tokens as a message.
            try:
                limits.check_message(self.scope, self.author, self.room_name, frame)
                self._change(frame)
            except protocol.FrameRefused as refusal:
                self._refuse(refusal)
            return
        # Checked and stored with the batch's other messages once its frames all ran
        # (chat.commits): one Redis round trip, one transaction.
        check = limits.message_check(
            self.scope, self.author, self.room_name, not self.room_exists, frame.client_id
        )
        draft = services.Draft(self.room_name, self.author, frame.message, frame.client_id)
        speaker = (self.author, self.scope.get("session")) if batched else None
        post = commits.Post(draft, check, speaker=speaker)
        commits.submit(self.loop, post)
        pipeline.after_batch(self.loop, self._posted, post, frame)

    @sides.on_sync_thread
    def _may_write(self, client_id: str | None, speaker_checked: bool = False) -> bool:
        """Whether the socket's author still speaks as it (unless `speaker_checked`: its
        commit checks that) and may post (or edit, or delete) in its room now; if not,
        refuse the frame or close the socket, and say False."""
        token = self.scope.get("api_token")
        if not speaker_checked and not (
            tokens.still_valid(token)
            if token is not None
            else revocation.speaks_as_now(self.author, self.scope.get("session"))
        ):
            self._close_as_no_longer_speaking()
            return False
        if (gone := permissions.deactivated_partner(self.author, self.room_name)) is not None:
            self._refuse(
                protocol.FrameRefused(
                    "recipient_deactivated", permissions.read_only_notice(gone), client_id
                )
            )
            return False
        if not permissions.may_post(self.author, self.room_name):
            # Removed while the closing event was on its way (or lost with Redis).
            self.closing = True
            self.close(code=protocol.CLOSE_NOT_A_MEMBER)
            return False
        refusal = permissions.sanction_refusal(self.author, self.room_name, self.network, client_id)
        if refusal is not None:
            self._refuse(refusal)
            if refusal.code == "banned":  # banned while the closing event was on its way
                self.closing = True
                self.close(code=protocol.CLOSE_BANNED, reason=refusal.detail)
            return False
        return True

    @sides.on_sync_thread
    def _close_as_no_longer_speaking(self):
        """Close the socket: its author is no longer who its session or token speaks as."""
        # Logged out, banned, renamed... and the event that closes us is still on its way,
        # or will never come (a change made without signals): store nothing.
        token = self.scope.get("api_token")
        session = None if token is not None else self.scope.get("session")
        if deactivation.deactivated_user(None, session) is not None:
            self._close_deactivated()  # the handshake's session named a user now inactive
        else:
            self._close_for_identity("the session no longer speaks as this socket")

    @sides.on_sync_thread
    def _posted(self, post: commits.Post, frame: protocol.ChatFrame):
        """Once its batch is committed: broadcast the message, or acknowledge, or refuse it."""
        try:
            message, created = self._stored(post, frame)
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            return
        except revocation.NoLongerSpeaks:
            self._close_as_no_longer_speaking()
            return
        self.room_exists = True
        if self.author.is_guest and not self.address_kept:
            self.address_kept = True
            moderation.remember_address(self.author, self.network)
        if created:
            # Stored already, so a broadcast that fails or is dropped loses nothing: each
            # socket fills the gap from the database when the next message arrives.
            if post.broadcast.take(self):  # one event for the batch's messages of the room
                event = protocol.room_messages_event(post.broadcast.events)
                broadcast = self._broadcast(event, post.broadcast.senders)
                pipeline.hand_to_loop(self.loop, pipeline.start_logged_task, broadcast)
        else:
            # A retried send: the room already has it; acknowledge to the sender only.
            self.send(text_data=protocol.message_frame(protocol.chat_message_event(message)))

    @sides.on_sync_thread
    def _change(self, frame: protocol.EditFrame | protocol.DeleteFrame):
        """Edit or delete a message (chat.services), then broadcast its change once committed."""
        try:
            if isinstance(frame, protocol.EditFrame):
                message = services.edit_message(
                    self.room_name, frame.id, self.author, frame.message
                )
            else:
                message = services.delete_message(self.room_name, frame.id, self.author)
        except services.ChangeRefused as refusal:
            raise protocol.FrameRefused(refusal.code, refusal.detail) from None
        except DatabaseError as error:
            raise self._store_failed(error, frame) from None
        event = protocol.chat_change_event(message)
        pipeline.hand_to_loop(self.loop, pipeline.start_logged_task, self._broadcast(event))

    @sides.on_sync_thread
    def _spend_token(self, client_id: str | None = None) -> bool:
        """Take a token from the socket's bucket; without one, refuse (and close a flood)."""
        if self.rate_limit.allow():
            return True
        self._refuse(
            protocol.FrameRefused(
                "rate_limited",
                f"Slow down: at most {settings.CHAT_RATE_PER_SECOND:g} messages a second.",
                client_id,
            )
        )
        return False

    @sides.on_sync_thread
    def _typing(self):
        """Tell the room this socket's author is typing: at most once per throttle period.

        It spent a token of the socket's flood bucket, as every frame does, but none of the
        per-person message limit (chat.limits), and it is never stored. Signals within
        CHAT_TYPING_THROTTLE_SECONDS of the socket's last one, or of its person's on any
        socket (chat.limits.typing_allowed), are dropped without a word.
        """
        now = time.monotonic()
        if now - self.typing_sent_at < settings.CHAT_TYPING_THROTTLE_SECONDS:
            return
        self.typing_sent_at = now
        if not limits.typing_allowed(self.scope, self.author, self.room_name):
            return
        event = protocol.typing_event(self.author, self.channel_name)
        pipeline.hand_to_loop(self.loop, pipeline.start_logged_task, self._broadcast(event))

    async def _broadcast(self, event: dict, senders: list["ChatConsumer"] | None = None):
        """Send to the room; if Redis is unreachable, close the sender (or each of the
        `senders` of the event's messages) with 4503.

        The message is stored, so the page reconnects and catches up. (On the redis layer
        every socket notices an outage as its receive fails; on pubsub nothing fails but
        this send, so the senders learn of it here.)
        """
        try:
            with metrics.BROADCAST_SECONDS.time():
                await self.channel_layer.group_send(self.room_group_name, event)
        except Exception as error:
            if not outages.is_outage(error):
                raise
            for sender in senders or [self]:
                code = sender._failed(error, "broadcast failed", "its broadcast failed")
                sender.close_from_loop(code)

    @sides.on_loop
    def chat_message(self, event):
        """Deliver one room message in order (chat.delivery)."""
        self.delivery.message(event)

    @sides.on_loop
    def chat_messages(self, event):
        """Deliver a batch of one room's messages, each in order (chat.delivery)."""
        self.delivery.messages(event["messages"])

    @sides.on_loop
    def chat_change(self, event):
        """Deliver one edit or deletion in change order, after its message (chat.delivery)."""
        self.delivery.change(event)

    @sides.on_loop
    def chat_presence(self, event):
        """Tell this socket who is in the room."""
        self.send_from_loop(protocol.presence_frame(event))

    @sides.on_loop
    def chat_typing(self, event):
        """Tell this socket someone else in the room is typing."""
        if event["sender_channel"] != self.channel_name:
            self.send_from_loop(protocol.typing_frame(event))

    @sides.on_loop
    def _read_after(self, after: int, limit: int, on_done):
        """Read the room's messages after `after` on the sync thread, then on_done.

        The read joins the next batch (chat.pipeline.call_batched). If it fails, the socket
        closes as its handler would have (4503 in an outage) and the page catches up.
        """
        reading = pipeline.call_batched(self._events_after, after, limit)
        pipeline.start_logged_task(self._read_then(reading, on_done))

    async def _read_then(self, reading, on_done):
        try:
            on_done(*await reading)
        except Exception as error:
            self.close_from_loop(self._failed(error, "catch-up read failed", "its catch-up failed"))

    @sides.on_loop
    def _read_changes_after(self, after_change: int, limit: int, on_done):
        """Read the room's changes after `after_change` on the sync thread, then on_done."""
        reading = pipeline.call_batched(self._change_events_after, after_change, limit)
        pipeline.start_logged_task(self._read_then(reading, on_done))

    @sides.on_sync_thread
    def _change_events_after(self, after_change: int, limit: int) -> tuple[list[dict], int]:
        """The room's change events after `after_change` (final states), at most `limit`;
        its newest change number, read first (a later change comes live)."""
        newest = services.last_change(self.room_name)
        changed = services.changes_after(self.room_name, after_change, limit)
        return [protocol.chat_change_event(message) for message in changed], newest

    @sides.on_sync_thread
    def _events_after(self, after: int, limit: int) -> tuple[list[dict], int]:
        """The room's events after `after`, at most `limit`; its newest id.

        The messages endpoint reads through the same services.messages_after.
        """
        messages = services.messages_after(self.room_name, after, limit)
        events = [protocol.chat_message_event(message) for message in messages]
        return events, services.last_seq(self.room_name)

    @sides.on_sync_thread
    def _send_backlog(self, room: services.RoomOnJoin, after: int | None, changes: int | None):
        """Send the history, or with ?after= recover what was missed (a bounded amount).

        Either says with a `gone` frame when ids it would cover were deleted by retention
        (chat.retention): the client then waits for none of them. `room` was read first,
        after the socket joined its group: a change after its change number, or a message
        after its newest id, comes live, and what the reads below show includes every
        change up to it. A room with no message yet needs no read of its history.
        """
        room_change, gone = room.last_change, room.gone_until
        waiting = []
        if after is not None:
            if gone > after:  # before the messages recovered, which start after it
                self.send(text_data=protocol.gone_frame(gone))
            last, waiting = self._recover(after, changes, room_change)
        else:
            backlog = (
                services.recent_messages(self.room_name, settings.CHAT_HISTORY_LIMIT)
                if room.last_seq
                else []
            )
            for message in backlog:
                event = protocol.chat_message_event(message)
                frame = protocol.message_frame(event, history=True, room_change=room_change)
                self.send(text_data=frame)
            if gone:  # after the history, whose first message it may be the end of
                self.send(text_data=protocol.gone_frame(gone))
            last = backlog[-1].seq if backlog else room.last_seq
        pipeline.hand_to_loop(self.loop, self.delivery.start_changes, room_change, waiting)
        pipeline.hand_to_loop(self.loop, self.delivery.start, last)
        self.room_exists = last > 0

    @sides.on_sync_thread
    def _recover(self, after: int, changes: int | None, room_change: int) -> tuple[int, list[dict]]:
        """Send the messages after `after`, at most CHAT_RECOVERY_LIMIT, then a catch_up
        frame: recovered, or (more were missed) for the client to fetch over HTTP. Returns
        the id the socket goes on after, and the change events waiting for later messages.

        With `changes` (?changes=), the final state of the messages changed after it (up
        to room_change, at most CHAT_RECOVERY_LIMIT) follows the messages, and the frame
        says whether they were sent. The messages endpoint reads through the same
        services.messages_after and services.changes_after.
        """
        limit = settings.CHAT_RECOVERY_LIMIT
        metrics.CATCH_UP_READS.inc()
        missed = services.messages_after(self.room_name, after, limit + 1)
        # Read after the messages: it is at least the newest of them. An `after` beyond the
        # room's newest counts from the newest.
        newest = services.last_seq(self.room_name)
        after = min(after, newest)
        recovered = len(missed) <= limit
        if recovered:
            for message in missed:
                self.send(text_data=protocol.message_frame(protocol.chat_message_event(message)))
        until = (missed[-1].seq if missed else after) if recovered else newest
        changes_state, waiting = None, []
        if changes is not None:
            changed = services.changes_after(self.room_name, changes, limit + 1)
            changes_state = (len(changed) <= limit, changes, max(changes, room_change))
            for message in changed if changes_state[0] else ():
                event = protocol.chat_change_event(message)
                if message.seq <= until:
                    self.send(text_data=protocol.change_frame(event))
                else:  # stored after the read of messages: sent once its message is
                    waiting.append(event)
        self.send(text_data=protocol.catch_up_frame(recovered, after, until, changes_state))
        return until, waiting

    @staticmethod
    def _not_stored(frame: protocol.StoredFrame) -> protocol.FrameRefused:
        return protocol.FrameRefused(
            "store_failed",
            f"The {_stored_kind(frame)} could not be saved, so it was not sent. Try again.",
            getattr(frame, "client_id", None),
        )

    @sides.on_sync_thread
    def _stored(self, post: commits.Post, frame: protocol.ChatFrame):
        """The post's (message, created); raises FrameRefused for what refused it."""
        try:
            return commits.outcome(self.loop, post)
        except services.LookalikeRoom as lookalike:
            raise protocol.lookalike_room_refusal(lookalike.existing, frame.client_id) from None
        except DatabaseError as error:
            raise self._store_failed(error, frame) from None

    @sides.on_sync_thread
    def _store_failed(
        self, error: DatabaseError, frame: protocol.StoredFrame
    ) -> protocol.FrameRefused:
        """Log a frame's failed store once and say store_failed; a wait for the room's lock
        given up at the bound cools the room off (chat.stalls), whatever the frame stored.
        A failure that is no outage (chat.outages) is a bug: its traceback, no outage counted."""
        outage = outages.is_outage(error)
        if outage:
            metrics.outage(error)
        logger.error(
            "%s not stored in room %r: %r",
            _stored_kind(frame),
            self.room_name,
            error,
            exc_info=None if outage else error,
            extra=self._log_extra("store_failed"),
        )
        if stalls.is_lock_timeout(error):
            stalls.timed_out(self.room_name)
        return self._not_stored(frame)

    @sides.on_sync_thread
    def _refuse(self, refusal: protocol.FrameRefused):
        metrics.FRAMES_REFUSED.labels(refusal.code).inc()
        logger.info(
            "refused frame in room %r from %s: %s",
            self.room_name,
            limits.client_address(self.scope),
            refusal.code,
            extra=self._log_extra(refusal.code),
        )
        self.send(text_data=protocol.error_frame(refusal))
        if self.rate_limit.refusals_in_a_row >= settings.CHAT_FLOOD_CLOSE_AFTER:
            logger.warning(
                "closing flooding socket in room %r",
                self.room_name,
                extra=self._log_extra(protocol.CLOSE_FLOODING),
            )
            self.closing = True
            self.close(code=protocol.CLOSE_FLOODING)

    @sides.on_loop
    def _failed(self, error: Exception, outage: str, failure: str) -> int:
        """Log a failure the socket must close for, once; return the code it closes with.

        An outage (chat.outages) is one line, not a traceback per socket, and 4503: the page
        reconnects and catches up. Anything else is a bug: its traceback, and 4500.
        """
        if outages.is_outage(error):
            metrics.outage(error)
            code = protocol.CLOSE_SERVICE_UNAVAILABLE
            logger.warning("closing socket, %s: %r", outage, error, extra=self._log_extra(code))
            return code
        code = protocol.CLOSE_INTERNAL_ERROR
        logger.error(
            "closing socket in room %r: %s",
            self.room_name,
            failure,
            exc_info=error,
            extra=self._log_extra(code),
        )
        return code

    def _log_extra(self, code: int | str) -> dict:
        """The fields of a log line about this socket (DJANGO_LOG_FORMAT=json shows them)."""
        return {"room": self.room_name, "code": code, "client": limits.client_address(self.scope)}
