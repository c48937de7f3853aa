"""The ComfyUI names the pack uses exist in every vendored host: a check of the pack's source against theirs.

The pack (``__init__.py``, ``nodes/``) talks to ComfyUI through a few modules: ``comfy_api.v0_0_2`` (the ``io``
classes and ``ComfyExtension``), ``comfy.model_management``, ``comfy.model_patcher``, ``comfy.utils`` and
``folder_paths``, and (``nodes/host.py``, through ``sys.modules``) ``execution.validate_inputs`` and
``nodes.NODE_CLASS_MAPPINGS``. This test reads every use of those modules in the pack's source with ``ast``
(``mm.load_models_gpu``, ``io.Combo.Input``, ...), and looks each one up in the source of ComfyUI 0.3.64 and
0.33.0 (``../shared/vendor/comfyui-*.tar.gz``, read without unpacking): module by module, through ``from X
import Y``, star imports and base classes, and for a call, its keyword arguments against the signature
(``load_models_gpu(..., force_full_load=True)``). A name that one host lacks fails here, in a second, before
any server starts. (It proves the names exist, not that they behave the same: the live suite does that.)
"""
from __future__ import annotations

import ast
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDOR = Path(os.environ.get("TWGTM_SHARED", ROOT.parent / "shared")) / "vendor"
TARBALLS = sorted(VENDOR.glob("comfyui-*.tar.gz"))
HOST_MODULES = {"comfy", "comfy_api", "comfy_execution", "folder_paths", "execution", "nodes", "server",
                "node_helpers", "latent_preview"}
# nodes/host.py reads these through sys.modules (the host has imported them), so no import statement shows them
SYS_MODULES_NAMES = [("execution", ("validate_inputs",)), ("nodes", ("NODE_CLASS_MAPPINGS",))]

pytestmark = [pytest.mark.comfyui,
              pytest.mark.skipif(not TARBALLS, reason=f"no vendored ComfyUI in {VENDOR} (set TWGTM_SHARED)")]


# ----------------------------------------------------------------------------- the pack's uses
@dataclass(frozen=True)
class Use:
    where: str                # file:line
    module: str               # the host module the chain starts from
    attrs: tuple[str, ...]    # the attribute chain after it
    keywords: tuple[str, ...] = ()  # keyword arguments, when the chain is called

    def __str__(self) -> str:
        call = f"({', '.join(k + '=' for k in self.keywords)})" if self.keywords else ""
        return f"{self.where}: {'.'.join((self.module, *self.attrs))}{call}"


def _aliases(tree: ast.Module) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Local name -> (host module, attribute chain) for the imports of host modules."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in HOST_MODULES:  # `import comfy.utils` binds `comfy`; `import comfy.utils as u` binds `u`
                    out[a.asname or top] = (a.name if a.asname else top, ())
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in HOST_MODULES:
            for a in node.names:
                out[a.asname or a.name] = (node.module, (a.name,))
    return out


def _chain(node: ast.AST) -> tuple[str, tuple[str, ...]] | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, tuple(reversed(attrs))) if isinstance(node, ast.Name) else None


def pack_uses() -> list[Use]:
    uses = []
    for path in [ROOT / "__init__.py", *sorted((ROOT / "nodes").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree)
        calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Attribute, ast.Name)):
                continue
            chain = _chain(node)
            if chain is None or chain[0] not in aliases or (isinstance(node, ast.Name) and node.id not in aliases):
                continue
            module, first = aliases[chain[0]]
            call = calls.get(id(node))
            keywords = tuple(k.arg for k in call.keywords if k.arg) if call else ()
            uses.append(Use(f"{path.relative_to(ROOT)}:{node.lineno}", module, first + chain[1], keywords))
    host_py = (ROOT / "nodes" / "host.py").read_text()
    for module, attrs in SYS_MODULES_NAMES:
        assert f'"{module}"' in host_py and attrs[0] in host_py, (module, attrs)
        uses.append(Use("nodes/host.py (sys.modules)", module, attrs))
    return uses


