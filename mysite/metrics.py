"""GET /metrics: chat.metrics in Prometheus's text format, for loopback, listed networks or a token.

Every process answers for all of them where PROMETHEUS_MULTIPROC_DIR is set (under
serving.supervisor): prometheus_client's MultiProcessCollector adds up their files.
Anyone else gets the 404 any unknown path gets: the counters say how busy the server
is and which faults it meets, which is nobody else's business.
"""

import hmac
import ipaddress
import os

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import chat.metrics  # noqa: F401  (the metrics exist before the first scrape)


def may_scrape(request: HttpRequest) -> bool:
    """Whether the request is from loopback or CHAT_METRICS_ALLOWED_NETWORKS, or has the token."""
    token = settings.CHAT_METRICS_TOKEN
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(offered, token):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return address.is_loopback or any(
        address in network for network in settings.CHAT_METRICS_ALLOWED_NETWORKS
    )


def registry():
    """Every process's metrics where they share a directory; else this process's own."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    shared = CollectorRegistry()
    MultiProcessCollector(shared)
    return shared


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus's text format; 404 for whoever may not scrape them."""
    if not may_scrape(request):
        raise Http404
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
