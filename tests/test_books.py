import codecs
import json
import random
import unicodedata
from pathlib import Path

import pytest

from azr_trainer import books
from azr_trainer.books import (
    BookInfo,
    add_book,
    book_text_path,
    delete_book,
    detect_encoding,
    get_book,
    list_books,
    read_book_text,
    split_train_val,
)
from azr_trainer.home import Conflict, NotFound, UserError

RUSSIAN = (
    "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему. "
    "Всё смешалось в доме Облонских. Жена узнала, что муж был в связи с бывшею в их доме "
    "француженкою-гувернанткой, и объявила мужу, что не может жить с ним в одном доме.\n"
    "Положение это продолжалось уже третий день и мучительно чувствовалось и самими супругами, "
    "и всеми членами семьи, и домочадцами. Москва, Россия. Иван Николаевич Понырев писал стихи "
    "под псевдонимом Бездомный. Ёлка стояла в углу, а Юля читала книгу 'Ясная Поляна'.\n"
)
FRENCH_GERMAN = (
    "Le cœur a ses raisons que la raison ne connaît point. À côté de l'église, ça a été très agréable.\n"
    "Über die Brücke gehen wir. Die Bäume blühen schön im Frühling, und die Vögel singen fröhlich.\n"
    "¿Dónde está la biblioteca? El niño comió una manzana mañana por la mañana.\n"
)


def write(tmp_path: Path, data: bytes, filename: str = "book.txt") -> Path:
    path = tmp_path / "src" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "books").mkdir(parents=True)
    return home


def entries(home: Path) -> list[str]:
    """Everything in home/books, hidden temp folders included."""
    return sorted(p.name for p in (home / "books").iterdir())


def stored_bytes(home: Path, name: str) -> bytes:
    return book_text_path(home, name).read_bytes()


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("encoding", ["cp1251", "koi8_r", "cp866", "mac_cyrillic"])
def test_russian_single_byte_encodings_are_detected(home, tmp_path, encoding):
    # cp1251 and mac_cyrillic share most lowercase letters, and koi8_r/cp1251 swap case;
    # the plausibility check must still pick the right one for a paragraph of prose.
    src = write(tmp_path, RUSSIAN.encode(encoding))
    info = add_book(home, src)
    assert info.encoding == encoding
    assert info.detected is True
    assert read_book_text(home, "book") == RUSSIAN
    assert info.chars == len(RUSSIAN)
    assert info.text_bytes == len(RUSSIAN.encode("utf-8"))
    assert info.source_bytes == len(RUSSIAN.encode(encoding))
    assert info.lines == 2


@pytest.mark.parametrize("encoding", ["cp1251", "koi8_r", "cp866", "mac_cyrillic"])
def test_detect_encoding_on_russian_sample(encoding):
    codec, confidence = detect_encoding(RUSSIAN.encode(encoding))
    assert codec == encoding
    assert 0.0 <= confidence <= 1.0


def test_explicit_encoding_overrides_detection(home, tmp_path):
    # A line this short is too little evidence to tell mac_cyrillic from cp1251 (it decodes
    # to plausible letters in both), which is what --encoding is for.
    text = "Привет, мир! Как дела? Это короткий текст.\n"
    src = write(tmp_path, text.encode("mac_cyrillic"))
    info = add_book(home, src, encoding="Mac-Cyrillic")
    assert info.encoding == "mac_cyrillic"
    assert info.detected is False
    assert read_book_text(home, "book") == text


def test_utf8_with_bom(home, tmp_path):
    text = "Привет, мир!\nHello, world!\n"
    info = add_book(home, write(tmp_path, codecs.BOM_UTF8 + text.encode("utf-8")))
    assert info.encoding == "utf_8_sig"
    assert stored_bytes(home, "book") == text.encode("utf-8")


def test_forced_utf8_on_bom_file_still_stores_no_bom(home, tmp_path):
    text = "Привет, мир!\n"
    add_book(home, write(tmp_path, codecs.BOM_UTF8 + text.encode("utf-8")), encoding="utf-8")
    assert stored_bytes(home, "book") == text.encode("utf-8")


