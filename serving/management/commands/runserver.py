"""`manage.py runserver`: daphne's, serving with ChatDaphneServer, and refusing at once a
Redis that does not answer (the page would say "Reconnecting…" for ever)."""

from daphne.management.commands.runserver import Command as DaphneRunserverCommand
from django.conf import settings
from django.core.management import CommandError

from chat.redis_clients import redis_problem
from serving.chat_daphne import ChatDaphneServer


class Command(DaphneRunserverCommand):
    # The same server as every other entry point (serving.chat_daphne's bounds and stop).
    server_cls = ChatDaphneServer

    def handle(self, *args, **options):
        """Serve, once every Redis in REDIS_URL answers a PING."""
        problem = redis_problem(settings.REDIS_URLS)
        if problem is not None:
            raise CommandError(
                f"{problem}. Start the chat with python3 dev.py run (it starts a Redis),"
                " or set REDIS_URL to a Redis that answers."
            )
        super().handle(*args, **options)
