"""The one message catalogue: every sentence a person sees, in English and Russian.

The page's translations live in ``web/i18n/<lang>.json``; the messages the library, the CLI
and the API produce live in the same files under the ``msg`` key, addressed by a code such as
``book.empty``. The page renders a code with its parameters through the same files, so a
message is written once per language. Placeholders are ``{name}``; they are substituted by a
plain regular expression (never ``str.format``, which would reach attributes of the values).
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

LANGUAGES = ("en", "ru")
_DIR = Path(__file__).parent / "web" / "i18n"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=None)
def _table(lang: str) -> dict:
    return json.loads((_DIR / f"{lang}.json").read_text(encoding="utf-8"))


def _lookup(table: dict, key: str):
    node = table
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _plural_ru(n: int) -> str:
    n = abs(n)
    if n % 10 == 1 and n % 100 != 11:
        return "one"
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return "few"
    return "many"


def _format_value(value, lang: str) -> str:
    if callable(getattr(value, "render", None)):  # a Notice inside a message: in the same language
        return value.render(lang)
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u00a0" if lang == "ru" else ",")
    if isinstance(value, float):
        text = f"{value:.4g}"
        return text.replace(".", ",") if lang == "ru" and "e" not in text else text
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v, lang) for v in value)
    return str(value)


def has(key: str) -> bool:
    return isinstance(_lookup(_table("en"), key), (str, dict))


def text(key: str, lang: str = "en", **params) -> str:
    """The sentence for ``key`` (e.g. ``msg.book.empty``) in ``lang``, with ``{name}`` filled from
    params. A value that is an object of plural forms is chosen by ``params['count']``."""
    lang = lang if lang in LANGUAGES else "en"
    value = _lookup(_table(lang), key)
    if value is None:
        value = _lookup(_table("en"), key)
    if value is None:
        return key
    if isinstance(value, dict):
        n = int(params.get("count", 0) or 0)
        form = _plural_ru(n) if lang == "ru" else ("one" if n == 1 else "other")
        value = value.get(form) or value.get("other") or next(iter(value.values()))
    return _PLACEHOLDER.sub(lambda m: _format_value(params[m.group(1)], lang) if m.group(1) in params
                            else m.group(0), str(value))


def message(code: str, lang: str = "en", **params) -> str:
    """A library message by its code (the ``msg`` part of the catalogue)."""
    return text(f"msg.{code}", lang, **params)


def language_from_accept(header: str | None) -> str:
    """The first supported language in an HTTP Accept-Language header (English otherwise)."""
    for part in (header or "").split(","):
        code = part.split(";")[0].strip().lower()
        for lang in LANGUAGES:
            if code == lang or code.startswith(lang + "-"):
                return lang
    return "en"


def language_from_environment() -> str:
    """The CLI's language: Russian when the locale (LC_ALL, LC_MESSAGES, LANG or LANGUAGE) is."""
    for var in ("AZR_LANG", "LC_ALL", "LC_MESSAGES", "LANG", "LANGUAGE"):
        value = os.environ.get(var, "").lower()
        if value:
            return "ru" if value.startswith("ru") else "en"
    if os.name == "nt":  # Windows keeps the UI language out of the environment
        try:
            import locale
            return "ru" if (locale.getlocale()[0] or "").lower().startswith(("ru", "russian")) else "en"
        except Exception:  # noqa: BLE001 - any failure means the default
            return "en"
    return "en"
