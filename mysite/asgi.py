"""ASGI entry point: HTTP goes to Django, WebSockets to the chat consumer."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
# Initialise Django (apps, models) before importing anything that uses them.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.auth import AuthMiddlewareStack  # noqa: E402
from chat.limits import HandshakeLimitMiddleware  # noqa: E402
from chat.paced import PacedViews  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from mysite.origins import StrictOriginValidator, TokenUserMiddleware  # noqa: E402
from mysite.proxies import TrustedProxyMiddleware  # noqa: E402

# Around both protocols: behind a trusted proxy, scope["client"] is the real client's.
application = TrustedProxyMiddleware(
    ProtocolTypeRouter(
        {
            # Bulk reads (@paced views) in turn on the sockets' thread, not a thread each.
            "http": PacedViews(django_asgi_app),
            # Not channels' AllowedHostsOriginValidator: it compares the Origin's host name
            # only, so another port or scheme on this host could chat as the logged-in user.
            # The new-socket limit before the session is loaded: a refusal costs no query.
            # A program's API token stands in for the Origin and the cookie (mysite.origins).
            # channels' session and user middleware, the user loaded batched (chat.auth).
            "websocket": StrictOriginValidator(
                HandshakeLimitMiddleware(
                    AuthMiddlewareStack(TokenUserMiddleware(URLRouter(websocket_urlpatterns)))
                )
            ),
        }
    )
)
