"""The page itself, the studio's health and the settings the page builds its forms from."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from .. import __version__, osdeps
from .. import settings as settings_mod

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index():
    page = WEB_DIR / "index.html"
    if not page.is_file():
        return HTMLResponse("<!doctype html><title>AZR Trainer</title><p>The web page is not installed; "
                            "the API is at <a href=\"/docs\">/docs</a>.</p>")
    return FileResponse(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


@router.get("/api/health", tags=["studio"])
def health():
    """``reasoning``: whether reasoning mode runs here; off Linux, why not (code, params)."""
    refusal = osdeps.reasoning_refusal()
    return {"ok": True, "version": __version__, "reasoning": {"available": refusal is None, **(refusal or {})}}


@router.get("/api/settings", tags=["studio"])
def get_settings():
    """Every setting the page offers, per kind of run and for a model's shape: type, default,
    bounds, unit and the catalogue keys of its label and help (settings.py)."""
    return settings_mod.to_json()
