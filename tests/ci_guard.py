"""pytest hooks that keep CI honest about the ComfyUI tests (imported by conftest.py).

With ``TWGTM_REQUIRE_COMFYUI=1`` (``.ci/run`` sets it), tests marked ``comfyui`` may not skip: a skip (no
``COMFYUI_DIR``, no Chromium, ...) is reported as a failure that names the skip reason, and a run that collects no
``comfyui`` test at all stops with a usage error. Without the variable, the tests skip as usual.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_VAR = "TWGTM_REQUIRE_COMFYUI"


def comfyui_required() -> bool:
    return os.environ.get(REQUIRE_VAR, "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if comfyui_required() and not any(item.get_closest_marker("comfyui") for item in items):
        raise pytest.UsageError(f"{REQUIRE_VAR}=1, but no test marked 'comfyui' was collected "
                                f"(expected tests/test_comfyui_live.py)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and not hasattr(rep, "wasxfail") and item.get_closest_marker("comfyui") and comfyui_required():
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        rep.outcome = "failed"
        rep.longrepr = f"{REQUIRE_VAR}=1: a test marked 'comfyui' may not skip. It skipped: {reason}"
