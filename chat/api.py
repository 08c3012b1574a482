"""The HTTP API for programs, under /api/v1/, on django-ninja: post, edit and delete a
message, read a room's messages, list rooms; each call with a user's API token
(chat.tokens) as a bearer token, limited per token. Its OpenAPI description is at
/api/v1/openapi.json.

Explained in docs/programs.md, 'The HTTP API'.
"""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from . import (
    activity,
    identity,
    limits,
    outages,
    paced,
    permissions,
    posting,
    protocol,
    rooms,
    services,
    tokens,
    views,
)
from .models import ApiToken
from .redis_clients import OUTAGE_ERRORS

logger = logging.getLogger(__name__)


class ApiRefusal(Exception):
    """An API call refused: its status, a stable code, and a detail for people."""

    def __init__(self, status: int, code: str, detail: str, retry_after: int | None = None):
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail, self.retry_after = status, code, detail, retry_after


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`: an active user's token, within its user's limit."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        """The stored token (request.auth), or None (401); over its limit, a 429."""
        found = tokens.token_for(token)
        if found is None:
            return None
        try:
            wait = limits.retry_after(limits.API_PERSON, f"u:{found.user_id}")
        except OUTAGE_ERRORS as error:  # as for the other HTTP limits: let it through
            logger.warning(
                "%s not checked, Redis unreachable: %r", limits.API_PERSON.setting, error
            )
            wait = None
        if wait is not None:
            raise ApiRefusal(429, "rate_limited", limits.describe(limits.API_PERSON, wait), wait)
        return found


api = NinjaAPI(
    title="Chat API",
    version="1",
    description="For programs: post and read messages, list rooms. See docs/programs.md.",
    urls_namespace="api-v1",
    auth=TokenAuth(),
    # Its Swagger page at /api/v1/docs, from ninja's own static files ("ninja" is an
    # installed app): ninja's other page loads them from a CDN, which the CSP refuses.
    docs_url="/docs",
)


class Error(Schema):
    code: str
    detail: str


class ErrorOut(Schema):
    error: Error


class MessageOut(Schema):
    message: str
    id: int
    user: str
    guest: bool
    bot: bool
    ts: str
    client_id: str | None
    edited: str | None
    deleted: bool
    change: int


class MessageIn(Schema):
    message: str
    client_id: str | None = None


class EditIn(Schema):
    message: str


class PageOut(Schema):
    room: str
    messages: list[MessageOut]
    # One of the two, as the query asked: the next page's after= (or before=), or null.
    next_after: int | None = None
    next_before: int | None = None
    # The ids up to it were deleted by retention (docs/protocol.md), 0 for none.
    gone_until: int = 0
    next_changes_after: int | None = None


class RoomOut(Schema):
    name: str
    title: str  # a private room's, or its address: what to show people
    last_id: int
    last_at: str | None
    online: int | None = None
    read_up_to: int | None


class RoomsOut(Schema):
    rooms: list[RoomOut]


def _refused(request, refusal: ApiRefusal) -> HttpResponse:
    error = {"error": {"code": refusal.code, "detail": refusal.detail}}
    response = api.create_response(request, error, status=refusal.status)
    if refusal.retry_after is not None:
        response["Retry-After"] = str(refusal.retry_after)
    return response


api.add_exception_handler(ApiRefusal, _refused)


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc) -> HttpResponse:
    detail = "Send an API token: Authorization: Bearer <token> (made at /accounts/tokens/)."
    response = _refused(request, ApiRefusal(401, "invalid_token", detail))
    response["WWW-Authenticate"] = "Bearer"
    return response


# Where ninja says a refused field was (the body, the query...): not part of its name.
LOCATIONS = frozenset({"body", "query", "path"})


@api.exception_handler(ValidationError)
def _invalid(request, exc) -> HttpResponse:
    # A field's place, as the program wrote it: "message", not ninja's "body.body.message".
    fields = ", ".join(
        ".".join(str(part) for part in error["loc"] if part not in LOCATIONS)
        for error in exc.errors
    )
    return _refused(request, ApiRefusal(422, "invalid_request", f"Invalid fields: {fields}."))


@api.exception_handler(HttpError)
def _http_error(request, exc) -> HttpResponse:
    """ninja's own refusals (a body that is not JSON: 400) in the API's one error shape."""
    return _refused(request, ApiRefusal(exc.status_code, "invalid_request", str(exc) + "."))


ERRORS = {401: ErrorOut, 429: ErrorOut}


# What a program is told of a room it may not read, and of one that does not exist alike.
NO_SUCH_ROOM = (404, "no_such_room", "There is no such room.")
# How the API answers a refused post, edit or deletion: the codes that are not a plain 400.
POST_REFUSAL_STATUS = {
    "no_such_room": 404,
    "no_such_message": 404,
    "not_allowed": 403,
    "message_deleted": 409,
    "banned": 403,
    "muted": 403,
    "recipient_deactivated": 403,
}


def _room(name: str, user) -> str:
    """The key of the room at address `name`, if the token's user may read it (chat.permissions)."""
    try:
        address = rooms.normalize_address(name)
    except rooms.InvalidRoomName as refusal:
        raise ApiRefusal(400, "invalid_room_name", str(refusal)) from None
    author = identity.author_for(user, None)
    room_key = permissions.room_for(author, address)
    if room_key is None:
        raise ApiRefusal(*NO_SUCH_ROOM)
    refusal = permissions.sanction_refusal(author, room_key, "")
    if refusal is not None and refusal.code == "banned":
        raise ApiRefusal(403, refusal.code, refusal.detail)
    return room_key


@api.post(
    "/rooms/{room}/messages",
    response={
        201: MessageOut,
        200: MessageOut,
        400: ErrorOut,
        403: ErrorOut,
        404: ErrorOut,
        422: ErrorOut,
        503: ErrorOut,
    }
    | ERRORS,
    summary="Post a message",
)
def post_message(request, room: str, body: MessageIn):
    """Post as the token's user; a client_id already used answers 200 with that message."""
    try:
        posted = posting.post_message(
            room,
            body.message,
            as_user=request.auth.user,
            client_id=body.client_id,
            address=limits.client_network(request),
        )
    except posting.PostRefused as refusal:
        raise _post_refusal(refusal) from None
    except Exception as error:
        if not outages.is_outage(error):
            raise
        logger.error("API post to room %r failed: %r", room, error)
        detail = "The message could not be saved. Try again with the same client_id."
        raise ApiRefusal(503, "unavailable", detail) from None
    return Status(201 if posted.created else 200, posted.fields)


def _post_refusal(refusal: posting.PostRefused) -> ApiRefusal:
    status = 429 if refusal.retry_after is not None else 400
    status = POST_REFUSAL_STATUS.get(refusal.code, status)
    return ApiRefusal(status, refusal.code, refusal.detail, refusal.retry_after)


CHANGE_RESPONSES = {
    200: MessageOut,
    400: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    422: ErrorOut,
    503: ErrorOut,
} | ERRORS


@api.patch(
    "/rooms/{room}/messages/{message_id}", response=CHANGE_RESPONSES, summary="Edit a message"
)
def edit_message(request, room: str, message_id: int, body: EditIn):
    """Replace the text of one of the token's user's own messages; answers its final state."""
    return _change(request.auth.user, room, message_id, body.message)


@api.delete(
    "/rooms/{room}/messages/{message_id}", response=CHANGE_RESPONSES, summary="Delete a message"
)
def delete_message(request, room: str, message_id: int):
    """Delete a message of the user's, or anyone's as the room's moderator, owner or staff."""
    return _change(request.auth.user, room, message_id, None)


def _change(user, room: str, message_id: int, text: str | None):
    """Edit (text) or delete (None) through chat.posting, as the socket's frames do."""
    try:
        if text is None:
            message = posting.delete_message(room, message_id, as_user=user)
        else:
            message = posting.edit_message(room, message_id, text, as_user=user)
    except posting.PostRefused as refusal:
        raise _post_refusal(refusal) from None
    except Exception as error:
        if not outages.is_outage(error):
            raise
        logger.error("API change in room %r failed: %r", room, error)
        raise ApiRefusal(503, "unavailable", "The change could not be saved. Try again.") from None
    return Status(200, protocol.message_fields(message))


@api.get(
    "/rooms/{room}/messages",
    response={200: PageOut, 400: ErrorOut, 403: ErrorOut, 404: ErrorOut} | ERRORS,
    summary="Read a room's messages",
)
def read_messages(
    request,
    room: str,
    after: str | None = None,
    before: str | None = None,
    limit: str | None = None,
    changes_after: str | None = None,
):
    """?after=<id> (oldest first), ?before=<id> (back) or ?changes_after=<change>, ?limit=<n>:
    as /chat/<room>/messages/."""
    asked = (("after", after), ("before", before), ("limit", limit))
    asked += (("changes_after", changes_after),)
    query = {name: value for name, value in asked if value is not None}
    room_key = _room(room, request.auth.user)
    state = services.room_on_join(room_key)  # its look-alike and retention mark, one query
    if moved := views.to_lookalikes_room(request, room_key, state.lookalike):
        return moved
    try:
        page = services.read_page_rows(room_key, query, room, state.gone_until)
        return paced.page_response(page)
    except services.InvalidPage as refusal:
        raise ApiRefusal(400, "invalid_page", str(refusal)) from None


@api.get("/rooms", response={200: RoomsOut} | ERRORS, summary="List rooms")
def list_rooms(request):
    """The rooms with the newest messages and those the user has read, with who is online."""
    user = request.auth.user
    room_list = activity.recent_rooms(settings.CHAT_ROOM_LIST_SIZE, user=user)
    return {"rooms": activity.summaries(room_list, user)}


def urls() -> tuple:
    """The API's URL configuration, its page reads paced as /chat/<room>/messages/ is."""
    return paced.paced_operations(api.urls, read_messages)
