"""The data folder ($AZR_HOME): opening it, names, atomic writes, and clearing what killed
processes left behind. Where things live inside it is layout.py (re-exported here).

Default: ``~/azr-home``. Override with the AZR_HOME environment variable or ``--home``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

from . import layout
from .errors import Conflict, NotFound, UserError, os_reason  # noqa: F401 - re-exported for the modules that use them
from .layout import *  # noqa: F401,F403 - the layout's paths, for the modules that import them from here
from .layout import TMP_PREFIX
# The file and process calls that differ between systems live in osdeps; re-exported for the
# modules that have always taken them from here.
from .osdeps import (  # noqa: F401
    atomic_path, atomic_write, atomic_write_bytes, fsync_dir, process_alive, remove_file, remove_tree, replace,
)

DEFAULT_HOME_NAME = "azr-home"

# Letters (any script), digits, and a few separators; no slashes, no leading dot.
_NAME_RE = re.compile(r"^[^\W][\w.\- ]{0,63}$", re.UNICODE)



def home_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        path = Path(explicit)
    elif os.environ.get("AZR_HOME"):
        path = Path(os.environ["AZR_HOME"])
    else:
        path = Path.home() / DEFAULT_HOME_NAME
    path = path.expanduser().resolve()
    for top in (layout.books_dir(path), layout.models_dir(path)):
        try:
            top.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a folder should be
            where = next((p for p in (top, *top.parents) if p.exists() and not p.is_dir()), path)
            raise UserError("input.home_not_folder", path=path, where=where) from None
        except PermissionError:
            raise UserError("input.home_denied", path=path) from None
        except OSError as e:  # a read-only disk, /proc, a name too long, ...
            raise UserError("input.home_unusable", path=path, reason=os_reason(e)) from None
    return path


# Device names Windows reserves in every folder, with or without an extension ("con.txt").
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in "123456789¹²³")}
# Windows refuses a path of 260 characters or more (unless long paths are switched on). The
# deepest file an item holds, e.g. checkpoints/selfplay/<run>/ plus a step file's temp name,
# stays within this many characters after the item's own folder.
WINDOWS_MAX_PATH = 259
DEEPEST_INSIDE = 90


# ---- temporary files of live processes, and what a killed one left behind

STALE_AFTER = 3600.0  # seconds untouched after which a temp entry with no owner in its name is abandoned
_OWNER_RE = re.compile(r"-(\d+)-[0-9a-z_]+$")


def owned_tmp_name(prefix: str) -> str:
    """A temp name that says which process made it (``<prefix><pid>-<random>``), so that
    clean_leftovers can tell what a killed process left from what a live one is writing."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"


def _last_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return newest


def clean_leftovers(home: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temp entries (``.tmp/*``, ``books/.tmp-*``, ``models/.tmp-*``) that no live
    process can be using: made by a process that is gone, or, for names without an owner,
    untouched for STALE_AFTER seconds. Several studios and commands may share one data
    folder, so entries of live processes are never removed. Returns what was removed."""
    now = time.time() if now is None else now
    candidates = []
    if layout.tmp_dir(home).is_dir():
        candidates += list(layout.tmp_dir(home).iterdir())
    for top in (layout.books_dir(home), layout.models_dir(home)):
        if top.is_dir():
            candidates += [p for p in top.iterdir() if p.name.startswith(TMP_PREFIX)]
    removed = []
    for entry in candidates:
        owner = _OWNER_RE.search(entry.name)
        try:
            if owner and int(owner.group(1)) != os.getpid():
                stale = not process_alive(int(owner.group(1))) or now - _last_change(entry) > STALE_AFTER
            else:
                stale = not owner and now - _last_change(entry) > STALE_AFTER
        except OSError:  # gone meanwhile
            continue
        if stale and remove_tree(entry):  # one still held open stays for a later start
            removed.append(entry)
    return removed


def validate_name(name: str, what: str = "name") -> str:
    """Names become folder names, so they must be safe on every OS. (``what`` is kept for the
    callers; the messages are the same for books and models.)"""
    if not isinstance(name, str) or not name.strip():
        raise UserError("name.empty")
    name = name.strip()
    if name.endswith("."):  # Windows drops trailing dots: "book." would become "book"
        raise UserError("name.trailing_dot", name=name)
    if ".." in name or "/" in name or "\\" in name or not _NAME_RE.match(name):
        raise UserError("name.invalid", name=name)
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise UserError("name.reserved", name=name)
    return name


def name_taken_ignoring_case(folder: Path, name: str) -> str | None:
    """The name of an entry in ``folder`` that differs from ``name`` only in letter case (Windows
    and macOS would take them for one folder), or None."""
    key = name.casefold()
    try:
        entries = [e.name for e in os.scandir(folder)]
    except FileNotFoundError:
        return None
    return next((e for e in entries if e != name and e.casefold() == key), None)


def check_new_name(folder: Path, name: str) -> None:
    """Refuse a new book's or model's ``name`` in ``folder`` that only Linux could hold: one that
    differs only in case from an existing one, or one whose files would pass Windows' path limit
    (checked everywhere, so a data folder works wherever it is copied)."""
    other = name_taken_ignoring_case(folder, name)
    if other is not None:
        raise Conflict("name.case_taken", name=name, other=other)
    base = len(os.path.abspath(folder)) + 1
    if base + len(name) + DEEPEST_INSIDE > WINDOWS_MAX_PATH:
        raise UserError("name.path_too_long", name=name, room=max(0, WINDOWS_MAX_PATH - DEEPEST_INSIDE - base))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
