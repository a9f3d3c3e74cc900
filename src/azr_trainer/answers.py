"""What the studio's API answers besides success, for its OpenAPI document: the error body every
refusal has, the shape of a malformed request's 422, and which statuses each route can give.

The guards (routes.guard: Guard, BodyLimit) answer every route: 400 for a non-loopback Host, 401
without the token when one is required, 403 for another site's request, 413 for a body over the
limit; a bug is a 500. Routes add their own 404/409 (and 422 when they take parameters).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """A refusal: the sentence in the request's language (Accept-Language), the catalogue code
    that names it (msg.*) and its parameters. A bug's 500 has the sentence only."""

    detail: str
    code: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class InvalidBody(BaseModel):
    """A malformed request: one sentence, and per field (dotted path, or ``body``) what is wrong."""

    detail: str
    fields: dict[str, str] = Field(default_factory=dict)


_SAYS = {400: "Refused: the message says what to change (also a Host that is not loopback).",
         401: "The studio is bound beyond loopback and the request has no valid token.",
         403: "Refused: the request comes from another site's page.",
         404: "No such book, model, run or checkpoint.",
         409: "Not now: the thing is busy, exists already, or is not ready yet.",
         413: "The request body is over the studio's limit.",
         500: "A bug in AZR Trainer; the server's log has the details."}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for FastAPI: each status with the error body."""
    return {s: {"model": ErrorBody, "description": _SAYS[s]} for s in statuses}


# Answered by the guards on every route, whatever the route does.
EVERY_ROUTE = errors(400, 401, 403, 413, 500)


def route(*statuses: int, params: bool = True) -> dict[int | str, dict[str, Any]]:
    """A route's own refusals; with ``params``, also the 422 of a request its parameters refuse."""
    out = errors(*statuses)
    if params:
        out[422] = {"model": InvalidBody, "description": "The request is malformed: ``fields`` says where."}
    return out


def content(*media_types: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is not JSON: a file download or an event stream."""
    return {200: {"description": description, "content": {m: {} for m in media_types}}}


# What a book's or model's name looks like, declared for the document only (home.validate_name
# decides, with its own messages): a plain-ASCII subset of what it accepts, so that a request
# made from the document is not refused for its name. Windows device names (CON, NUL, ...) match
# it and are still refused.
NAME_PATTERN = r"^[A-Za-z0-9]+([_-]+[A-Za-z0-9]+|\.[A-Za-z0-9]+)*$"
NAME_SCHEMA = {"pattern": NAME_PATTERN, "maxLength": 64}


def use_studio_422(app) -> None:
    """Make every operation's 422 the studio's own {detail, fields}: FastAPI declares its default
    (a list of pydantic errors) on any route with parameters that does not say otherwise, which is
    not what the studio's RequestValidationError handler sends."""
    make = app.openapi

    def openapi() -> dict:
        fresh = app.openapi_schema is None
        schema = make()  # FastAPI keeps it in app.openapi_schema: patched once
        if fresh:
            ref = "#/components/schemas/InvalidBody"
            for operation in (op for item in schema.get("paths", {}).values() for op in item.values()):
                answer = operation.get("responses", {}).get("422")
                if answer is not None:
                    answer["content"] = {"application/json": {"schema": {"$ref": ref}}}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("InvalidBody", InvalidBody.model_json_schema())
            for name in ("HTTPValidationError", "ValidationError"):
                if f'"#/components/schemas/{name}"' not in json.dumps(schema["paths"]):
                    components.pop(name, None)
        return schema

    app.openapi = openapi