# ----------------------------------------------------------------------------- a host's source
class HostSource:
    """The Python files of a vendored ComfyUI tarball, parsed on demand, and name lookups in them."""

    def __init__(self, tarball: Path):
        self.files: dict[str, str] = {}
        with tarfile.open(tarball) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".py") and member.name.startswith("ComfyUI/"):
                    self.files[member.name[len("ComfyUI/"):]] = tar.extractfile(member).read().decode()
        version = re.search(r'__version__ = "([^"]+)"', self.files["comfyui_version.py"])
        self.version = version.group(1)
        self.packages = {f.rpartition("/")[0] for f in self.files}  # folders with Python files (namespace packages)
        self._trees: dict[str, ast.Module] = {}

    def is_module(self, module: str) -> bool:
        return self.module_file(module) is not None or module.replace(".", "/") in self.packages

    def module_file(self, module: str) -> str | None:
        base = module.replace(".", "/")
        return next((f for f in (f"{base}.py", f"{base}/__init__.py") if f in self.files), None)

    def tree(self, module: str) -> ast.Module | None:
        f = self.module_file(module)
        if f is None:
            return None
        if f not in self._trees:
            self._trees[f] = ast.parse(self.files[f])
        return self._trees[f]

    @staticmethod
    def _top_level(body):
        for stmt in body:  # module-level statements, also inside `if` / `try` at module level
            yield stmt
            if isinstance(stmt, ast.If):
                yield from HostSource._top_level(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.Try):
                yield from HostSource._top_level(stmt.body + stmt.orelse + [s for h in stmt.handlers for s in h.body])

    def _absolute(self, module: str, level: int, target: str | None) -> str:
        if level == 0:
            return target
        package = module if self.module_file(module).endswith("__init__.py") else module.rpartition(".")[0]
        for _ in range(level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{target}" if target else package

    def lookup(self, module: str, name: str, depth: int = 0):
        """What ``name`` is in ``module``: ("module", dotted), ("def"/"class", node, module), ("value", None,
        module), or None when the module does not define it."""
        if depth > 20:
            return None
        if self.is_module(f"{module}.{name}"):
            return ("module", f"{module}.{name}")
        tree = self.tree(module)
        if tree is None:
            return None
        star_sources = []
        for stmt in self._top_level(tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return ("def", stmt, module)
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                return ("class", stmt, module)
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                return ("value", None, module)
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                return ("value", None, module)
            if isinstance(stmt, ast.Import):
                for a in stmt.names:
                    if (a.asname or a.name.split(".")[0]) == name:
                        return ("module", a.name if a.asname else a.name.split(".")[0])
            if isinstance(stmt, ast.ImportFrom):
                source = self._absolute(module, stmt.level, stmt.module)
                for a in stmt.names:
                    if a.name == "*":
                        star_sources.append(source)
                    elif (a.asname or a.name) == name:
                        return self.lookup(source, a.name, depth + 1)
        for source in star_sources:
            found = self.lookup(source, name, depth + 1)
            if found is not None and not name.startswith("_"):
                return found
        return None

    def member(self, cls: ast.ClassDef, module: str, name: str, depth: int = 0):
        """``name`` in a class body, else in its bases (looked up from the class's module)."""
        for stmt in cls.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return ("def", stmt, module)
            if isinstance(stmt, ast.ClassDef) and stmt.name == name:
                return ("class", stmt, module)
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    return ("value", None, module)
        for base in cls.bases:
            chain = _chain(base)
            if chain is None or depth > 20:
                continue
            found = self.lookup(module, chain[0])
            for attr in chain[1]:
                found = self.attribute(found, attr)
            if found is not None and found[0] == "class":
                hit = self.member(found[1], found[2], name, depth + 1)
                if hit is not None:
                    return hit
        return None

    def attribute(self, found, attr: str):
        if found is None:
            return None
        if found[0] == "module":
            return self.lookup(found[1], attr)
        if found[0] == "class":
            return self.member(found[1], found[2], attr)
        return ("value", None, None)  # an attribute of a value: not checked further

    def resolve(self, use: Use):
        found = ("module", use.module) if self.is_module(use.module) else None
        for attr in use.attrs:
            found = self.attribute(found, attr)
        return found

    def parameters(self, found) -> set[str] | None:
        """The keyword names a call of ``found`` accepts; None when any are (``**kwargs``) or it is unknown."""
        fn = found[1] if found[0] == "def" else self.member(found[1], found[2], "__init__") if found[0] == "class" \
            else None
        if isinstance(fn, tuple):
            fn = fn[1] if fn[0] == "def" else None
        if fn is None or fn.args.kwarg is not None:
            return None
        return {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}


@pytest.fixture(scope="module", params=TARBALLS, ids=lambda p: p.name[:-len(".tar.gz")])
def host(request) -> HostSource:
    return HostSource(request.param)


@pytest.fixture(scope="module")
def uses() -> list[Use]:
    return pack_uses()


def test_the_scan_sees_what_the_pack_uses(uses):
    """The scan finds the uses it is meant to check (so a broken scan cannot pass by finding nothing)."""
    seen = {".".join((u.module, *u.attrs)) for u in uses}
    for name in ("comfy.model_management.load_models_gpu", "comfy.model_patcher.ModelPatcher",
                 "comfy.utils.ProgressBar", "folder_paths.get_filename_list", "folder_paths.add_model_folder_path",
                 "comfy_api.v0_0_2.io.Combo.Input", "comfy_api.v0_0_2.io.ComfyNode", "comfy_api.v0_0_2.ComfyExtension",
                 "comfy.model_management.throw_exception_if_processing_interrupted", "execution.validate_inputs"):
        assert name in seen, name
    (load,) = {u.keywords for u in uses if u.attrs == ("load_models_gpu",)}
    assert set(load) == {"memory_required", "force_full_load"}


def test_every_comfyui_name_the_pack_uses_exists_in_the_host(host, uses):
    missing = [str(u) for u in uses if host.resolve(u) is None]
    assert not missing, f"ComfyUI {host.version} lacks:\n" + "\n".join(missing)


def test_every_keyword_the_pack_passes_is_a_parameter_in_the_host(host, uses):
    wrong = []
    for use in uses:
        params = host.parameters(host.resolve(use) or ("value",)) if use.keywords else None
        if params is not None:
            wrong += [f"{use} -> {k}" for k in use.keywords if k not in params]
    assert not wrong, f"ComfyUI {host.version} takes no such keyword:\n" + "\n".join(wrong)


def test_the_host_probe_calls_validate_inputs_as_the_host_defines_it(host):
    """nodes/host.py calls ``execution.validate_inputs(prompt_id, prompt, item, validated)`` positionally."""
    kind, fn, _ = host.lookup("execution", "validate_inputs")
    assert kind == "def" and isinstance(fn, ast.AsyncFunctionDef)
    assert [a.arg for a in fn.args.args[:4]] == ["prompt_id", "prompt", "item", "validated"]


def test_a_name_the_host_lacks_is_found(host):
    """The lookup fails for names that do not exist (a check that cannot fail would prove nothing)."""
    assert host.resolve(Use("x", "comfy.model_management", ("load_models_gpu_v2",))) is None
    assert host.resolve(Use("x", "comfy_api.v0_0_2", ("io", "Combo", "Inputs"))) is None
    assert host.resolve(Use("x", "comfy.no_such_module", ())) is None
    found = host.resolve(Use("x", "comfy.model_management", ("load_models_gpu",)))
    assert "force_full_load" in host.parameters(found) and "full_load" not in host.parameters(found)
