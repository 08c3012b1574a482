"""A NUL character anywhere a view reads text (the path, the query, a form field) is a 400.

PostgreSQL cannot hold a NUL in text: psycopg refuses it with DataError, so a NUL that
reached a query failed there, and chat.outages answered it 503 as if the database were
down. Django's form fields refuse one (ProhibitNullCharactersValidator); views that read
request.POST directly did not. One check before every view, for the views to come too.
"""

from django.http import HttpRequest, HttpResponse

from chat import protocol

NUL = "\x00"
DETAIL = "The request holds a NUL character (U+0000), which no name, text or number may contain."


class NulCharacterMiddleware:
    """Refuse a request whose path, query or form fields hold a NUL, before any view."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not holds_nul(request):
            return self.get_response(request)
        return protocol.http_refusal(request, 400, "nul_character", DETAIL)


def holds_nul(request: HttpRequest) -> bool:
    """Whether the request's path, query string or form fields (names or values) hold a NUL."""
    if request.method == "POST":
        # Read whole first: parsing a multipart form from the stream would leave a view that
        # reads request.body (the API's) nothing but RawPostDataException.
        request.body  # noqa: B018
    forms = [request.GET] + ([request.POST] if request.method == "POST" else [])
    texts = [request.path_info]
    for form in forms:
        for name, values in form.lists():
            texts += [name, *values]
    return any(NUL in text for text in texts)
