"""The API says what it does: requests generated from the studio's own OpenAPI document, sent to
a real ``azr serve``, get only the status codes, content types and bodies that document
declares, and never a server error.

Only malformed requests go to the routes that start long work (a run, a reasoning model made
from zero), so nothing trains and the event streams answer at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (after the skip: hypothesis comes with it)
from hypothesis.errors import Unsatisfiable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    home = tmp_path_factory.mktemp("openapi") / "home"
    port = _free_port()
    log_path = home.parent / "serve.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", AZR_HOME=str(home))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "azr_trainer.cli", "serve", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"azr serve exited: {log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/api/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        assert "Unexpected error" not in log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def api_schema(studio_url):
    return schemathesis.openapi.from_url(studio_url + "/openapi.json")


# Requests that could start long work: a run, or a reasoning model made from zero. Only malformed
# ones are sent there (refused before anything starts).
LONG_WORK = {("POST", "/api/runs"), ("POST", "/api/reason/models")}


def _cases(api_schema):
    """Each operation with each kind of data to send it. The event streams are in: no run is ever
    made and no model ever trained here, so they answer at once (404, 409 or 422)."""
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            if (operation.method.upper(), operation.path) not in LONG_WORK or mode.is_negative:
                yield operation, mode


def test_answers_match_the_document(api_schema):
    failures = []
    for operation, mode in _cases(api_schema):
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            check()
        except KeyboardInterrupt:
            raise
        except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, or only strings)
            continue
        except BaseException as e:  # every operation is tried: the report names them all
            found = [str(x).splitlines()[0] for x in getattr(e, "exceptions", [e])]
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {'; '.join(found)}\n{str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)
