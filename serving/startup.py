"""Start-up checks shared by `dev.py run` (serving.devserver) and `dev.py serve`
(serving.supervisor): a configuration that cannot work is refused in one line, before
anything starts, instead of a traceback or a page that loops.

Production mode (DJANGO_DEBUG=false) over plain HTTP:
- on a loopback address, with no TLS proxy named (DJANGO_SECURE_PROXY_SSL_HEADER), it is
  served as plain HTTP: only this machine reaches it (a browser here, or a proxy on this
  host), browsers keep Secure cookies for loopback, and the HTTPS redirect is turned off
  (it would send every page to an https:// address nothing serves);
- on any other address, it is refused: browsers never send a Secure cookie back over
  plain HTTP, so every guest's page would loop on "Your sign-in changed" and nothing they
  type would be stored. Terminate TLS at a proxy and say so, or bind loopback.
"""

import ipaddress
import os
import socket

# What production over plain loopback HTTP changes for the server processes: no redirect
# to an https:// address that nothing serves.
PLAIN_LOOPBACK_ENVIRONMENT = {"DJANGO_SECURE_SSL_REDIRECT": "false"}


def settings_problem() -> str | None:
    """Why mysite.settings cannot load from this environment, in one line; None if it can."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        settings.INSTALLED_APPS  # noqa: B018 (loads the module, which reads the environment)
    except ImproperlyConfigured as error:
        return str(error)
    return None


def is_loopback_only(host: str) -> bool:
    """Whether every address host names is a loopback one (an empty host is every address)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    except socket.gaierror:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses
    )


def _tls_at_a_proxy() -> bool:
    from django.conf import settings

    return settings.SECURE_PROXY_SSL_HEADER is not None


def plain_http_problem(host: str) -> str | None:
    """Why production mode cannot be served over plain HTTP on host; None where it can."""
    from django.conf import settings

    if settings.DEBUG or _tls_at_a_proxy():
        return None
    if not is_loopback_only(host):
        return (
            f"refusing to serve production mode (DJANGO_DEBUG=false) over plain HTTP on"
            f" {host or 'every address'!r}: browsers never send its Secure session cookie"
            " back, and every guest's page would loop on 'Your sign-in changed'. Terminate"
            " TLS at a reverse proxy (DJANGO_SECURE_PROXY_SSL_HEADER=true, CHAT_TRUSTED_PROXIES"
            " its address), or bind 127.0.0.1 (docs/operations.md)"
        )
    if os.environ.get("DJANGO_SECURE_SSL_REDIRECT") and settings.SECURE_SSL_REDIRECT:
        return (
            "DJANGO_SECURE_SSL_REDIRECT is on, but nothing here serves HTTPS and no TLS proxy"
            " is named (DJANGO_SECURE_PROXY_SSL_HEADER): every page would redirect to an"
            " address that does not answer"
        )
    return None


def plain_http_environment(host: str) -> dict[str, str]:
    """What the server processes' environment needs to serve host over plain HTTP."""
    from django.conf import settings

    if settings.DEBUG or _tls_at_a_proxy() or os.environ.get("DJANGO_SECURE_SSL_REDIRECT"):
        return {}
    return dict(PLAIN_LOOPBACK_ENVIRONMENT)
