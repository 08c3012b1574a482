"""Views of bulk work (pages of history), served on the sockets' thread in turn, paced.

Django's ASGI handler runs each request in a thread of its own (asgiref's
ThreadSensitiveContext makes one per request), its signals, middleware and view there,
with a hop back to the loop for each part. Ten readers paging through a room at once
were ten such threads, taking the interpreter from the sockets' thread and the loop with
no pacing at all: another room's messages waited for them (benchmarks/catch_up.py). A
view marked @paced is served by PacedViews instead: the request is read on the loop,
handled whole (Django's signals, the same middleware, the view) by a synchronous
handler on the sockets' thread as one bulk job (pipeline.run_in_turn), and its answer
sent from the loop. Every other request goes to Django's handler. The API's page reads
(chat.api) are paced the same way, by method: their path's post is not.

A page of messages (page_response) is read on the sockets' thread, as plain rows, but
encoded after the view, on the loop, a slice at a time: its 400 KB of JSON took a third
of the page's time there, and a live message arriving meanwhile waited for it.

Explained in docs/architecture.md, 'Threads: the event loop and the sync thread'.
"""

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import IO, TypeVar

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpResponse, HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix

from . import pipeline, protocol, sides

View = TypeVar("View", bound=Callable)

# How long encoding a page's messages may hold the loop before it serves the others: as
# long as a slice of a socket's frames (pipeline.SEND_SLICE_SECONDS), some 40 messages of 4 KB.
ENCODE_SLICE_SECONDS = 0.0005
# Whether PacedViews is handling the request on this thread: a page is then encoded after it.
_serving_in_turn = contextvars.ContextVar("serving_in_turn", default=False)


def paced(view: View) -> View:
    """Mark a view as bulk work: PacedViews serves it on the sockets' thread, in turn."""
    view.paced = True
    return view


def paced_operations(urls: tuple, *operations: Callable) -> tuple:
    """django-ninja's `api.urls`, each of these operations (functions under @api.get and
    the like) paced for its methods only.

    ninja serves a path with one Django view that dispatches on the method: the other
    operations of a paced one's path (a post beside a page read) are not bulk work.
    """
    patterns = urls[0]
    for operation in operations:
        ninja_operation = operation._ninja_operation
        name = getattr(ninja_operation, "url_name", None) or operation.__name__
        routes = {str(pattern.pattern) for pattern in patterns if pattern.name == name}
        for pattern in patterns:
            if str(pattern.pattern) in routes:
                view = pattern.callback
                view.paced = frozenset(ninja_operation.methods) | getattr(view, "paced", set())
    return urls


class PageResponse(HttpResponse):
    """A page of messages answered as JSON, its body written after the view, on the loop."""

    def __init__(self, page: dict):
        super().__init__(content_type="application/json")
        self.page = page  # services.read_page_rows, its messages still plain rows

    def set_body(self, body: str):
        """Give the page its body, and its length: CommonMiddleware measured it empty."""
        self.content = body
        self["Content-Length"] = str(len(self.content))


def page_response(page: dict) -> HttpResponse:
    """The JSON answer of a page of messages (services.read_page_rows): encoded on the loop
    when PacedViews serves the request, at once under any other handler (Django's test
    client); the same bytes either way."""
    if _serving_in_turn.get():
        return PageResponse(page)
    messages = [protocol.message_json(message) for message in page["messages"]]
    return HttpResponse(protocol.page_json(page, messages), content_type="application/json")


async def encoded_page(page: dict) -> str:
    """The page's JSON, written on the loop ENCODE_SLICE_SECONDS at a time."""
    messages = []
    slice_ends = time.perf_counter() + ENCODE_SLICE_SECONDS
    for message in page["messages"]:
        messages.append(protocol.message_json(message))
        if time.perf_counter() > slice_ends:
            await asyncio.sleep(0)  # the loop's sockets, then the rest
            slice_ends = time.perf_counter() + ENCODE_SLICE_SECONDS
    return protocol.page_json(page, messages)


def is_paced(scope: dict) -> bool:
    """Whether an HTTP request leads to a @paced view (or a paced operation's method)."""
    path = scope["path"]
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    marked = getattr(match.func, "paced", False)
    return marked is True or scope.get("method") in (marked or ())


class PacedViews:
    """ASGI: Django's application, with the requests for @paced views served in turn."""

    def __init__(self, django_app: ASGIHandler):
        self.django_app = django_app
        # The same middleware as Django's handler, in their synchronous form.
        self.handler = BaseHandler()
        self.handler.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not is_paced(scope):
            return await self.django_app(scope, receive, send)
        try:
            body = await self.django_app.read_body(receive)
        except RequestAborted:
            return
        turn = asyncio.ensure_future(pipeline.run_in_turn(self.answer, scope, body))
        gone = asyncio.ensure_future(self.django_app.listen_for_disconnect(receive))
        await asyncio.wait([turn, gone], return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        turn.cancel()  # the client left: a request whose turn has not come is dropped
        await asyncio.gather(turn, gone, return_exceptions=True)
        if not turn.cancelled():
            await self.django_app.send_response(turn.result(), send)

    async def answer(self, scope: dict, body: IO[bytes]) -> HttpResponseBase:
        """The request handled on the sockets' thread; a page's body then written here."""
        response = await pipeline.call_batched(self.respond, scope, body)
        if isinstance(response, PageResponse):
            response.set_body(await encoded_page(response.page))
        return response

    @sides.on_sync_thread
    def respond(self, scope: dict, body: IO[bytes]) -> HttpResponseBase:
        """Handle one request as Django's WSGI handler does: its response, closed (a page's
        still without its body, which answer writes)."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        serving = _serving_in_turn.set(True)
        try:
            request, response = self.django_app.create_request(scope, body)
            if request is not None:
                response = self.handler.get_response(request)
        finally:
            _serving_in_turn.reset(serving)
            body.close()
        response.close()  # request_finished, here on the thread whose connections it closes
        return response
