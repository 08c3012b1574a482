"""Daphne, with a bound on what it holds for a WebSocket client that stops reading.

    python -m serving.chat_daphne [daphne's arguments] mysite.asgi:application

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
the process leaves without them. Before that, every open socket is closed with 4001
(server restarting: the page reconnects and catches up), and the clients have up to
SHUTDOWN_CLOSE_WAIT_SECONDS to answer, where daphne alone cut them with no close frame
(1006 at the client). (asgiref may also swallow the cancellation of an application whose
handler was in flight; chat.consumers re-raises it.)

A message over daphne's --websocket-max-message-size (1 MiB) is answered with 1009
(message too big) and a log line, where autobahn alone drops the connection unsaid.

Every frame counts, not only the application's messages: pongs and close frames are
bytes held for the client too, and each connection answers at most CHAT_PING_BURST pings
at once, then CHAT_PING_PER_SECOND; a client pinging faster is closed with 4429.

An idle socket is pinged every CHAT_HEARTBEAT_SECONDS and dropped if its pong does not come
within CHAT_HEARTBEAT_TIMEOUT_SECONDS (a half-open connection: the network between went
away); these replace daphne's --ping-interval and --ping-timeout.

A socket lives at most CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS, then is closed with 4000 (the
page reconnects at once and catches up); daphne's own limit, a bare 1000 at 24 h that no
entry point set, is off, and its --websocket_timeout is ignored.

HTTP requests are bounded before the application sees them: a body over
CHAT_HTTP_MAX_BODY_BYTES is answered 413 without being read (from its Content-Length, or
as soon as a chunked body passes it), and a request not received whole within
CHAT_HTTP_REQUEST_TIMEOUT_SECONDS is answered 408. Twisted already bounds the head (16 KiB
and 500 header lines: 400).

`manage.py runserver` (daphne's) uses this server too: serving's runserver command names it.
"""

import asyncio
import gc
import logging
import os
import re
import socket

from asgiref.sync import SyncToAsync
from daphne.access import AccessLogGenerator
from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from django.urls import get_resolver
from twisted.internet import defer, endpoints, reactor
from twisted.web import http

from chat import metrics
from chat.protocol import (
    CLOSE_FLOODING,
    CLOSE_LIFETIME_ENDED,
    CLOSE_SERVER_RESTARTING,
    CLOSE_TOO_SLOW,
)
from chat.ratelimit import TokenBucket

logger = logging.getLogger("serving.chat_daphne")  # not "__main__" when run with -m
access_logger = logging.getLogger("daphne.access")

SHUTDOWN_DRAIN_SECONDS = 5.0
# How long a stopping server waits for its clients to answer its close frames: a client
# on a live connection answers in a round trip; a dead one must not hold the shutdown.
SHUTDOWN_CLOSE_WAIT_SECONDS = 1.0

# The endpoint daphne's --fd makes (daphne.endpoints): adopted here instead (ChatDaphneServer).
FD_ENDPOINT = re.compile(r"fd:fileno=(\d+)")

# A refused HTTP client has this long to stop sending and read the answer, before the
# connection is cut: closing a socket with unread bytes in it resets the connection, and
# the client may lose the answer with it.
REFUSAL_LINGER_SECONDS = 2.0
# RFC 6455's code for a close frame that carried none (autobahn reports it as None).
NO_STATUS_CODE = 1005


