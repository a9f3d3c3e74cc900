"""Errors a person can act on, by code and parameters, rendered from the message catalogue.

``raise UserError("book.empty", name=name)`` — the code names an entry under ``msg`` in
``web/i18n/<lang>.json``; the parameters fill its placeholders. The CLI renders it in the
locale's language and exits 2; the API answers ``{"detail", "code", "params"}`` with the
status below, the detail in the request's language; a worker reports code and params in its
events. ``str(error)`` is the English text (for logs).
"""

from __future__ import annotations

from . import catalogue


class UserError(Exception):
    status = 400

    def __init__(self, code: str, /, **params):
        self.code = code
        self.params = {k: _plain(v) for k, v in params.items()}
        super().__init__(self.render("en"))

    def render(self, lang: str = "en") -> str:
        if catalogue.has(f"msg.{self.code}"):
            return catalogue.message(self.code, lang, **self.params)
        return self.code  # a message not yet given a code: shown as written

    @property
    def coded(self) -> bool:
        return catalogue.has(f"msg.{self.code}")

    def to_dict(self, lang: str = "en") -> dict:
        return {"detail": self.render(lang), "code": self.code, "params": self.params}


class Notice(str):
    """A sentence a run or a result reports (a warning, a log line, a note): the English text, so
    it prints and serializes as before, with its code and parameters to render it in another
    language (``render``) or hand it to the page (``to_dict``)."""

    code: str
    params: dict

    def __new__(cls, code: str, /, **params):
        params = {k: _plain(v) for k, v in params.items()}
        self = super().__new__(cls, catalogue.message(code, "en", **params))
        self.code, self.params = code, params
        return self

    def __reduce__(self):  # str's own would rebuild it from the text alone
        return (_notice, (self.code, self.params))

    def render(self, lang: str = "en") -> str:
        return catalogue.message(self.code, lang, **self.params)

    def to_dict(self, lang: str = "en") -> dict:
        return {"message": self.render(lang), "code": self.code, "params": self.params}


# The operating system's errors a person meets most, by errno name: their own words in the catalogue.
_OS_REASONS = ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "ENAMETOOLONG", "ENOENT", "EIO")


def os_reason(exc: OSError) -> str:
    """Why an OSError happened, for a message's ``{reason}``: a Notice in the person's language
    for the common causes, else the system's own words."""
    import errno
    name = errno.errorcode.get(exc.errno or 0)
    if name in _OS_REASONS:
        return Notice(f"reason.os.{name}")
    return exc.strerror or type(exc).__name__


def _notice(code: str, params: dict) -> Notice:
    return Notice(code, **params)


class NotFound(UserError):
    status = 404


class Conflict(UserError):
    status = 409


def _plain(value):
    """Parameters travel as JSON (events, API answers): keep them plain."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
