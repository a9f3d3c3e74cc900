"""The books page: upload, list, preview, how a book splits into tokens, delete."""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PureWindowsPath

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import Response

from .. import answers
from .. import books as books_mod
from .. import layout, osdeps, store
from ..errors import Conflict, UserError
from ..home import owned_tmp_name, validate_name
from .caches import load_tokenizer
from .requests import NamePath, NameQuery
from .state import StudioDep

BOOK_PREVIEW_CHARS = 2000

router = APIRouter()


def _safe_filename(filename: str | None) -> str:
    # The browser's name for the upload: keep only its last part, and no characters Windows forbids.
    name = PureWindowsPath(filename or "").name
    name = re.sub(r'[\x00-\x1f<>:"/\\|?*]', "_", name).strip(" .")
    return name[:120] or "book.txt"


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


def _book_dict(info: books_mod.BookInfo) -> dict:
    # with the upload's version, which the Training page compares with what a best model was measured on
    return {**info.to_dict(), "version": books_mod.version(info)}


@router.get("/api/books", tags=["books"])
def list_books(studio: StudioDep):
    return [_book_dict(b) for b in books_mod.list_books(studio.home)]


@router.post("/api/books", status_code=201, tags=["books"], responses=answers.route(409))
def upload_book(studio: StudioDep, file: UploadFile = File(...), name: str | None = Form(None),
                encoding: str | None = Form(None)):
    """Upload a .txt book in any encoding; it is detected unless ``encoding`` is given."""
    filename = _safe_filename(file.filename)
    name = (name or "").strip() or None
    if name is None:
        try:
            name = validate_name(Path(filename).stem, "book name")
        except UserError:
            raise UserError("book.name_from_file", name=Path(filename).stem) from None
    studio.tmp_root.mkdir(exist_ok=True)
    tmp = studio.tmp_root / owned_tmp_name("upload-")  # the owner's pid: see home.clean_leftovers
    tmp.mkdir()
    try:
        source = tmp / filename
        with source.open("wb") as out:
            shutil.copyfileobj(file.file, out, 1024 * 1024)
        info = books_mod.add_book(studio.home, source, name=name, encoding=(encoding or "").strip() or None)
    finally:
        osdeps.remove_tree(tmp)
    return _book_dict(info)


@router.get("/api/books/{name}", tags=["books"], responses=answers.route(404))
def get_book(studio: StudioDep, name: NamePath):
    info = books_mod.get_book(studio.home, name)
    return {**_book_dict(info),
            "preview": _read_start(books_mod.book_text_path(studio.home, name), BOOK_PREVIEW_CHARS)}


@router.get("/api/books/{name}/tokens", tags=["books"], responses=answers.route(404, 409))
def book_tokens(studio: StudioDep, name: NamePath, model: NameQuery = None,
                limit: int = Query(200, ge=1, le=5000)):
    """How the start of a book splits into tokens: with a model's tokenizer, or into characters
    (each with its Unicode code point as id) when no model is given."""
    books_mod.get_book(studio.home, name)
    # A token is rarely longer than 32 characters, so this much text gives ``limit`` tokens.
    text = _read_start(books_mod.book_text_path(studio.home, name), limit * 32)
    if model is None:
        return {"model": None, "tokenizer": "characters",
                "tokens": [{"id": ord(ch), "text": ch} for ch in text[:limit]]}
    studio.model_info(model)
    path = layout.tokenizer_file(store.model_dir(studio.home, model))
    if not path.is_file():
        raise Conflict("model.no_tokenizer_yet", name=model)
    tokenizer = load_tokenizer(str(path), path.stat().st_mtime_ns)
    enc = tokenizer.hf.encode(text, add_special_tokens=False)
    return {"model": model, "tokenizer": tokenizer.kind,
            "tokens": _token_pieces(text, enc.ids, enc.offsets)[:limit]}


@router.delete("/api/books/{name}", status_code=204, tags=["books"], responses=answers.route(404, 409))
def delete_book(studio: StudioDep, name: NamePath):
    """Refused (409) while a queued or running run needs the book."""
    books_mod.get_book(studio.home, name)
    for run in studio.runner.list_runs():
        if run["state"] in ("queued", "running") and name in (run["books"] or []):
            raise Conflict("guard.book_in_use", name=name, run=run["id"], state=run["state"])
    books_mod.delete_book(studio.home, name)
    return Response(status_code=204)
