"""Rooms by recent activity, who is in them, and how far each logged-in reader has read.

Unread counts are worked out by the page: a room's last message id minus the reader's
read position (both message ids, `seq`s, which number a room's messages with no gaps).

Explained in docs/protocol.md, 'Rooms: `GET /api/rooms/`'.
"""

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, F, Max, Sum

from . import permissions, presence, rooms
from .identity import Author
from .models import Membership, ReadPosition, Room


def recent_rooms(limit: int, also: Iterable[str] = (), user=None) -> list[Room]:
    """The `limit` public rooms with the newest messages, with the rooms in `also`, those the
    user has read and those they are a member of, newest activity first; public rooms
    without messages are left out, and every room the user may not see
    (chat.permissions.listed_rooms), and rooms without a look-alike key (Room.key: from
    before the rule, they look like another room or break the room-name rule).
    """
    names = set(also)
    if user is not None and user.is_authenticated:
        names |= set(
            ReadPosition.objects.filter(user=user).values_list("room_name", flat=True)[:limit]
        )
        # nulls_last: PostgreSQL sorts NULL first in descending order, SQLite last.
        newest = F("room__last_message_at").desc(nulls_last=True)
        mine = Membership.objects.filter(user=user).order_by(newest)
        names |= set(mine.values_list("room_id", flat=True)[:limit])
    keyed = Room.objects.filter(key__isnull=False)
    active = permissions.listed_to_everyone(keyed.filter(last_message_at__isnull=False))
    chosen = {room.name: room for room in active.order_by("-last_message_at")[:limit]}
    others = permissions.listed_rooms(_reader(user), sorted(names - chosen.keys()))
    chosen |= {room.name: room for room in keyed.filter(name__in=others)}
    return sorted(
        chosen.values(),
        key=lambda room: (room.last_message_at is not None, room.last_message_at, room.name),
        reverse=True,
    )


def list_version(also: Iterable[str], user=None) -> str:
    """What the list recent_rooms(limit, also, user) is made of, in a few index lookups and
    without building it: the newest message of a public room, the user's read positions,
    their memberships and the newest message of their rooms. Two lists are the same while
    it is (titles and keys are set at creation), so the sidebar answers an unchanged list's
    304 from it; it changes with nothing the user may not see (a private room's or a direct
    conversation's message is theirs to know of only as its member)."""
    # The newest public room: down the last_message_at index to the first public one.
    public = permissions.listed_to_everyone(Room.objects.filter(last_message_at__isnull=False))
    newest = public.order_by("-last_message_at").values_list("last_message_at", flat=True)
    parts: list[Any] = [sorted(also), str(newest.first())]
    if user is not None and user.is_authenticated:
        reads = ReadPosition.objects.filter(user=user).aggregate(Count("pk"), Sum("last_read_id"))
        mine = Membership.objects.filter(user=user).aggregate(
            Count("pk"), Max("created"), Max("room__last_message_at")
        )
        parts += [user.pk, *reads.values(), *(str(value) for value in mine.values())]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def summaries(room_list: list[Room], user=None, online: bool = True) -> list[dict[str, Any]]:
    """What the index and the sidebar show of each room; presence in one Redis round trip.

    Without `online`, no presence is read and the rooms have no "online" count; nor have
    they when Redis does not answer (presence.snapshots).
    """
    groups = {room.name: rooms.group_name(room.name) for room in room_list}
    present = presence.snapshots(list(groups.values())) if online else {}
    read = read_positions(user, [room.name for room in room_list])
    partners = _direct_partners(user, [room.name for room in room_list])
    listed = []
    for room in room_list:
        address = room.name
        if rooms.kind(room.name) == rooms.DIRECT:
            if room.name not in partners:
                continue  # the other user was deleted: no address leads there any more
            address = rooms.DIRECT_MARK + partners[room.name]
        summary = {
            "name": address,  # what the reader's URLs name it by
            "title": room.title or address,
            "last_id": room.last_seq,
            "last_at": room.last_message_at.isoformat() if room.last_message_at else None,
            "read_up_to": read.get(room.name),
        }
        if groups[room.name] in present:
            summary["online"] = present[groups[room.name]]["count"]  # people, not sockets
        listed.append(summary)
    return listed


def _reader(user) -> Author:
    if user is not None and user.is_authenticated:
        return Author(name=user.get_username(), user_id=user.pk)
    return Author(name="")


def _direct_partners(user, room_keys: list[str]) -> dict[str, str]:
    """For the user's direct conversations among room_keys: the other user's username."""
    if user is None or not user.is_authenticated:
        return {}
    others = {
        key: next(uid for uid in rooms.direct_members(key) if uid != user.pk)
        for key in room_keys
        if rooms.kind(key) == rooms.DIRECT
    }
    users = get_user_model().objects.filter(pk__in=others.values())
    names = {pk: name for pk, name in users.values_list("pk", get_user_model().USERNAME_FIELD)}
    return {key: names[uid] for key, uid in others.items() if uid in names}


def read_positions(user, room_names: list[str]) -> dict[str, int]:
    """The user's read position in each of these rooms they have one in; {} for a guest."""
    if user is None or not user.is_authenticated:
        return {}
    positions = ReadPosition.objects.filter(user=user, room_name__in=room_names)
    return dict(positions.values_list("room_name", "last_read_id"))


def mark_read(user, room_name: str, up_to: int) -> int | None:
    """Move the user's read position in the room forward to `up_to`; return where it is.

    Never past the room's last message, never backwards: a stale tab that reports an
    older position does not bring read messages back as unread. None, and nothing
    written, for a room that does not exist: any name would otherwise make a row.
    """
    last = Room.objects.filter(name=room_name).values_list("last_seq", flat=True).first()
    if last is None:
        return None
    up_to = min(up_to, last)
    position, _ = ReadPosition.objects.get_or_create(
        user=user, room_name=room_name, defaults={"last_read_id": up_to}
    )
    # One conditional UPDATE: two tabs reporting at once keep the furthest of the two.
    ReadPosition.objects.filter(pk=position.pk, last_read_id__lt=up_to).update(last_read_id=up_to)
    return max(position.last_read_id, up_to)
