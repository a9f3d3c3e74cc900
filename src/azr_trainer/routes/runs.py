"""The runs page: start, list, pause, resume, cancel; events (polled or streamed) and a
reasoning run's task buffers."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from .. import answers, catalogue, store
from ..checkpoint import latest_run_checkpoint
from ..errors import NotFound, UserError
from .requests import NameQuery, RunRequest
from .state import StudioDep, language

KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter()


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


@router.get("/api/runs", tags=["runs"], responses=answers.route())
def list_runs(studio: StudioDep, request: Request, model: NameQuery = None):
    """Runs, newest first. ``message`` is in the request's language (Accept-Language);
    ``message_code``/``message_params`` name it in the catalogue (msg.*)."""
    return [run_in_language(r, language(request)) for r in studio.runner.list_runs(model)]


@router.post("/api/runs", status_code=201, tags=["runs"], responses=answers.route(404, 409))
def create_run(studio: StudioDep, body: RunRequest, request: Request):
    studio.model_info(body.model)  # a damaged model.json is a message, not a crash
    return run_in_language(studio.runner.create_run(body.model, body.books or [], body.params(), kind=body.kind),
                           language(request))


@router.get("/api/runs/{run_id}", tags=["runs"], responses=answers.route(404))
def get_run(studio: StudioDep, run_id: str, request: Request):
    return run_in_language(studio.runner.get_run(run_id, detail=True), language(request))


@router.post("/api/runs/{run_id}/pause", tags=["runs"], responses=answers.route(404, 409))
def pause_run(studio: StudioDep, run_id: str, request: Request):
    return run_in_language(studio.runner.pause(run_id), language(request))


@router.post("/api/runs/{run_id}/resume", tags=["runs"], responses=answers.route(404, 409))
def resume_run(studio: StudioDep, run_id: str, request: Request):
    return run_in_language(studio.runner.resume(run_id), language(request))


@router.post("/api/runs/{run_id}/cancel", tags=["runs"], responses=answers.route(404, 409))
def cancel_run(studio: StudioDep, run_id: str, request: Request):
    return run_in_language(studio.runner.cancel(run_id), language(request))


@router.get("/api/runs/{run_id}/buffers", tags=["runs"], responses=answers.route(404, 409))
def run_buffers(studio: StudioDep, run_id: str, limit: int | None = Query(None, ge=1, le=10_000)):
    """A reasoning run's task buffers (deduction, abduction, induction) as of its newest
    checkpoint, oldest task first; ``limit``: only the newest N of each. ``sizes`` are the
    full lengths. A task has code, input and output (induction: message and input/output
    pairs, the first half shown to the solver)."""
    run = studio.runner.get_run(run_id)
    if run["kind"] != "reason":
        raise UserError("buffers.not_reasoning", run=run_id, kind=run["kind"])
    mdir = store.model_dir(studio.home, run["model"])
    path = latest_run_checkpoint(mdir, "reason", run_id)
    if path is None:
        raise NotFound("buffers.none_yet", run=run_id)
    try:
        step, buffers = studio.buffers_cache.get(path)
    except FileNotFoundError:  # pruned by the worker just now: its newer checkpoint is there
        step, buffers = studio.buffers_cache.get(latest_run_checkpoint(mdir, "reason", run_id))
    return {"run": run_id, "step": step, "sizes": {k: len(v) for k, v in buffers.items()},
            "buffers": {k: v[-limit:] if limit else v for k, v in buffers.items()}}


@router.get("/api/runs/{run_id}/events", tags=["runs"], responses=answers.route(404))
def run_events(studio: StudioDep, run_id: str, after: int = Query(0, ge=0), limit: int | None = Query(None, ge=1)):
    """Events number ``after`` onwards (each has its number as ``seq``); pass ``next`` back to
    get only newer ones."""
    events = studio.runner.events(run_id, after, limit)
    return {"events": events, "next": after + len(events)}


def _sse(event: dict) -> str:
    return f"id: {event['seq']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


@router.get("/api/runs/{run_id}/stream", tags=["runs"], response_class=StreamingResponse,
            responses={**answers.content("text/event-stream", description="Server-sent events."),
                       **answers.route(404)})
async def run_stream(studio: StudioDep, run_id: str, request: Request, after: int = Query(0, ge=0)):
    """Server-sent events: every event so far, then live ones; ``id:`` is the event's number,
    so a reconnecting browser (Last-Event-ID) gets only what it missed."""
    runner = studio.runner
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
                yield _sse(event)
                nxt = event["seq"] + 1
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if event["seq"] < nxt:  # already sent in the replay
                    continue
                yield _sse(event)
                nxt = event["seq"] + 1
        finally:
            runner.unsubscribe(run_id, queue)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
