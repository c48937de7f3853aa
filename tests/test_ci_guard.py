"""tests/ci_guard.py: with TWGTM_REQUIRE_COMFYUI=1 a skipped `comfyui` test fails, so CI cannot pass by skipping."""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.comfyui
def test_live_skips_inside():
    pytest.skip("no ComfyUI here")

@pytest.mark.comfyui
@pytest.mark.skipif(True, reason="set COMFYUI_DIR")
def test_live_skipif():
    pass

@pytest.mark.comfyui
def test_live_runs():
    pass

def test_other_skip():
    pytest.skip("not a comfyui test")

def test_other_runs():
    pass
"""


@pytest.fixture()
def inner(pytester):
    pytester.makeconftest("from ci_guard import pytest_collection_modifyitems, pytest_runtest_makereport\n")
    pytester.makeini("[pytest]\nmarkers =\n    comfyui: live\n")
    return pytester


def test_without_the_variable_comfyui_tests_skip(inner, monkeypatch):
    monkeypatch.delenv("TWGTM_REQUIRE_COMFYUI", raising=False)
    inner.makepyfile(test_inner=INNER)
    result = inner.runpytest("-rs")
    result.assert_outcomes(passed=2, skipped=3)
    assert result.ret == 0


def test_required_comfyui_skips_fail_and_name_the_reason(inner, monkeypatch):
    monkeypatch.setenv("TWGTM_REQUIRE_COMFYUI", "1")
    inner.makepyfile(test_inner=INNER)
    result = inner.runpytest()
    result.assert_outcomes(passed=2, skipped=1, failed=1, errors=1)  # the skipif one fails in setup: an error
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*TWGTM_REQUIRE_COMFYUI=1: a test marked 'comfyui' may not skip. It skipped: "
                                 "no ComfyUI here*"])
    result.stdout.fnmatch_lines(["*may not skip. It skipped: set COMFYUI_DIR*"])


def test_required_but_no_comfyui_test_collected_is_a_usage_error(inner, monkeypatch):
    monkeypatch.setenv("TWGTM_REQUIRE_COMFYUI", "1")
    inner.makepyfile(test_inner="def test_plain():\n    pass\n")
    result = inner.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no test marked 'comfyui' was collected*"])
