"""The chat WebSocket consumer: the tutorial's synchronous ChatConsumer, made robust.

It only parses, delegates and sends: the rules live in rooms, protocol and ratelimit.
"""

import logging

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.conf import settings

from . import protocol, rooms
from .ratelimit import TokenBucket

logger = logging.getLogger(__name__)


class ChatConsumer(WebsocketConsumer):
    """One socket in one room: joins the room's group and fans its messages out."""

    room_group_name: str | None = None
    closing = False

    def connect(self):
        """Join the room's group, then accept the handshake."""
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = rooms.group_name(self.room_name)
        self.rate_limit = TokenBucket(settings.CHAT_RATE_BURST, settings.CHAT_RATE_PER_SECOND)
        async_to_sync(self.channel_layer.group_add)(self.room_group_name, self.channel_name)
        self.accept()

    def disconnect(self, close_code):
        """Leave the room's group."""
        if self.room_group_name is not None:
            async_to_sync(self.channel_layer.group_discard)(self.room_group_name, self.channel_name)

    def receive(self, text_data=None, bytes_data=None):
        """Validate one inbound frame and broadcast its message, or refuse it to this socket."""
        if self.closing:
            return
        try:
            self._check_rate()
            message = protocol.parse_chat_frame(
                text_data,
                bytes_data,
                max_chars=settings.CHAT_MESSAGE_MAX_CHARS,
                max_frame_chars=settings.CHAT_FRAME_MAX_CHARS,
            )
        except protocol.FrameRefused as refusal:
            self._refuse(refusal)
            return
        async_to_sync(self.channel_layer.group_send)(
            self.room_group_name, protocol.chat_message_event(message)
        )

    def chat_message(self, event):
        """Deliver one room message to this socket."""
        self.send(text_data=protocol.message_frame(event))

    def _check_rate(self):
        if not self.rate_limit.allow():
            raise protocol.FrameRefused(
                "rate_limited",
                f"Slow down: at most {settings.CHAT_RATE_PER_SECOND:g} messages a second.",
            )

    def _refuse(self, refusal: protocol.FrameRefused):
        logger.info("refused frame in room %r: %s", self.room_name, refusal.code)
        self.send(text_data=protocol.error_frame(refusal.code, refusal.detail))
        if self.rate_limit.refusals_in_a_row >= settings.CHAT_FLOOD_CLOSE_AFTER:
            logger.warning("closing flooding socket in room %r", self.room_name)
            self.closing = True
            self.close(code=protocol.CLOSE_FLOODING)
