"""Top-level URL configuration."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.urls import include, path
from django.views.generic import RedirectView

from chat import views as chat_views
from chat.api import api as chat_api
from mysite import health

# Django's account pages; password reset only where settings can mail its link.
account_urlpatterns = [
    pattern
    for pattern in auth_urls.urlpatterns
    if settings.PASSWORD_RESET_BY_EMAIL or not pattern.name.startswith("password_reset")
]

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="chat:index", permanent=False)),
    path("chat/", include("chat.urls")),
    # Under accounts/, not chat/: every name below chat/ is a room's.
    path("accounts/name/", chat_views.set_display_name, name="set_display_name"),
    path("accounts/signup/", chat_views.signup, name="signup"),
    path("accounts/", include(account_urlpatterns)),
    # Outside chat/, where every name is a room's.
    path("api/rooms/", chat_views.room_list, name="room_list"),
    path("api/rooms/<room:room_name>/read/", chat_views.mark_read, name="mark_read"),
    # For programs, with API tokens (chat.api); its OpenAPI description at api/v1/openapi.json.
    path("api/v1/", chat_api.urls),
    path("accounts/tokens/", chat_views.api_tokens, name="api_tokens"),
    path("admin/", admin.site.urls),
    # Outside chat/ (every name there is a room's) and exempt from the HTTPS redirect.
    path("healthz", health.healthz, name="healthz"),
    # Browsers ask for /favicon.ico whatever the page links to; the icon is a static file.
    path("favicon.ico", chat_views.favicon, name="favicon"),
]
