from django.apps import AppConfig
from django.urls import register_converter


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self):
        """Register the room-name converter and the username-key keeper, once."""
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from .identity import keep_username_key
        from .rooms import RoomNameConverter

        # Every way a user is saved (sign-up, admin, createsuperuser) keeps its key.
        post_save.connect(keep_username_key, sender=get_user_model())

        register_converter(RoomNameConverter, "room")
        # Its signal receivers close the sockets of a session or user that changed.
        from . import revocation  # noqa: F401
