from django.apps import AppConfig
from django.urls import register_converter


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self):
        """Register the room-name converter once, for the HTTP and WebSocket routes alike."""
        from .rooms import RoomNameConverter

        register_converter(RoomNameConverter, "room")
