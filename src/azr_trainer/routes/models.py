"""The models page: create (by shape, by plan, or from zero for reasoning), plan and estimate a
shape, list, show, delete, checkpoints and downloads."""

from __future__ import annotations

import shutil
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from .. import answers, catalogue, from_zero, osdeps, reasoning, store
from .. import books as books_mod
from .. import recipe as recipe_mod
from ..checkpoint import choices as checkpoint_choices
from ..device import available_memory_bytes, pick_device
from ..errors import Conflict, NotFound, UserError
from ..export import DEFAULT_DTYPE, GGUF_DTYPES, HF_DTYPES, export_model
from ..export import FORMATS as EXPORT_FORMATS
from ..formats import FORMATS as PROMPT_FORMATS
from ..home import owned_tmp_name, validate_name
from ..model import ModelConfig, count_parameters, estimate_training_memory, training_flops_per_token
from .requests import CHECKPOINT_PATTERN, DTYPES, ModelCreateRequest, ModelShape, NamePath, PlanRequest, \
    ReasonModelRequest
from .state import StudioDep, language

router = APIRouter()


def _max_memory() -> int | None:
    # Checked against RAM on a CPU machine only: asking CUDA would keep a GPU context (hundreds of MB)
    # in this long-lived process; the trainer checks GPU memory itself when a run starts.
    device = pick_device("auto")
    return available_memory_bytes(device) if device.type == "cpu" else None


def _check_download_format(fmt: str, dtype: str | None) -> str:
    """The dtype to export a download with, or a 400 that says what is allowed."""
    if fmt not in EXPORT_FORMATS:
        raise UserError("export.format", options=list(EXPORT_FORMATS), value=fmt)
    allowed = {"pt": ("f32",), "hf": tuple(HF_DTYPES), "gguf": GGUF_DTYPES}[fmt]
    dtype = dtype or DEFAULT_DTYPE[fmt]
    if dtype not in allowed:
        raise UserError("export.dtype", format=fmt, options=list(allowed), value=dtype)
    return dtype


def _header_safe(text: str) -> str:
    """Text for an HTTP header: printable ASCII as it is, anything else (and '%') percent-encoded UTF-8."""
    return "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in text)


@router.get("/api/models", tags=["models"])
def list_models(studio: StudioDep):
    training = studio.runner.training_models()
    return [studio.model_dict(m, training) for m in store.list_models(studio.home)]


@router.post("/api/models", status_code=201, tags=["models"], responses=answers.route(404, 409))
def create_model(studio: StudioDep, body: ModelCreateRequest):
    name = validate_name(body.name, "model name")
    if body.auto is not None:
        given = sorted(body.model_fields_set - {"name", "auto"})
        if given:  # the plan decides the whole shape
            raise UserError("auto.shape_given", names=", ".join(given))
        info, _plan, _recipe = recipe_mod.create(studio.home, name, body.auto.books, body.auto.minutes,
                                                 body.auto.threads)
        return studio.model_dict(info, set())
    info = store.create_model(studio.home, name, body.config(), max_memory=_max_memory())
    return studio.model_dict(info, set())


@router.post("/api/reason/models", status_code=202, tags=["models"], responses=answers.route(409))
def create_reason_model(studio: StudioDep, body: ReasonModelRequest, request: Request):
    """Create a model for AZR reasoning from zero: the model (char tokenizer) at once, and a
    ``corpus`` run that writes its book ``<name>-triplets`` (programs with their inputs and
    outputs, from the random program generator; tens of seconds at the top) with the documents
    written as its steps. Answers the model, the book's name and that ``run``. Next, once the
    run completed: a train run on that book, then a reason run; ``next`` says so. What ``azr
    reason NAME`` does on its own for a model that does not exist."""
    home = studio.home
    osdeps.require_reasoning()
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
    cfg = ModelConfig(**{**from_zero.FROM_ZERO_SHAPE, **shape, "tokenizer": "char"})
    cfg.validate()  # before the book is written: a wrong shape leaves nothing behind
    with studio.reason_create_lock:  # two requests for one name: the second must not overwrite the first's model
        if store.model_dir(home, name).exists():
            raise Conflict("model.exists", name=name)
        store.create_model(home, name, cfg, max_memory=_max_memory())
        try:  # the model, now existing, keeps its name taken while its book is written
            run = studio.runner.create_run(name, [], {"corpus_docs": body.corpus_docs, "seed": body.seed},
                                           kind="corpus")
        except BaseException:
            store.delete_model(home, name)
            raise
    return {"model": studio.model_dict(studio.model_info(name), set()), "book": book, "run": run,
            "next": catalogue.message("reason_create.next", language(request), name=name, book=book)}


