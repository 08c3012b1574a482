"""Storing and reading messages: the only code that writes a Message."""

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import F

from .models import Message, Room


@dataclass(frozen=True)
class Author:
    """Who sends: a logged-in user (with `user_id`) or a guest with a display name."""

    name: str
    user_id: int | None = None

    @property
    def is_guest(self) -> bool:
        return self.user_id is None


def store_message(
    room_name: str, author: Author, text: str, client_id: str | None
) -> tuple[Message, bool]:
    """Store a message as its room's next seq; returns (message, created).

    A client_id already stored in this room returns that message with created=False,
    so a retried send is stored once.
    """
    if client_id:
        existing = Message.objects.filter(room_id=room_name, client_id=client_id).first()
        if existing is not None:
            return existing, False
    try:
        with transaction.atomic():
            Room.objects.get_or_create(name=room_name)
            # The row lock taken by this UPDATE serializes writers of one room until commit,
            # so seqs are gapless and commit in order.
            Room.objects.filter(name=room_name).update(last_seq=F("last_seq") + 1)
            seq = Room.objects.values_list("last_seq", flat=True).get(name=room_name)
            message = Message.objects.create(
                room_id=room_name,
                seq=seq,
                author_id=author.user_id,
                display_name=author.name,
                text=text,
                client_id=client_id or "",
            )
    except IntegrityError:
        # The same client_id may have won a race in another process; anything else re-raises.
        winner = Message.objects.filter(room_id=room_name, client_id=client_id).first()
        if not client_id or winner is None:
            raise
        return winner, False
    return message, True


def recent_messages(room_name: str, limit: int) -> list[Message]:
    """The room's newest `limit` messages, oldest first."""
    newest = Message.objects.filter(room_id=room_name).order_by("-seq")[:limit]
    return list(reversed(newest))


def messages_after(room_name: str, after_seq: int, limit: int | None = None) -> list[Message]:
    """The room's messages with seq > after_seq, oldest first, at most `limit`."""
    query = Message.objects.filter(room_id=room_name, seq__gt=after_seq).order_by("seq")
    return list(query if limit is None else query[:limit])


def last_seq(room_name: str) -> int:
    """The seq of the room's newest message, 0 for a room with none."""
    return Room.objects.filter(name=room_name).values_list("last_seq", flat=True).first() or 0
