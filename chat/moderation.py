"""Moderators acting in a room: mute, kick, ban, lifting them, the log, and reports.

Each action asks chat.permissions first, is logged (ModerationAction), and once it
commits reaches every process through the room's group (protocol.moderated_event): each
forgets the room's cached sanctions (chat.sanctions), and a kick or a ban closes its
target's sockets there (CLOSE_KICKED, CLOSE_BANNED). A guest has no username: a moderator
names one by a message they sent, and a ban of a guest holds their session and their
address, which the guest's socket left in Redis when it posted (remember_address).

Explained in docs/security.md, 'Moderation'.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from . import identity, permissions, protocol, revocation, rooms, sanctions
from .identity import Author
from .models import Membership, Message, ModerationAction, Report, Sanction
from .redis_clients import LIMITS_TIMEOUT_SECONDS, OUTAGE_ERRORS, redis_client

logger = logging.getLogger(__name__)

Action = ModerationAction.Action
# The lengths a moderator chooses from, by the name the page's forms send; "" is until
# lifted. The issue's: five minutes to cool down, an hour, a day.
DURATIONS = {
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "": None,
}
REASON_MAX_CHARS = 500
# How long a guest's address is kept for a ban to find it: as long as a guest's session
# lasts by default (two weeks), so any guest whose messages are still on screen is found.
ADDRESS_KEPT_SECONDS = 14 * 24 * 3600
ADDRESS_KEY = "chat:moderation:address:"


class ModerationRefused(Exception):
    """An action the rules refuse: `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Target:
    """Whom a moderator acts on: an account, or a guest's session and address."""

    label: str
    user_id: int | None = None
    guest_key: str = ""
    network: str = ""
    is_staff: bool = False

    @property
    def author(self) -> Author:
        """The target as chat.permissions sees an author."""
        return Author(
            self.label, user_id=self.user_id, guest_key=self.guest_key, is_staff=self.is_staff
        )


def remember_address(author: Author, network: str) -> None:
    """Keep a posting guest's address (limits.client_network), for a ban to find it."""
    if not author.is_guest:
        return
    try:
        client = redis_client(settings.REDIS_URL, LIMITS_TIMEOUT_SECONDS)
        client.set(ADDRESS_KEY + author.guest_key, network, ex=ADDRESS_KEPT_SECONDS)
    except OUTAGE_ERRORS as error:  # the ban then holds the session alone
        logger.warning("guest address not kept, Redis unreachable: %r", error)


def target_of_message(room_key: str, message_id: str) -> Target:
    """The author of a message in the room, by its id: how a guest is named."""
    try:
        seq = protocol.parse_seq(message_id)
    except ValueError:
        raise ModerationRefused("no_such_message", "There is no such message.") from None
    message = (
        Message.objects.filter(room_id=room_key, seq=seq)
        .values_list("author_id", "author_key", "display_name", "bot")
        .first()
    )
    if message is None:
        raise ModerationRefused("no_such_message", "There is no such message.")
    user_id, author_key, name, bot = message
    if bot:
        raise ModerationRefused("not_allowed", "Bots are not moderated here.")
    if user_id is None and not author_key.startswith("g:"):
        raise ModerationRefused("unknown_user", "That message's account no longer exists.")
    if user_id is not None:
        return _user_target(user_id)
    guest_key = author_key.removeprefix("g:")
    network = _remembered_address(guest_key)
    return Target(f"{name} (guest)", guest_key=guest_key, network=network)


def target_of_username(username: str) -> Target:
    """An active account, by its username."""
    model = get_user_model()
    user_id = (
        model.objects.filter(**{model.USERNAME_FIELD: username.strip(), "is_active": True})
        .values_list("pk", flat=True)
        .first()
    )
    if user_id is None:
        raise ModerationRefused("unknown_user", f"There is no user called {username.strip()!r}.")
    return _user_target(user_id)


def mute(author: Author, room_key: str, target: Target, duration: str, reason: str = "") -> None:
    """Stop the target posting in the room for `duration` (a DURATIONS name)."""
    _sanction(author, room_key, target, Sanction.Kind.MUTE, duration, reason)


def ban(author: Author, room_key: str, target: Target, duration: str, reason: str = "") -> None:
    """Close the target's sockets in the room, and keep them out for `duration`.

    A member of a private room stops being one: the ban keeps them out in any room, and
    the owner can invite them again once it is lifted.
    """
    _sanction(author, room_key, target, Sanction.Kind.BAN, duration, reason)


def kick(author: Author, room_key: str, target: Target, reason: str = "") -> None:
    """Close the target's sockets in the room; they may come back."""
    _refuse_unless_allowed(author, room_key, target)
    with transaction.atomic():
        _log(author, room_key, Action.KICK, target, None, reason)
        _announce(room_key, Action.KICK, target)


def lift(author: Author, room_key: str, sanction_id: str, kind: Sanction.Kind) -> None:
    """End a mute or a ban (`kind`) before its time (the room's moderators, staff)."""
    if not permissions.may_moderate_room(author, room_key):
        raise ModerationRefused("not_allowed", "Only the room's moderators may do that.")
    sanction = Sanction.objects.filter(room_id=room_key, kind=kind, pk=_id(sanction_id)).first()
    if sanction is None:
        raise ModerationRefused("no_such_sanction", "That was lifted already.")
    staff = sanction.user_id is not None and _user_target(sanction.user_id).is_staff
    target = Target(
        sanction.label, sanction.user_id, sanction.guest_key, sanction.network, is_staff=staff
    )
    if not permissions.may_lift(author, room_key, target.author):
        raise ModerationRefused("not_allowed", f"You may not lift {target.label}'s {kind}.")
    action = Action.UNBAN if sanction.kind == Sanction.Kind.BAN else Action.UNMUTE
    with transaction.atomic():
        sanction.delete()
        _log(author, room_key, action, target, None, "")
        _announce(room_key, action, target)


def in_force(room_key: str) -> list[Sanction]:
    """The room's mutes and bans that have not ended, newest first: the page's list."""
    current = Sanction.objects.filter(room_id=room_key).order_by("-created")
    now = timezone.now()
    return [sanction for sanction in current if sanction.until is None or sanction.until > now]


def report(reader: Author, room_key: str, message_id: str, reason: str) -> None:
    """Queue a message of the room for staff (the admin's reports), with an optional reason."""
    try:
        seq = protocol.parse_seq(message_id)
    except ValueError:
        raise ModerationRefused("no_such_message", "There is no such message.") from None
    message = Message.objects.filter(room_id=room_key, seq=seq).first()
    if message is None:
        raise ModerationRefused("no_such_message", "There is no such message.")
    if message.deleted:  # nothing of it is left in the room for staff to act on
        raise ModerationRefused("message_deleted", "That message was deleted.")
    Report.objects.create(
        message=message,
        reporter_id=reader.user_id,
        reporter_name=reader.name if reader.user_id else f"{reader.name} (guest)",
        reason=_reason(reason),
    )


def _sanction(author, room_key, target, kind, duration, reason) -> None:
    _refuse_unless_allowed(author, room_key, target)
    if duration not in DURATIONS:
        raise ModerationRefused(
            "invalid_duration", "Choose 5 minutes, 1 hour, 1 day or until lifted."
        )
    length = DURATIONS[duration]
    until = None if length is None else timezone.now() + length
    action = Action.BAN if kind == Sanction.Kind.BAN else Action.MUTE
    with transaction.atomic():
        Sanction.objects.filter(room_id=room_key, kind=kind, **_whom(target)).delete()
        Sanction.objects.create(
            room_id=room_key,
            kind=kind,
            user_id=target.user_id,
            guest_key=target.guest_key,
            network=target.network,
            label=target.label,
            until=until,
        )
        if kind == Sanction.Kind.BAN and target.user_id is not None:
            memberships = Membership.objects.filter(room_id=room_key, user_id=target.user_id)
            memberships.exclude(role=Membership.Role.OWNER).delete()
        _log(author, room_key, action, target, until, reason)
        _announce(room_key, action, target)


def _refuse_unless_allowed(author: Author, room_key: str, target: Target) -> None:
    if not permissions.may_moderate(author, room_key, target.author):
        raise ModerationRefused("not_allowed", f"You may not moderate {target.label} here.")


def _whom(target: Target) -> dict:
    if target.user_id is not None:
        return {"user_id": target.user_id}
    return {"user__isnull": True, "guest_key": target.guest_key}


def _log(author, room_key, action, target: Target, until: datetime | None, reason: str) -> None:
    ModerationAction.objects.create(
        room_name=room_key,
        action=action,
        moderator_id=author.user_id,
        moderator_name=author.name,
        target=target.label,
        target_user_id=target.user_id,
        until=until,
        reason=_reason(reason),
    )


def _announce(room_key: str, action: str, target: Target) -> None:
    """Once committed: this process forgets the room's sanctions, every process hears it."""
    transaction.on_commit(lambda: sanctions.forget(room_key))
    event = protocol.moderated_event(action, target.user_id, target.guest_key, target.network)
    revocation.send_on_commit(rooms.group_name(room_key), event)


def _reason(reason: str) -> str:
    return " ".join(reason.split())[:REASON_MAX_CHARS]


def _id(raw: str) -> int:
    try:
        return protocol.parse_seq(raw)
    except ValueError:
        raise ModerationRefused("no_such_sanction", "That was lifted already.") from None


def _user_target(user_id: int) -> Target:
    model = get_user_model()
    found = model.objects.filter(pk=user_id).only(model.USERNAME_FIELD, "is_staff", "is_active")
    user = found.first()
    if user is None:
        return Target("", user_id=user_id)
    author = identity.author_of_user(user)
    return Target(author.name, user_id=user_id, is_staff=author.is_staff)


def _remembered_address(guest_key: str) -> str:
    try:
        client = redis_client(settings.REDIS_URL, LIMITS_TIMEOUT_SECONDS)
        network = client.get(ADDRESS_KEY + guest_key)
    except OUTAGE_ERRORS as error:
        logger.warning("guest address not read, Redis unreachable: %r", error)
        return ""
    return network.decode() if isinstance(network, bytes) else (network or "")
