"""Who may do what in a room: every rule, as plain functions of (author, room key).

The room page, the messages endpoint, the room list, read positions, the socket's
handshake and its posting, the index and the sidebar all ask here; no rule lives
anywhere else. Anyone, guests included, may read and post in a public room. A private
room is its members' only, and a direct conversation its two users'. To a stranger an
existing private room answers exactly as one that does not exist (room_for returns None
for both). A new rule ("may delete this message", "may mute") is one function over
role_of.

Explained in docs/security.md, 'Private rooms and direct messages'.
"""

from django.contrib.auth import get_user_model

from . import identity, protocol, rooms, sanctions
from .identity import Author
from .models import Membership, Message, Room

Role = Membership.Role
# Who may appoint and remove moderators, invite and remove members.
_MANAGERS = frozenset({Role.OWNER})
# Who moderates a room (mute, kick, ban), besides site staff.
_MODERATORS = frozenset({Role.OWNER, Role.MODERATOR})
# Who may leave: an owner stays (a private room without one could never be managed).
_LEAVERS = frozenset({Role.MODERATOR, Role.MEMBER})


def role_of(author: Author, room_key: str) -> Role | None:
    """The author's role in the room (one query), None for a guest or a non-member."""
    if author.is_guest:
        return None
    role = (
        Membership.objects.filter(room_id=room_key, user_id=author.user_id)
        .values_list("role", flat=True)
        .first()
    )
    return None if role is None else Role(role)


def open_to_all(address: str) -> str | None:
    """The key of a room anyone may read, known without the database; None if who asks matters."""
    return address if rooms.kind(address) == rooms.PUBLIC else None


def must_log_in(author: Author, address: str) -> bool:
    """A guest asking for direct messages is sent to log in: guests have none."""
    return author.is_guest and rooms.kind(address) == rooms.DIRECT


def room_for(author: Author, address: str) -> str | None:
    """The key of the room an address names for the author, if they may read it; else None.

    A stranger to an existing private room gets None, as for a room that does not exist:
    every way in answers both alike. `@<username>` is the author's conversation with that
    (active) user, never with themselves.
    """
    if (public := open_to_all(address)) is not None:
        return public
    if author.is_guest:
        return None
    if rooms.kind(address) == rooms.PRIVATE:
        return address if may_read(author, address) else None
    users = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: address[1:]})
    found = users.values_list("pk", "is_active").first()
    if found is None or found[0] == author.user_id:
        return None
    room_key = rooms.direct_key(author.user_id, found[0])
    # A deactivated user's conversations stay readable (read-only: may_post); none starts.
    if not found[1] and not Room.objects.filter(name=room_key).exists():
        return None
    return room_key


def may_read(author: Author, room_key: str) -> bool:
    """Connect to the room, read its history and see it listed."""
    room_kind = rooms.kind(room_key)
    if room_kind == rooms.PUBLIC:
        return True
    if author.is_guest:
        return False
    if room_kind == rooms.DIRECT:
        return author.user_id in rooms.direct_members(room_key)
    return role_of(author, room_key) is not None


def may_post(author: Author, room_key: str) -> bool:
    """Post a message: whoever may read the room; in a direct conversation, while the other
    user's account is active (deactivated_partner)."""
    if rooms.kind(room_key) == rooms.DIRECT and may_read(author, room_key):
        return deactivated_partner(author, room_key) is None
    return may_read(author, room_key)


def deactivated_partner(author: Author, room_key: str) -> str | None:
    """The other user's username in the author's direct conversation when their account is
    deactivated (the conversation is read-only); None otherwise."""
    if rooms.kind(room_key) != rooms.DIRECT or author.is_guest:
        return None
    others = [uid for uid in rooms.direct_members(room_key) if uid != author.user_id]
    inactive = get_user_model().objects.filter(pk__in=others, is_active=False)
    return inactive.values_list(get_user_model().USERNAME_FIELD, flat=True).first()


def read_only_notice(username: str) -> str:
    """What a direct conversation with a deactivated user says, on the page and to a post."""
    return f"{username}'s account is deactivated: this conversation is read-only."


def listed_rooms(author: Author, room_keys: list[str]) -> list[str]:
    """Those of room_keys the author may see listed (may_read), in one query at most."""
    private = [key for key in room_keys if rooms.kind(key) == rooms.PRIVATE]
    mine = set()
    if private and not author.is_guest:
        memberships = Membership.objects.filter(user_id=author.user_id, room_id__in=private)
        mine = set(memberships.values_list("room_id", flat=True))
    return [
        key
        for key in room_keys
        if key in mine or (rooms.kind(key) != rooms.PRIVATE and may_read(author, key))
    ]


def readers(pairs: set[tuple[Author, str]]) -> set[tuple[Author, str]]:
    """Those (author, room key) pairs whose author may read the room (may_read), in one
    query at most: the upkeep's check that open sockets are still their rooms' members."""
    private = {(author, key) for author, key in pairs if rooms.kind(key) == rooms.PRIVATE}
    members = set()
    if users := {author.user_id for author, _ in private if not author.is_guest}:
        rows = Membership.objects.filter(
            room_id__in={key for _, key in private}, user_id__in=users
        ).values_list("room_id", "user_id")
        members = set(rows)
    return {
        (author, key)
        for author, key in pairs
        if ((key, author.user_id) in members if (author, key) in private else may_read(author, key))
    }


def listed_to_everyone(queryset):
    """The rooms of a Room queryset listed to everyone, guests too: the public ones."""
    return queryset.exclude(name__startswith=rooms.PRIVATE_MARK).exclude(
        name__startswith=rooms.DIRECT_MARK
    )


