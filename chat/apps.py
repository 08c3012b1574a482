from django.apps import AppConfig
from django.urls import register_converter


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self):
        """Register the room-name converter once, for the HTTP and WebSocket routes alike."""
        from .rooms import RoomNameConverter

        register_converter(RoomNameConverter, "room")
        # Its signal receivers close the sockets of a session or user that changed.
        # daphne's runserver (first in INSTALLED_APPS) builds its server from this class
        # attribute, its one extension point: the same server as mysite.server there too.
        from daphne.management.commands.runserver import Command as RunserverCommand

        from mysite.server import ChatDaphneServer

        from . import revocation  # noqa: F401

        RunserverCommand.server_cls = ChatDaphneServer
