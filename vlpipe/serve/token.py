"""The token that guards a page served beyond loopback (`vlpipe serve --host 0.0.0.0`).

Like Jupyter's: `vlpipe serve` prints the URL with `?token=...` once; the first request that
carries it gets a cookie, so the page's own requests (searches, thumbnails) need nothing more;
API clients may send `Authorization: Bearer <token>` instead. Anything else gets 401 and no
data, thumbnails included. The token is compared in constant time and never logged (the server
logs paths, never query strings or headers).
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

COOKIE = "vlpipe_token"
#: the environment variable `vlpipe serve --token` defaults to
ENV = "VLPIPE_TOKEN"


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class TokenGate:
    """ASGI middleware: passes a request on only if it carries the token."""

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("an empty token guards nothing")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from_query = self._matches(_query_token(scope))
        if not (from_query or self._matches(_header_token(scope)) or self._matches(_cookie(scope))):
            response = JSONResponse(
                {"error": "this page needs its token: open the URL `vlpipe serve` printed"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        if not from_query:
            return await self.app(scope, receive, send)
        cookie = f"{COOKIE}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)


def _headers(scope) -> dict[bytes, bytes]:
    return dict(scope.get("headers", []))


def _query_token(scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _header_token(scope) -> str | None:
    value = _headers(scope).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _cookie(scope) -> str | None:
    raw = _headers(scope).get(b"cookie")
    if not raw:
        return None
    morsel = SimpleCookie(raw.decode("latin-1")).get(COOKIE)
    return morsel.value if morsel else None
