"""manage.py chat_post ROOM TEXT --as NAME: post a message from the shell, cron or a script.

Explained in docs/programs.md, 'Posting from Python'.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from chat.posting import PostRefused, post_message


class Command(BaseCommand):
    help = "Post a message to a room as a named bot (--as) or as a user (--user)."

    def add_arguments(self, parser):
        parser.add_argument("room")
        parser.add_argument("text")
        author = parser.add_mutually_exclusive_group(required=True)
        author.add_argument("--as", dest="bot", metavar="NAME", help="post as this bot")
        author.add_argument("--user", metavar="USERNAME", help="post as this user")
        parser.add_argument("--client-id", help="a retried post with this id is stored once")

    def handle(self, *args, room, text, bot, user, client_id, **options):
        """Post, then print the message's id in its room."""
        as_user = None
        if user is not None:
            try:
                as_user = get_user_model().objects.get_by_natural_key(user)
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user {user!r}") from None
        try:
            posted = post_message(room, text, as_user=as_user, as_bot=bot, client_id=client_id)
        except PostRefused as refusal:
            raise CommandError(f"{refusal.code}: {refusal.detail}") from None
        verb = "posted" if posted.created else "already posted"
        self.stdout.write(f"{verb} #{posted.message.seq} in {posted.message.room_id}")
