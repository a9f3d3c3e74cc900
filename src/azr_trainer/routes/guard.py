"""The guards in front of every route: a token when the studio is bound beyond loopback, else a
loopback Host and the studio's own page only (see server.py's description); and the request
body limit. Plain ASGI, so that they never buffer the event streams they pass."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

from starlette.exceptions import HTTPException

from .. import catalogue
from ..errors import UserError

MiB = 1024 * 1024
TOKEN_COOKIE = "azr_token"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(netloc: str, scheme: str = "http") -> tuple[str | None, int | None]:
    """(host, port) of ``host[:port]``, the port filled in from the scheme; (None, None) if malformed."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        return (parts.hostname or "").lower() or None, parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None, None


def _own_origin(origin: str, host_header: str) -> bool:
    """Whether an Origin header names this studio itself: the scheme, host and port the request
    was addressed to (its Host header), not just any page on localhost."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _host_port(parts.netloc, parts.scheme) == _host_port(host_header, "http") != (None, None)


# Top-level navigations another site may start: to the page itself (a link to the studio).
# Everything else (the API, downloads, static files) answers only its own page.
_PAGES = ("/", "/docs", "/redoc")


def _cross_site(scope, headers: dict) -> bool:
    """A request a page on another site made the browser send: Sec-Fetch-Site (every current
    browser sends it) says so even for GETs an <img> or <form> can start; older browsers send
    at least an Origin on writes. Requests without either (curl, scripts) are not cross-site."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):  # "same-site" includes other localhost ports
        navigation = headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") in (
            "document", None)
        if not (navigation and scope["method"] in ("GET", "HEAD") and scope["path"] in _PAGES):
            return True
    origin = headers.get("origin")
    return origin is not None and not _own_origin(origin, headers.get("host", ""))


async def _send_json(send, status: int, headers_in: dict, code: str, extra_headers: list | None = None,
                     **params) -> None:
    """A coded refusal from the guards, in the request's language, like a UserError's answer."""
    error = UserError(code, **params)
    lang = catalogue.language_from_accept(headers_in.get("accept-language"))
    body = json.dumps(error.to_dict(lang), ensure_ascii=False).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _headers(scope) -> dict:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class Guard:
    """Token check (when bound beyond loopback), else loopback Host and the studio's own page
    only: no request another site's page makes the browser send (see _cross_site).

    Plain ASGI rather than @app.middleware: it must not buffer the SSE streams it passes."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        if self.token is None:
            host = _host_port(headers.get("host", "localhost"))[0]
            if not is_loopback(host):
                return await _send_json(send, 400, headers, "guard.host", host=host or "")
            if _cross_site(scope, headers):
                return await _send_json(send, 403, headers, "guard.other_site")
            return await self.app(scope, receive, send)

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        from_query = (query.get("token") or [""])[0]
        auth = headers.get("authorization", "")
        cookies = dict(part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part)
        candidates = [auth[7:].strip() if auth.lower().startswith("bearer ") else "", from_query,
                      cookies.get(TOKEN_COOKIE, "")]
        if not any(c and secrets.compare_digest(c.encode(), self.token.encode()) for c in candidates):
            return await _send_json(send, 401, headers, "guard.token_needed", [(b"www-authenticate", b"Bearer")])
        # The token cookie is SameSite=Strict, so another site's requests carry no token; a
        # link with the token in it must still not make a download or a write.
        if headers.get("sec-fetch-site") not in (None, "same-origin", "none") and _cross_site(scope, headers):
            return await _send_json(send, 403, headers, "guard.other_site")
        if from_query and secrets.compare_digest(from_query.encode(), self.token.encode()):
            cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def check_token(token: str | None) -> str | None:
    """A token given for the studio: never empty, and only characters that travel unchanged in
    a URL, a header and a cookie."""
    if token is None:
        return None
    if not token.strip():
        raise UserError("guard.token_empty")
    if not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
        raise UserError("guard.token_chars")
    return token


class BodyLimit:
    """413 for request bodies over ``limit`` bytes: at once when Content-Length says so, else
    as soon as the streamed body passes it (the upload is never kept whole in memory either way)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit_mib = round(self.limit / MiB, 1) if self.limit % MiB else self.limit // MiB
        for key, value in scope["headers"]:
            if key.lower() == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await _send_json(send, 413, _headers(scope), "guard.too_large", [(b"connection", b"close")],
                                        limit_mib=limit_mib)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI passes an HTTPException raised while reading the body on to its handler
                # (any other error becomes its own 400).
                raise TooLarge(UserError("guard.too_large", limit_mib=limit_mib))
            return message

        return await self.app(scope, limited_receive, send)


class TooLarge(HTTPException):
    """A 413 that on_http_error answers like the UserError it carries."""

    def __init__(self, error: UserError):
        super().__init__(413, str(error))
        self.error = error
