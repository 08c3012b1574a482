"""The client's own address behind a reverse proxy, believed only from trusted proxies.

Behind nginx every TCP peer is nginx: daphne puts that address in `scope["client"]`, so
Django's `REMOTE_ADDR`, the consumers and anything limiting per address see one client.
nginx names the real one in `X-Forwarded-For`, but a client can send that header too, and
daphne's own `--proxy-headers` believes it from anyone (its left-most address, which a
proxy that appends leaves in the client's hands).

TrustedProxyMiddleware, around the whole application (HTTP and WebSocket alike), replaces
`scope["client"]` only when the peer is one of CHAT_TRUSTED_PROXIES: with the right-most
address in `X-Forwarded-For` that is not itself a trusted proxy (what the nearest untrusted
hop told the first trusted one; an address it cannot read makes the client unknown, not
the proxy). From any other peer, the forwarding headers are dropped:
neither the address nor Django's SECURE_PROXY_SSL_HEADER (the scheme) is believed from a
client that reached the server directly. With no trusted proxy configured, the scope is
left alone.
"""

import ipaddress
from collections.abc import Awaitable, Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR = b"x-forwarded-for"


def trusted_networks(entries: Iterable[str]) -> list[Network]:
    """Parse CHAT_TRUSTED_PROXIES (addresses or CIDR networks); a typo is an error, not a guess."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as error:
            raise ImproperlyConfigured(f"CHAT_TRUSTED_PROXIES: {error}") from None
    return networks


# Who a client is when a trusted proxy names it unreadably: IPv4's "unspecified" address
# (as chat.limits calls a client with no address), never the proxy itself, which may be
# loopback and so trusted with /metrics; all such clients share its limits.
UNREADABLE_CLIENT = "0.0.0.0"


def _address(text: str) -> Address | None:
    """An address as proxies write it: `a.b.c.d`, `a.b.c.d:port`, an IPv6 address, or
    `[v6]` with or without `:port`; None for anything else."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # IPv4 with its port (an IPv6 address has two or more)
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket names IPv4 peers ::ffff:a.b.c.d: the same client.
    return getattr(address, "ipv4_mapped", None) or address


def _is_trusted(address: Address | None, networks: list[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def forwarded_client(forwarded_for: str, networks: list[Network]) -> str | None:
    """The client a trusted proxy names: the right-most untrusted address, or None if unreadable."""
    hops = [_address(hop) for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return None if hop is None else str(hop)
    # Every hop is a trusted proxy: the farthest is the nearest thing to a client.
    return str(hops[0]) if hops and hops[0] is not None else None


def _ssl_header() -> bytes | None:
    """The header Django's SECURE_PROXY_SSL_HEADER reads the scheme from, as ASGI names it."""
    if not settings.SECURE_PROXY_SSL_HEADER:
        return None
    meta_name = settings.SECURE_PROXY_SSL_HEADER[0]
    return meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1")


class TrustedProxyMiddleware:
    """ASGI middleware: the client's address from X-Forwarded-For, when a trusted proxy sent it."""

    def __init__(self, application):
        self.application = application

    # An ASGI 3 application, though __call__ is no coroutine function (asgiref would
    # take it for ASGI 2's double callable).
    _asgi_single_callable = True

    def __call__(self, scope, receive, send) -> Awaitable[None]:
        """Pass the scope on with the real client's address, or without headers it may not set.

        Not a coroutine: it returns the application's, so an open socket keeps no frame
        of it (10,000 idle sockets, benchmarks/connect.py).
        """
        networks = settings.CHAT_TRUSTED_PROXIES
        if networks and scope["type"] in {"http", "websocket"}:
            scope = self._rewritten(scope, networks)
        return self.application(scope, receive, send)

    @staticmethod
    def _rewritten(scope: dict, networks: list[Network]) -> dict:
        peer = scope.get("client")
        headers = scope.get("headers", [])
        if _is_trusted(_address(peer[0]) if peer else None, networks):
            # Repeated headers are one list, in order (RFC 9110 5.3), as Django joins them.
            values = [value.decode("latin1") for name, value in headers if name == FORWARDED_FOR]
            if not values:  # the proxy's own request (a health check): it is the client
                return scope
            client = forwarded_client(",".join(values), networks) or UNREADABLE_CLIENT
            return {**scope, "client": [client, 0]}
        forwarding = {FORWARDED_FOR, _ssl_header()}
        return {**scope, "headers": [pair for pair in headers if pair[0] not in forwarding]}
