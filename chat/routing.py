"""WebSocket routes, nested under mysite.asgi's URLRouter.

Explained in docs/architecture.md, 'The shape'.
"""

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from . import consumers, metrics


class PathDenier(WebsocketDenier):
    """Refuses the handshake (403) of a path no route takes, and counts it."""

    async def connect(self):
        """Count the refusal, then refuse."""
        metrics.HANDSHAKES_REFUSED.labels("path").inc()
        await super().connect()


websocket_urlpatterns = [
    path("ws/chat/<room:room_name>/", consumers.ChatConsumer.as_asgi()),
    # Any other path (an invalid room name included) is refused at the handshake
    # instead of raising "No route found" inside the server.
    re_path(r"", PathDenier.as_asgi()),
]
