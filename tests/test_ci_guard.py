"""tests/ci_guard.py: with TWGTM_REQUIRE_COMFYUI=1 a skipped `comfyui` test fails, so CI cannot pass by skipping."""
from __future__ import annotations

import os
from pathlib import Path

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


LIVE = """
import pytest

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module", params=["0.3.64", "0.33.0"], ids=lambda v: f"comfyui-{v}")
def host(request):
    return request.param


@pytest.mark.parametrize("case", ["a", "b"])
def test_live(host, case):
    assert not (host == "0.33.0" and case == "b")


def test_live_skips(host):
    pytest.skip("no frontend")
"""


def test_the_live_outcomes_are_counted_per_host_before_the_closing_line(pytester, monkeypatch):
    monkeypatch.setenv("TWGTM_REQUIRE_COMFYUI", "1")
    pytester.makeconftest("from ci_guard import pytest_collection_modifyitems, pytest_runtest_makereport, "
                          "pytest_runtest_logreport, pytest_terminal_summary\n")
    pytester.makeini("[pytest]\nmarkers =\n    comfyui: live\n")
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_comfyui_live.py").write_text(LIVE)
    # in a subprocess: the counts live in ci_guard's module state, which an in-process run would share with
    # the outer run (and add to its own summary)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-q", "tests")
    result.assert_outcomes(passed=3, failed=3)  # the skips fail under TWGTM_REQUIRE_COMFYUI=1
    lines = result.stdout.lines
    assert "live ComfyUI tests on 0.3.64: 1 failed, 2 passed" in lines
    assert "live ComfyUI tests on 0.33.0: 2 failed, 1 passed" in lines
    assert lines.index("live ComfyUI tests on 0.33.0: 2 failed, 1 passed") < len(lines) - 1
    assert "3 failed, 3 passed" in lines[-1]  # pytest's own closing line stays last
