from django.apps import AppConfig


class ServingConfig(AppConfig):
    name = "serving"

    def ready(self):
        """Have `manage.py runserver` serve with ChatDaphneServer, as every other entry point."""
        # daphne's runserver (first in INSTALLED_APPS) builds its server from this class
        # attribute, its one extension point.
        from daphne.management.commands.runserver import Command as RunserverCommand

        from .chat_daphne import ChatDaphneServer

        RunserverCommand.server_cls = ChatDaphneServer