@pytest.mark.parametrize(
    "bom, codec, expected",
    [
        (codecs.BOM_UTF16_LE, "utf-16-le", "utf_16"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "utf_16"),
        (codecs.BOM_UTF32_LE, "utf-32-le", "utf_32"),
        (codecs.BOM_UTF32_BE, "utf-32-be", "utf_32"),
    ],
)
def test_utf16_and_utf32_with_bom(home, tmp_path, bom, codec, expected):
    text = "Привет, мир! Hello 😀\nВторая строка.\n"
    info = add_book(home, write(tmp_path, bom + text.encode(codec)))
    assert info.encoding == expected
    assert stored_bytes(home, "book") == text.encode("utf-8")  # no BOM, UTF-8


def test_cjk_and_emoji_in_utf8(home, tmp_path):
    text = "漢字かな交じり文です。한국어 텍스트. 中文文本 😀🎉\n第二行。\n"
    info = add_book(home, write(tmp_path, text.encode("utf-8")))
    assert info.encoding == "utf_8"
    assert read_book_text(home, "book") == text
    assert info.chars == len(text)
    assert info.text_bytes == len(text.encode("utf-8"))


def test_plain_ascii_is_utf8(home, tmp_path):
    info = add_book(home, write(tmp_path, b"Just plain English text.\n"))
    assert info.encoding == "utf_8"


@pytest.mark.parametrize("encoding", ["cp1252", "latin_1"])
def test_western_european_accents(home, tmp_path, encoding):
    text = FRENCH_GERMAN if encoding == "cp1252" else FRENCH_GERMAN.replace("œ", "oe")  # no œ in latin-1
    info = add_book(home, write(tmp_path, text.encode(encoding)))
    # latin-1 and cp1252 agree on every character of the latin-1 text; either name is right.
    assert info.encoding in {"cp1252", "iso8859_1"}
    assert read_book_text(home, "book") == text


# --------------------------------------------------------------------------- normalisation


def test_newlines_are_normalised(home, tmp_path):
    info = add_book(home, write(tmp_path, b"one\r\ntwo\rthree\n\r\nfour"))
    assert read_book_text(home, "book") == "one\ntwo\nthree\n\nfour"
    assert info.lines == 5


def test_nfd_input_is_stored_as_nfc(home, tmp_path):
    nfc = "Café crème, Ёжик и йогурт. Äpfel.\n"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    add_book(home, write(tmp_path, nfd.encode("utf-8")))
    assert read_book_text(home, "book") == nfc


def test_book_json_and_info(home, tmp_path):
    text = "Строка " * 100 + "\n"
    info = add_book(home, write(tmp_path, text.encode("utf-8"), "Мой роман.txt"))
    assert info.name == "Мой роман"
    assert info.original_filename == "Мой роман.txt"
    assert info.preview == text[: books.PREVIEW_CHARS]
    assert info.created_at.endswith("+00:00")
    on_disk = json.loads((home / "books" / "Мой роман" / "book.json").read_text(encoding="utf-8"))
    assert on_disk == info.to_dict()
    assert BookInfo.from_dict(on_disk) == info
    assert get_book(home, "Мой роман") == info


# --------------------------------------------------------------------------- streaming


def _one_shot(raw: bytes, encoding: str) -> str:
    text = raw.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)


def test_streaming_matches_one_shot_decode(home, tmp_path, monkeypatch):
    monkeypatch.setattr(books, "CHUNK_SIZE", 1000)
    rng = random.Random(0)
    sentences = [s + "." for s in RUSSIAN.replace("\n", " ").split(".") if s.strip()]
    # First line is 999 bytes so its "\r\n" straddles the first chunk boundary.
    parts = ["а" * 999 + "\r\n"]
    size = 0
    while size < 10_000_000:
        line = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 6)))
        line += rng.choice(["\r\n", "\n", "\r", "\r\r\n"])
        parts.append(line)
        size += len(line)
    raw = "".join(parts).encode("cp1251")
    info = add_book(home, write(tmp_path, raw))
    expected = _one_shot(raw, "cp1251")
    assert info.encoding == "cp1251"
    assert read_book_text(home, "book") == expected
    assert info.chars == len(expected)
    assert info.lines == expected.count("\n") + (not expected.endswith("\n"))
    assert info.text_bytes == len(expected.encode("utf-8"))