@router.post("/api/models/plan", tags=["models"], responses=answers.route(404))
def plan_model(studio: StudioDep, body: PlanRequest, request: Request):
    """The best shape and training settings for ``minutes`` on ``books`` on this machine, with
    the expected speed, tokens and passes over the books; with ``shape``, what is wrong with
    those manual fields for the books and minutes (``warnings``). The first plan on a machine
    measures its speed (a few seconds); later ones are instant."""
    return recipe_mod.answer(studio.home, body.books, body.minutes, body.threads,
                             body.shape.config() if body.shape is not None else None, language(request))


@router.post("/api/models/estimate", tags=["models"], responses=answers.route())
def estimate_model(studio: StudioDep, body: ModelShape, request: Request):
    """Size, memory and compute of a shape, with what is wrong with it: for validating as the
    user types, so an invalid shape is a 200 with ``errors`` (sentences in the request's
    language) and ``problems`` (the same as ``{detail, code, params}``), never a 4xx."""
    lang = language(request)
    problems: list[UserError] = []
    if body.name is not None and body.name.strip():
        try:
            name = validate_name(body.name, "model name")
            if store.model_dir(studio.home, name).exists():
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
            "speed": recipe_mod.training_speed(studio.home, cfg) if positive else None,
            "errors": errors, "problems": [p.to_dict(lang) for p in problems]}


@router.get("/api/models/{name}", tags=["models"], responses=answers.route(404))
def get_model(studio: StudioDep, name: NamePath):
    return studio.model_dict(studio.model_info(name), studio.runner.training_models())


@router.delete("/api/models/{name}", status_code=204, tags=["models"], responses=answers.route(404, 409))
def delete_model(studio: StudioDep, name: NamePath):
    if not store.model_dir(studio.home, name).is_dir():
        raise NotFound("model.not_found", name=name)
    studio.runner.check_model_idle(name)
    store.delete_model(studio.home, name)
    studio.registry.forget_model(name)
    return Response(status_code=204)


@router.get("/api/models/{name}/checkpoints", tags=["models"], responses=answers.route(404))
def model_checkpoints(studio: StudioDep, name: NamePath):
    """Each checkpoint, pretraining's (oldest step first) then the newest self-play and
    reasoning ones: ``checkpoint`` is what to pass to generate."""
    studio.model_info(name)
    return checkpoint_choices(store.model_dir(studio.home, name), studio.registry.sync_checkpoints(name))


@router.get("/api/models/{name}/download", tags=["models"], response_class=Response,
            responses={**answers.content("application/octet-stream", "application/zip", description="The file."),
                       **answers.route(404, 409)})
def download_model(studio: StudioDep, name: NamePath,
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
    info = studio.model_info(name)
    studio.tmp_root.mkdir(exist_ok=True)
    folder = studio.tmp_root / owned_tmp_name("download-")
    folder.mkdir()
    filename = {"pt": f"{info.name}.pt", "hf": f"{info.name}-hf.zip",
                "gguf": f"{info.name}-{dtype}.gguf"}[format]
    try:
        result = export_model(studio.home, info.name, format, folder / filename, dtype=dtype,
                              checkpoint=checkpoint, as_zip=format == "hf")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    headers = {"X-AZR-Note": _header_safe(result["note"])} if result.get("note") else None
    media = "application/zip" if format == "hf" else "application/octet-stream"
    return FileResponse(result["path"], filename=filename, media_type=media, headers=headers,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))
