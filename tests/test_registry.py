"""What the Comfy registry and ComfyUI-Manager get: the archive's file list, its security scan, the version range.

``comfy node publish`` archives the git-tracked files, minus the gitignore-style patterns of ``.comfyignore``,
plus the paths of ``[tool.comfy].includes``; :func:`archived_files` builds that list the same way (``git
ls-files`` and ``pathspec``'s gitignore matching, as comfy-cli does). The archive must hold what the nodes need (a
copy of only those files is imported and registered as ComfyUI does), nothing for researchers and CI (trainer,
tests, scripts), and nothing the registry's scan flags: no ``eval``/``exec`` (``ruff --select S102,S307``) and no
subprocess at all (the scan rejects subprocess pip installs; the nodes need no process).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stubs  # noqa: E402

ROOT = comfy_stubs.PACK_ROOT
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def archived_files(root: Path = ROOT) -> list[str]:
    """The files ``comfy node publish`` would archive from the git checkout ``root`` (paths relative to it)."""
    import pathspec

    proc = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout ({proc.stderr.decode().strip()}): the archive is built from git's list")
    tracked = [p for p in proc.stdout.decode().split("\0") if p and (root / p).is_file()]
    ignore_file = root / ".comfyignore"
    spec = pathspec.GitIgnoreSpec.from_lines(ignore_file.read_text().splitlines() if ignore_file.is_file() else [])
    files = {p for p in tracked if not spec.match_file(p)}
    for include in PYPROJECT["tool"]["comfy"].get("includes", []):  # includes win over .comfyignore
        path = root / include
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files |= {p.relative_to(root).as_posix() for p in found}
    return sorted(files)


@pytest.fixture(scope="module")
def archive() -> list[str]:
    return archived_files()


def test_the_archive_holds_what_the_nodes_need(archive):
    needed = ["__init__.py", "requirements.txt", "pyproject.toml", "LICENSE", "README.md", "docs/COMFYUI.md"]
    needed += [p.relative_to(ROOT).as_posix() for folder in ("nodes", "twgtm") for p in (ROOT / folder).glob("*.py")]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "workflows").rglob("*") if p.is_file()]
    assert sorted(set(needed) - set(archive)) == []


def test_the_archive_leaves_out_the_trainer_tests_and_tools(archive):
    left_out = ("tests/", "training/", "scripts/", "benchmarks/", "configs/", ".ci/")
    assert [p for p in archive if p.startswith(left_out)] == []
    assert {p for p in archive if p.startswith("docs/")} == {"docs/COMFYUI.md"}


def test_the_archived_pack_imports_and_registers_its_nodes(archive, tmp_path):
    """A copy of only the archived files is a working pack: imported by path and registered as ComfyUI does."""
    pack_dir = tmp_path / "ComfyUI-TWGTM"
    for rel in archive:
        (pack_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, pack_dir / rel)
    with comfy_stubs.load_pack(tmp_path / "base", name="twgtm_archived_pack", root=pack_dir,
                               host=comfy_stubs.NEWEST) as pack:
        assert Path(pack.__file__).parent == pack_dir
        assert set(pack.registered.classes) == {"TWGTMModelLoader", "TWGTMTryOnConditioning",
                                                 "TWGTMTryOffConditioning", "TWGTMGarmentMask", "TWGTMSampler",
                                                 "TWGTMMaskToBox"}
        (cond,) = pack.registered.classes["TWGTMTryOffConditioning"].execute(
            person=__import__("torch").rand(1, 8, 6, 3), category="dress").result
        assert cond.task == "try_off"


def registry_scan(paths: list[Path]) -> list[str]:
    """What the registry's scan would flag in ``paths``: eval/exec (ruff S102, S307) and any subprocess use."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--output-format",
                           "concise", "--select", "S102,S307", *map(str, paths)], capture_output=True, text=True,
                          timeout=120)
    problems = [ln for ln in proc.stdout.splitlines() if ": S" in ln]
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not problems):
        problems.append(f"ruff failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}")
    for path in paths:  # no process is started: the scan rejects subprocess pip installs, the nodes need none
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            if "subprocess" in names or (isinstance(node, ast.ImportFrom) and node.module == "subprocess"):
                problems.append(f"{path}:{node.lineno}: imports subprocess")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" and \
                    node.attr in ("system", "popen", "execv", "execvp", "spawnv"):
                problems.append(f"{path}:{node.lineno}: os.{node.attr}")
    return problems


def test_the_archive_passes_the_registry_scan(archive):
    python = [ROOT / p for p in archive if p.endswith(".py")]
    assert len(python) > 20
    assert registry_scan(python) == []


def test_the_scan_sees_exec_eval_and_subprocess(tmp_path):
    """The scan flags what it looks for (a check that cannot fail proves nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport subprocess\nexec('x = 1')\neval('1')\nos.system('pip install x')\n")
    found = registry_scan([bad])
    assert len(found) == 4, found
    assert {"S102", "S307", "imports subprocess", "os.system"} <= {w for w in ("S102", "S307", "imports subprocess",
                                                                              "os.system") if any(w in f for f in found)}


def test_requires_comfyui_covers_every_tested_host():
    """ComfyUI-Manager reads [tool.comfy].requires-comfyui to warn users; it must admit the hosts CI runs."""
    spec = SpecifierSet(PYPROJECT["tool"]["comfy"]["requires-comfyui"])
    assert sorted(comfy_stubs.HOSTS) == ["0.3.64", "0.33.0"]
    assert all(v in spec for v in comfy_stubs.HOSTS)
    assert "0.3.63" not in spec  # older than the oldest host tested