def unsent_bytes(transport) -> int:
    """Bytes Twisted holds for this connection that the kernel has not taken yet.

    Twisted has no public accessor: these are the buffers of its FileDescriptor
    (twisted.internet.abstract), unchanged for over a decade. serving/tests/test_chat_daphne.py
    fails if they ever move.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class BacklogBoundedProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, closing a client whose unread backlog passes the limit."""

    too_slow = False
    opened = False  # the handshake succeeded: its end counts in chat_sockets_closed
    closing = False  # a close frame has been sent
    ping_bucket = None

    # What an open socket holds is what 10,000 of them cost: let go of what only the
    # handshake needed (about 5.5 KB a socket, measured with `dev.py bench --idle`).

    # autobahn's _connectionMade copies each option in CONFIG_ATTRS from the factory, then
    # pretty-prints them all for a debug line whether debug is on or not: 5 % of a server's
    # CPU at a burst of connects (benchmarks/connect.py). connectionMade copies them the same
    # way, and autobahn is left none to copy or print.
    CONFIG_ATTRS = ()

    def connectionMade(self):
        for name in WebSocketProtocol.CONFIG_ATTRS:
            if not hasattr(self, name):  # as autobahn: set on the protocol, it wins
                setattr(self, name, getattr(self.factory, name))
        super().connectionMade()
        # The HTTP channel this connection was upgraded from registered itself as the
        # transport's producer and never let go: it kept the channel, its request and
        # the request's headers alive for the socket's whole life.
        self.transport.unregisterProducer()

    def onOpen(self):
        super().onOpen()
        self.opened = True
        # Autobahn keeps the raw handshake and its parsed headers; nothing reads them once
        # the socket is open (the application has its scope, daphne only request.path).
        self.http_request_data = self.http_response_data = self.http_status_line = None
        self.http_headers = self.http_request_params = self.request.headers = None
        self.http_request_uri = self.http_request_path = self.http_request_host = None

    def onClose(self, wasClean, code, reason):
        """The connection ended: count an opened socket's end by its close code."""
        if self.opened:
            metrics.SOCKETS_CLOSED.labels(str(code or NO_STATUS_CODE)).inc()
        super().onClose(wasClean, code, reason)

    def sendMessage(self, payload, *args, **kwargs):
        """Send a message, unless the socket is closing: its client catches up on reconnecting."""
        # Autobahn would raise into the consumer, in the middle of its room's broadcast.
        if self.too_slow or self.state != self.STATE_OPEN:
            return
        super().sendMessage(payload, *args, **kwargs)

    def sendData(self, data, sync=False, chopsize=None):
        """Write bytes for the client: every frame (message, pong, ping, close) comes here."""
        super().sendData(data, sync, chopsize)
        if self.too_slow or self.closing or self.state != self.STATE_OPEN:
            return  # a close frame is the last: nothing follows it to bound
        limit = settings.CHAT_SEND_BACKLOG_LIMIT_BYTES
        if unsent_bytes(self.transport) > limit:
            # Twisted writes once per reactor turn, so a burst (a catch-up) can pile up
            # before the kernel is offered any of it. Offer it now: only what the kernel
            # will not take counts against the client.
            self.transport.doWrite()
            backlog = unsent_bytes(self.transport)
            if backlog > limit:
                self.close_too_slow(backlog)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        """Send the close frame, and no other close frame after it."""
        # Set before the frame is written: should its bytes pass the backlog limit, no
        # second close may follow it.
        self.closing = True
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onPing(self, payload):
        """Answer a ping with a pong, up to CHAT_PING_BURST at once and CHAT_PING_PER_SECOND."""
        if self.state != self.STATE_OPEN:
            return
        if self.ping_bucket is None:  # most sockets never see a ping: no bucket for them
            self.ping_bucket = TokenBucket(settings.CHAT_PING_BURST, settings.CHAT_PING_PER_SECOND)
        if not self.ping_bucket.allow():
            logger.warning("closing a WebSocket that floods pings on %s", self.request.path)
            self.sendClose(code=CLOSE_FLOODING, reason="flooding: too many pings")
            return
        super().onPing(payload)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        """Close with 1009 and say so, where autobahn would drop the connection without a word."""
        logger.warning(
            "closing a WebSocket that sent a message over %d bytes on %s",
            max_msg_size,
            self.request.path,
        )
        self.failByDrop = False  # autobahn's own failure path then sends the close frame
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def check_timeouts(self):
        """Daphne's periodic check, closing a socket with 4000 at the end of its lifetime."""
        lifetime = settings.CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS
        if lifetime > 0 and self.state == self.STATE_OPEN and self.duration() > lifetime:
            self.sendClose(code=CLOSE_LIFETIME_ENDED, reason="lifetime ended: reconnect")
        super().check_timeouts()

    def close_too_slow(self, backlog: int):
        self.too_slow = True
        metrics.SLOW_CLIENTS_CUT.inc()
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


class BoundedHTTPChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel, with a deadline for each request and a bound on its body."""

    request_deadline = None  # the pending call that answers 408
    linger = None  # the pending call that cuts a refused connection
    refused = False

    def connectionMade(self):
        """Start the first request's deadline: a connection opens to send one."""
        super().connectionMade()
        self.start_request_deadline()

    def dataReceived(self, data):
        """Read bytes, starting the deadline of the request they begin."""
        # The first byte of a request starts its deadline. Bytes that arrive while a
        # request is being answered wait in Twisted's buffer (it stops reading past
        # 16 KiB) and come back here once the answer is done.
        if self.request_deadline is None and not self._handlingRequest:
            self.start_request_deadline()
        super().dataReceived(data)

    def start_request_deadline(self):
        """Answer 408 unless a whole request arrives within CHAT_HTTP_REQUEST_TIMEOUT_SECONDS."""
        self.request_deadline = self.callLater(
            settings.CHAT_HTTP_REQUEST_TIMEOUT_SECONDS, self.request_too_slow
        )

    def stop_request_deadline(self):
        """The request arrived in time, or the connection is gone."""
        if self.request_deadline is not None and self.request_deadline.active():
            self.request_deadline.cancel()
        self.request_deadline = None

    def request_too_slow(self):
        """The deadline passed with the request still incomplete: answer 408 and close."""
        self.request_deadline = None
        logger.info("closing an HTTP connection whose request did not arrive in time")
        self.refuse(408, b"Request Timeout", "The request did not arrive in time.")

    def allHeadersReceived(self):
        """Refuse a Content-Length over CHAT_HTTP_MAX_BODY_BYTES with 413, before the body."""
        if self.length is not None and self.length > settings.CHAT_HTTP_MAX_BODY_BYTES:
            # Before Twisted answers "Expect: 100-continue" and before any of the body.
            self.refuse(413, b"Content Too Large", "The request body is too large.")
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data):
        """Read the body, unless the request was refused."""
        if not self.refused:  # the rest of a refused request's body is dropped
            super().rawDataReceived(data)

    def allContentReceived(self):
        """The whole request arrived: its deadline is met."""
        self.stop_request_deadline()
        super().allContentReceived()

    def refuse(self, status: int, phrase: bytes, detail: str):
        """Answer `status` without the application, then close, dropping what still comes."""
        if self.refused:
            return
        self.refused = True
        self.stop_request_deadline()
        body = detail.encode() + b"\n"
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, phrase, len(body), body)
        )
        # Read on and drop it: a client still sending its body then reads this answer,
        # where a close with its bytes unread would reset the connection under it.
        self.dataReceived = lambda data: None
        self.transport.loseWriteConnection()
        self.linger = self.callLater(REFUSAL_LINGER_SECONDS, self.transport.abortConnection)

    def connectionLost(self, reason):
        """Cancel whatever was pending for this connection."""
        self.stop_request_deadline()
        if self.linger is not None and self.linger.active():
            self.linger.cancel()
        super().connectionLost(reason)


class BoundedRequest(WebRequest):
    """Daphne's request, refused with 413 as soon as a body of unknown length passes the limit."""

    body_bytes = 0

    def handleContentChunk(self, data):
        """Keep a piece of the body, or refuse the request once the body passes the limit."""
        self.body_bytes += len(data)
        if self.body_bytes > settings.CHAT_HTTP_MAX_BODY_BYTES:
            self.channel.refuse(413, b"Content Too Large", "The request body is too large.")
            return
        super().handleContentChunk(data)


class BoundedHTTPFactory(HTTPFactory):
    """Daphne's HTTP factory, building BoundedHTTPChannel and BoundedRequest."""

    def protocol(self):
        """A channel as Twisted builds it (behind its HTTP/2 negotiation), of our class."""
        return http._GenericHTTPChannelProtocol(BoundedHTTPChannel())

    def buildProtocol(self, addr):
        """Daphne's channel, with requests of our class instead of daphne's."""
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = BoundedRequest
        return protocol


def socket_family(fd: int) -> socket.AddressFamily:
    """The address family of the socket `fd`, which stays open."""
    probe = socket.socket(fileno=fd)  # Python reads the family from the descriptor
    try:
        return probe.family
    finally:
        probe.detach()


class LoggedAccessLog(AccessLogGenerator):
    """Daphne's access log, through logging ("daphne.access"), so that it takes the log's
    format: with DJANGO_LOG_FORMAT=json, each entry is a JSON object with the client."""

    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        """Log one entry: the client, the request, its status and length."""
        access_logger.info(
            '%s "%s" %s %s', host, request, status or "-", length or "-", extra={"client": host}
        )


