"""``Guard``: ASGI middleware that checks who asks and what they may do, and sets safe headers.

Every response gets a Content-Security-Policy that allows scripts and styles
from this origin only (no inline script, no ``eval``), and headers that keep
the pages out of frames and stop the browser guessing content types.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamqueue.dashboard.auth import Authenticator

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # "no-referrer" makes form posts send Origin: null
    (b"cache-control", b"no-store"),
]
#: Paths anyone may fetch: the login form and the stylesheet and script it uses.
PUBLIC_PREFIXES = ("/login", "/static/")
#: POSTs that change no queue, allowed in read-only mode.
SESSION_PATHS = ("/login", "/logout")


class Guard:
    def __init__(self, app: ASGIApp, *, auth: Authenticator | None, read_only: bool) -> None:
        self.app = app
        self.auth = auth
        self.read_only = read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        path = request.url.path
        if self.auth is not None and not path.startswith(PUBLIC_PREFIXES) and not \
                self.auth.allows(Headers(scope=request.scope), request.cookies):
            return self._unauthorized(request)
        if self.read_only and request.method not in ("GET", "HEAD") and path not in SESSION_PATHS:
            return PlainTextResponse("read-only dashboard: no changes can be made here",
                                     status_code=403)
        return None

    def _unauthorized(self, request: Request) -> Response:
        assert self.auth is not None
        if self.auth.scheme == "basic":
            return PlainTextResponse("authentication required", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="streamqueue"'})
        if request.method == "GET" and request.url.path != "/events":
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("authentication required", status_code=401)
