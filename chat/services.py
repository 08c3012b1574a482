"""Storing and reading messages: the only code that writes a Message.

Explained in docs/architecture.md, 'The delivery path'.
"""

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import protocol
from .identity import Author
from .models import Message, Room


def store_message(
    room_name: str, author: Author, text: str, client_id: str | None
) -> tuple[Message, bool]:
    """Store a message as its room's next seq; returns (message, created).

    A client_id this author already used in this room returns that message with
    created=False, so a retried send is stored once; another author's client_id is no
    concern of theirs, so nobody can squat ids. The unique constraint decides, not a
    prior read, so two processes racing with the same client_id still store it once.
    """
    created = timezone.now()
    try:
        with transaction.atomic():
            message = Message.objects.create(
                room_id=room_name,
                seq=_next_seq(room_name, created),
                author_id=author.user_id,
                display_name=author.name,
                author_key=author.key,
                bot=author.is_bot,
                text=text,
                client_id=client_id or "",
                created=created,
            )
    except IntegrityError:
        # Rolled back, seq included. A known client_id is a retry; anything else re-raises.
        existing = Message.objects.filter(
            room_id=room_name, author_key=author.key, client_id=client_id
        ).first()
        if not client_id or existing is None:
            raise
        return existing, False
    return message, True


def _next_seq(room_name: str, created: datetime) -> int:
    """Create or bump the room's counter, and date its activity; call inside a transaction.

    The row lock it takes serializes a room's writers until commit, so seqs are gapless
    and commit in order (SQLite locks the whole database, PostgreSQL the row).
    """
    table = connection.ops.quote_name(Room._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, last_seq, last_message_at) VALUES (%s, 1, %s) "
            f"ON CONFLICT (name) DO UPDATE SET last_seq = {table}.last_seq + 1, "
            "last_message_at = EXCLUDED.last_message_at "
            "RETURNING last_seq",
            [room_name, connection.ops.adapt_datetimefield_value(created)],
        )
        return cursor.fetchone()[0]


def recent_messages(room_name: str, limit: int) -> list[Message]:
    """The room's newest `limit` messages, oldest first."""
    newest = Message.objects.filter(room_id=room_name).order_by("-seq")[:limit]
    return list(reversed(newest))


def messages_after(room_name: str, after_seq: int, limit: int | None = None) -> list[Message]:
    """The room's messages with seq > after_seq, oldest first, at most `limit`."""
    query = _messages_after_query(room_name, after_seq)
    return list(query if limit is None else query[:limit])


def _messages_after_query(room_name: str, after_seq: int):
    return Message.objects.filter(room_id=room_name, seq__gt=after_seq).order_by("seq")


class StoredMessage(NamedTuple):
    """What a frame shows of a stored Message (protocol.message_fields), without the model."""

    text: str
    seq: int
    display_name: str
    author_id: int | None
    created: datetime
    client_id: str
    bot: bool


def stored_messages_after(room_name: str, after_seq: int, limit: int) -> list[StoredMessage]:
    """messages_after for catch-up pages and gap fills: the same rows, three times as fast.

    The sync thread that reads a page is the one every other socket of the process waits
    for: compiling the query (0.5 ms) and building models and converters for 50 large
    messages took 1.5 ms a page; this takes 0.5 (benchmarks.catch_up, docs/architecture.md). The ORM
    still writes the SQL, once per database vendor and limit.
    """
    with connection.cursor() as cursor:
        cursor.execute(_stored_messages_after_sql(connection.vendor, limit), [room_name, after_seq])
        rows = cursor.fetchall()
    # USE_TZ: a database without time zones (SQLite) returns naive datetimes in UTC.
    return [
        StoredMessage(
            text,
            seq,
            name,
            author_id,
            created if created.tzinfo else created.replace(tzinfo=UTC),
            client_id,
            bool(bot),
        )
        for text, seq, name, author_id, created, client_id, bot in rows
    ]


# Limits run from 1 to CHAT_CATCH_UP_PAGE + 1 (a page and one more; a gap fill may ask for
# less): a handful of statements per process.
@functools.cache
def _stored_messages_after_sql(vendor: str, limit: int) -> str:
    """The SQL of messages_after(room, after, limit) for StoredMessage's columns; takes
    [room, after]."""
    query = _messages_after_query("", 0).values_list(*StoredMessage._fields)[:limit]
    sql, params = query.query.sql_with_params()
    if tuple(params) != ("", 0):  # the parameters stored_messages_after passes, in order
        raise RuntimeError(f"unexpected parameters in the catch-up query: {params!r}")
    return sql


def messages_before(room_name: str, before_seq: int, limit: int) -> list[Message]:
    """The room's newest `limit` messages with seq < before_seq, oldest first."""
    query = Message.objects.filter(room_id=room_name, seq__lt=before_seq).order_by("-seq")
    return list(reversed(query[:limit]))


def last_seq(room_name: str) -> int:
    """The seq of the room's newest message, 0 for a room with none."""
    return Room.objects.filter(name=room_name).values_list("last_seq", flat=True).first() or 0


class InvalidPage(ValueError):
    """A page query read_page refuses; its message says why, for the client."""


def read_page(room_name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """A page of a room's messages, for ?after=<id> (default 0) or ?before=<id>, ?limit=<n>.

    After: the messages with id > after, oldest first, and `next_after` (None on the last
    page). Before: the newest `limit` before that id, oldest first, and `next_before`. The
    one read of history over HTTP: the room's messages endpoint and the API share it.
    """
    try:
        after = protocol.parse_seq(query.get("after", "0"))
        limit = protocol.parse_seq(query.get("limit", str(settings.CHAT_API_PAGE_SIZE)))
        before = query.get("before")
        before = None if before is None else protocol.parse_seq(before)
    except ValueError:
        raise InvalidPage("after, before and limit must be whole numbers") from None
    if not 1 <= limit <= settings.CHAT_API_PAGE_MAX:
        raise InvalidPage(f"1 <= limit <= {settings.CHAT_API_PAGE_MAX}")
    if before is not None:
        if "after" in query:
            raise InvalidPage("give after or before, not both")
        page = messages_before(room_name, before, limit + 1)
        has_more = len(page) > limit
        page = page[-limit:] if has_more else page
        fields = [protocol.message_fields(message) for message in page]
        return {
            "room": room_name,
            "messages": fields,
            "next_before": page[0].seq if has_more else None,
        }
    page = messages_after(room_name, after, limit + 1)
    has_more = len(page) > limit
    page = page[:limit]
    fields = [protocol.message_fields(message) for message in page]
    return {"room": room_name, "messages": fields, "next_after": page[-1].seq if has_more else None}
