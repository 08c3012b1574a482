"""Rooms and their stored messages.

Explained in docs/architecture.md, 'Invariants'.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Room(models.Model):
    """A room that has had at least one message, or a private room made by its owner.

    `name` is the room's key (chat.rooms): a public name, `~<id>` or `@<id>-<id>`;
    `last_seq` numbers its messages.
    """

    name = models.CharField(max_length=100, primary_key=True)
    # A private room's title, chosen by its owner; "" for the others. A database default
    # too: services._next_seq creates rooms in raw SQL.
    title = models.CharField(max_length=100, blank=True, default="", db_default="")
    last_seq = models.PositiveBigIntegerField(default=0)
    # When its newest message was stored (services._next_seq): the index lists rooms by it.
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Its name's look-alike key (lookalikes.name_key): one room per key, so no new room
    # looks like an existing one, in one indexed query. NULL for rooms from before the
    # rule that look like an older one or break the room-name rule: kept, never listed.
    key = models.TextField(null=True, blank=True, unique=True, editable=False)
    # Days its messages are kept (chat.retention); empty: CHAT_RETENTION_DAYS; 0: for ever.
    retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days messages are kept. Empty: CHAT_RETENTION_DAYS; 0: for ever.",
    )
    # Every message with an id up to this was deleted by retention (0: none); ids never
    # move. A database default too: services._next_seq creates rooms in raw SQL.
    gone_until = models.PositiveBigIntegerField(default=0, db_default=0, editable=False)
    # Numbers the room's changes (edits and deletions, services.change_message) 1, 2, 3,
    # ... apart from its messages, so message ids stay gap-free. A database default too:
    # services._next_seq creates rooms in raw SQL.
    last_change = models.PositiveBigIntegerField(default=0, db_default=0)

    def __str__(self):
        return self.name


class Message(models.Model):
    """One stored chat message. `seq` orders a room's messages 1, 2, 3, ... with no gaps."""

    # No index of its own: the (room, seq) unique constraint below leads with room.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
    seq = models.PositiveBigIntegerField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    display_name = models.CharField(max_length=150)
    text = models.TextField()
    # Chosen by the client, so that a retried send is stored once; "" when it sent none.
    client_id = models.CharField(max_length=64, blank=True, default="")
    # Whose client_id it is (identity.Author.key): ids are unique per author, so nobody can
    # claim another's. A guest's is a hash of its session key; never sent on the wire.
    author_key = models.CharField(max_length=40, blank=True, default="", editable=False)
    # Posted by a program as a named bot (chat.posting): shown as a bot, never as a guest.
    bot = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)
    # When it was last edited; None if never. Sent as "edited".
    edited = models.DateTimeField(null=True, blank=True)
    # Deleted: its text is blanked here (the revisions keep it) and sent as "".
    deleted = models.BooleanField(default=False)
    # The room change number (Room.last_change) of its latest edit or deletion; 0 if none.
    change = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["room", "seq"]
        indexes = [
            # "The room's changes after C" (a reconnect's catch-up) is a range scan.
            models.Index(fields=["room", "change"], name="message_room_change"),
        ]
        constraints = [
            # Also the index that makes history and catch-up range scans on (room, seq).
            models.UniqueConstraint(fields=["room", "seq"], name="message_room_seq_unique"),
            models.UniqueConstraint(
                fields=["room", "author_key", "client_id"],
                condition=~Q(client_id=""),
                name="message_room_author_client_id_unique",
            ),
        ]

    def __str__(self):
        return f"{self.room_id}#{self.seq} {self.display_name}: {self.text[:50]}"


class MessageRevision(models.Model):
    """One version of a message's text: its original, each edit, its deletion; who and when.

    Kept for moderators and the admin: a deleted message's text lives on here only.
    """

    class Kind(models.TextChoices):
        ORIGINAL = "original"
        EDIT = "edit"
        DELETE = "delete"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="revisions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # The text of this version (a deletion's: the text it removed).
    text = models.TextField()
    # Who made it: a user, or nobody for a guest or a bot (by_name says who).
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    by_name = models.CharField(max_length=150)
    # The room change number it took (0 for the original).
    change = models.PositiveBigIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["message", "created", "id"]

    def __str__(self):
        return f"{self.kind} of {self.message_id} by {self.by_name}"


class UsernameKey(models.Model):
    """A username's look-alike key (lookalikes.name_key): finding a look-alike is one query."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    # Not unique: users from before the check may share one, and the sign-up form decides.
    key = models.TextField(db_index=True)

    def __str__(self):
        return f"{self.user_id}: {self.key}"


class ReadPosition(models.Model):
    """How far a logged-in user has read a room: the id (seq) of the last message they saw.

    Kept on the server so that it follows them from one device to the next; a guest's
    stays in their browser.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # No foreign key to Room: a page may say it has read a room before its first message.
    room_name = models.CharField(max_length=100)
    last_read_id = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "room_name"], name="read_position_unique")
        ]

    def __str__(self):
        return f"{self.user_id} read {self.room_name} up to {self.last_read_id}"


class Membership(models.Model):
    """A user's place in a room, with a role: who may do what is chat.permissions's to say."""

    class Role(models.TextChoices):
        OWNER = "owner"
        MODERATOR = "moderator"
        MEMBER = "member"

    # No index of its own: the (room, user) unique constraint below leads with room.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="memberships", db_index=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["room", "created"]
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="membership_room_user_unique")
        ]

    def __str__(self):
        return f"{self.user_id} is {self.role} of {self.room_id}"


class ApiToken(models.Model):
    """A user's API token for programs (chat.tokens): only its prefix and a hash are stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for.")
    # Public: shown in lists, and how a presented token finds its row (one indexed lookup).
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    # SHA-256 of the whole token, hex: a leaked database holds no usable token.
    digest = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self):
        return f"{self.prefix}… ({self.name})"


class Sanction(models.Model):
    """A mute or a ban in force in a room (chat.moderation): lifting one deletes its row.

    It names its target by account, or (a guest) by session and address: `guest_key` is
    identity.Author.guest_key, `network` the guest's limits.client_network.
    """

    class Kind(models.TextChoices):
        MUTE = "mute"
        BAN = "ban"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="sanctions")
    kind = models.CharField(max_length=4, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    guest_key = models.CharField(max_length=40, blank=True, default="")
    network = models.CharField(max_length=50, blank=True, default="")
    # Who it is, for people (a username, or a guest's name): lists and the log show it.
    label = models.CharField(max_length=150)
    until = models.DateTimeField(null=True, blank=True)  # None: until lifted
    created = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.kind} of {self.label} in {self.room_id}"


class ModerationAction(models.Model):
    """One moderator's action, kept as it was done (the admin shows them read-only)."""

    class Action(models.TextChoices):
        MUTE = "mute"
        UNMUTE = "unmute"
        KICK = "kick"
        BAN = "ban"
        UNBAN = "unban"

    room_name = models.CharField(max_length=100, db_index=True)
    action = models.CharField(max_length=6, choices=Action.choices)
    moderator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    moderator_name = models.CharField(max_length=150)
    target = models.CharField(max_length=150)
    target_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    until = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    created = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self):
        return f"{self.moderator_name} {self.action} {self.target} in {self.room_name}"


class Report(models.Model):
    """A reader's report of a message, queued for staff in the admin."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reporter_name = models.CharField(max_length=150)
    reason = models.CharField(max_length=500, blank=True, default="")
    resolved = models.BooleanField(default=False, db_index=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["resolved", "-created"]

    def __str__(self):
        return f"report of {self.message} by {self.reporter_name}"
