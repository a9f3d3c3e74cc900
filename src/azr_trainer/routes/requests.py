"""The API's request bodies and the path/query parameters several pages share. The models' and
runs' fields are made from settings.py, so the page's forms, the CLI and the API agree."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path as PathParam, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator
from pydantic_core import PydanticCustomError

from .. import answers, from_zero
from .. import settings as settings_mod
from ..export import GGUF_DTYPES, HF_DTYPES
from ..jobs import KINDS
from ..model import ModelConfig
from ..sample import SamplingParams
from ..settings import EXPORT, FROM_ZERO, GENERATE, MODEL, RUN_GROUPS

# A book's or model's name in a path or query: any string reaches validate_name (its messages);
# the document shows what is accepted.
# best, latest or a step number (resolve_checkpoint decides); the dtypes of every format (pt: f32 only).
CHECKPOINT_PATTERN = r"^(best|latest|[0-9]+)$"
DTYPES = sorted({"f32", *HF_DTYPES, *GGUF_DTYPES})
NamePath = Annotated[str, PathParam(json_schema_extra=answers.NAME_SCHEMA)]
NameQuery = Annotated[str | None, Query(json_schema_extra=answers.NAME_SCHEMA)]


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
    """``shape``: the manual fields (or a made model's), to hear whether they suit these books,
    minutes and this machine; ``batch_size``: the run's, for its memory and step time."""

    shape: ModelShape | None = None
    batch_size: int | None = Field(None, ge=1, le=65536)


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


class _ExportBase(BaseModel):
    """A Hugging Face zip (``format`` hf; ``dtype`` f32 by default, or f16, bf16) or a GGUF file
    (gguf; f16 by default, or f32, q8_0) of ``checkpoint`` (best by default, latest or a step).
    Fields: settings.py's export group; one left out takes its default."""

    model_config = ConfigDict(extra="forbid")


ExportRequest = create_model("ExportRequest", __base__=_ExportBase, __doc__=_ExportBase.__doc__,
                             **{s.name: settings_mod.pydantic_field(s) for s in EXPORT if s.studio})


_FROM_ZERO = from_zero.FROM_ZERO_SHAPE


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
    checkpoint: str | int = "best"  # best, latest, selfplay, reason or a step number
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
