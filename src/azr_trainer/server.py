"""The studio's web server: a REST API and the web page, over the same library as the CLI.

``azr serve`` starts it on http://127.0.0.1:8000. Everything long runs elsewhere: training
in worker processes (jobs.py), generation in a thread with one CPU thread so that it
does not fight training for the cores. OpenAPI docs are at /docs.

Safe defaults: it binds to loopback; bound to any other address it requires a token
(printed at start) as ``Authorization: Bearer T``, ``?token=T`` (which also sets a cookie,
so the page opened from the printed link keeps working) or that cookie. Without a token it
answers only requests addressed to a loopback host name, and only its own page: a request
whose Origin is not the studio's own scheme, host and port, or that the browser marks as
made by another site (Sec-Fetch-Site; GETs included, since an <img> can start a download),
is refused, except a link that opens the page itself. So a web page elsewhere, or on
another port of localhost, cannot drive it through the browser. Request bodies are limited
(200 MiB by default). Names go through home.validate_name; files are served only from the
web folder and from models' checkpoints. Errors are JSON ``{"detail": "..."}``: a
UserError keeps its status (400/404/409), a malformed request is a 422 that says which
field is wrong, and only a bug is a 500.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PureWindowsPath
from typing import Annotated, Literal
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from . import __version__
from . import books as books_mod
from . import answers, catalogue, decode, reasoning, store
from . import recipe as recipe_mod
from . import settings as settings_mod
from .checkpoint import build_model, checkpoint_dir, latest_run_checkpoint, list_step_checkpoints, \
    resolve_checkpoint, safe_load
from .device import available_memory_bytes, pick_device
from .export import DEFAULT_DTYPE, GGUF_DTYPES, HF_DTYPES, export_model
from .export import FORMATS as EXPORT_FORMATS
from .formats import FORMATS as PROMPT_FORMATS
from .home import TMP_DIR, Conflict, NotFound, UserError, clean_leftovers, home_dir, owned_tmp_name, read_json, \
    validate_name
from .jobs import KINDS, JobRunner, lock_holder
from .memorisation import IndexCache, find_copies
from .model import ModelConfig, count_parameters, estimate_training_memory, training_flops_per_token
from .registry import Registry
from .sample import SamplingParams, stream_generate
from .settings import FROM_ZERO, GENERATE, MODEL, RUN_GROUPS
from .tokenizer import Tokenizer

log = logging.getLogger("azr_trainer.server")

WEB_DIR = Path(__file__).resolve().parent / "web"
MiB = 1024 * 1024
TOKEN_COOKIE = "azr_token"
KEEPALIVE_SECONDS = 15.0
BOOK_PREVIEW_CHARS = 2000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A book's or model's name in a path or query: any string reaches validate_name (its messages);
# the document shows what is accepted.
# best, latest or a step number (resolve_checkpoint decides); the dtypes of every format (pt: f32 only).
CHECKPOINT_PATTERN = r"^(best|latest|[0-9]+)$"
DTYPES = sorted({"f32", *HF_DTYPES, *GGUF_DTYPES})
NamePath = Annotated[str, PathParam(json_schema_extra=answers.NAME_SCHEMA)]
NameQuery = Annotated[str | None, Query(json_schema_extra=answers.NAME_SCHEMA)]


# ---------------------------------------------------------------------------- request bodies

class _ShapeBase(BaseModel):
    """A model's shape, in the words of the original description (fields and defaults: settings.MODEL).
    Numbers are checked by ModelConfig.validate (messages that say what to change), not here."""

    name: str | None = None

    def config(self) -> ModelConfig:
        return ModelConfig(**self.model_dump(include=set(MODEL.settings)))


ModelShape = create_model("ModelShape", __base__=_ShapeBase, __doc__=_ShapeBase.__doc__,
                          **{s.name: (s.type, s.default) for s in MODEL})


class AutoRequest(BaseModel):
    """The best model for ``minutes`` of training on ``books`` on this machine (recipe.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    books: list[str] = Field(json_schema_extra={"minItems": 1, "items": {"type": "string", **answers.NAME_SCHEMA}})
    minutes: float = Field(..., gt=0, le=10**6)
    threads: int | None = Field(None, ge=1, le=1024)


class PlanRequest(AutoRequest):
    """``shape``: the manual fields, to hear whether they suit these books and minutes."""

    shape: ModelShape | None = None


class ModelCreateRequest(ModelShape):
    """A model of the shape given, or with ``auto``: of the plan's shape, with its training recipe."""

    auto: AutoRequest | None = None


class _RunBase(BaseModel):
    """A run of ``kind`` train (learn ``books``), selfplay (a trained model improves its own
    writing against a reward; it reads the books it was trained on) or reason (AZR: a trained
    model proposes and solves programming tasks that a sandbox checks; no books). The settings
    are made from settings.py (GET /api/settings): one left out takes the kind's default, one
    the kind does not have is a 400, an unknown field a 422. Lower bounds are checked by the
    kind's config (a 400 that says what to change); upper ones also here, so that absurd sizes
    never reach a worker."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    kind: Literal[tuple(KINDS)] = "train"  # type: ignore[valid-type]  # the kinds jobs.py knows
    # Required for training (validate_default: a missing list is "Field required", as before kinds).
    books: list[str] | None = Field(None, validate_default=True)

    @field_validator("books")
    @classmethod
    def _books_for_training(cls, books, info: ValidationInfo):
        if books is None and info.data.get("kind") == "train":  # absent if kind itself was wrong
            raise PydanticCustomError("missing", "Field required")
        return books

    def params(self) -> dict:
        return self.model_dump(exclude={"model", "kind", "books"}, exclude_none=True)


def _run_fields() -> dict:
    groups = list(RUN_GROUPS.values())
    names = dict.fromkeys(s.name for g in groups for s in g if s.studio)
    return {name: settings_mod.union_field(groups, name) for name in names}


RunRequest = create_model("RunRequest", __base__=_RunBase, __doc__=_RunBase.__doc__, **_run_fields())


_FROM_ZERO = reasoning.FROM_ZERO_SHAPE


class ReasonModelRequest(BaseModel):
    """A model made from zero for AZR reasoning: a char tokenizer, the from-zero shape unless
    given, and a book of ``corpus_docs`` generator triplets to pretrain it on."""

    model_config = ConfigDict(extra="forbid")

    name: str
    d_model: int = _FROM_ZERO["d_model"]
    num_layers: int = _FROM_ZERO["num_layers"]
    num_heads: int = _FROM_ZERO["num_heads"]
    d_ff: int = _FROM_ZERO["d_ff"]
    max_seq_len: int = _FROM_ZERO["max_seq_len"]
    corpus_docs: int = Field(FROM_ZERO.default("corpus_docs"), ge=FROM_ZERO["corpus_docs"].min,
                             le=FROM_ZERO["corpus_docs"].upper)  # ~200 characters each
    seed: int = Field(0, ge=0, le=settings_mod.SEED_MAX)


class GenerateRequest(BaseModel):
    model: str = Field(json_schema_extra=answers.NAME_SCHEMA)
    prompt: str = ""
    checkpoint: str | int = "best"  # best, latest or a step number
    # defaults and bounds: settings.GENERATE (checked by SamplingParams)
    max_length: int = GENERATE.default("max_length")
    temperature: float = GENERATE.default("temperature")
    top_k: int | None = GENERATE.default("top_k")
    top_p: float | None = GENERATE.default("top_p")
    repetition_penalty: float = GENERATE.default("repetition_penalty")
    seed: int | None = GENERATE.default("seed")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_length=self.max_length, temperature=self.temperature, top_k=self.top_k or None,
                              top_p=self.top_p, repetition_penalty=self.repetition_penalty,
                              seed=self.seed).validate()


# ---------------------------------------------------------------------------- ASGI guards


def _is_loopback(host: str | None) -> bool:
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


class _Guard:
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
            if not _is_loopback(host):
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


class _BodyLimit:
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
                raise _TooLarge(UserError("guard.too_large", limit_mib=limit_mib))
            return message

        return await self.app(scope, limited_receive, send)


class _TooLarge(HTTPException):
    """A 413 that on_http_error answers like the UserError it carries."""

    def __init__(self, error: UserError):
        super().__init__(413, str(error))
        self.error = error


# ---------------------------------------------------------------------------- generation


class _ModelCache:
    """Loaded models by checkpoint file and modification time: a new best.pt is picked up at once."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path):
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:  # held while loading, so that two requests never load the same file twice
            if key not in self._items:
                model, cfg, tokenizer = build_model(safe_load(path))
                model.eval()
                self._items[key] = (model, cfg, tokenizer)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


class _BuffersCache:
    """A reasoning checkpoint's (step, buffers), by file and modification time: the page polls
    them, and loading a checkpoint reads the whole model."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> tuple[int, dict]:
        side = path.parent / "buffers.json"  # written with every reasoning checkpoint: no weights to load
        if side.exists():
            d = read_json(side)
            return d["step"], d["buffers"]
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._items:
                obj = safe_load(path)
                self._items[key] = (obj.get("step"), obj["buffers"])
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return self._items[key]


@dataclass
class _Generation:
    """One generation request, ready to run: the model is loaded and the parameters are valid."""

    model: object
    tokenizer: Tokenizer
    prompt: str
    prompt_ids: list[int]
    params: SamplingParams
    books: tuple[str, ...]  # the model's books, for the memorisation meter
    precision: str = "fp32"  # the decode weights' (decode.py), measured fastest on this machine
    text: str = ""
    tokens: int = 0

    def pieces(self, stop: threading.Event | None = None) -> Iterator[str]:
        """The new text, piece by piece; a piece that ends inside a multi-byte character waits
        for the rest of it."""
        ids: list[int] = []
        shown = ""
        for step in stream_generate(self.model, [self.prompt_ids], self.params, eot_id=self.tokenizer.eot_id,
                                    precision=self.precision):
            if stop is not None and stop.is_set():
                break
            if step[0] is None:
                continue
            ids.append(step[0])
            text = self.tokenizer.decode(ids)
            if text.endswith("\ufffd"):
                continue
            yield text[len(shown):]
            shown = text
        self.text, self.tokens = self.tokenizer.decode(ids), len(ids)
        if len(self.text) > len(shown):
            yield self.text[len(shown):]


# ---------------------------------------------------------------------------- helpers


def _coded_text(item: dict, lang: str, code_key: str, params_key: str) -> str | None:
    code = item.get(code_key)
    if code and catalogue.has(f"msg.{code}"):
        return catalogue.message(code, lang, **(item.get(params_key) or {}))
    return item.get("message")


def run_in_language(run: dict, lang: str) -> dict:
    """A run as the API answers it: ``message`` (and each milestone's) in the request's language;
    ``message_code`` and ``message_params`` let a page render it in its own."""
    milestones = [{**m, "message": _coded_text(m, lang, "code", "params")} for m in run.get("milestones") or []]
    return {**run, "message": _coded_text(run, lang, "message_code", "message_params"), "milestones": milestones}


def _error(status: int, detail: str, **extra) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _check_download_format(fmt: str, dtype: str | None) -> str:
    """The dtype to export a download with, or a 400 that says what is allowed."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"Download format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}.")
    allowed = {"pt": ("f32",), "hf": tuple(HF_DTYPES), "gguf": GGUF_DTYPES}[fmt]
    dtype = dtype or DEFAULT_DTYPE[fmt]
    if dtype not in allowed:
        raise UserError(f"dtype for the {fmt} format must be one of {', '.join(allowed)}, got {dtype!r}.")
    return dtype


def _header_safe(text: str) -> str:
    """Text for an HTTP header: printable ASCII as it is, anything else (and '%') percent-encoded UTF-8."""
    return "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in text)


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


def _safe_filename(filename: str | None) -> str:
    # The browser's name for the upload: keep only its last part, and no characters Windows forbids.
    name = PureWindowsPath(filename or "").name
    name = re.sub(r'[\x00-\x1f<>:"/\\|?*]', "_", name).strip(" .")
    return name[:120] or "book.txt"


@lru_cache(maxsize=8)
def _load_tokenizer(path: str, _mtime_ns: int) -> Tokenizer:
    return Tokenizer.load(Path(path))


def _token_pieces(text: str, ids: list[int], offsets: list[tuple[int, int]]) -> list[dict]:
    """Each token with the text it covers. Byte-level tokens that split one character share
    its offsets: the first gets the character, the rest an empty string."""
    out, covered = [], 0
    for token_id, (start, end) in zip(ids, offsets):
        start = max(start, covered)
        out.append({"id": token_id, "text": text[start:end] if end > start else ""})
        covered = max(covered, end)
    return out


def _read_start(path: Path, chars: int) -> str:
    with path.open("r", encoding="utf-8", newline="") as f:
        return f.read(chars)


# ---------------------------------------------------------------------------- the app


def create_app(home: Path, *, token: str | None = None, max_upload_bytes: int = 200 * MiB,  # noqa: C901 - routes are closures over one app's state; splitting them by page is next
               max_concurrent_runs: int = 1) -> FastAPI:
    home = home_dir(home)
    decode.remember_in(home)
    for path in clean_leftovers(home):  # what a killed studio or command left in the temp folders
        log.info("Removed the leftover %s", path)
    registry = Registry(home)
    registry.reconcile()
    runner = JobRunner(home, registry, max_concurrent=max_concurrent_runs)
    models_cache = _ModelCache()
    buffers_cache = _BuffersCache()
    reason_create_lock = threading.Lock()
    copies_index = IndexCache()
    tmp_root = home / TMP_DIR  # uploads and downloads in progress, on the same disk as the data

    @asynccontextmanager
    async def lifespan(_app):
        runner.start()
        try:
            yield
        finally:
            runner.close()

    app = FastAPI(title="AZR Trainer", version=__version__, lifespan=lifespan, responses=answers.EVERY_ROUTE,
                  description="Grow a language model from your own books: books, models, training runs, "
                              "generation and downloads. The same library as the `azr` command.")
    app.state.home, app.state.registry, app.state.runner = home, registry, runner
    answers.use_studio_422(app)

    # ---- errors

    @app.exception_handler(UserError)
    async def on_user_error(request: Request, exc: UserError):
        # the message in the page's language (Accept-Language), with its code for the page
        lang = catalogue.language_from_accept(request.headers.get("accept-language"))
        return JSONResponse(exc.to_dict(lang), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request, exc: RequestValidationError):
        detail, fields = _readable_validation(exc.errors())
        return _error(422, detail, fields=fields)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException):
        if isinstance(exc, _TooLarge):
            lang = catalogue.language_from_accept(request.headers.get("accept-language"))
            return JSONResponse(exc.error.to_dict(lang), status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception):
        log.exception("Unexpected error in %s %s", request.method, request.url.path)
        first_line = (str(exc).splitlines() or [""])[0][:300]
        return _error(500, f"Internal error ({type(exc).__name__}: {first_line}). This is a bug in AZR Trainer; "
                           "the server's log has the details.")

    # ---- helpers that need the app's state

    def get_model_info(name: str) -> store.ModelInfo:
        try:
            return store.get_model(home, name)
        except (ValueError, KeyError, TypeError):  # ValueError includes a damaged JSON file
            raise UserError("model.damaged", name=name) from None

    def model_dict(info: store.ModelInfo, training: set[str]) -> dict:
        folder = store.model_dir(home, info.name)
        steps = list_step_checkpoints(folder)
        best = checkpoint_dir(folder) / "best.pt"
        newest = best if best.exists() else (steps[-1][1] if steps else None)
        try:
            file_bytes = newest.stat().st_size if newest is not None else None
        except OSError:  # pruned between the listing and now
            file_bytes = None
        return {**info.to_dict(), "file_bytes": file_bytes, "checkpoints": [s for s, _ in steps],
                "training": info.name in training or lock_holder(home, info.name) is not None}

    def memorisation(books_names: list[str] | None, text: str) -> dict:
        infos = [b for b in registry.sync_books() if b.name in set(books_names or [])]
        if not infos:
            return {"spans": [], "copied_fraction": 0.0, "books": []}
        key = tuple((b.name, b.text_bytes, b.created_at) for b in infos)
        index = copies_index.get(key, lambda: {b.name: books_mod.read_book_text(home, b.name) for b in infos})
        return {**find_copies(text, index), "books": [b.name for b in infos]}

    def prepare_generation(body: GenerateRequest) -> _Generation:
        info = get_model_info(body.model)
        params = body.sampling()
        path = resolve_checkpoint(store.model_dir(home, info.name), str(body.checkpoint))
        model, _cfg, tokenizer = models_cache.get(path)
        return _Generation(model, tokenizer, body.prompt, tokenizer.encode(body.prompt), params,
                           tuple(info.books or []), precision=decode.choose(model, 1))

    def finish_generation(gen: _Generation) -> dict:
        return {"text": gen.text, "prompt": gen.prompt, "tokens": gen.tokens,
                "memorisation": memorisation(list(gen.books), gen.text), "decode_precision": gen.precision}

    # ---- the page

    @app.get("/", include_in_schema=False)
    def index():
        page = WEB_DIR / "index.html"
        if not page.is_file():
            return HTMLResponse("<!doctype html><title>AZR Trainer</title><p>The web page is not installed; "
                                "the API is at <a href=\"/docs\">/docs</a>.</p>")
        return FileResponse(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")

    # ---- health

    @app.get("/api/health", tags=["studio"])
    def health():
        return {"ok": True, "version": __version__}

    # ---- books

    @app.get("/api/settings", tags=["studio"])
    def get_settings():
        """Every setting the page offers, per kind of run and for a model's shape: type, default,
        bounds, unit and the catalogue keys of its label and help (settings.py)."""
        return settings_mod.to_json()

    @app.get("/api/books", tags=["books"])
    def list_books():
        return [b.to_dict() for b in registry.sync_books()]

    @app.post("/api/books", status_code=201, tags=["books"], responses=answers.route(409))
    def upload_book(file: UploadFile = File(...), name: str | None = Form(None), encoding: str | None = Form(None)):
        """Upload a .txt book in any encoding; it is detected unless ``encoding`` is given."""
        filename = _safe_filename(file.filename)
        name = (name or "").strip() or None
        if name is None:
            try:
                name = validate_name(Path(filename).stem, "book name")
            except UserError as e:
                raise UserError(f"{e} Give the book a name.") from None
        tmp_root.mkdir(exist_ok=True)
        tmp = tmp_root / owned_tmp_name("upload-")  # the owner's pid: see home.clean_leftovers
        tmp.mkdir()
        try:
            source = tmp / filename
            with source.open("wb") as out:
                shutil.copyfileobj(file.file, out, 1024 * 1024)
            info = books_mod.add_book(home, source, name=name, encoding=(encoding or "").strip() or None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        registry.sync_books()
        return info.to_dict()

    @app.get("/api/books/{name}", tags=["books"], responses=answers.route(404))
    def get_book(name: NamePath):
        info = books_mod.get_book(home, name)
        return {**info.to_dict(), "preview": _read_start(books_mod.book_text_path(home, name), BOOK_PREVIEW_CHARS)}

    @app.get("/api/books/{name}/tokens", tags=["books"], responses=answers.route(404, 409))
    def book_tokens(name: NamePath, model: NameQuery = None, limit: int = Query(200, ge=1, le=5000)):
        """How the start of a book splits into tokens: with a model's tokenizer, or into characters
        (each with its Unicode code point as id) when no model is given."""
        books_mod.get_book(home, name)
        # A token is rarely longer than 32 characters, so this much text gives ``limit`` tokens.
        text = _read_start(books_mod.book_text_path(home, name), limit * 32)
        if model is None:
            return {"model": None, "tokenizer": "characters",
                    "tokens": [{"id": ord(ch), "text": ch} for ch in text[:limit]]}
        get_model_info(model)
        path = store.model_dir(home, model) / "tokenizer.json"
        if not path.is_file():
            raise Conflict("model.no_tokenizer_yet", name=model)
        tokenizer = _load_tokenizer(str(path), path.stat().st_mtime_ns)
        enc = tokenizer.hf.encode(text, add_special_tokens=False)
        return {"model": model, "tokenizer": tokenizer.kind,
                "tokens": _token_pieces(text, enc.ids, enc.offsets)[:limit]}

    @app.delete("/api/books/{name}", status_code=204, tags=["books"], responses=answers.route(404, 409))
    def delete_book(name: NamePath):
        """Refused (409) while a queued or running run needs the book."""
        books_mod.get_book(home, name)
        for run in runner.list_runs():
            if run["state"] in ("queued", "running") and name in (run["books"] or []):
                raise Conflict("guard.book_in_use", name=name, run=run["id"], state=run["state"])
        books_mod.delete_book(home, name)
        registry.sync_books()
        return Response(status_code=204)

    # ---- models

    @app.get("/api/models", tags=["models"])
    def list_models():
        training = runner.training_models()
        return [model_dict(m, training) for m in registry.sync_models()]

    @app.post("/api/models", status_code=201, tags=["models"], responses=answers.route(404, 409))
    def create_model(body: ModelCreateRequest):
        name = validate_name(body.name, "model name")
        if body.auto is not None:
            given = sorted(body.model_fields_set - {"name", "auto"})
            if given:  # the plan decides the whole shape
                raise UserError("auto.shape_given", names=", ".join(given))
            info, _plan, _recipe = recipe_mod.create(home, name, body.auto.books, body.auto.minutes,
                                                     body.auto.threads)
            registry.sync_models()
            return model_dict(info, set())
        # Checked against RAM on a CPU machine only: asking CUDA would keep a GPU context (hundreds of MB)
        # in this long-lived process; the trainer checks GPU memory itself when a run starts.
        device = pick_device("auto")
        max_memory = available_memory_bytes(device) if device.type == "cpu" else None
        info = store.create_model(home, name, body.config(), max_memory=max_memory)
        registry.sync_models()
        return model_dict(info, set())

    @app.post("/api/reason/models", status_code=202, tags=["models"], responses=answers.route(409))
    def create_reason_model(body: ReasonModelRequest, request: Request):
        """Create a model for AZR reasoning from zero: the model (char tokenizer) at once, and a
        ``corpus`` run that writes its book ``<name>-triplets`` (programs with their inputs and
        outputs, from the random program generator; tens of seconds at the top) with the documents
        written as its steps. Answers the model, the book's name and that ``run``. Next, once the
        run completed: a train run on that book, then a reason run; ``next`` says so. What ``azr
        reason NAME`` does on its own for a model that does not exist."""
        name = validate_name(body.name, "model name")
        book = validate_name(f"{name}-triplets", "book name")
        if store.model_dir(home, name).exists():
            raise Conflict("model.exists", name=name)
        try:
            books_mod.get_book(home, book)
        except NotFound:
            pass
        else:  # create_from_zero would overwrite it
            raise Conflict("reason_create.book_exists", book=book, name=name)
        shape = body.model_dump(include={"d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"})
        # A char model gets the compact prompt format: its program budget plus room for the answer.
        need = reasoning.default_lengths(reasoning.ReasonConfig(), PROMPT_FORMATS["compact"])[1] + 64
        if body.max_seq_len < need:
            raise UserError("reason_create.seq_len", min=need, value=body.max_seq_len)
        cfg = ModelConfig(**{**reasoning.FROM_ZERO_SHAPE, **shape, "tokenizer": "char"})
        cfg.validate()  # before the book is written: a wrong shape leaves nothing behind
        with reason_create_lock:  # two requests for one name: the second must not overwrite the first's model
            if store.model_dir(home, name).exists():
                raise Conflict("model.exists", name=name)
            device = pick_device("auto")  # as create_model: RAM is checked on a CPU machine only
            max_memory = available_memory_bytes(device) if device.type == "cpu" else None
            store.create_model(home, name, cfg, max_memory=max_memory)
            try:  # the model, now existing, keeps its name taken while its book is written
                run = runner.create_run(name, [], {"corpus_docs": body.corpus_docs, "seed": body.seed}, kind="corpus")
            except BaseException:
                store.delete_model(home, name)
                raise
        registry.sync_models()
        lang = catalogue.language_from_accept(request.headers.get("accept-language"))
        return {"model": model_dict(get_model_info(name), set()), "book": book, "run": run,
                "next": catalogue.message("reason_create.next", lang, name=name, book=book)}

    @app.post("/api/models/plan", tags=["models"], responses=answers.route(404))
    def plan_model(body: PlanRequest, request: Request):
        """The best shape and training settings for ``minutes`` on ``books`` on this machine, with
        the expected speed, tokens and passes over the books; with ``shape``, what is wrong with
        those manual fields for the books and minutes (``warnings``). The first plan on a machine
        measures its speed (a few seconds); later ones are instant."""
        lang = catalogue.language_from_accept(request.headers.get("accept-language"))
        return recipe_mod.answer(home, body.books, body.minutes, body.threads,
                                 body.shape.config() if body.shape is not None else None, lang)

    @app.post("/api/models/estimate", tags=["models"], responses=answers.route())
    def estimate_model(body: ModelShape, request: Request):
        """Size, memory and compute of a shape, with what is wrong with it: for validating as the
        user types, so an invalid shape is a 200 with ``errors`` (sentences in the request's
        language) and ``problems`` (the same as ``{detail, code, params}``), never a 4xx."""
        lang = catalogue.language_from_accept(request.headers.get("accept-language"))
        problems: list[UserError] = []
        if body.name is not None and body.name.strip():
            try:
                name = validate_name(body.name, "model name")
                if store.model_dir(home, name).exists():
                    problems.append(Conflict("model.exists", name=name))
            except UserError as e:
                problems.append(e)
        cfg = body.config()
        try:
            cfg.validate()
        except UserError as e:
            problems.append(e)
        errors = [p.render(lang) for p in problems]
        positive = all(getattr(cfg, f) > 0 for f in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff",
                                                      "max_seq_len"))
        return {"parameters": count_parameters(cfg) if positive else None,
                "memory_bytes": estimate_training_memory(cfg, batch_size=16) if positive else None,
                "flops_per_token": training_flops_per_token(cfg) if positive else None,
                "errors": errors, "problems": [p.to_dict(lang) for p in problems]}

    @app.get("/api/models/{name}", tags=["models"], responses=answers.route(404))
    def get_model(name: NamePath):
        return model_dict(get_model_info(name), runner.training_models())

    @app.delete("/api/models/{name}", status_code=204, tags=["models"], responses=answers.route(404, 409))
    def delete_model(name: NamePath):
        if not store.model_dir(home, name).is_dir():
            raise NotFound("model.not_found", name=name)
        runner.check_model_idle(name)
        store.delete_model(home, name)
        registry.forget_model(name)
        return Response(status_code=204)

    @app.get("/api/models/{name}/checkpoints", tags=["models"], responses=answers.route(404))
    def model_checkpoints(name: NamePath):
        """Each checkpoint: ``checkpoint`` is what to pass to download or generate."""
        get_model_info(name)
        rows = registry.sync_checkpoints(name)
        best = next((r for r in rows if r.file == "best.pt"), None)
        out = []
        for r in rows:
            if r.file == "best.pt":
                continue
            is_best = best is not None and best.step is not None and best.step == r.step
            out.append({"step": r.step, "best": is_best, "bytes": r.bytes, "val_bpb": r.val_bpb,
                        "checkpoint": "best" if is_best else str(r.step)})
        if best is not None and not any(c["best"] for c in out):  # its step file was pruned
            out.append({"step": best.step, "best": True, "bytes": best.bytes, "val_bpb": best.val_bpb,
                        "checkpoint": "best"})
        return sorted(out, key=lambda c: (c["step"] is None, c["step"] or 0))

    @app.get("/api/models/{name}/download", tags=["models"], response_class=Response,
             responses={**answers.content("application/octet-stream", "application/zip", description="The file."),
                        **answers.route(404, 409)})
    def download_model(name: NamePath,
                       format: Annotated[str, Query(json_schema_extra={"enum": list(EXPORT_FORMATS)})] = "pt",
                       checkpoint: Annotated[str, Query(json_schema_extra={"pattern": CHECKPOINT_PATTERN})] = "best",
                       dtype: Annotated[str | None, Query(json_schema_extra={"enum": DTYPES})] = None):
        """The model as one file: ``pt`` (what ``torch.load(f, weights_only=True)`` reads), ``hf``
        (a zip of the Hugging Face folder that ``LlamaForCausalLM`` loads) or ``gguf`` (llama.cpp,
        Ollama; ``dtype`` f16 by default, or f32, q8_0). ``checkpoint``: best (default), latest or a
        step. When the model is still training, or has no best checkpoint yet, the header
        ``X-AZR-Note`` says which checkpoint was exported (ASCII; anything else percent-encoded UTF-8).

        A plain ``def``: FastAPI runs it in its thread pool, so a long export never blocks the server."""
        dtype = _check_download_format(format, dtype)
        info = get_model_info(name)
        tmp_root.mkdir(exist_ok=True)
        folder = tmp_root / owned_tmp_name("download-")
        folder.mkdir()
        filename = {"pt": f"{info.name}.pt", "hf": f"{info.name}-hf.zip",
                    "gguf": f"{info.name}-{dtype}.gguf"}[format]
        try:
            result = export_model(home, info.name, format, folder / filename, dtype=dtype, checkpoint=checkpoint,
                                  as_zip=format == "hf")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        headers = {"X-AZR-Note": _header_safe(result["note"])} if result.get("note") else None
        media = "application/zip" if format == "hf" else "application/octet-stream"
        return FileResponse(result["path"], filename=filename, media_type=media, headers=headers,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    # ---- runs

    def lang_of(request: Request) -> str:
        return catalogue.language_from_accept(request.headers.get("accept-language"))

    @app.get("/api/runs", tags=["runs"], responses=answers.route())
    def list_runs(request: Request, model: NameQuery = None):
        """Runs, newest first. ``message`` is in the request's language (Accept-Language);
        ``message_code``/``message_params`` name it in the catalogue (msg.*)."""
        return [run_in_language(r, lang_of(request)) for r in runner.list_runs(model)]

    @app.post("/api/runs", status_code=201, tags=["runs"], responses=answers.route(404, 409))
    def create_run(body: RunRequest, request: Request):
        get_model_info(body.model)  # a damaged model.json is a message, not a crash
        return run_in_language(runner.create_run(body.model, body.books or [], body.params(), kind=body.kind),
                               lang_of(request))

    @app.get("/api/runs/{run_id}", tags=["runs"], responses=answers.route(404))
    def get_run(run_id: str, request: Request):
        return run_in_language(runner.get_run(run_id, detail=True), lang_of(request))

    @app.post("/api/runs/{run_id}/pause", tags=["runs"], responses=answers.route(404, 409))
    def pause_run(run_id: str, request: Request):
        return run_in_language(runner.pause(run_id), lang_of(request))

    @app.post("/api/runs/{run_id}/resume", tags=["runs"], responses=answers.route(404, 409))
    def resume_run(run_id: str, request: Request):
        return run_in_language(runner.resume(run_id), lang_of(request))

    @app.post("/api/runs/{run_id}/cancel", tags=["runs"], responses=answers.route(404, 409))
    def cancel_run(run_id: str, request: Request):
        return run_in_language(runner.cancel(run_id), lang_of(request))

    @app.get("/api/runs/{run_id}/buffers", tags=["runs"], responses=answers.route(404, 409))
    def run_buffers(run_id: str, limit: int | None = Query(None, ge=1, le=10_000)):
        """A reasoning run's task buffers (deduction, abduction, induction) as of its newest
        checkpoint, oldest task first; ``limit``: only the newest N of each. ``sizes`` are the
        full lengths. A task has code, input and output (induction: message and input/output
        pairs, the first half shown to the solver)."""
        run = runner.get_run(run_id)
        if run["kind"] != "reason":
            raise UserError("buffers.not_reasoning", run=run_id, kind=run["kind"])
        mdir = store.model_dir(home, run["model"])
        path = latest_run_checkpoint(mdir, "reason", run_id)
        if path is None:
            raise NotFound("buffers.none_yet", run=run_id)
        try:
            step, buffers = buffers_cache.get(path)
        except FileNotFoundError:  # pruned by the worker just now: its newer checkpoint is there
            step, buffers = buffers_cache.get(latest_run_checkpoint(mdir, "reason", run_id))
        return {"run": run_id, "step": step, "sizes": {k: len(v) for k, v in buffers.items()},
                "buffers": {k: v[-limit:] if limit else v for k, v in buffers.items()}}

    @app.get("/api/runs/{run_id}/events", tags=["runs"], responses=answers.route(404))
    def run_events(run_id: str, after: int = Query(0, ge=0), limit: int | None = Query(None, ge=1)):
        """Events number ``after`` onwards (each has its number as ``seq``); pass ``next`` back to
        get only newer ones."""
        events = runner.events(run_id, after, limit)
        return {"events": events, "next": after + len(events)}

    @app.get("/api/runs/{run_id}/stream", tags=["runs"], response_class=StreamingResponse,
             responses={**answers.content("text/event-stream", description="Server-sent events."),
                        **answers.route(404)})
    async def run_stream(run_id: str, request: Request, after: int = Query(0, ge=0)):
        """Server-sent events: every event so far, then live ones; ``id:`` is the event's number,
        so a reconnecting browser (Last-Event-ID) gets only what it missed."""
        last_id = request.headers.get("last-event-id", "")
        start = int(last_id) + 1 if last_id.isdigit() else after
        loop = asyncio.get_running_loop()
        queue = runner.subscribe(run_id, loop)  # before the replay: nothing falls in between
        try:
            backlog = await asyncio.to_thread(runner.events, run_id, start)
        except BaseException:
            runner.unsubscribe(run_id, queue)
            raise

        async def stream():
            try:
                nxt = start
                for event in backlog:
                    yield f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
                    nxt = event["seq"] + 1
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if event["seq"] < nxt:  # already sent in the replay
                        continue
                    yield f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
                    nxt = event["seq"] + 1
            finally:
                runner.unsubscribe(run_id, queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ---- generation

    @app.post("/api/generate", tags=["generate"], responses=answers.route(404, 409))
    def generate(body: GenerateRequest):
        """Continue ``prompt``; ``tokens`` is the number of new tokens, ``memorisation`` the
        stretches of ``text`` found verbatim in the model's books."""
        gen = prepare_generation(body)
        for _ in gen.pieces():
            pass
        return finish_generation(gen)

    @app.post("/api/generate/stream", tags=["generate"], response_class=StreamingResponse,
              responses={**answers.content("text/event-stream", description="Server-sent events."),
                         **answers.route(404, 409)})
    async def generate_stream(body: GenerateRequest, request: Request):
        """Server-sent events: ``{"delta": "…"}`` per piece of text, then ``{"done": true, "text",
        "tokens", "memorisation"}``. Close the connection to stop."""
        lang = catalogue.language_from_accept(request.headers.get("accept-language"))
        gen = await asyncio.to_thread(prepare_generation, body)  # errors here are ordinary 4xx answers
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def work():
            def put(item):
                loop.call_soon_threadsafe(queue.put_nowait, item)
            try:
                for piece in gen.pieces(stop):
                    put({"delta": piece})
                put({"done": True, **finish_generation(gen)})
            except Exception as e:  # reported to the page; the stream then ends
                log.exception("Generation failed")
                try:
                    put({"error": e.render(lang), "code": e.code, "params": e.params} if isinstance(e, UserError)
                        else {"error": str(e)})
                except RuntimeError:  # the event loop is gone: so is the client
                    pass

        async def stream():
            loop.run_in_executor(None, work)
            try:
                while True:
                    item = await queue.get()
                    if await request.is_disconnected():
                        break
                    yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
                    if "done" in item or "error" in item:
                        break
            finally:
                stop.set()  # the client left, or we are done: the thread stops at the next token

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    # Outermost first: the body limit sees the request before anything reads it.
    app.add_middleware(_Guard, token=token)
    app.add_middleware(_BodyLimit, limit=max_upload_bytes)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, home: str | Path | None = None, *, max_runs: int = 1,
          max_upload_mb: float = 200, token: str | None = None) -> None:
    """Run the studio until Ctrl-C. Bound beyond loopback it requires a token (made up and
    printed here unless given)."""
    import torch
    import uvicorn

    token = check_token(token)  # before anything is made: an empty token would open the studio to everyone
    home = home_dir(home)
    if token is None and not _is_loopback(host):
        token = secrets.token_urlsafe(24)
    # Generation runs in this process: one thread, so it does not slow down the training workers.
    torch.set_num_threads(1)
    app = create_app(home, token=token, max_upload_bytes=int(max_upload_mb * MiB), max_concurrent_runs=max_runs)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/" + (f"?token={token}" if token else "")
    print(f"AZR Trainer studio: {url}\nData folder: {home}", flush=True)
    if token:
        print("Anyone who can reach this address needs the token in that link (or the header "
              f"'Authorization: Bearer {token}').", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