def may_invite(author: Author, room_key: str) -> bool:
    """Add a member to a private room: its owner."""
    return rooms.kind(room_key) == rooms.PRIVATE and role_of(author, room_key) in _MANAGERS


def may_remove_member(author: Author, room_key: str, member_role: Role) -> bool:
    """Remove a member (or moderator) from a private room: its owner; never the owner."""
    return may_invite(author, room_key) and member_role != Role.OWNER


def may_appoint_moderators(author: Author, room_key: str) -> bool:
    """Appoint and remove a room's moderators: its owner (a direct conversation has none)."""
    return rooms.kind(room_key) != rooms.DIRECT and role_of(author, room_key) in _MANAGERS


def may_set_retention(author: Author, room_key: str) -> bool:
    """Set how long the room keeps its messages (chat.retention): its owner (a direct
    conversation has none)."""
    return rooms.kind(room_key) != rooms.DIRECT and role_of(author, room_key) in _MANAGERS


def may_leave(author: Author, room_key: str) -> bool:
    """Leave a private room: a member or moderator (not its owner, nor a direct conversation)."""
    return rooms.kind(room_key) == rooms.PRIVATE and role_of(author, room_key) in _LEAVERS


def may_resign(author: Author, room_key: str) -> bool:
    """Give up the moderator role (chat.memberships.resign): a moderator, in a public or a
    private room. Not the owner: the room's one manager, whose role never changes."""
    return rooms.kind(room_key) != rooms.DIRECT and role_of(author, room_key) == Role.MODERATOR


def founding_members(author: Author, room_key: str) -> list[tuple[int, Role]]:
    """Who a room's first message makes members: a public room's logged-in author its owner,
    a direct conversation's two users; a guest's or a bot's room has none (ownerless, as
    ever: neither is a user who could own it)."""
    room_kind = rooms.kind(room_key)
    if room_kind == rooms.DIRECT:
        return [(user_id, Role.MEMBER) for user_id in rooms.direct_members(room_key)]
    if room_kind == rooms.PUBLIC and author.user_id is not None:
        return [(author.user_id, Role.OWNER)]
    return []


# ---- Moderation: mute, kick, ban (chat.moderation, chat.sanctions) ----


def may_moderate_room(author: Author, room_key: str) -> bool:
    """Mute, kick and ban in the room: its owner and moderators, and site staff
    (Author.is_staff: they moderate every room but direct conversations).

    A direct conversation has no moderators: either of its two may leave it, or block.
    """
    if author.user_id is None or rooms.kind(room_key) == rooms.DIRECT:
        return False
    return author.is_staff or role_of(author, room_key) in _MODERATORS


def may_moderate(author: Author, room_key: str, target: Author) -> bool:
    """Mute, kick or ban `target` in the room.

    Nobody acts on the room's owner, on staff, on a bot or on themselves; moderators do
    not act on each other, the owner and staff do.
    """
    if not may_moderate_room(author, room_key) or target.is_bot:
        return False
    if target.user_id is None:
        return True
    if target.user_id == author.user_id or target.is_staff:
        return False
    target_role = role_of(target, room_key)
    if target_role == Role.OWNER:
        return False
    if target_role == Role.MODERATOR:
        return author.is_staff or role_of(author, room_key) == Role.OWNER
    return True


def may_lift(author: Author, room_key: str, target: Author) -> bool:
    """Lift a mute or ban of `target` in the room: whoever may impose one on them
    (may_moderate: never one's own, nor a fellow moderator's), and site staff any."""
    if not may_moderate_room(author, room_key):
        return False
    return author.is_staff or may_moderate(author, room_key, target)


def sanction_refusal(
    author: Author, room_key: str, network: str, client_id: str | None = None
) -> protocol.FrameRefused | None:
    """Why the author may not post in the room now (code "banned" or "muted", saying until
    when), or None: one cached lookup (chat.sanctions), asked before every post."""
    sanction = sanctions.in_force(author, room_key, network)
    if sanction is None:
        return None
    until = (
        "until a moderator lifts it"
        if sanction.until is None
        else (f"until {sanction.until.isoformat(timespec='seconds')}")
    )
    if sanction.kind == sanctions.Kind.BAN:
        return protocol.FrameRefused(
            "banned", f"You are banned from this room, {until}.", client_id, until=sanction.until
        )
    return protocol.FrameRefused(
        "muted", f"A moderator muted you in this room, {until}.", client_id, until=sanction.until
    )


# --- Editing and deleting messages ---------------------------------------------------------

# Who may delete anyone's message in a room (besides site staff).
_MESSAGE_KEEPERS = frozenset({Role.OWNER, Role.MODERATOR})


def may_edit(author: Author, message: Message) -> bool:
    """Edit a message: its author only (a guest from the session that sent it), never a
    deleted one."""
    return not message.deleted and not author.is_bot and message.author_key == author.key


def may_delete(author: Author, message: Message) -> bool:
    """Delete a message: its author, site staff, and the room's owner and moderators where
    they may moderate its writer (never the owner's, staff's or a fellow moderator's)."""
    if message.deleted or author.is_bot:
        return False
    if message.author_key == author.key:
        return True
    if not may_delete_others(author, message.room_id):
        return False
    if author.is_staff or message.author_id is None:  # staff, or a guest's or a bot's
        return True
    writer = identity.author_for(message.author, None)  # its staff status as at a handshake
    return may_moderate(author, message.room_id, writer)


def may_delete_others(author: Author, room_key: str) -> bool:
    """Delete others' messages in the room at all (may_delete decides whose): its owner and
    moderators, and site staff."""
    if author.is_guest or author.is_bot:
        return False
    return author.is_staff or role_of(author, room_key) in _MESSAGE_KEEPERS
