"""Retention: a room's messages older than its period are deleted, and the room says so.

A room keeps its messages for Room.retention_days, or CHAT_RETENTION_DAYS when it sets
none; 0 keeps them for ever. `manage.py chat_retention` (cron) deletes a room's oldest
messages, a prefix of its ids at a time: ids never move and the room's last_seq is not
touched, so catch-up stays exact. The room records the last id deleted (Room.gone_until);
every reader of history says it, so that a client never waits on or asks again for a
gone id: the socket's `{"gone": {"until": N}}` frame and the messages endpoint's
`gone_until`. Deleting whole old rows is not a deletion of one message by its author or a
moderator (those are room events of their own): nothing is broadcast.

Explained in docs/operations.md, 'Retention'.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.db.models.functions import Greatest
from django.utils import timezone

from .models import Message, Room

# Messages deleted per transaction: a few milliseconds of the database's write lock (all
# of SQLite), so posting goes on between batches while a large backlog is deleted.
BATCH_SIZE = 500


@dataclass(frozen=True)
class Purge:
    """What one room's retention did (or, in a dry run, would do)."""

    room: str
    days: int
    until: int  # the room's gone_until after it
    deleted: int


def days_for(room_days: int | None) -> int:
    """A room's retention period in days: its own, else the default; 0 keeps for ever."""
    return settings.CHAT_RETENTION_DAYS if room_days is None else room_days


# The longest period an owner may set on the room page: ten years; longer is "for ever" (0).
MAX_DAYS = 3650


class InvalidPeriod(ValueError):
    """A retention period set_room_days refuses; its message says why, for people."""


def set_room_days(room_name: str, raw: str) -> int | None:
    """Set the room's own period from a form's text ("" takes the default); returns it."""
    raw = raw.strip()
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_DAYS):
        raise InvalidPeriod(f"Enter a number of days from 0 (for ever) to {MAX_DAYS}, or nothing.")
    days = int(raw) if raw else None
    Room.objects.filter(name=room_name).update(retention_days=days)
    return days


def room_days(room_name: str) -> int:
    """The retention period of the room of this name (the default for one not made yet)."""
    room_days = Room.objects.filter(name=room_name).values_list("retention_days", flat=True)
    return days_for(room_days.first())


def gone_until(room_name: str) -> int:
    """The last id retention deleted in the room (0: none, or no such room)."""
    return Room.objects.filter(name=room_name).values_list("gone_until", flat=True).first() or 0


def expired_until(room_name: str, cutoff: datetime) -> int:
    """The highest id up to which every stored message of the room is older than cutoff."""
    messages = Message.objects.filter(room_id=room_name)
    first_kept = (
        messages.filter(created__gte=cutoff).order_by("seq").values_list("seq", flat=True).first()
    )
    if first_kept is not None:
        return first_kept - 1
    return messages.aggregate(newest=Max("seq"))["newest"] or 0


def purge_room(
    room_name: str, days: int, *, now: datetime, dry_run: bool = False, batch: int = BATCH_SIZE
) -> Purge:
    """Delete the room's messages older than `days`, oldest first, `batch` per transaction.

    Safe beside posting and beside another run: each batch deletes a range of ids above
    the room's gone_until and raises gone_until to its end (never lowers it), in one
    transaction; a message being stored now is newer than any cutoff.
    """
    start = gone_until(room_name)
    until = max(expired_until(room_name, now - timedelta(days=days)), start)
    if dry_run:
        doomed = Message.objects.filter(room_id=room_name, seq__gt=start, seq__lte=until)
        return Purge(room_name, days, until, doomed.count())
    deleted = 0
    while start < until:
        end = min(start + batch, until)
        with transaction.atomic():
            doomed = Message.objects.filter(room_id=room_name, seq__gt=start, seq__lte=end)
            deleted += doomed.delete()[1].get(Message._meta.label, 0)
            Room.objects.filter(name=room_name).update(gone_until=Greatest(F("gone_until"), end))
        start = end
    return Purge(room_name, days, until, deleted)


def purge(*, dry_run: bool = False, batch: int = BATCH_SIZE, now: datetime | None = None):
    """Apply every room's retention period; yields a Purge per room that has one."""
    now = now or timezone.now()
    # A room with no message above gone_until has nothing to delete: no query for it.
    rooms = Room.objects.filter(gone_until__lt=F("last_seq"))
    rooms = rooms.values_list("name", "retention_days").order_by("name")
    if settings.CHAT_RETENTION_DAYS == 0:
        rooms = rooms.filter(retention_days__gt=0)
    else:
        rooms = rooms.exclude(retention_days=0)
    for name, room_days in rooms.iterator():
        yield purge_room(name, days_for(room_days), now=now, dry_run=dry_run, batch=batch)
