"""``training/`` has no import cycle: the graph of its intra-package imports (module-level and function-level, read
with ``ast``) is acyclic, and every module imports on its own (first, in an interpreter without any other)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "training"


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module name -> the modules of the same package it imports anywhere in its source (``import training.x``,
    ``from training import x``, ``from .x import y``, ``from . import x``, also inside functions)."""
    name = package_dir.name
    modules = {p.stem for p in package_dir.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(name + ".")}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    base = node.module
                elif node.level == 0 and node.module and (node.module + ".").startswith(name + "."):
                    base = node.module[len(name) + 1:]
                else:
                    continue
                found |= {base.split(".")[0]} if base else {a.name for a in node.names}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_check_sees_function_level_and_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import os\n\ndef g():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import b\nfrom os import path\n")
    graph = import_graph(pkg)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"b"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None


def test_training_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"config", "data", "grids", "trainer", "report", "stage0_vae"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in training/: " + " -> ".join(cycle)


# Run in a subprocess: import the third-party libraries once, then import each training module in a forked child
# in which no training (or twgtm) module is loaded yet, so every module must import on its own, in any order.
_IMPORT_EACH = """
import importlib, os, sys, traceback
import numpy, PIL.Image, scipy.ndimage, torch, yaml, omegaconf, safetensors.torch, diffusers, transformers, timm
assert not [m for m in sys.modules if m.split(".")[0] in ("training", "twgtm")]
failed = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module("training." + name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    if os.waitpid(pid, 0)[1]:
        failed[name] = message
print(repr(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
def test_every_training_module_imports_on_its_own():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))  # main runs
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert res.stdout.strip() == "{}"


@pytest.mark.parametrize("module", ["config", "cli", "rundir"])
def test_light_modules_do_not_import_torch(module):
    """The config and the CLI parser load without torch: argument and config errors come back at once."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = f"import sys, training.{module}; assert 'torch' not in sys.modules, sorted(sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