def test_streaming_keeps_multibyte_and_combining_sequences_whole(home, tmp_path, monkeypatch):
    # 7-byte chunks split UTF-8 characters and separate letters from their combining
    # accents; one long line forces cuts that are not at newlines.
    monkeypatch.setattr(books, "CHUNK_SIZE", 7)
    nfd = unicodedata.normalize("NFD", "Éléphant ёжик 😀 crème brûlée, ") * 50
    raw = (nfd + "\r\n" + "Ё" * 30 + "\r" + nfd).encode("utf-8")
    add_book(home, write(tmp_path, raw))
    assert read_book_text(home, "book") == _one_shot(raw, "utf-8")


def test_decode_error_reports_exact_byte_offset(home, tmp_path, monkeypatch):
    # Chunks of odd size split two-byte characters, so the decoder carries bytes over.
    monkeypatch.setattr(books, "CHUNK_SIZE", 1001)
    good = ("Я" * 3000).encode("utf-8")
    raw = good + b"\xff" + good
    with pytest.raises(UserError, match=rf"byte {len(good):,}\b") as err:
        add_book(home, write(tmp_path, raw), encoding="utf-8")
    assert err.value.code == "book.decode_given" and err.value.params["offset"] == len(good)
    assert "detected automatically" in str(err.value)
    assert entries(home) == []


def test_bad_byte_after_the_detection_sample(home, tmp_path, monkeypatch):
    monkeypatch.setattr(books, "SAMPLE_SIZE", 1000)
    monkeypatch.setattr(books, "CHUNK_SIZE", 1000)
    good = ("Привет, мир!\n" * 200).encode("utf-8")
    raw = good + "Мир".encode("cp1251") + b"\n"
    with pytest.raises(UserError, match=rf"byte {len(good):,}\b.*Choose the encoding yourself"):
        add_book(home, write(tmp_path, raw))
    assert entries(home) == []


# --------------------------------------------------------------------------- rejected files


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is empty"),
        (b"   \n\t\r\n  \n", "only whitespace"),
        (random.Random(1).randbytes(5000), "binary"),
        (bytes(b for b in random.Random(2).randbytes(6000) if b)[:5000], "binary|not be a text file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(200), "binary"),
        (b"text\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0e\x0f\x10 more", "binary"),
    ],
    ids=["empty", "whitespace", "random-bytes", "random-bytes-without-nul", "png", "control-chars"],
)
def test_rejected_files_leave_no_trace(home, tmp_path, data, message):
    with pytest.raises(UserError, match=message) as err:
        add_book(home, write(tmp_path, data))
    assert ".txt" in str(err.value)  # tells the person what to choose instead
    assert entries(home) == []


def test_missing_source_and_folder(home, tmp_path):
    with pytest.raises(UserError, match="no file"):
        add_book(home, tmp_path / "nope.txt")
    with pytest.raises(UserError, match="folder"):
        add_book(home, tmp_path)
    assert entries(home) == []


def test_wrong_forced_encoding(home, tmp_path):
    raw = RUSSIAN.encode("cp1251")
    with pytest.raises(UserError) as err:
        add_book(home, write(tmp_path, raw), encoding="utf-8")
    message = str(err.value)
    assert "byte 0" in message  # the very first letter is not valid UTF-8
    assert "detected automatically" in message and "Windows-1251" in message
    assert entries(home) == []


@pytest.mark.parametrize("encoding", ["no-such-codec", "base64", ""])
def test_unknown_encoding_name(home, tmp_path, encoding):
    with pytest.raises(UserError, match="cp1251"):
        add_book(home, write(tmp_path, b"hello\n"), encoding=encoding)
    assert entries(home) == []


@pytest.mark.parametrize("name", ["../x", "a/b", "", "  ", ".hidden", "a\\b", "CON"])
def test_bad_names_are_rejected(home, tmp_path, name):
    with pytest.raises(UserError):
        add_book(home, write(tmp_path, b"hello\n"), name=name)
    assert entries(home) == []


