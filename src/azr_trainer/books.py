"""Books: the .txt files a person uploads, stored decoded in the data folder.

    home/books/<name>/text.txt    UTF-8, NFC, "\\n" newlines, no BOM (layout.book_text)
    home/books/<name>/book.json   BookInfo (encoding, sizes, preview) (layout.book_info)

Adding a book streams the file through an incremental decoder in CHUNK_SIZE pieces,
so a 100 MB+ book never sits in memory more than a chunk at a time. Everything is
written into a hidden temporary folder beside the books and renamed into place only
when complete, so the data folder is never left with a half-written book.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import charset_normalizer

from . import osdeps
from .home import (Conflict, NotFound, UserError, atomic_write_json, check_new_name, fsync_dir, owned_tmp_name,
                   read_json, validate_name)
from .layout import TMP_PREFIX, book_dir, book_info, book_text, books_dir

CHUNK_SIZE = 4 * 1024 * 1024  # bytes read and decoded at a time
SAMPLE_SIZE = 2 * 1024 * 1024  # bytes from the start of the file used to detect the encoding
PREVIEW_CHARS = 300


# Longest first: the UTF-32 LE BOM starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf_32"),
    (codecs.BOM_UTF32_BE, "utf_32"),
    (codecs.BOM_UTF8, "utf_8_sig"),
    (codecs.BOM_UTF16_LE, "utf_16"),
    (codecs.BOM_UTF16_BE, "utf_16"),
)
_WIDE_CODECS = ("utf_16", "utf_32")  # the only codecs where NUL bytes are normal text

# Single-byte codecs that detectors mix up with each other. When the detector's guess is
# one of them, every member of the family is tried and the most plausible text wins.
_CYRILLIC = frozenset({
    "cp1251", "koi8_r", "koi8_u", "cp866", "cp1125", "mac_cyrillic", "iso8859_5", "kz1048", "ptcp154", "cp855",
})
_LATIN = frozenset({
    "cp1252", "iso8859_1", "iso8859_15", "cp1250", "iso8859_2", "mac_roman", "mac_latin2", "mac_iceland",
    "mac_turkish", "cp1254", "iso8859_9", "cp1257", "iso8859_4", "iso8859_10", "iso8859_13", "cp850", "cp437",
    "hp_roman8", "cp775",
})
# Always tried when the detector names a member of their family.
_CYRILLIC_SEEDS = ("cp1251", "koi8_r", "cp866", "mac_cyrillic")
_LATIN_SEEDS = ("cp1252",)
_PREFERRED = frozenset(_CYRILLIC_SEEDS + _LATIN_SEEDS)
_SCORE_CHARS = 200_000  # plausibility is judged on this much of the decoded sample
_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters

_COMMON_PUNCT = frozenset(".,;:!?¿¡'\"-()[]{}«»„“”‘’‚–—…/\\%&*#@+=<>_~`^|$№")
# What a wrong single-byte codec typically produces instead of letters.
_SUSPICIOUS = frozenset("†‡°¢£¤¥§•¶®©™¬√ƒ≈∆÷‰¦¨¯´¸¹²³¼½¾×µ∞≠≤≥∂∑∏π∫Ωº")


@dataclass
class BookInfo:
    name: str
    encoding: str  # the codec used to decode, e.g. "utf_8", "cp1251", "utf_16"
    detected: bool  # False when the user chose the encoding
    source_bytes: int  # size of the uploaded file
    text_bytes: int  # UTF-8 bytes of the stored text
    chars: int
    lines: int
    preview: str
    created_at: str  # ISO-8601 UTC
    original_filename: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BookInfo":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


# --------------------------------------------------------------------------- detection


def _canonical(codec: str) -> str:
    # codecs.lookup gives e.g. "koi8-r", "mac-cyrillic"; the encodings module (and
    # charset-normalizer) spell them "koi8_r", "mac_cyrillic".
    return codecs.lookup(codec).name.replace("-", "_")


def _bom_codec(data: bytes) -> str | None:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec
    return None


def _decodes_as_utf8(sample: bytes) -> bool:
    # final=False: a sample cut from a bigger file may end inside a character.
    try:
        codecs.getincrementaldecoder("utf_8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _script(ch: str) -> str:
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF:
        return "latin"
    if 0x370 <= o <= 0x3FF:
        return "greek"
    if 0x400 <= o <= 0x52F:
        return "cyrillic"
    return "other"


def _plausibility(text: str) -> float:
    """How much `text` looks like prose: 1.0 for nothing but words, digits, spaces, punctuation.

    A wrong single-byte codec shows up as symbols where letters should be, and as words
    whose case is scrambled: koi8_r, cp1251 and mac_cyrillic disagree on where the capitals
    are, so "Москва" read with the wrong one becomes "мОУЛЧБ" (a lowercase letter followed
    by an uppercase one) and lowercase words become ALL CAPS. Words mixing Latin and
    Cyrillic letters are another sign of a Western/Cyrillic mix-up.
    """
    if not text:
        return 0.0
    penalty = 0
    for ch in text:
        if ch in _SUSPICIOUS or "\u2500" <= ch <= "\u259f":  # symbols, box drawing
            penalty += 3
        elif unicodedata.category(ch)[0] == "C" and ch not in "\t\n\r\f":  # e.g. latin_1's C1 controls
            penalty += 3
        elif not (ch.isalnum() or ch.isspace() or ch in _COMMON_PUNCT):
            penalty += 1
    for word in _WORD_RE.findall(text):
        penalty += 3 * sum(a.islower() and b.isupper() for a, b in zip(word, word[1:]))
        if len({_script(ch) for ch in word} - {"other"}) > 1:
            penalty += 3
        if len(word) >= 3 and word.isupper():
            penalty += 1
    return max(0.0, 1.0 - penalty / len(text))


def _most_plausible(sample: bytes, candidates: list[str]) -> tuple[str, float] | None:
    """The candidate whose decoding of `sample` scores best; ties go to the earlier candidate."""
    scored: list[list] = []  # [score, order, codec]
    seen: dict[str, list] = {}  # decoded text -> its entry in scored
    for order, codec in enumerate(candidates):
        try:
            text = codecs.getincrementaldecoder(codec)().decode(sample, final=False)[:_SCORE_CHARS]
        except UnicodeDecodeError:
            continue
        if text in seen:
            # Same text from a sibling codec (cp866 and cp1125 agree on all Russian
            # letters): report the well-known name.
            if codec in _PREFERRED and seen[text][2] not in _PREFERRED:
                seen[text][2] = codec
            continue
        seen[text] = [_plausibility(text), order, codec]
        scored.append(seen[text])
    if not scored:
        return None
    score, _, codec = min(scored, key=lambda entry: (-entry[0], entry[1]))
    return codec, score


def detect_encoding(sample: bytes) -> tuple[str, float]:
    """Best codec for `sample` (the start of a file) and a confidence in 0..1.

    Order: a BOM; valid UTF-8 (which includes plain ASCII); charset-normalizer, whose
    guess is re-judged by plausibility when it is a Cyrillic or Western single-byte codec.
    The confidence is 1.0 for a BOM or valid UTF-8, else the plausibility of the winner
    (or the detector's 1 - chaos when nothing was re-judged).
    Raises UserError when nothing decodes it.
    """
    bom = _bom_codec(sample)
    if bom:
        return bom, 1.0
    if _decodes_as_utf8(sample):
        return "utf_8", 1.0

    matches = list(charset_normalizer.from_bytes(sample))
    if not matches:
        raise UserError("book.undetectable")
    best = matches[0]
    guesses: list[str] = []
    for match in matches:
        for codec in (match.encoding, *match.could_be_from_charset):
            codec = _canonical(codec)
            if codec not in guesses:
                guesses.append(codec)
    confidence = 1.0 - best.chaos
    best_codec = guesses[0]

    family = _CYRILLIC | _LATIN
    if not any(codec in family for codec in guesses):
        return best_codec, confidence
    # The detector's own order (it weighs language statistics) breaks ties in plausibility.
    candidates = [best_codec, *(codec for codec in guesses if codec in family)]
    if any(codec in _CYRILLIC for codec in guesses):
        candidates += _CYRILLIC_SEEDS
    if any(codec in _LATIN for codec in guesses):
        candidates += _LATIN_SEEDS
    return _most_plausible(sample, list(dict.fromkeys(candidates))) or (best_codec, confidence)


def _read_sample(source: Path, size: int) -> bytes:
    with source.open("rb") as f:
        head = f.read(SAMPLE_SIZE)
    # Cut after the last newline so the detector never sees half a multi-byte character.
    cut = head.rfind(b"\n")
    return head[: cut + 1] if size > len(head) and cut > 0 else head


# A chosen codec must give back exactly this text after a round trip fed a byte at a time,
# as a book is: codecs that are not for files of text (idna: dot-separated labels of at most
# 63 characters; punycode: whole strings only; undefined) fail it.
_ROUND_TRIP = ("Chapter 1. The Book\n" + "word " * 20 + "\n" + "A line, with: punctuation; and (more) "
               "\"quotes\" 100% [x] {y} <z> ~^_`|@#$&*+=/\\\n")


def _lookup_user_codec(encoding: str) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in encoding[:60])
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError, TypeError):  # ValueError: a NUL in the name
        info = None
    # _is_text_encoding is how CPython marks bytes-to-bytes codecs such as base64.
    if info is None or not getattr(info, "_is_text_encoding", True) or not _round_trips(info.name):
        raise UserError("input.encoding_unknown", encoding=shown)
    return _canonical(encoding)


def _round_trips(codec: str) -> bool:
    try:
        data = _ROUND_TRIP.encode(codec)
        decoder = codecs.getincrementaldecoder(codec)()
        text = "".join(decoder.decode(data[i:i + 1]) for i in range(len(data))) + decoder.decode(b"", final=True)
        # Errors="replace" is how the binary check reads a sample: the codec must support it.
        codecs.getincrementaldecoder(codec)(errors="replace").decode(data, final=True)
    except Exception:  # noqa: BLE001 - whatever a codec raises, it cannot read books
        return False
    return text == _ROUND_TRIP


def _check_not_binary(source: Path, sample: bytes, codec: str) -> None:
    if b"\0" in sample and not codec.startswith(_WIDE_CODECS):
        raise UserError("book.binary_nul", file=source.name)
    text = codecs.getincrementaldecoder(codec)(errors="replace").decode(sample, final=False)
    controls = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f")
    if controls > 0.05 * len(text):
        raise UserError("book.binary_controls", file=source.name)


# --------------------------------------------------------------------------- streaming decode


def _safe_cut(text: str) -> int:
    """Where to split decoded text so NFC and \\r\\n handling never straddle the split."""
    cut = text.rfind("\n") + 1
    if cut:
        return cut
    # A very long line: split before an ASCII character, which never composes with
    # what precedes it (a \r held back here is resolved with the next chunk).
    for i in range(len(text) - 1, 0, -1):
        if text[i] < "\x80":
            return i
    return 0


@dataclass
class _Stats:
    text_bytes: int = 0
    chars: int = 0
    lines: int = 0
    preview: str = ""
    has_text: bool = False  # anything other than whitespace
    ends_with_newline: bool = False


def _write_part(part: str, out, stats: _Stats, first: bool) -> None:
    if first and part.startswith("\ufeff"):  # a BOM the chosen codec did not consume
        part = part[1:]
    if "\r" in part:
        part = part.replace("\r\n", "\n").replace("\r", "\n")
    if not unicodedata.is_normalized("NFC", part):
        part = unicodedata.normalize("NFC", part)
    if not part:
        return
    data = part.encode("utf-8")
    out.write(data)
    stats.text_bytes += len(data)
    stats.chars += len(part)
    stats.lines += part.count("\n")
    stats.ends_with_newline = part.endswith("\n")
    if len(stats.preview) < PREVIEW_CHARS:
        stats.preview += part[: PREVIEW_CHARS - len(stats.preview)]
    if not stats.has_text:
        stats.has_text = not part.isspace()


def _decode_to(source: Path, codec: str, detected: bool, out) -> _Stats:
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    stats = _Stats()
    pending = ""  # decoded text after the last safe cut, waiting for the next chunk
    offset = 0  # bytes of the file handed to the decoder so far
    first = True
    with source.open("rb") as f:
        while True:
            chunk = f.read(CHUNK_SIZE)
            final = not chunk
            buffered = len(decoder.getstate()[0])  # bytes the decoder holds from the last chunk
            try:
                text = pending + decoder.decode(chunk, final=final)
            except UnicodeDecodeError as e:
                raise _decode_error(source, codec, detected, offset - buffered + e.start) from None
            except (UnicodeError, ValueError):  # a codec that fails without saying where
                raise UserError("input.encoding_failed", file=source.name, encoding=codec) from None
            offset += len(chunk)
            cut = len(text) if final else _safe_cut(text)
            pending = text[cut:]
            if cut:
                _write_part(text[:cut], out, stats, first)
                first = False
            if final:
                break
    if stats.chars and not stats.ends_with_newline:
        stats.lines += 1
    return stats


def _decode_error(source: Path, codec: str, detected: bool, at: int) -> UserError:
    return UserError("book.decode_detected" if detected else "book.decode_given", file=source.name, encoding=codec,
                     offset=at)


# --------------------------------------------------------------------------- the books folder


def _new_tmp_dir(books: Path) -> Path:
    # Not tempfile.mkdtemp: its 0700 mode would stay on the book folder after the rename.
    path = books / owned_tmp_name(TMP_PREFIX)  # the owner's pid: see home.clean_leftovers
    path.mkdir()
    return path


def _conflict(name: str) -> Conflict:
    return Conflict("book.exists", name=name)


def add_book(
    home: Path,
    source: Path | str,
    name: str | None = None,
    encoding: str | None = None,
    *,
    overwrite: bool = False,
) -> BookInfo:
    """Decode `source` to UTF-8 and store it as a book; returns its BookInfo."""
    source = Path(source)
    if not source.exists():
        raise UserError("book.no_file", path=str(source))
    if source.is_dir():
        raise UserError("book.is_folder", path=str(source))
    if name is None:
        try:
            name = validate_name(source.stem, "book name")
        except UserError:
            raise UserError("book.name_from_file", name=source.stem) from None
    else:
        name = validate_name(name, "book name")

    books = books_dir(home)
    books.mkdir(parents=True, exist_ok=True)
    final = book_dir(home, name)
    if final.exists() and not overwrite:
        raise _conflict(name)
    check_new_name(books, name)

    size = source.stat().st_size
    if size == 0:
        raise UserError("book.empty", file=source.name)
    try:
        sample = _read_sample(source, size)
    except PermissionError:
        raise UserError("book.unreadable", path=str(source)) from None
    if encoding is not None:
        codec, detected = _lookup_user_codec(encoding), False
    else:
        if b"\0" in sample and not _bom_codec(sample):  # checked first: it would confuse the detector
            raise UserError("book.binary_nul", file=source.name)
        codec, detected = detect_encoding(sample)[0], True
    _check_not_binary(source, sample, codec)

    tmp = _new_tmp_dir(books)
    try:
        with book_text(tmp).open("wb") as out:  # bytes: UTF-8 with "\n" on every OS
            stats = _decode_to(source, codec, detected, out)
            out.flush()
            os.fsync(out.fileno())
        if not stats.has_text:
            raise UserError("book.whitespace", file=source.name)
        info = BookInfo(
            name=name,
            encoding=codec,
            detected=detected,
            source_bytes=size,
            text_bytes=stats.text_bytes,
            chars=stats.chars,
            lines=stats.lines,
            preview=stats.preview,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            original_filename=source.name,
        )
        atomic_write_json(book_info(tmp), info.to_dict())
        fsync_dir(tmp)
        _move_into_place(tmp, final, overwrite)
    except BaseException:
        osdeps.remove_tree(tmp)
        raise
    return info


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    books = final.parent
    old = None
    if final.exists():
        if not overwrite:  # someone added the same name while we were decoding
            raise _conflict(final.name)
        # A directory cannot be renamed over a non-empty one: move the old book aside
        # first and put it back if the new one cannot take its place.
        old = _new_tmp_dir(books)
        try:
            osdeps.replace(final, old / "old")
        except PermissionError:  # Windows: a file of the old book is open elsewhere
            osdeps.remove_tree(old)
            raise osdeps.in_use(final) from None
    try:
        osdeps.replace(tmp, final)
    except BaseException as e:
        if old is not None:
            osdeps.replace(old / "old", final)
            osdeps.remove_tree(old)
        if isinstance(e, PermissionError):
            raise osdeps.in_use(final) from None
        raise
    fsync_dir(books)
    if old is not None:
        osdeps.remove_tree(old)  # what stays (held open) is cleaned at a later start


def _read_info(folder: Path) -> BookInfo:
    info = BookInfo.from_dict(read_json(book_info(folder)))
    info.name = folder.name  # the folder is the source of truth for the name
    return info


def list_books(home: Path) -> list[BookInfo]:
    """All books, sorted by name; folders without a readable book.json are skipped."""
    books = books_dir(home)
    if not books.is_dir():
        return []
    found = []
    for folder in books.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            found.append(_read_info(folder))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda b: (b.name.casefold(), b.name))


def _existing_book_dir(home: Path, name: str) -> Path:
    folder = book_dir(home, name)
    if not book_info(folder).is_file():
        raise NotFound("book.not_found", name=name)
    return folder


def get_book(home: Path, name: str) -> BookInfo:
    folder = _existing_book_dir(home, name)
    try:
        return _read_info(folder)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError("book.damaged", name=name) from None


def version(info: BookInfo) -> str:
    """Which upload of a book this is (a book replaced under its name is another version)."""
    return f"{info.created_at}|{info.text_bytes}"


def book_text_path(home: Path, name: str) -> Path:
    return book_text(_existing_book_dir(home, name))


def read_book_text(home: Path, name: str) -> str:
    # newline="": the file already has "\n" only; do not let any platform translate it.
    with book_text_path(home, name).open("r", encoding="utf-8", newline="") as f:
        return f.read()


def delete_book(home: Path, name: str) -> None:
    folder = book_dir(home, name)
    if not folder.is_dir():
        raise NotFound("book.not_found", name=name)
    # Rename first so the book disappears at once and is never seen half-deleted; Windows
    # refuses the rename while a file of the book is open, and then nothing has changed.
    trash = _new_tmp_dir(folder.parent)
    try:
        osdeps.replace(folder, trash / "book")
    except PermissionError:
        osdeps.remove_tree(trash)
        raise osdeps.in_use(folder) from None
    fsync_dir(folder.parent)
    osdeps.remove_tree(trash)  # what stays (held open) is cleaned at a later start


# --------------------------------------------------------------------------- training split


def split_train_val(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """Split off the last `val_fraction` of the text (by characters) for validation.

    The cut moves forward to just after a newline when one lies within 1% of the text
    length, so validation starts at the beginning of a line.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction <= 0.5:
        raise UserError("book.val_fraction", value=val_fraction)
    n = len(text)
    if val_fraction == 0 or n == 0:
        return text, ""
    cut = n - max(1, round(n * val_fraction))
    newline = text.find("\n", cut, cut + math.ceil(n / 100))
    if newline != -1 and newline + 1 < n:  # keep validation non-empty
        cut = newline + 1
    return text[:cut], text[cut:]
