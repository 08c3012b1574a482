"""Changing who is in a room: private rooms made, members invited, removed, leaving, roles
appointed and given up.

Each change asks chat.permissions first. A member who is removed or leaves has their
open sockets in that room closed on every process (CLOSE_NOT_A_MEMBER), once the change
commits, through the room's group as chat.revocation closes a changed identity's.

Explained in docs/security.md, 'Private rooms and direct messages'.
"""

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from . import permissions, protocol, revocation, rooms, services
from .identity import Author
from .models import Membership, Room

Role = Membership.Role
PRIVATE_TITLE_MAX_CHARS = 100


class MembershipRefused(Exception):
    """A change the rules refuse: `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def create_private_room(author: Author, title: str) -> str:
    """Make a private room owned by a logged-in author; return its key (`~<id>`)."""
    if author.is_guest:
        raise MembershipRefused("not_logged_in", "Log in to make a private room.")
    title = " ".join(title.split())
    if not title or len(title) > PRIVATE_TITLE_MAX_CHARS:
        raise MembershipRefused(
            "invalid_title", f"Give the room a title of 1 to {PRIVATE_TITLE_MAX_CHARS} characters."
        )
    key = rooms.new_private_key()
    with transaction.atomic():
        Room.objects.create(name=key, title=title, key=services.room_key(key))
        Membership.objects.create(room_id=key, user_id=author.user_id, role=Role.OWNER)
    return key


def members(room_key: str) -> list[dict]:
    """The room's members, owner first: username and role."""
    username = f"user__{get_user_model().USERNAME_FIELD}"
    order = {Role.OWNER: 0, Role.MODERATOR: 1, Role.MEMBER: 2}
    rows = Membership.objects.filter(room_id=room_key).values_list(username, "role")
    listed = [{"username": name, "role": role} for name, role in rows]
    return sorted(listed, key=lambda member: (order[member["role"]], member["username"]))


def invite(author: Author, room_key: str, username: str) -> None:
    """Add a user, by username, to a private room as a member (its owner only)."""
    if not permissions.may_invite(author, room_key):
        raise MembershipRefused("not_allowed", "Only the room's owner may invite.")
    user_id = _active_user_id(username)
    try:
        with transaction.atomic():
            Membership.objects.create(room_id=room_key, user_id=user_id, role=Role.MEMBER)
    except IntegrityError:
        raise MembershipRefused("already_member", f"{username} is a member already.") from None


def remove(author: Author, room_key: str, username: str) -> None:
    """Remove a member from a private room (its owner only); their sockets there close."""
    if not permissions.may_invite(author, room_key):
        raise MembershipRefused("not_allowed", "Only the owner may remove members.")
    membership = _membership(room_key, username)
    if not permissions.may_remove_member(author, room_key, Role(membership.role)):
        raise MembershipRefused("not_allowed", "Only the owner may remove members.")
    _end(membership, "removed from the room")


def leave(author: Author, room_key: str) -> None:
    """Leave a private room (not its owner); the author's sockets there close."""
    if not permissions.may_leave(author, room_key):
        raise MembershipRefused("not_allowed", "The owner cannot leave their room.")
    membership = Membership.objects.get(room_id=room_key, user_id=author.user_id)
    _end(membership, "left the room")


def resign(author: Author, room_key: str) -> None:
    """Give up one's moderator role: a private room's moderator stays a member, a public
    room's has nothing left to record."""
    if not permissions.may_resign(author, room_key):
        raise MembershipRefused("not_allowed", "Only a moderator may give up the role.")
    mine = Membership.objects.filter(room_id=room_key, user_id=author.user_id)
    if rooms.kind(room_key) == rooms.PUBLIC:
        mine.delete()
    else:
        mine.update(role=Role.MEMBER)


def set_role(author: Author, room_key: str, username: str, role: Role) -> None:
    """Make a member a moderator, or a moderator a member again (the owner only)."""
    if role not in (Role.MODERATOR, Role.MEMBER) or not permissions.may_appoint_moderators(
        author, room_key
    ):
        raise MembershipRefused("not_allowed", "Only the owner may appoint moderators.")
    if rooms.kind(room_key) == rooms.PUBLIC:  # a public room's moderators are its only members
        membership, _ = Membership.objects.get_or_create(
            room_id=room_key, user_id=_active_user_id(username), defaults={"role": role}
        )
    else:
        membership = _membership(room_key, username)
    if membership.role == Role.OWNER:
        raise MembershipRefused("not_allowed", "The owner's role does not change.")
    if rooms.kind(room_key) == rooms.PUBLIC and role == Role.MEMBER:
        membership.delete()  # nothing left to record
    else:
        Membership.objects.filter(pk=membership.pk).update(role=role)


def _end(membership: Membership, reason: str) -> None:
    with transaction.atomic():
        membership.delete()
        revocation.send_on_commit(
            rooms.group_name(membership.room_id),
            protocol.membership_ended_event(membership.user_id, reason),
        )


def _active_user_id(username: str) -> int:
    users = get_user_model().objects.filter(
        **{get_user_model().USERNAME_FIELD: username.strip(), "is_active": True}
    )
    user_id = users.values_list("pk", flat=True).first()
    if user_id is None:
        raise MembershipRefused("unknown_user", f"There is no user called {username.strip()!r}.")
    return user_id


def _membership(room_key: str, username: str) -> Membership:
    membership = Membership.objects.filter(
        room_id=room_key, user_id=_active_user_id(username)
    ).first()
    if membership is None:
        raise MembershipRefused("not_a_member", f"{username.strip()} is not a member.")
    return membership