def test_bad_default_name_suggests_name_option(home, tmp_path):
    with pytest.raises(UserError, match="give the book a name yourself"):
        add_book(home, write(tmp_path, b"hello\n", "bad(name).txt"))


@pytest.mark.parametrize("name", ["../x", "a/b", ""])
def test_lookups_reject_bad_names(home, name):
    for fn in (get_book, book_text_path, read_book_text, delete_book):
        with pytest.raises(UserError):
            fn(home, name)


# --------------------------------------------------------------------------- conflicts and lifecycle


def test_duplicate_name_conflicts_and_overwrite_replaces(home, tmp_path):
    add_book(home, write(tmp_path, b"first version\n"), name="novel")
    with pytest.raises(Conflict, match="Give the new one another name") as err:
        add_book(home, write(tmp_path, b"second version\n"), name="novel")
    assert "delete" in str(err.value)
    assert read_book_text(home, "novel") == "first version\n"

    info = add_book(home, write(tmp_path, b"second version\n"), name="novel", overwrite=True)
    assert info.chars == len("second version\n")
    assert read_book_text(home, "novel") == "second version\n"
    assert entries(home) == ["novel"]


def test_failed_overwrite_keeps_the_old_book(home, tmp_path):
    add_book(home, write(tmp_path, b"keep me\n"), name="novel")
    with pytest.raises(UserError):
        add_book(home, write(tmp_path, b""), name="novel", overwrite=True)
    assert read_book_text(home, "novel") == "keep me\n"
    assert entries(home) == ["novel"]


def test_list_get_delete(home, tmp_path):
    add_book(home, write(tmp_path, b"bravo\n"), name="b")
    add_book(home, write(tmp_path, b"alpha\n"), name="A")
    (home / "books" / "not-a-book").mkdir()
    (home / "books" / "broken").mkdir()
    (home / "books" / "broken" / "book.json").write_text("{not json", encoding="utf-8")

    assert [b.name for b in list_books(home)] == ["A", "b"]
    assert get_book(home, "b").preview == "bravo\n"

    with pytest.raises(NotFound, match="There is no book named “zzz”."):
        get_book(home, "zzz")
    with pytest.raises(NotFound):
        read_book_text(home, "zzz")
    with pytest.raises(NotFound):
        delete_book(home, "zzz")

    delete_book(home, "b")
    assert [b.name for b in list_books(home)] == ["A"]
    with pytest.raises(NotFound):
        get_book(home, "b")
    assert entries(home) == ["A", "broken", "not-a-book"]


def test_list_books_without_books_folder(tmp_path):
    assert list_books(tmp_path / "empty-home") == []


def test_add_book_creates_books_folder(tmp_path):
    home = tmp_path / "fresh"
    add_book(home, write(tmp_path, b"hello\n"))
    assert read_book_text(home, "book") == "hello\n"


# --------------------------------------------------------------------------- train/val split


def test_split_train_val_cuts_at_newline_near_the_end():
    text = "".join(f"line number {i:04d}\n" for i in range(1000))
    train, val = split_train_val(text)
    assert train + val == text
    assert abs(len(val) - 0.1 * len(text)) <= 0.01 * len(text)
    assert train.endswith("\n") and val.startswith("line number")
    assert text.endswith(val)


def test_split_train_val_without_newlines_cuts_at_the_character():
    text = "x" * 1000
    train, val = split_train_val(text, 0.2)
    assert (len(train), len(val)) == (800, 200)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.25, 0.5])
def test_split_train_val_fractions(fraction):
    text = "Слово за словом.\n" * 500
    train, val = split_train_val(text, fraction)
    assert train + val == text
    assert abs(len(val) - fraction * len(text)) <= 0.01 * len(text)
    if fraction == 0:
        assert val == ""


@pytest.mark.parametrize("fraction", [-0.1, 0.51, 1.0, float("nan")])
def test_split_train_val_rejects_bad_fractions(fraction):
    with pytest.raises(UserError, match="between 0 and 0.5"):
        split_train_val("some text\n", fraction)
