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

The routes live in the routes package, one module per page; this module puts them together.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import __version__, answers, catalogue, decode
from .home import clean_leftovers, home_dir
from .jobs import JobRunner
from .registry import Registry
from .routes import ROUTERS
from .routes.guard import MiB, BodyLimit, Guard, check_token, is_loopback
from .routes.handlers import add_handlers
from .routes.state import Studio
from .routes.studio import WEB_DIR

__all__ = ["check_token", "create_app", "serve"]

log = logging.getLogger("azr_trainer.server")


def create_app(home: Path, *, token: str | None = None, max_upload_bytes: int = 200 * MiB,
               max_concurrent_runs: int = 1) -> FastAPI:
    home = home_dir(home)
    decode.remember_in(home)  # the decode precision is measured once per machine and kept there
    for path in clean_leftovers(home):  # what a killed studio or command left in the temp folders
        log.info("Removed the leftover %s", path)
    registry = Registry(home)
    registry.reconcile()
    studio = Studio(home, registry, JobRunner(home, registry, max_concurrent=max_concurrent_runs))

    @asynccontextmanager
    async def lifespan(_app):
        studio.runner.start()
        try:
            yield
        finally:
            studio.runner.close()

    app = FastAPI(title="AZR Trainer", version=__version__, lifespan=lifespan, responses=answers.EVERY_ROUTE,
                  description="Grow a language model from your own books: books, models, training runs, "
                              "generation and downloads. The same library as the `azr` command.")
    app.state.studio = studio
    answers.use_studio_422(app)
    add_handlers(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")
    for router in ROUTERS:
        app.include_router(router)
    # Outermost first: the body limit sees the request before anything reads it.
    app.add_middleware(Guard, token=token)
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, home: str | Path | None = None, *, max_runs: int = 1,
          max_upload_mb: float = 200, token: str | None = None) -> None:
    """Run the studio until Ctrl-C. Bound beyond loopback it requires a token (made up and
    printed here unless given)."""
    import torch
    import uvicorn

    token = check_token(token)  # before anything is made: an empty token would open the studio to everyone
    home = home_dir(home)
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    # Generation runs in this process: one thread, so it does not slow down the training workers.
    torch.set_num_threads(1)
    app = create_app(home, token=token, max_upload_bytes=int(max_upload_mb * MiB), max_concurrent_runs=max_runs)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/" + (f"?token={token}" if token else "")
    lang = catalogue.language_from_environment()
    print(catalogue.message("codes.serve_url", lang, url=url, home=str(home)), flush=True)
    if token:
        print(catalogue.message("codes.serve_token", lang, token=token), flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
