"""Daphne, with a bound on what it holds for a WebSocket client that stops reading.

    python -m mysite.server [daphne's arguments] mysite.asgi:application

Daphne hands every frame to Twisted at once, and Twisted buffers whatever the kernel will
not take yet, without limit: a client that never reads makes its buffer grow for as long
as its room talks, and ASGI gives the application no way to see it. Here each connection
looks at its unsent bytes after a frame is added. When they pass
CHAT_SEND_BACKLOG_LIMIT_BYTES even after the kernel took what it would, it adds no more
frames, tells the application the socket is gone (so it leaves its room and
presence list now), and closes with 4408. A client that has not read up to that close
frame within CHAT_SLOW_CLIENT_GRACE_SECONDS is cut off. The page reconnects and catches
up from the database, so nothing dropped here is lost.

It also stops cleanly on SIGTERM: daphne cancels the applications and stops its event
loop, but a sync handler in flight at that moment waits in async_to_sync for that loop,
for ever, and the interpreter waits for its thread at exit. Here the loop keeps turning
until every application and the handler in flight are done; after SHUTDOWN_DRAIN_SECONDS
the process leaves without them. (asgiref may also swallow the cancellation of an
application whose handler was in flight; chat.consumers re-raises it.)

`manage.py runserver` (daphne's) uses this server too: chat.apps installs it.
"""

import asyncio
import logging
import os

from asgiref.sync import SyncToAsync
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from twisted.internet import defer

logger = logging.getLogger("mysite.server")  # not "__main__" when run with -m

SHUTDOWN_DRAIN_SECONDS = 5.0

# Beside chat.protocol's 4429 and 4503; listed with them in README.md.
CLOSE_TOO_SLOW = 4408


def unsent_bytes(transport) -> int:
    """Bytes Twisted holds for this connection that the kernel has not taken yet.

    Twisted has no public accessor: these are the buffers of its FileDescriptor
    (twisted.internet.abstract), unchanged for over a decade. mysite/tests/test_server.py
    fails if they ever move.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class BacklogBoundedProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, closing a client whose unread backlog passes the limit."""

    too_slow = False

    # What an open socket holds is what 10,000 of them cost: let go of what only the
    # handshake needed (about 5.5 KB a socket, measured with `dev.py bench --idle`).

    def connectionMade(self):
        super().connectionMade()
        # The HTTP channel this connection was upgraded from registered itself as the
        # transport's producer and never let go: it kept the channel, its request and
        # the request's headers alive for the socket's whole life.
        self.transport.unregisterProducer()

    def onOpen(self):
        super().onOpen()
        # Autobahn keeps the raw handshake and its parsed headers; nothing reads them once
        # the socket is open (the application has its scope, daphne only request.path).
        self.http_request_data = self.http_response_data = self.http_status_line = None
        self.http_headers = self.http_request_params = self.request.headers = None
        self.http_request_uri = self.http_request_path = self.http_request_host = None

    def sendMessage(self, payload, *args, **kwargs):
        if self.too_slow:
            return  # the client catches up from the database when it reconnects
        super().sendMessage(payload, *args, **kwargs)
        limit = settings.CHAT_SEND_BACKLOG_LIMIT_BYTES
        if unsent_bytes(self.transport) > limit:
            # Twisted writes once per reactor turn, so a burst (a catch-up) can pile up
            # before the kernel is offered any of it. Offer it now: only what the kernel
            # will not take counts against the client.
            self.transport.doWrite()
            backlog = unsent_bytes(self.transport)
            if backlog > limit:
                self.close_too_slow(backlog)

    def close_too_slow(self, backlog: int):
        self.too_slow = True
        logger.warning(
            "closing a WebSocket that does not read (%d bytes unsent) on %s",
            backlog,
            self.request.path,
        )
        # The application lets the socket go now, not when the grace ends: it leaves its
        # room's group and presence list, and nothing more is fanned out to it.
        self.muted = True
        self.application_queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_TOO_SLOW})
        # Autobahn drops the connection if the client has not answered the close by then.
        self.closeHandshakeTimeout = settings.CHAT_SLOW_CLIENT_GRACE_SECONDS
        self.sendClose(code=CLOSE_TOO_SLOW, reason="too slow: unread backlog over the limit")


class ChatDaphneServer(Server):
    """Daphne's server, with BacklogBoundedProtocol and a shutdown that lets handlers finish."""

    drained = True  # whether the last shutdown saw every application and handler finish

    @property
    def ws_factory(self):
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory):
        # Server.run() makes the factory itself and offers no hook, so catch the assignment.
        factory.protocol = BacklogBoundedProtocol
        self._ws_factory = factory

    def kill_all_applications(self):
        """Before the reactor stops: cancel every application, then let their handlers finish."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(self._stop_applications()))

    async def _stop_applications(self):
        # As daphne's own, which raises KeyError (and so stops nothing) when a connection's
        # application finished before the connection closed.
        pending = {
            details["application_instance"]
            for details in self.connections.values()
            if "application_instance" in details and not details["application_instance"].done()
        }
        logger.info("Killed %i pending application instances", len(pending))
        for application in pending:
            application.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_DRAIN_SECONDS
        if pending:
            _, pending = await asyncio.wait(pending, timeout=SHUTDOWN_DRAIN_SECONDS)
        # Sync consumers run on asgiref's one thread, in order: once a no-op has run there,
        # no handler is in flight any more.
        idle = loop.run_in_executor(SyncToAsync.single_thread_executor, lambda: None)
        await asyncio.wait([idle], timeout=max(deadline - loop.time(), 0.1))
        self.drained = not pending and idle.done()
        if not self.drained:
            logger.warning(
                "%d applications (and the sync thread: %s) still busy %.0f s into shutdown",
                len(pending),
                "idle" if idle.done() else "busy",
                SHUTDOWN_DRAIN_SECONDS,
            )

    def run(self):
        super().run()
        if not self.drained:
            # Its thread waits for an event loop that has stopped, and the interpreter
            # would wait for that thread at exit: leave without it.
            logging.shutdown()
            os._exit(0)


class ChatCommandLineInterface(CommandLineInterface):
    """`daphne`'s command line, serving with ChatDaphneServer."""

    server_class = ChatDaphneServer


if __name__ == "__main__":
    ChatCommandLineInterface.entrypoint()
