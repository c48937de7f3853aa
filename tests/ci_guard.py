"""pytest hooks that keep CI honest about the ComfyUI tests (imported by conftest.py).

With ``TWGTM_REQUIRE_COMFYUI=1`` (``.ci/run`` sets it), tests marked ``comfyui`` may not skip: a skip (no
``COMFYUI_DIR``, no Chromium, ...) is reported as a failure that names the skip reason, and a run that collects no
``comfyui`` test at all stops with a usage error. Without the variable, the tests skip as usual. At the end of a
run, one line per ComfyUI host counts the outcomes of the live tests (tests/test_comfyui_live.py) on that host.
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict

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


LIVE_FILE = "tests/test_comfyui_live.py"
_HOST_ID = re.compile(r"\[comfyui-(\d+(?:\.\d+)+)")
_live_outcomes: dict[str, Counter] = defaultdict(Counter)


def pytest_runtest_logreport(report):
    """Count each live test once per host: its call, or its setup when that did not pass (a skip or an error)."""
    match = _HOST_ID.search(report.nodeid)
    if not report.nodeid.startswith(LIVE_FILE) or match is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _live_outcomes[match.group(1)][report.outcome] += 1


def pytest_terminal_summary(terminalreporter):
    for version, counts in sorted(_live_outcomes.items()):
        terminalreporter.write_line(f"live ComfyUI tests on {version}: " +
                                    ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