class ChatDaphneServer(Server):
    """Daphne's server with bounded WebSockets and HTTP requests, and a shutdown that waits."""

    drained = True  # whether the last shutdown saw every application and handler finish

    def __init__(self, *args, **kwargs):
        if isinstance(kwargs.get("action_logger"), AccessLogGenerator):
            kwargs["action_logger"] = LoggedAccessLog(None)  # the access log daphne would write
        super().__init__(*args, **kwargs)
        # Off: BacklogBoundedProtocol closes at CHAT_WEBSOCKET_MAX_LIFETIME_SECONDS instead,
        # with a close code that says why.
        self.websocket_timeout = -1

    @property
    def http_factory(self):
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory):
        # As for ws_factory below: Server.run() makes it; make ours, from the same server.
        self._http_factory = BoundedHTTPFactory(factory.server)

    @property
    def ws_factory(self):
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory):
        # Server.run() makes the factory itself and offers no hook, so catch the assignment.
        factory.protocol = BacklogBoundedProtocol
        self._ws_factory = factory

    def adopt_listening_socket(self, fd: int):
        """Serve on the listening socket `fd`, with the address family it really has."""
        family = socket_family(fd)
        logger.info("Configuring endpoint fd:fileno=%d (%s)", fd, family.name)
        listener = endpoints.AdoptedStreamServerEndpoint(reactor, fd, family)
        listening = listener.listen(self.http_factory)
        listening.addCallback(self.listen_success)
        listening.addErrback(self.listen_error)
        self.listeners.append(listening)

    def kill_all_applications(self):
        """Before the reactor stops: cancel every application, then let their handlers finish."""
        return defer.Deferred.fromFuture(asyncio.ensure_future(self._stop_applications()))

    async def _close_websockets(self):
        """Close every open socket with CLOSE_SERVER_RESTARTING; wait a little for the answers."""
        closing = [
            protocol
            for protocol in self.connections
            if isinstance(protocol, WebSocketProtocol) and protocol.state == protocol.STATE_OPEN
        ]
        for protocol in closing:
            protocol.sendClose(code=CLOSE_SERVER_RESTARTING, reason="server restarting: reconnect")
        logger.info("Closed %i WebSockets: server restarting", len(closing))
        if closing:
            loop = asyncio.get_running_loop()
            closed = [protocol.is_closed.asFuture(loop) for protocol in closing]
            await asyncio.wait(closed, timeout=SHUTDOWN_CLOSE_WAIT_SECONDS)

    async def _stop_applications(self):
        await self._close_websockets()
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
        # The sockets' leaves are queued for the upkeep's next flush: send them now, or
        # their rooms would list them until their entries expire.
        await asyncio.sleep(0)  # the leaves the sync thread handed over, queued first
        from chat import upkeep  # once Django is set up; this module is imported before

        try:
            await asyncio.wait_for(upkeep.stop(), max(deadline - loop.time(), 1.0))
        except Exception as error:
            logger.warning("presence not recorded at shutdown: %r", error)
        metrics.flush()  # the deliveries counted since the last flush
        if not self.drained:
            logger.warning(
                "%d applications (and the sync thread: %s) still busy %.0f s into shutdown",
                len(pending),
                "idle" if idle.done() else "busy",
                SHUTDOWN_DRAIN_SECONDS,
            )

    def run(self):
        """Serve, with the heartbeat's settings (read once Django's settings can be)."""
        self.ping_interval = settings.CHAT_HEARTBEAT_SECONDS
        self.ping_timeout = settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS
        # Daphne's fd: endpoint adopts every socket as IPv4 (its plugin's default domain,
        # which an endpoint string cannot change), so Twisted reads an IPv6 peer's address
        # as an IPv4 one: garbage, a new "client" for every connection. Adopt each with its
        # own family, once the reactor runs (Server.run makes the factory first).
        fds = [int(match[1]) for e in self.endpoints if (match := FD_ENDPOINT.fullmatch(e))]
        self.endpoints = [e for e in self.endpoints if not FD_ENDPOINT.fullmatch(e)]
        for fd in fds:
            reactor.callWhenRunning(self.adopt_listening_socket, fd)
        freeze_start_up_heap()
        super().run()
        if not self.drained:
            # Its thread waits for an event loop that has stopped, and the interpreter
            # would wait for that thread at exit: leave without it.
            logging.shutdown()
            os._exit(0)


def freeze_start_up_heap():
    """Load the URLconf, then leave every object start-up made (Django, the apps, the
    application, the views and their libraries) out of later garbage collections."""
    # They live as long as the process, yet each full collection walked them all again:
    # 75 ms of the sockets' thread, two or three times during ten big catch-ups, while a
    # live message waited (benchmarks/catch_up.py). Django imports the URLconf (and with it
    # django-ninja and pydantic: a quarter of the heap) at the first request: now instead.
    get_resolver().url_patterns  # noqa: B018 (imports the URLconf)
    gc.collect()  # no garbage is kept for ever
    gc.freeze()


class ChatCommandLineInterface(CommandLineInterface):
    """`daphne`'s command line, serving with ChatDaphneServer."""

    server_class = ChatDaphneServer


if __name__ == "__main__":
    ChatCommandLineInterface.entrypoint()
