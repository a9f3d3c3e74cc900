"""``azr serve --open``: show the studio in the web browser once it answers.

The launchers (studio.sh, studio.cmd, studio.ps1) start the studio this way, so a person who
double-clicks one sees the page without copying the address from the console.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
import webbrowser

WAIT_S = 120  # the server imports PyTorch first: slow on a cold laptop disk


def browser_host(host: str) -> str:
    """The address a browser on this computer reaches the server at."""
    host = host.strip("[]")
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def has_display() -> bool:
    # Without a desktop, Linux's webbrowser would start a text browser inside the server's console.
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def open_when_listening(host: str, port: int, token: str | None) -> str | None:
    """Start a thread that opens the studio's page once ``host:port`` accepts connections.
    Returns the token the server must use: one is made up here (as ``serve`` would) when the
    address is not loopback, so that the opened link carries it."""
    from .routes.guard import is_loopback

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    if not has_display():
        return token
    target = browser_host(host)
    shown = f"[{target}]" if ":" in target else target
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")

    def wait_then_open():
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((target, port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            return
        try:
            webbrowser.open(url)
        except Exception:  # noqa: BLE001 - no browser is no error: the address is printed anyway
            pass

    threading.Thread(target=wait_then_open, name="azr-open-browser", daemon=True).start()
    return token
