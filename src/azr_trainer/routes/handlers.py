"""How the studio answers a refusal: a UserError keeps its status with ``{detail, code, params}``
in the request's language, a malformed request is a 422 ``{detail, fields}``, a bug a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import UserError
from .guard import TooLarge
from .state import language

log = logging.getLogger("azr_trainer.server")


def _error(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _readable_validation(errors) -> tuple[str, dict]:
    """Pydantic's error list → one sentence, plus {field: message} for the page's form."""
    parts, fields = [], {}
    for e in errors:
        if e.get("type") == "json_invalid":
            parts.append(f"The request body is not valid JSON ({(e.get('ctx') or {}).get('error', 'decode error')}).")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header"))
        msg = e.get("msg", "invalid")
        fields[loc or "body"] = msg
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "The request is not valid.", fields


async def on_user_error(request: Request, exc: UserError):
    # the message in the page's language (Accept-Language), with its code for the page
    return JSONResponse(exc.to_dict(language(request)), status_code=exc.status)


async def on_invalid_request(_request, exc: RequestValidationError):
    detail, fields = _readable_validation(exc.errors())
    return _error(422, detail, fields=fields)


async def on_http_error(request: Request, exc: HTTPException):
    if isinstance(exc, TooLarge):
        return JSONResponse(exc.error.to_dict(language(request)), status_code=exc.status_code)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def on_bug(request: Request, exc: Exception):
    log.exception("Unexpected error in %s %s", request.method, request.url.path)
    first_line = (str(exc).splitlines() or [""])[0][:300]
    error = UserError("codes.internal", error=f"{type(exc).__name__}: {first_line}")
    return JSONResponse(error.to_dict(language(request)), status_code=500)


def add_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UserError, on_user_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_bug)
