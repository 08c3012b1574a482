"""Top-level URL configuration."""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from chat import api as chat_api
from chat import membership_views, moderation_views
from chat import views as chat_views
from chat.password_reset import PasswordResetView
from mysite import health, metrics

# Django's account pages; password reset only where settings can mail its link, and
# with the mail sent out of the request and limited (chat.password_reset).
account_urlpatterns = [
    pattern
    for pattern in [
        path("password_reset/", PasswordResetView.as_view(), name="password_reset"),
        *(pattern for pattern in auth_urls.urlpatterns if pattern.name != "password_reset"),
    ]
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
    re_path(r"^api/rooms/(?P<path>[^/]+)/read/$", chat_views.not_a_room_endpoint),
    # Changing who is in a room: outside chat/, where every name is a room's.
    path("rooms/new/", membership_views.create_private_room, name="create_private_room"),
    path("rooms/<room:room_name>/invite/", membership_views.invite, name="invite"),
    path("rooms/<room:room_name>/remove/", membership_views.remove, name="remove_member"),
    path("rooms/<room:room_name>/role/", membership_views.set_role, name="set_role"),
    path("rooms/<room:room_name>/leave/", membership_views.leave, name="leave_room"),
    path("rooms/<room:room_name>/resign/", membership_views.resign, name="resign"),
    path("rooms/<room:room_name>/retention/", membership_views.set_retention, name="retention"),
    # Moderators' actions and readers' reports (chat.moderation_views), beside them.
    path("rooms/<room:room_name>/mute/", moderation_views.mute, name="mute"),
    path("rooms/<room:room_name>/unmute/", moderation_views.unmute, name="unmute"),
    path("rooms/<room:room_name>/kick/", moderation_views.kick, name="kick"),
    path("rooms/<room:room_name>/ban/", moderation_views.ban, name="ban"),
    path("rooms/<room:room_name>/unban/", moderation_views.unban, name="unban"),
    path("rooms/<room:room_name>/report/", moderation_views.report, name="report_message"),
    # For programs, with API tokens (chat.api); its OpenAPI description at api/v1/openapi.json,
    # its Swagger page at api/v1/docs.
    # ninja answers its root with a 404: a program author trying it lands on the docs.
    path("api/v1/", RedirectView.as_view(pattern_name="api-v1:openapi-view"), name="api_root"),
    path("api/v1/", chat_api.urls()),
    path("accounts/tokens/", chat_views.api_tokens, name="api_tokens"),
    path("admin/", admin.site.urls),
    # Outside chat/ (every name there is a room's) and exempt from the HTTPS redirect.
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),  # as /healthz; for Prometheus
    # Browsers ask for /favicon.ico whatever the page links to; the icon is a static file.
    path("favicon.ico", chat_views.favicon, name="favicon"),
]
