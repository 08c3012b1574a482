"""APPEND_SLASH for every method: a path without its trailing slash is redirected to it.

Django's CommonMiddleware redirects with 301, which clients follow with a GET, and in
DEBUG raises (a 500) for a POST rather than lose its body. A POST, PUT, PATCH or DELETE
gets 308 instead, which keeps the method and the body; a GET or a HEAD keeps Django's 301.
"""

from django.http.response import HttpResponseRedirectBase
from django.middleware.common import CommonMiddleware
from django.utils.http import escape_leading_slashes

# The methods a 301 keeps (RFC 9110 lets a client turn any other into a GET).
METHODS_A_301_KEEPS = frozenset({"GET", "HEAD", "OPTIONS"})


class HttpResponsePermanentRedirectKeepingMethod(HttpResponseRedirectBase):
    """308 Permanent Redirect: the client repeats the same method with the same body."""

    status_code = 308


class SlashRedirectMiddleware(CommonMiddleware):
    """CommonMiddleware whose slash redirect keeps every method's request, in DEBUG too."""

    def process_response(self, request, response):
        """A 404 whose path with a slash is routed: redirect there, keeping the method."""
        if (
            response.status_code == 404
            and request.method not in METHODS_A_301_KEEPS
            and self.should_redirect_with_slash(request)
        ):
            path = escape_leading_slashes(request.get_full_path(force_append_slash=True))
            return HttpResponsePermanentRedirectKeepingMethod(path)
        return super().process_response(request, response)
