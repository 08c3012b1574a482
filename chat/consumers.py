"""The chat WebSocket consumer: the tutorial's synchronous ChatConsumer, made robust.

It only parses, delegates and sends: the rules live in rooms, protocol, ratelimit,
identity, services and presence; chat.pipeline hands its frames to the event loop.
"""

import asyncio
import contextlib
import logging
import math
import time

import redis
from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import WebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from . import identity, limits, pipeline, presence, protocol, revocation, rooms, services
from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)

# What an unreachable Redis or database raises; the socket closes instead of crashing.
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, DatabaseError)
# Events whose handlers run batched with other sockets' (chat.pipeline.call_batched): what
# the room sends, and what the client sends. Connecting and disconnecting run on their own.
BATCHED_EVENTS = frozenset(
    {"chat.message", "chat.presence", "chat.typing", "chat.resync", "websocket.receive"}
)


class ChatConsumer(WebsocketConsumer):
    """One socket in one room: joins the room's group and fans its messages out."""

    room_group_name: str | None = None
    room_name: str | None = None
    left_room = False
    closing = False
    # The room's group and the socket's identity groups (chat.revocation), once joined.
    joined_groups: tuple[str, ...] = ()
    session_timer: asyncio.TimerHandle | None = None
    # Messages that arrived ahead of a missing one, by id; a new wait starts a new episode.
    held: dict[int, dict]
    gap_episode = 0
    # A catch-up page said "more": later messages wait for the client to ask for them.
    catching_up = False
    page_announced = False  # ...and the client has not asked for the next one yet
    # When this socket's last "typing" went to the room (time.monotonic()).
    typing_sent_at = -math.inf

    async def __call__(self, scope, receive, send):
        """Run the consumer; however it ends, it leaves its room (leave_room).

        An outage of Redis or the database closes the socket with 4503, any other failure
        with 1011 (logged once, with its traceback: it is a bug); a cancellation (the
        server stopping) goes on after the cleanup.
        """
        # The loop and the ASGI send that the sync handlers hand frames to (chat.pipeline).
        self.loop = asyncio.get_running_loop()
        self.asgi_send = send
        try:
            return await super().__call__(scope, receive, send)
        except OUTAGE_ERRORS as error:
            # One line, not a traceback per socket: the page reconnects and catches up.
            logger.warning("closing socket, service unavailable: %r", error)
            await self._close_now(protocol.CLOSE_SERVICE_UNAVAILABLE)
        except Exception:
            logger.exception("closing socket in room %r: its consumer failed", self.room_name)
            await self._close_now(protocol.CLOSE_INTERNAL_ERROR)
        finally:
            if self.room_group_name is not None and not self.left_room:
                # Shielded: a second cancellation must not skip it, or this process would
                # keep the dead socket in its room's presence list for ever.
                await asyncio.shield(database_sync_to_async(self.leave_room)())
            # Then the channel itself: channels_redis alone would keep the channel of a
            # socket that left with a message on its way to it (mysite.channel_layers).
            if hasattr(self, "channel_name") and hasattr(self.channel_layer, "clean_channel"):
                await self.channel_layer.clean_channel(self.channel_name)

    async def _close_now(self, code: int):
        with contextlib.suppress(Exception):  # the connection may be gone already
            await self.asgi_send({"type": "websocket.close", "code": code})

    async def dispatch(self, message):
        """Run the handler on the sync thread, as channels does; then honour a cancellation.

        A room's events reach every socket of the process at once, and under load frames
        arrive from many clients at once: their handlers run together, in one hop to the
        sync thread (chat.pipeline.call_batched).

        asgiref swallows a cancellation that arrives while the handler waits in
        async_to_sync: the handler finishes and the consumer would carry on, so a server
        stopping it would wait for it for ever. Re-raise it once the handler is done.
        """
        if message["type"] in BATCHED_EVENTS:
            await pipeline.call_batched(getattr(self, get_handler_name(message)), message)
        else:
            await super().dispatch(message)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    def send(self, text_data=None, bytes_data=None, close=False):
        """Queue a frame for this socket, in order, without waiting for it to be written."""
        assert text_data is not None and bytes_data is None and not close
        pipeline.hand_to_loop(
            self.loop, self.asgi_send({"type": "websocket.send", "text": text_data})
        )

    def close(self, code=None, reason=None):
        """Close the socket once the frames queued before have gone (see send)."""
        message = {"type": "websocket.close"}
        if code is not None and code is not True:
            message["code"] = code
        if reason:
            message["reason"] = reason
        pipeline.hand_to_loop(self.loop, self.asgi_send(message))

    def connect(self):
        """Join the room's group, accept, then send the backlog and who is here."""
        if limits.refuse_socket(self.scope):
            self.close()  # before accept: a 403, and the page's backoff keeps growing
            return
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = rooms.group_name(self.room_name)
        self.author = identity.author_for(self.scope.get("user"), self.scope.get("session"))
        self.rate_limit = TokenBucket(settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND)
        self.held = {}
        # The room's group, and the groups that close the socket when who it speaks as
        # changes (chat.revocation): joined in one hop to the loop.
        self.joined_groups = (
            self.room_group_name,
            *revocation.identity_groups(self.scope.get("user"), self.scope.get("session")),
        )
        async_to_sync(self._add_to_groups)()
        self._arm_session_timer()
        self.accept()
        try:
            after = protocol.parse_after(self.scope.get("query_string", b""))
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            after = None
        self._send_backlog(after)
        presence.join(self.room_group_name, self.channel_name, identity.presence_label(self.author))
        presence.watch_progress(self)
        presence.announce(self.room_group_name)

    def disconnect(self, close_code):
        """Leave the room's group and its presence list."""
        self.leave_room()

    def leave_room(self):
        """Leave the group, the presence list and the upkeep, once, however the socket ended.

        Runs from disconnect, or from __call__ when a handler raised or the consumer was
        cancelled (channels calls disconnect only for a websocket.disconnect event).
        """
        if self.room_group_name is None or self.left_room:
            return
        self.left_room = True
        # First, and it never raises: this process must forget the socket even when Redis
        # is down, or its refresher would keep re-adding a dead channel.
        presence.leave(self.room_group_name, self.channel_name)
        self.held.clear()  # nothing more is sent to this socket, gaps or not
        try:
            async_to_sync(self.channel_layer.group_discard)(self.room_group_name, self.channel_name)
        except OUTAGE_ERRORS as error:
            # Redis forgets the member on its own: group_expiry, or the restart itself.
            logger.warning("group_discard failed, Redis unreachable: %r", error)
        presence.announce(self.room_group_name)

    async def _add_to_groups(self):
        for group in self.joined_groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def _discard_from_groups(self):
        for group in self.joined_groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    def chat_identity_changed(self, event):
        """This socket's session or user changed: close, so the page reconnects as it now is."""
        self._close_for_identity(event["reason"])

    def _close_for_identity(self, reason: str):
        if self.closing:
            return
        logger.info("closing socket in room %r: %s", self.room_name, reason)
        self.closing = True  # and store nothing more from it meanwhile
        self.close(code=protocol.CLOSE_IDENTITY_CHANGED, reason=reason)

    def _arm_session_timer(self):
        """Close the socket when its stored session expires (chat.revocation)."""
        expires = revocation.session_expires_at(self.scope.get("session"))
        if expires is not None:
            delay = max((expires - timezone.now()).total_seconds(), 0.0)
            self.loop.call_soon_threadsafe(self._start_session_timer, delay)

    def _start_session_timer(self, delay: float):
        # On the loop, as are _disarm_session_timer and the timer: the timer has one owner.
        if not self.left_room:
            self.session_timer = self.loop.call_later(delay, self._session_timer_fired)

    def _disarm_session_timer(self):
        if self.session_timer is not None:
            self.session_timer.cancel()

    def _session_timer_fired(self):
        self.session_check = self.loop.create_task(pipeline.call_batched(self._check_session))

    def _check_session(self):
        """The session's time is up, unless it was saved (and so extended) meanwhile."""
        if self.left_room:
            return
        expires = revocation.session_expires_at(self.scope.get("session"))
        if expires is None or expires <= timezone.now():
            self._close_for_identity("session expired")
        else:
            self._arm_session_timer()

    def receive(self, text_data=None, bytes_data=None):
        """Validate one frame, store its message, then broadcast it; or refuse it."""
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
        if isinstance(frame, protocol.CatchUpRequest) and self.page_announced:
            # Paced by the server, one request per page it announced: no token, or a long
            # catch-up would run out of them.
            self.page_announced = False
            pipeline.call_in_turn(self.loop, self._next_page, frame)
            return
        # Every other frame spends a token, so any flood ends in a close.
        if not self.rate_limit.allow():
            self._refuse(
                protocol.FrameRefused(
                    "rate_limited",
                    f"Slow down: at most {settings.CHAT_RATE_PER_SECOND:g} messages a second.",
                    getattr(frame, "client_id", None),
                )
            )
            return
        if isinstance(frame, protocol.CatchUpRequest):
            pipeline.call_in_turn(self.loop, self._next_page, frame)
            return
        if isinstance(frame, protocol.TypingSignal):
            self._typing()
            return
        try:
            # Shared with the sender's other sockets and processes: one Redis round trip.
            limits.check_message(self.scope, self.author, self.room_name, self.last_seq == 0, frame)
            message, created = self._store(frame)
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            return
        event = protocol.chat_message_event(message)
        if created:
            # Stored already, so a broadcast that fails or is dropped loses nothing: each
            # socket fills the gap from the database when the next message arrives.
            pipeline.hand_to_loop(self.loop, self._broadcast(event))
        else:
            # A retried send: the room already has it; acknowledge to the sender only.
            self.send(text_data=protocol.message_frame(event))

    async def _broadcast(self, event: dict):
        """On the loop: send to the room; if Redis is unreachable, close with 4503.

        The message is stored, so the page reconnects and catches up. (On the redis layer
        every socket notices an outage as its receive fails; on pubsub nothing fails but
        this send, so the sender learns of it here.)
        """
        try:
            await pipeline.broadcast(self.channel_layer, self.room_group_name, event)
        except OUTAGE_ERRORS as error:
            logger.warning("closing socket, broadcast failed: %r", error)
            await self.asgi_send(
                {"type": "websocket.close", "code": protocol.CLOSE_SERVICE_UNAVAILABLE}
            )

    def chat_message(self, event):
        """Deliver one room message in order; one that overtook a missing one waits for it."""
        seq = event["id"]
        if seq <= self.last_seq:
            return
        if seq > self.last_seq + 1:
            if not self.catching_up:  # if it is, the client's next page request reads it
                self._hold(event)
            return
        self._deliver(event)
        self._deliver_held()

    def _check_gap(self, episode: int):
        """A held message waited long enough: the layer dropped what it waits for."""
        if self.held and episode == self.gap_episode:
            self._fill_gap()

    def chat_resync(self, event):
        """Send what was stored since this socket's last message (after Redis restarted)."""
        if not self.catching_up:  # if it is, the client's next page request reads it
            self._catch_up()

    def _hold(self, event):
        if not self.held:
            self.gap_episode += 1
            # A timer in this process, not a message through the layer: under load the
            # layer would refuse it (ChannelFull) just when it is needed most.
            pipeline.call_later_on_sync_thread(
                self.loop, settings.CHAT_REORDER_WAIT_SECONDS, self._check_gap, self.gap_episode
            )
        self.held[event["id"]] = event
        if len(self.held) >= settings.CHAT_REORDER_MAX_HELD:
            self._fill_gap()

    def _fill_gap(self):
        """Read from the database what is missing before the held messages, and send all."""
        self._catch_up(upto=max(self.held))

    def _deliver(self, event):
        self.send(text_data=protocol.message_frame(event))
        self.last_seq = event["id"]

    def _deliver_held(self):
        """Deliver held messages that are next in line now; forget those already sent."""
        while self.last_seq + 1 in self.held:
            self._deliver(self.held.pop(self.last_seq + 1))
        for seq in [seq for seq in self.held if seq <= self.last_seq]:
            del self.held[seq]

    def _catch_up(self, upto: int | None = None) -> bool:
        """Send, in order, a page of what the room stored after this socket's last message.

        At most CHAT_CATCH_UP_PAGE messages (up to `upto`, when given); if the room has
        more, say so and wait for the client to ask (catching_up): a room's whole history
        at once would hold every other socket of the process up. Returns whether it has.
        """
        page_size = settings.CHAT_CATCH_UP_PAGE
        limit = page_size + 1 if upto is None else min(upto - self.last_seq, page_size + 1)
        page = services.messages_after(self.room_name, self.last_seq, limit)
        for message in page[:page_size]:
            self._deliver(protocol.chat_message_event(message))
        self.catching_up = self.page_announced = len(page) > page_size
        if self.catching_up:
            self.held.clear()  # all later than the page: the next pages read them
            self.send(text_data=protocol.catch_up_frame(True, self.last_seq))
        else:
            self._deliver_held()
        return self.catching_up

    def _next_page(self, request: protocol.CatchUpRequest | None):
        """Send the next page (in turn with other sockets'), then whether there is more.

        For a page request, or with None for the first page after ?after=.
        """
        if request is not None and request.after > self.last_seq:
            self._refuse(
                protocol.FrameRefused(
                    "invalid_catch_up",
                    f'"after" is past the last message sent here ({self.last_seq}): '
                    'ask with the "next_after" you were given.',
                )
            )
            return
        if not self._catch_up():
            self.send(text_data=protocol.catch_up_frame(False, self.last_seq))

    def chat_presence(self, event):
        """Tell this socket who is in the room."""
        self.send(text_data=protocol.presence_frame(event))

    def _typing(self):
        """Tell the room this socket's author is typing: at most once per throttle period.

        It spent a token of the socket's flood bucket, as every frame does, but none of the
        per-person message limit (chat.limits), and it is never stored. Signals within
        CHAT_TYPING_THROTTLE_SECONDS of the last one are dropped without a word.
        """
        now = time.monotonic()
        if now - self.typing_sent_at < settings.CHAT_TYPING_THROTTLE_SECONDS:
            return
        self.typing_sent_at = now
        event = protocol.typing_event(self.author, self.channel_name)
        pipeline.hand_to_loop(self.loop, self._broadcast(event))

    def chat_typing(self, event):
        """Tell this socket someone else in the room is typing."""
        if event["sender_channel"] != self.channel_name:
            self.send(text_data=protocol.typing_frame(event))

    def _send_backlog(self, after: int | None):
        if after is not None:
            # An `after` beyond the room's newest counts from the newest.
            self.last_seq = min(after, services.last_seq(self.room_name))
            # The first page too waits its turn (ten sockets joining at once with a page
            # each would hold the process up); later messages wait for it.
            self.catching_up = True
            pipeline.call_in_turn(self.loop, self._next_page, None)
            return
        backlog = services.recent_messages(self.room_name, settings.CHAT_HISTORY_LIMIT)
        for message in backlog:
            event = protocol.chat_message_event(message)
            self.send(text_data=protocol.message_frame(event, history=True))
        self.last_seq = backlog[-1].seq if backlog else services.last_seq(self.room_name)

    def _store(self, frame: protocol.ChatFrame):
        try:
            return services.store_message(
                self.room_name, self.author, frame.message, frame.client_id
            )
        except DatabaseError as error:
            logger.error("message not stored in room %r: %r", self.room_name, error)
            raise protocol.FrameRefused(
                "store_failed",
                "The message could not be saved, so it was not sent. Try again.",
                frame.client_id,
            ) from None

    def _refuse(self, refusal: protocol.FrameRefused):
        logger.info(
            "refused frame in room %r from %s: %s",
            self.room_name,
            limits.client_address(self.scope),
            refusal.code,
        )
        self.send(text_data=protocol.error_frame(refusal))
        if self.rate_limit.refusals_in_a_row >= settings.CHAT_FLOOD_CLOSE_AFTER:
            logger.warning("closing flooding socket in room %r", self.room_name)
            self.closing = True
            self.close(code=protocol.CLOSE_FLOODING)
