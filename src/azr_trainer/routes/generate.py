"""The generate page: continue a prompt with a model, whole or streamed, with the memorisation
meter. Generation runs in this process, in a thread, with the model from the studio's cache."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .. import answers, decode, store
from ..checkpoint import resolve_checkpoint
from ..errors import UserError
from ..sample import SamplingParams, stream_generate
from ..tokenizer import Tokenizer
from .requests import GenerateRequest
from .runs import SSE_HEADERS
from .state import Studio, StudioDep, language

log = logging.getLogger("azr_trainer.server")

router = APIRouter()


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


def _prepare(studio: Studio, body: GenerateRequest) -> _Generation:
    info = studio.model_info(body.model)
    params = body.sampling()
    path = resolve_checkpoint(store.model_dir(studio.home, info.name), str(body.checkpoint))
    model, _cfg, tokenizer = studio.models_cache.get(path)
    return _Generation(model, tokenizer, body.prompt, tokenizer.encode(body.prompt), params,
                       tuple(info.books or []), precision=decode.choose(model, 1))


def _finish(studio: Studio, gen: _Generation) -> dict:
    return {"text": gen.text, "prompt": gen.prompt, "tokens": gen.tokens,
            "memorisation": studio.memorisation(list(gen.books), gen.text), "decode_precision": gen.precision}


@router.post("/api/generate", tags=["generate"], responses=answers.route(404, 409))
def generate(studio: StudioDep, body: GenerateRequest):
    """Continue ``prompt``; ``tokens`` is the number of new tokens, ``memorisation`` the
    stretches of ``text`` found verbatim in the model's books."""
    gen = _prepare(studio, body)
    for _ in gen.pieces():
        pass
    return _finish(studio, gen)


@router.post("/api/generate/stream", tags=["generate"], response_class=StreamingResponse,
             responses={**answers.content("text/event-stream", description="Server-sent events."),
                        **answers.route(404, 409)})
async def generate_stream(studio: StudioDep, body: GenerateRequest, request: Request):
    """Server-sent events: ``{"delta": "…"}`` per piece of text, then ``{"done": true, "text",
    "tokens", "memorisation"}``. Close the connection to stop."""
    lang = language(request)
    gen = await asyncio.to_thread(_prepare, studio, body)  # errors here are ordinary 4xx answers
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def work():
        def put(item):
            loop.call_soon_threadsafe(queue.put_nowait, item)
        try:
            for piece in gen.pieces(stop):
                put({"delta": piece})
            put({"done": True, **_finish(studio, gen)})
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
