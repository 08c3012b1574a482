"""Storing and reading messages: the only code that writes a Message.

Explained in docs/architecture.md, 'The delivery path'.
"""

import functools
import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import Q
from django.db.models.sql import InsertQuery
from django.utils import timezone

from . import metrics, permissions, protocol, retention, rooms
from .identity import Author
from .lookalikes import name_key
from .models import Membership, Message, MessageRevision, Room


class LookalikeRoom(Exception):
    """A new room whose name looks like an existing room's (`existing`): not created."""

    def __init__(self, existing: str):
        super().__init__(f"looks like the room {existing!r}")
        self.existing = existing


class Draft(NamedTuple):
    """A message to store: its room, author, text, and the client's id for it (or None)."""

    room_name: str
    author: Author
    text: str
    client_id: str | None


def store_message(
    room_name: str, author: Author, text: str, client_id: str | None
) -> tuple[Message, bool]:
    """Store a message as its room's next seq; returns (message, created).

    A batch of one (store_messages): its failure is raised.
    """
    (outcome,) = store_messages([Draft(room_name, author, text, client_id)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class NewRow(NamedTuple):
    """A draft's Message and its insert's values, made before its seq is known (new_rows)."""

    draft: Draft
    message: Message
    values: list  # _INSERTED_FIELDS' values, prepared for the database; seq's set at the insert


# A stored message's columns, in the order _insert_sql lists them: all but the primary key.
_INSERTED_FIELDS = tuple(field for field in Message._meta.concrete_fields if not field.primary_key)
_SEQ_COLUMN = _INSERTED_FIELDS.index(Message._meta.get_field("seq"))
# Statements kept of _insert_sql, one per row count: a batch's size varies with the load.
INSERT_SQL_CACHE_SIZE = 64


def new_rows(drafts: Sequence[Draft]) -> list[NewRow]:
    """The drafts' rows, ready to insert but for their seqs, dated now.

    Made outside the transaction, so that SQLite's write lock, which every process shares,
    is not held while they are; chat.commits makes them while Redis counts the limits.
    """
    created = timezone.now()
    # The connection itself, not django.db.connection: each of that proxy's attributes is
    # looked up in a context-local, which cost a third of preparing the rows' values.
    database = connections[connection.alias]
    rows = []
    for draft in drafts:
        message = _message(draft, 0, created)
        values = [
            field.get_db_prep_save(getattr(message, field.attname), database)
            for field in _INSERTED_FIELDS
        ]
        rows.append(NewRow(draft, message, values))
    return rows


@metrics.STORE_SECONDS.time()
def store_messages(
    drafts: Sequence[Draft], rows: Sequence[NewRow] | None = None
) -> list[tuple[Message, bool] | Exception]:
    """Store drafts in one transaction, in order, each as its room's next seq (group commit).

    `rows`: the drafts' new_rows, when made already (while something else was waited for).

    Each outcome is (message, created), or the exception that draft alone met. A client_id
    this author already used in this room returns that message with created=False, so a
    retried send is stored once; another author's client_id is no concern of theirs, so
    nobody can squat ids. The unique constraint decides, not a prior read, so two
    processes racing with the same client_id still store it once. A message that would
    create a room looking like an existing one (Room.key) gets a LookalikeRoom; that
    unique constraint decides too. A failure of the transaction itself (a lock waited
    out, the database gone) is raised: nothing of the batch is stored.

    The batch is one statement per room (its counter bumped by its messages) and one
    insert of every row: on SQLite the write lock, which every process shares, is held
    for a few statements, not four a message. When a constraint refuses that insert, the
    batch is rolled back and stored again draft by draft, each in a savepoint of its own,
    so one refused draft takes back only its own seq. The rooms are stored in name order,
    each room's drafts in theirs: every process's batches take their rooms' row locks in
    one order, so no two wait for each other (a deadlock on PostgreSQL, waited out to the
    lock bound and refused).
    """
    if rows is None:
        rows = new_rows(drafts)
    elif any(row.draft is not draft for row, draft in zip(rows, drafts, strict=True)):
        raise ValueError("rows are not the drafts' own")
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda index: rows[index].draft.room_name)
    try:
        with transaction.atomic():
            outcomes = _store_together(rows, order)
    except IntegrityError:
        with transaction.atomic():
            outcomes = _store_one_by_one(drafts, order, rows[0].message.created)
    metrics.MESSAGES_STORED.inc(sum(isinstance(o, tuple) and o[1] for o in outcomes))
    return outcomes


def _store_together(
    rows: Sequence[NewRow], order: list[int]
) -> list[tuple[Message, bool] | Exception]:
    created = rows[0].message.created
    for room_name, indexes in itertools.groupby(
        order, key=lambda index: rows[index].draft.room_name
    ):
        indexes = list(indexes)
        first = _next_seq(room_name, created, len(indexes)) - len(indexes) + 1
        if first == 1:  # the room's first message: it may make members (its owner)
            _add_founding_members(room_name, rows[indexes[0]].draft.author)
        for seq, index in enumerate(indexes, start=first):
            rows[index].message.seq = rows[index].values[_SEQ_COLUMN] = seq
    _insert([rows[index] for index in order])
    return [(row.message, True) for row in rows]


def _insert(rows: list[NewRow]):
    """Insert the rows as bulk_create does, in one statement (or one per the database's
    bound on parameters), and give each its primary key.

    Without compiling the statement for each batch: the ORM's compiler took a fifth of a
    group commit's time; the SQL is built once per vendor and row count (_insert_sql).
    """
    database = connections[connection.alias]
    size = max(database.ops.bulk_batch_size(_INSERTED_FIELDS, rows), 1)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        sql, by_column = _insert_sql(database.vendor, len(chunk))
        # One parameter a value, row after row; or, where Django inserts through UNNEST
        # (PostgreSQL, more than one row), one array a column.
        if by_column:
            params = [list(column) for column in zip(*(row.values for row in chunk), strict=True)]
        else:
            params = [value for row in chunk for value in row.values]
        with database.cursor() as cursor:
            cursor.execute(sql, params)
            keys = cursor.fetchall()
        for row, (key,) in zip(chunk, keys, strict=True):
            row.message.pk = key
            row.message._state.adding, row.message._state.db = False, database.alias


@functools.lru_cache(maxsize=INSERT_SQL_CACHE_SIZE)
def _insert_sql(vendor: str, rows: int) -> tuple[str, bool]:
    """The SQL of _insert for `rows` rows, returning their primary keys in order, and
    whether it takes its parameters a column at a time (an array each) or a value at a time."""
    query = InsertQuery(Message)
    query.insert_values(_INSERTED_FIELDS, [Message(room_id="", seq=0)] * rows)
    compiler = query.get_compiler(connection=connection)
    compiler.returning_fields = [Message._meta.pk]
    statements = compiler.as_sql()
    fields = len(_INSERTED_FIELDS)
    if len(statements) == 1:
        sql, params = statements[0]
        if len(params) == rows * fields and not (rows > 1 and isinstance(params[0], list)):
            return sql, False
        if len(params) == fields and all(len(column) == rows for column in params):
            return sql, True
    raise RuntimeError(f"unexpected statements for inserting messages: {statements!r}")


def _store_one_by_one(
    drafts: Sequence[Draft], order: list[int], created: datetime
) -> list[tuple[Message, bool] | Exception]:
    outcomes: list[tuple[Message, bool] | Exception | None] = [None] * len(drafts)
    for index in order:
        draft = drafts[index]
        try:
            with transaction.atomic():
                seq = _next_seq(draft.room_name, created)
                if seq == 1:
                    _add_founding_members(draft.room_name, draft.author)
                message = _message(draft, seq, created)
                message.save(force_insert=True)
                outcomes[index] = (message, True)
        except IntegrityError as error:
            outcomes[index] = _known_or_refused(draft, error)
    return outcomes


def _message(draft: Draft, seq: int, created: datetime) -> Message:
    # Positional, in the model's field order (test_services checks it): Model.__init__ takes
    # keywords at twice the cost.
    author = draft.author
    return Message(
        None,  # id: given by the insert
        draft.room_name,
        seq,
        author.user_id,
        author.name,
        draft.text,
        draft.client_id or "",
        author.key,
        author.is_bot,
        created,
        None,  # edited
        False,  # deleted
        0,  # change
    )


def _known_or_refused(draft: Draft, error: IntegrityError) -> tuple[Message, bool] | Exception:
    """After a draft's savepoint rolled back (its seq too): a known client_id is a retry,
    a look-alike key taken a LookalikeRoom; anything else is the error itself."""
    if draft.client_id:
        existing = Message.objects.filter(
            room_id=draft.room_name, author_key=draft.author.key, client_id=draft.client_id
        ).first()
        if existing is not None:
            return existing, False
    if (holder := lookalike_room(draft.room_name)) is not None:
        return LookalikeRoom(holder)
    return error


def _next_seq(room_name: str, created: datetime, count: int = 1) -> int:
    """Create or bump the room's counter by count, and date its activity; returns its new
    value (the last of the count seqs taken). Call inside a transaction.

    The row lock it takes serializes a room's writers until commit, so seqs are gapless
    and commit in order (SQLite locks the whole database, PostgreSQL the row).
    """
    table = connection.ops.quote_name(Room._meta.db_table)
    with connection.cursor() as cursor:
        # A new room takes its look-alike key, which the unique key refuses if another
        # room has it; an existing room is updated whatever its key.
        cursor.execute(
            f"INSERT INTO {table} (name, key, last_seq, last_message_at) VALUES (%s, %s, %s, %s) "
            f"ON CONFLICT (name) DO UPDATE SET last_seq = {table}.last_seq + EXCLUDED.last_seq, "
            "last_message_at = EXCLUDED.last_message_at "
            "RETURNING last_seq",
            [
                room_name,
                room_key(room_name),
                count,
                connection.ops.adapt_datetimefield_value(created),
            ],
        )
        return cursor.fetchone()[0]


# Room names a process uses over and over: the key of each is worked out once.
ROOM_KEYS_CACHED = 4096


@functools.lru_cache(maxsize=ROOM_KEYS_CACHED)
def room_key(room_name: str) -> str:
    """The look-alike key a room of this name holds (Room.key): a private room's or a
    direct message's is its own key, which no public name's can be (chat.rooms)."""
    return room_name if rooms.kind(room_name) != rooms.PUBLIC else name_key(room_name)


def lookalike_room(room_name: str) -> str | None:
    """The existing room a new room of this name would look like; None if it exists already
    or looks like none (one indexed query: room_on_join's)."""
    return room_on_join(room_name).lookalike


class RoomOnJoin(NamedTuple):
    """What a socket joining a room reads of it first (room_on_join)."""

    lookalike: str | None  # the existing room a new room of this name would look like
    last_seq: int  # its newest message's id, 0 for a room with none
    last_change: int  # its newest change number
    gone_until: int  # the last id retention deleted in it (chat.retention)


def room_on_join(room_name: str) -> RoomOnJoin:
    """A room's look-alike, last_seq, last_change and retention.gone_until, in one query.

    Read on every connect, on the sockets' one thread, with SQL compiled once: a server's
    restart reconnects thousands, and the four queries the ORM built cost each connect
    more than the rest of its work. A room that does not exist reads as empty.
    """
    with connection.cursor() as cursor:
        cursor.execute(_room_on_join_sql(connection.vendor), [room_name, room_key(room_name)])
        rows = cursor.fetchall()
    for name, last_seq, last_change, gone_until in rows:
        if name == room_name:
            return RoomOnJoin(None, last_seq, last_change, gone_until)
    return RoomOnJoin(rows[0][0] if rows else None, 0, 0, 0)


@functools.cache
def _room_on_join_sql(vendor: str) -> str:
    """The SQL of room_on_join; takes [room, its look-alike key]. The key is unique: the
    room's own row and one look-alike's at most."""
    fields = ("name", "last_seq", "last_change", "gone_until")
    query = Room.objects.filter(Q(name="") | Q(key="")).values_list(*fields)[:2]
    sql, params = query.query.sql_with_params()
    if tuple(params) != ("", ""):
        raise RuntimeError(f"unexpected parameters in the room_on_join query: {params!r}")
    return sql


def _add_founding_members(room_name: str, author: Author) -> None:
    # ignore_conflicts: a private room's first message finds its owner there already.
    Membership.objects.bulk_create(
        [
            Membership(room_id=room_name, user_id=user_id, role=role)
            for user_id, role in permissions.founding_members(author, room_name)
        ],
        ignore_conflicts=True,
    )


class ChangeRefused(Exception):
    """An edit or deletion the rules refuse; `code` is the socket's error code."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@metrics.STORE_SECONDS.time()
def edit_message(room_name: str, seq: int, author: Author, text: str) -> Message:
    """Replace a message's text as its author (permissions.may_edit); returns it, changed."""
    return _change_message(room_name, seq, author, text)


def delete_message(room_name: str, seq: int, author: Author) -> Message:
    """Delete a message as its author, a room moderator or staff (permissions.may_delete)."""
    return _change_message(room_name, seq, author, None)


def _change_message(room_name: str, seq: int, author: Author, text: str | None) -> Message:
    """Edit (text) or delete (None) a message, as the room's next change number.

    The change number and the row change commit together; the room row's lock (taken
    first, as store_message takes it) serializes a room's writers, so change numbers
    commit in order. The first change records the original text as a revision.
    """
    deleting = text is None
    now = timezone.now()
    with transaction.atomic():
        change = _next_change(room_name)
        message = Message.objects.filter(room_id=room_name, seq=seq).first()
        if change is None or message is None:
            raise ChangeRefused("no_such_message", f"There is no message {seq} in this room.")
        if message.deleted:
            raise ChangeRefused("message_deleted", f"Message {seq} was deleted.")
        allowed = permissions.may_delete if deleting else permissions.may_edit
        if not allowed(author, message):
            verb = "delete" if deleting else "edit"
            raise ChangeRefused("not_allowed", f"You may not {verb} message {seq}.")
        revisions = []
        if not message.revisions.exists():
            revisions.append(
                MessageRevision(
                    message=message,
                    kind=MessageRevision.Kind.ORIGINAL,
                    text=message.text,
                    by_id=message.author_id,
                    by_name=message.display_name,
                    created=message.created,
                )
            )
        revisions.append(
            MessageRevision(
                message=message,
                kind=MessageRevision.Kind.DELETE if deleting else MessageRevision.Kind.EDIT,
                text=message.text if deleting else text,
                by_id=author.user_id,
                by_name=author.name,
                change=change,
                created=now,
            )
        )
        MessageRevision.objects.bulk_create(revisions)
        if deleting:
            message.text, message.deleted = "", True
        else:
            message.text, message.edited = text, now
        message.change = change
        message.save(update_fields=["text", "deleted", "edited", "change"])
    return message


def _next_change(room_name: str) -> int | None:
    """Take the room's next change number (locking its row); None for a room with none."""
    table = connection.ops.quote_name(Room._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_change = last_change + 1 WHERE name = %s "
            "RETURNING last_change",
            [room_name],
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def changes_after(room_name: str, after_change: int, limit: int | None = None) -> list[Message]:
    """The final state of the room's messages changed after `after_change`, in change order,
    at most `limit` (an index range scan on (room, change))."""
    query = Message.objects.filter(room_id=room_name, change__gt=after_change).order_by("change")
    return list(query if limit is None else query[:limit])


def last_change(room_name: str) -> int:
    """The room's newest change number, 0 for a room with none."""
    rows = Room.objects.filter(name=room_name).values_list("last_change", flat=True)
    return rows.first() or 0


def recent_messages(room_name: str, limit: int) -> list[Message]:
    """The room's newest `limit` messages, oldest first."""
    newest = Message.objects.filter(room_id=room_name).order_by("-seq")[:limit]
    return list(reversed(newest))


class StoredMessage(NamedTuple):
    """What a frame shows of a stored Message (protocol.message_fields), without the model."""

    text: str
    seq: int
    display_name: str
    author_id: int | None
    created: datetime
    client_id: str
    bot: bool
    edited: datetime | None
    deleted: bool
    change: int


def _aware(moment: datetime | None) -> datetime | None:
    # USE_TZ: a database without time zones (SQLite) returns naive datetimes in UTC.
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def messages_after(room_name: str, after_seq: int, limit: int | None = None) -> list[StoredMessage]:
    """The room's messages with seq > after_seq, oldest first, at most `limit`.

    The one read of what follows an id: the messages endpoint's pages, and a socket's
    recovery and gap fills (chat.consumers), alike. Without models: compiling the query
    (0.5 ms) and building models and converters for 50 large messages took 1.5 ms; this
    takes 0.5. The ORM still writes the SQL, once per database vendor and limit.
    """
    with connection.cursor() as cursor:
        cursor.execute(_messages_after_sql(connection.vendor, limit), [room_name, after_seq])
        rows = cursor.fetchall()
    return [
        StoredMessage(
            text,
            seq,
            name,
            author_id,
            _aware(created),
            client_id,
            bool(bot),
            _aware(edited),
            bool(deleted),
            change,
        )
        for text, seq, name, author_id, created, client_id, bot, edited, deleted, change in rows
    ]


# Limits run from 1 to the messages endpoint's CHAT_API_PAGE_MAX + 1 (a page and one more;
# a socket asks for CHAT_RECOVERY_LIMIT + 1 or less): a few hundred statements at most.
@functools.cache
def _messages_after_sql(vendor: str, limit: int | None) -> str:
    """The SQL of messages_after, for StoredMessage's columns; takes [room, after]."""
    query = Message.objects.filter(room_id="", seq__gt=0).order_by("seq")
    query = query.values_list(*StoredMessage._fields)
    sql, params = (query if limit is None else query[:limit]).query.sql_with_params()
    if tuple(params) != ("", 0):  # the parameters messages_after passes, in order
        raise RuntimeError(f"unexpected parameters in the messages_after query: {params!r}")
    return sql


def messages_before(room_name: str, before_seq: int, limit: int) -> list[Message]:
    """The room's newest `limit` messages with seq < before_seq, oldest first."""
    query = Message.objects.filter(room_id=room_name, seq__lt=before_seq).order_by("-seq")
    return list(reversed(query[:limit]))


def last_seq(room_name: str) -> int:
    """The seq of the room's newest message, 0 for a room with none.

    Read with every gap fill and recovery on the sockets' thread: with SQL compiled once
    (through the ORM a call took 20 times as long, building its query: 1.6 ms, not 0.05).
    """
    with connection.cursor() as cursor:
        cursor.execute(_last_seq_sql(connection.vendor), [room_name])
        row = cursor.fetchone()
    return row[0] if row else 0


@functools.cache
def _last_seq_sql(vendor: str) -> str:
    """The SQL of last_seq; takes [room]."""
    query = Room.objects.filter(name="").values_list("last_seq")[:1]
    sql, params = query.query.sql_with_params()
    if tuple(params) != ("",):
        raise RuntimeError(f"unexpected parameters in the last_seq query: {params!r}")
    return sql


def room_title(room_name: str) -> str:
    """A private room's title ("" for a room that has none)."""
    return Room.objects.filter(name=room_name).values_list("title", flat=True).first() or ""


class InvalidPage(ValueError):
    """A page query read_page_rows refuses; its message says why, for the client."""


def read_page_rows(
    room_name: str, query: Mapping[str, str], address: str = "", gone_until: int | None = None
) -> dict[str, Any]:
    """A page of a room's messages, for ?after=<id> (default 0) or ?before=<id>, ?limit=<n>,
    or ?changes_after=<change number>, its messages as plain StoredMessage rows.

    After: the messages with id > after, oldest first, and `next_after` (None on the last
    page). Before: the newest `limit` before that id, oldest first, and `next_before`.
    Changes after: the final state of the messages changed after that change number, in
    change order, and `next_changes_after`. The one read of history over HTTP: the
    room's messages endpoint and the API share it, and answer it encoded off the sockets'
    thread (chat.paced): the rows are plain tuples, no models.
    "room" is the address the reader asked for (a direct conversation's is `@<username>`).
    "gone_until": the ids up to it were deleted by retention (chat.retention), 0 for none;
    read here unless given (room_on_join reads it with the room's look-alike).
    """
    shown = address or room_name
    try:
        after = protocol.parse_seq(query.get("after", "0"))
        limit = protocol.parse_seq(query.get("limit", str(settings.CHAT_API_PAGE_SIZE)))
        before = query.get("before")
        before = None if before is None else protocol.parse_seq(before)
    except ValueError:
        raise InvalidPage("after, before and limit must be whole numbers") from None
    if not 1 <= limit <= settings.CHAT_API_PAGE_MAX:
        raise InvalidPage(f"1 <= limit <= {settings.CHAT_API_PAGE_MAX}")
    if "changes_after" in query:
        return _changes_page(room_name, query, limit, shown)
    if gone_until is None:
        gone_until = retention.gone_until(room_name)
    if before is not None:
        if "after" in query:
            raise InvalidPage("give after or before, not both")
        page = _stored(messages_before(room_name, before, limit + 1))
        has_more = len(page) > limit
        page = page[-limit:] if has_more else page
        return {
            "room": shown,
            "messages": page,
            "next_before": page[0].seq if has_more else None,
            "gone_until": gone_until,
        }
    page = messages_after(room_name, after, limit + 1)
    has_more = len(page) > limit
    page = page[:limit]
    return {
        "room": shown,
        "messages": page,
        "next_after": page[-1].seq if has_more else None,
        "gone_until": gone_until,
    }


def _stored(messages: list[Message]) -> list[StoredMessage]:
    """The messages as plain rows, as messages_after reads them."""
    return [
        StoredMessage(*(getattr(message, name) for name in StoredMessage._fields))
        for message in messages
    ]


def _changes_page(room_name: str, query: Mapping[str, str], limit: int, shown: str) -> dict:
    """read_page_rows's ?changes_after=: the messages changed since, final state, change order."""
    if "after" in query or "before" in query:
        raise InvalidPage("give changes_after alone, without after or before")
    try:
        after_change = protocol.parse_seq(query["changes_after"])
    except ValueError:
        raise InvalidPage("changes_after must be a whole number") from None
    page = changes_after(room_name, after_change, limit + 1)
    has_more = len(page) > limit
    page = page[:limit]
    return {
        "room": shown,
        "messages": _stored(page),
        "next_changes_after": page[-1].change if has_more else None,
    }
