"""The Channels tutorial's own chat consumer (Part 3, async), the benchmark's yardstick.

`benchmarks/load.py --reference` serves this beside our stack, on the same machine and
the pubsub layer, and prints our figures as a ratio of its. It stores nothing and checks
nothing: the cost of everything ours does on top of the tutorial's fan-out shows in the ratio.
"""

import json

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.urls import re_path

django_asgi_app = get_asgi_application()


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        message = json.loads(text_data)["message"]
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": message}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [re_path(r"ws/chat/(?P<room_name>[-\w]+)/$", ChatConsumer.as_asgi())]
        ),
    }
)
