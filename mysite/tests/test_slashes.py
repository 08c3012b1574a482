"""mysite.slashes: every route asked for without its trailing slash is redirected to it."""

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

# A value each path converter of the routes accepts.
_SAMPLES = {"room": "lobby", "int": "1", "slug": "x", "uuid": "0" * 32, "path": "x", "str": "x"}
_CONVERTER = re.compile(r"<(?:(?P<converter>[^>:]+):)?[^>]+>")


def _routes(patterns=None, prefix: str = "") -> list[str]:
    """Every path route ending in a slash, its converters filled with sample values."""
    found = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = str(pattern.pattern)
        if route.startswith("^"):  # a regular expression: no sample to fill it with
            continue
        filled = prefix + _CONVERTER.sub(lambda m: _SAMPLES[m["converter"] or "str"], route)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, filled)
        elif isinstance(pattern, URLPattern) and filled.endswith("/") and filled != "":
            found.append("/" + filled)
    return sorted(set(found))


def test_the_routes_are_found():
    assert {"/api/rooms/lobby/read/", "/rooms/lobby/invite/", "/accounts/name/"} <= set(_routes())


# The admin's routes end in its own catch-all view, which sends strangers to its login.
_ADMIN = "/admin/"


@pytest.mark.parametrize("route", _routes())
def test_a_post_to_any_route_without_its_slash_is_never_a_500(route, db, settings):
    settings.DEBUG = True  # where Django's own middleware raised instead
    response = Client(raise_request_exception=False).post(route[:-1], {"up_to": "1"})
    assert response.status_code < 500


@pytest.mark.parametrize("route", [route for route in _routes() if not route.startswith(_ADMIN)])
def test_a_post_without_the_slash_is_a_308_to_it_keeping_the_query(route, db, settings):
    settings.DEBUG = True
    response = Client(raise_request_exception=False).post(route[:-1] + "?x=1", {"up_to": "1"})
    assert (response.status_code, response["Location"]) == (308, route + "?x=1")


def test_a_get_without_the_slash_keeps_djangos_301(db):
    response = Client().get("/chat/lobby")
    assert (response.status_code, response["Location"]) == (301, "/chat/lobby/")
