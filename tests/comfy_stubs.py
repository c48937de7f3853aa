"""Small stand-ins for the parts of ComfyUI the TWGTM pack touches, for CI where ComfyUI is absent.

ComfyUI's own unit tests replace ``nodes`` and ``server`` in ``sys.modules`` before importing a module
(``tests-unit/comfy_extras_test/image_stitch_test.py``). Here ``comfy`` (model_management, model_patcher,
utils), ``folder_paths``, ``server``, ``execution``, ``nodes`` and ``comfy_api`` (``v0_0_2`` and ``latest``,
the same ``io`` and ``ComfyExtension`` as in the real host) are replaced by the small modules below, which
copy the behaviour the pack relies on from a **host profile** (:data:`HOSTS`): ComfyUI 0.3.64, the oldest
host the pack supports, and 0.33.0, the newest the project can run. The profiles differ where those hosts
differ for a node pack (``../shared/vendor/README.md``): 0.33.0 expands a V3 node's inputs by looking their
types up in a dict (a list-typed input is ``TypeError: unhashable type: 'list'``), checks ``"COMBO"`` values
itself, words its ``value_not_in_list`` details with ``repr``, adds fields to ``/object_info`` and declares
``SaveImage``'s output.

* ``io``: ``Schema`` / ``ComfyNode`` / inputs and outputs, with ``get_v1_info`` giving the same
  ``/object_info`` entries as the real server (checked against both real servers in test_comfyui_live.py);
* ``execution.validate_inputs`` and ``nodes.NODE_CLASS_MAPPINGS``: the host's prompt validation of one node
  (:func:`node_errors`), which the pack asks at import which combo form the host checks (``nodes/host.py``);
* ``ModelPatcher`` writes ``device`` and its bookkeeping attributes onto the managed module, as the real
  one does, and ``load_models_gpu`` moves it to the load device (each call is recorded);
* the interrupt flag, ``ProgressBar`` with its global hook, and ``folder_paths``' folder registry.

Also here: :func:`load_pack` imports the pack the way ComfyUI does (by file path, as a package) and
registers its nodes as ``nodes.load_custom_node`` does (:func:`register_nodes`: ``NODE_CLASS_MAPPINGS`` if
the pack has it, else ``comfy_entrypoint``); :func:`validate_api_prompt` / :func:`validate_ui_workflow` /
:func:`ui_to_api` check workflows against ``/object_info``-format node definitions like ComfyUI's prompt
validation and frontend do, and :func:`comfy_node_errors` gives the errors the profile's host itself reports
for a prompt (gaps included).
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import copy
import dataclasses
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE = "twgtm_comfy_pack"


# ============================================================================ host profiles
@dataclasses.dataclass(frozen=True)
class HostProfile:
    """What one ComfyUI version does that the pack and its tests depend on (read from the vendored source)."""

    version: str
    # comfy_api.latest._io.get_finalized_class_inputs (upstream PR #11345, Dec 2025): execution expands a V3
    # node's inputs by a dict lookup of each input's type, so a type that is a list raises TypeError
    expands_v3_inputs: bool
    # execution.validate_inputs checks a "COMBO" value against the input's options (same PR); before it, only a
    # combo whose type is its list of options was checked
    checks_combo_values: bool
    # value_not_in_list details: f"{x}: '{val}' not in ..." (0.3.64) or f"{x}: {val!r} not in ..." (0.33.0)
    repr_in_combo_details: bool
    # the fields NodeInfoV1 (/object_info of a V3 node) has beyond 0.3.64's, with the values our nodes get
    node_info_extras: tuple[tuple[str, Any], ...] = ()
    # core nodes that declare outputs here but not in 0.3.64 (SaveImage and PreviewImage return their images)
    core_outputs: tuple[tuple[str, tuple[str, ...]], ...] = ()


HOSTS: dict[str, HostProfile] = {
    "0.3.64": HostProfile("0.3.64", expands_v3_inputs=False, checks_combo_values=False, repr_in_combo_details=False),
    "0.33.0": HostProfile(
        "0.33.0", expands_v3_inputs=True, checks_combo_values=True, repr_in_combo_details=True,
        node_info_extras=(("is_input_list", False), ("output_matchtypes", None), ("dev_only", False),
                          ("price_badge", None), ("search_aliases", None), ("essentials_category", None),
                          ("has_intermediate_output", False)),
        core_outputs=(("SaveImage", ("IMAGE",)), ("PreviewImage", ("IMAGE",)))),
}
OLDEST, NEWEST = HOSTS["0.3.64"], HOSTS["0.33.0"]


# ============================================================================ comfy_api io
def _prune(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class _Input:
    io_type: Any = None

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, extra_dict: dict = None):
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict = extra_dict or {}

    def as_dict(self) -> dict:
        return _prune({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                       "lazy": self.lazy}) | _prune(self.extra_dict)

    def get_io_type(self):
        return self.io_type


class _WidgetInput(_Input):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 socketless=None, widget_type=None, force_input=None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless = default, socketless
        self.widget_type, self.force_input = widget_type, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | _prune({"default": self.default, "socketless": self.socketless,
                                           "widgetType": self.widget_type, "forceInput": self.force_input})


class _Output:
    io_type: Any = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _comfytype(io_type: str, input_base=_Input, **input_attrs):
    """A ComfyType with nested ``Input`` / ``Output`` classes bound to ``io_type``."""
    inp = type("Input", (input_base,), {"io_type": io_type, **input_attrs})
    out = type("Output", (_Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": inp, "Output": out})


class _IntInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, control_after_generate=None, display_mode=None, socketless=None,
                 force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.control_after_generate = min, max, step, control_after_generate

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step,
                                           "control_after_generate": self.control_after_generate})


class _FloatInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None, min=None,
                 max=None, step=None, round=None, display_mode=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.min, self.max, self.step, self.round = min, max, step, round

    def as_dict(self):
        return super().as_dict() | _prune({"min": self.min, "max": self.max, "step": self.step, "round": self.round})


class _BooleanInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 label_on=None, label_off=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.label_on, self.label_off = label_on, label_off

    def as_dict(self):
        return super().as_dict() | _prune({"label_on": self.label_on, "label_off": self.label_off})


class _StringInput(_WidgetInput):
    def __init__(self, id, display_name=None, optional=False, tooltip=None, lazy=None, multiline=False,
                 placeholder=None, default=None, dynamic_prompts=None, socketless=None, force_input=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
        self.multiline, self.placeholder = multiline, placeholder

    def as_dict(self):
        return super().as_dict() | _prune({"multiline": self.multiline, "placeholder": self.placeholder})


class _ComboInput(_WidgetInput):
    def __init__(self, id, options=None, display_name=None, optional=False, tooltip=None, lazy=None, default=None,
                 control_after_generate=None, upload=None, image_folder=None, remote=None, socketless=None):
        super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
        self.multiselect, self.options, self.control_after_generate = False, options, control_after_generate

    def as_dict(self):
        return super().as_dict() | _prune({"multiselect": self.multiselect, "options": self.options,
                                           "control_after_generate": self.control_after_generate})


@dataclasses.dataclass
class _Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False
    host = OLDEST  # class attribute: each io module's Schema is a subclass for its host profile

    def finalize(self):
        for i, out in enumerate(self.outputs or []):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"

    def validate(self):
        ids = [i.id for i in self.inputs or []] + [o.id for o in self.outputs or []]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{self.node_id}: input and output ids must be unique, got {ids}")

    def get_v1_info(self, cls) -> dict:
        """The node's ``/object_info`` entry (``NodeInfoV1`` in comfy_api/latest/_io.py)."""
        inputs: dict = {"required": {}}
        for i in self.inputs or []:
            d = i.as_dict()
            d.pop("optional", None)
            inputs.setdefault("optional" if i.optional else "required", {})[i.id] = [i.get_io_type(), d]
        outs = self.outputs or []
        return {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": [o.io_type for o in outs],
            "output_is_list": [o.is_output_list for o in outs],
            "output_name": [o.display_name or o.io_type for o in outs],
            "output_tooltips": [o.tooltip for o in outs],
            "name": self.node_id, "display_name": self.display_name, "category": self.category,
            "description": self.description, "output_node": self.is_output_node,
            "deprecated": self.is_deprecated, "experimental": self.is_experimental, "api_node": self.is_api_node,
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        } | dict(self.host.node_info_extras)


class _NodeOutput:
    def __init__(self, *args, ui=None, expand=None, block_execution=None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None


class _ComfyNode:
    """Classmethod-only V3 node base; the ``GET_*`` helpers mirror the real ones the pack and tests use."""

    @classmethod
    def GET_SCHEMA(cls) -> _Schema:
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:
        return cls.GET_SCHEMA().get_v1_info(cls)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return cls.GET_NODE_INFO_V1()["input"]

    @classmethod
    def EXECUTE_NORMALIZED(cls, *args, **kwargs) -> _NodeOutput:
        out = cls.execute(*args, **kwargs)
        return out if isinstance(out, _NodeOutput) else _NodeOutput(*out)


def _custom(io_type: str):
    return _comfytype(io_type)


class ComfyExtension(abc.ABC):
    """comfy_api.latest.ComfyExtension (re-exported by comfy_api.v0_0_2)."""

    async def on_load(self) -> None:
        pass

    @abc.abstractmethod
    async def get_node_list(self) -> list:
        ...


def make_io_module(host: HostProfile = OLDEST) -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    io.Schema = type("Schema", (_Schema,), {"host": host})
    io.ComfyNode, io.NodeOutput = _ComfyNode, _NodeOutput
    io.Custom = _custom
    io.Image, io.Mask = _comfytype("IMAGE"), _comfytype("MASK")
    io.Int, io.Float = _comfytype("INT", _IntInput), _comfytype("FLOAT", _FloatInput)
    io.Boolean, io.String = _comfytype("BOOLEAN", _BooleanInput), _comfytype("STRING", _StringInput)
    io.Combo = _comfytype("COMBO", _ComboInput)
    io.Input, io.Output, io.WidgetInput = _Input, _Output, _WidgetInput
    return io


# ============================================================================ comfy.*
class InterruptProcessingException(Exception):
    pass


def make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.state = {"interrupt": False, "load_calls": []}

    def interrupt_current_processing(value=True):
        mm.state["interrupt"] = value

    def processing_interrupted():
        return mm.state["interrupt"]

    def throw_exception_if_processing_interrupted():
        if mm.state["interrupt"]:
            mm.state["interrupt"] = False
            raise InterruptProcessingException()

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        mm.state["load_calls"].append({"models": list(models), "memory_required": memory_required,
                                       "force_full_load": force_full_load})
        for m in models:
            m.patch_model(m.load_device)

    mm.interrupt_current_processing = interrupt_current_processing
    mm.processing_interrupted = processing_interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.load_models_gpu = load_models_gpu
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.should_use_fp16 = lambda device=None, model_params=0, prioritize_performance=True, manual_cast=False: False
    mm.should_use_bf16 = lambda device=None, model_params=0, prioritize_performance=True, manual_cast=False: False
    mm.soft_empty_cache = lambda force=False: None
    return mm


class ModelPatcher:
    """Like comfy.model_patcher.ModelPatcher: it sets ``device`` and bookkeeping attributes on the module."""

    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        if not hasattr(model, "device") or model.device is None:
            model.device = offload_device
        for attr, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                            ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(model, attr):
                setattr(model, attr, value)

    def model_size(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to  # what ModelPatcher.load() does after moving the weights
        self.model.model_loaded_weight_memory = self.model_size()
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if device_to is not None:
            self.model.to(device_to)
            self.model.device = device_to
        self.model.model_loaded_weight_memory = 0


def make_utils() -> types.ModuleType:
    utils = types.ModuleType("comfy.utils")
    utils.PROGRESS_BAR_HOOK = None

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current, self.node_id = total, 0, node_id
            self.hook = utils.PROGRESS_BAR_HOOK

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            if self.hook is not None:
                self.hook(self.current, self.total, preview, node_id=self.node_id)

        def update(self, value):
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar
    utils.set_progress_bar_global_hook = lambda fn: setattr(utils, "PROGRESS_BAR_HOOK", fn)
    return utils


# ============================================================================ folder_paths, server
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def make_folder_paths(base: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.base_path = str(base)
    fp.models_dir = str(base / "models")
    fp.supported_pt_extensions = SUPPORTED_PT_EXTENSIONS
    fp.folder_names_and_paths = {
        name: ([os.path.join(fp.models_dir, name)], exts)
        for name, exts in [("checkpoints", SUPPORTED_PT_EXTENSIONS), ("vae", SUPPORTED_PT_EXTENSIONS),
                           ("clip_vision", SUPPORTED_PT_EXTENSIONS), ("diffusers", ["folder"])]
    }

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name in fp.folder_names_and_paths:
            paths = fp.folder_names_and_paths[folder_name][0]
            if full_folder_path not in paths:
                paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
        else:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())

    def get_folder_paths(folder_name):
        return fp.folder_names_and_paths[folder_name][0][:]

    def get_filename_list(folder_name):
        paths, exts = fp.folder_names_and_paths[folder_name]
        out = set()
        for root in paths:
            for here, _dirs, files in os.walk(root, followlinks=True):
                for f in files:
                    rel = os.path.relpath(os.path.join(here, f), root)
                    if not exts or os.path.splitext(f)[-1].lower() in exts:
                        out.add(rel)
        return sorted(out)

    def get_full_path(folder_name, filename):
        if folder_name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")
        for root in fp.folder_names_and_paths[folder_name][0]:
            p = os.path.join(root, filename)
            if os.path.isfile(p):
                return p
        return None

    def get_full_path_or_raise(folder_name, filename):
        p = get_full_path(folder_name, filename)
        if p is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return p

    fp.add_model_folder_path, fp.get_folder_paths = add_model_folder_path, get_folder_paths
    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    fp.get_full_path_or_raise = get_full_path_or_raise
    for kind in ("input", "output", "temp"):
        setattr(fp, f"get_{kind}_directory", (lambda k: lambda: str(base / k))(kind))
    return fp


def make_server() -> types.ModuleType:
    server = types.ModuleType("server")

    class PromptServer:
        instance = None

        def send_sync(self, event, data, sid=None):
            pass

    PromptServer.instance = PromptServer()
    server.PromptServer = PromptServer
    return server


# ============================================================================ installing and importing
def make_stub_modules(base: Path, host: HostProfile = OLDEST) -> dict[str, types.ModuleType]:
    """The stand-in modules for ComfyUI ``host`` (a :data:`HOSTS` profile), with ``base`` as its base directory."""
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    mm, utils = make_model_management(), make_utils()
    patcher = types.ModuleType("comfy.model_patcher")
    patcher.ModelPatcher = ModelPatcher
    comfy.model_management, comfy.model_patcher, comfy.utils = mm, patcher, utils
    comfy_api = types.ModuleType("comfy_api")
    comfy_api.__path__ = []
    io = make_io_module(host)
    latest = types.ModuleType("comfy_api.latest")
    latest.__path__ = []
    latest.io, latest.ComfyExtension = io, ComfyExtension
    v0_0_2 = types.ModuleType("comfy_api.v0_0_2")  # the versioned API: re-exports latest's io and ComfyExtension
    v0_0_2.__path__ = []
    v0_0_2.io, v0_0_2.ComfyExtension = io, ComfyExtension
    comfy_api.latest, comfy_api.v0_0_2 = latest, v0_0_2
    modules = {"comfy": comfy, "comfy.model_management": mm, "comfy.model_patcher": patcher, "comfy.utils": utils,
               "comfy_api": comfy_api, "comfy_api.latest": latest, "comfy_api.latest.io": io,
               "comfy_api.v0_0_2": v0_0_2, "folder_paths": make_folder_paths(base), "server": make_server()}
    nodes = types.ModuleType("nodes")  # ComfyUI's core module: its node registry (load_pack adds the pack's)
    nodes.NODE_CLASS_MAPPINGS = {}
    comfy_api.host = host  # which profile these stubs play (not a ComfyUI attribute)
    modules |= {"nodes": nodes, "execution": make_execution(host, nodes.NODE_CLASS_MAPPINGS)}
    for name, module in modules.items():  # importlib.util.find_spec() wants a spec on loaded modules
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=hasattr(module, "__path__"))
    return modules


@dataclasses.dataclass
class Registered:
    """The pack's nodes as ComfyUI registered them."""

    via: str                        # "NODE_CLASS_MAPPINGS" or "comfy_entrypoint"
    classes: dict[str, type]        # node id -> class
    display_names: dict[str, str]   # node id -> display name


def register_nodes(module, module_path: str = "custom_nodes.ComfyUI-TWGTM") -> Registered:
    """What ComfyUI 0.3.64's ``nodes.load_custom_node`` does with an imported pack: ``NODE_CLASS_MAPPINGS``
    when the module has one (then ``comfy_entrypoint`` is ignored), else ``comfy_entrypoint()`` (awaited when
    it is a coroutine function), which must return a ``ComfyExtension`` whose ``get_node_list()`` is a list;
    node ids and display names come from each node's schema."""
    if getattr(module, "NODE_CLASS_MAPPINGS", None) is not None:
        classes = dict(module.NODE_CLASS_MAPPINGS)
        for cls in classes.values():
            cls.RELATIVE_PYTHON_MODULE = module_path
        return Registered("NODE_CLASS_MAPPINGS", classes, dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {}))
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if not callable(entrypoint):
        raise LookupError("the pack has neither NODE_CLASS_MAPPINGS nor a callable comfy_entrypoint")

    async def register():
        extension = await entrypoint() if inspect.iscoroutinefunction(entrypoint) else entrypoint()
        if not isinstance(extension, ComfyExtension):
            raise TypeError(f"comfy_entrypoint did not return a ComfyExtension, got {type(extension).__name__}")
        node_list = await extension.get_node_list()
        if not isinstance(node_list, list):
            raise TypeError(f"get_node_list did not return a list, got {type(node_list).__name__}")
        return node_list

    classes, names = {}, {}
    for cls in asyncio.run(register()):
        schema = cls.GET_SCHEMA()
        classes[schema.node_id] = cls
        cls.RELATIVE_PYTHON_MODULE = module_path
        if schema.display_name is not None:
            names[schema.node_id] = schema.display_name
    return Registered("comfy_entrypoint", classes, names)


@contextlib.contextmanager
def load_pack(base: Path, name: str = PACK_MODULE, stubs: dict | None = None, host: HostProfile = OLDEST,
              root: Path = PACK_ROOT):
    """Install the stubs of ``host`` (or ``stubs``), import the pack as ComfyUI does (by path, as a package),
    register its nodes (:func:`register_nodes`, as ``pack.registered``; also in the stub
    ``nodes.NODE_CLASS_MAPPINGS``) and yield it; ``pack.host`` is the profile the stubs play.

    ``base`` plays ComfyUI's base directory (``models/``, ``input/``...); ``root`` is the pack's folder (default:
    this repository). On exit the stubs and the pack's modules are removed again; libraries imported meanwhile
    (torch, diffusers) stay loaded.
    """
    base = Path(base)
    for sub in ("models/twgtm", "models/checkpoints", "models/vae", "models/clip_vision", "models/diffusers",
                "input", "output", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    stubs = stubs or make_stub_modules(base, host)
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location(name, Path(root) / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        module.stubs, module.host = stubs, stubs["comfy_api"].host
        module.registered = register_nodes(module)
        stubs["nodes"].NODE_CLASS_MAPPINGS.update(module.registered.classes)
        yield module
    finally:
        for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[k]
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def object_info(pack) -> dict[str, dict]:
    """``/object_info`` entries of the pack's nodes, as the server builds them for V3 classes."""
    return {name: cls.GET_NODE_INFO_V1() for name, cls in pack.registered.classes.items()}


def full_object_info(pack) -> dict[str, dict]:
    """The pack's ``/object_info`` entries and those of the core nodes the workflows use, as ``pack.host`` has them."""
    return object_info(pack) | core_object_info(pack.host)


# ============================================================================ workflow checks
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def _spec(info: dict, name: str) -> tuple[str, list, dict]:
    for cat in ("required", "optional"):
        if name in info["input"].get(cat, {}):
            s = info["input"][cat][name]
            return cat, s[0], (s[1] if len(s) > 1 else {})
    raise KeyError(name)


def _inputs(info: dict):
    """(name, category, type, options) in the node's input order (required first, then optional)."""
    for cat in ("required", "optional"):
        for name in info.get("input_order", {}).get(cat, info["input"].get(cat, {}).keys()):
            _, typ, opts = _spec(info, name)
            yield name, cat, typ, opts


def is_widget(typ, opts: dict) -> bool:
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def combo_options(typ, opts: dict) -> list | None:
    if isinstance(typ, list):
        return typ
    if typ == "COMBO":
        return list(opts.get("options", []))
    return None


def check_value(node: str, name: str, typ, opts: dict, value, files: set[str]) -> list[str]:
    """Errors of one widget value: type, range and combo membership (like ComfyUI's validate_inputs)."""
    where = f"{node}.{name}"
    if opts.get("image_upload"):
        return [] if value in files else [f"{where}: {value!r} is not a shipped example input {sorted(files)}"]
    options = combo_options(typ, opts)
    if options is not None:
        return [] if value in options else [f"{where}: {value!r} not in {options}"]
    if typ == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: expected an int, got {value!r}"]
    elif typ == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: expected a number, got {value!r}"]
    elif typ == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: expected a bool, got {value!r}"]
    elif typ == "STRING":
        return [] if isinstance(value, str) else [f"{where}: expected a string, got {value!r}"]
    errors = []
    if "min" in opts and value < opts["min"]:
        errors.append(f"{where}: {value} < min {opts['min']}")
    if "max" in opts and value > opts["max"]:
        errors.append(f"{where}: {value} > max {opts['max']}")
    return errors


def _types_match(received, expected) -> bool:
    """comfy_execution.validation.validate_node_input (non-strict)."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def validate_api_prompt(prompt: dict, info: dict[str, dict], files: set[str] = frozenset()) -> list[str]:
    """Errors ComfyUI's POST /prompt validation would raise (plus combo checks it skips for V3 combos)."""
    errors = []
    for nid, node in prompt.items():
        ct = node.get("class_type")
        if ct not in info:
            errors.append(f"node {nid}: unknown class_type {ct!r}")
            continue
        ni = info[ct]
        inputs = node.get("inputs", {})
        known = {n for n, *_ in _inputs(ni)}
        errors += [f"node {nid} ({ct}): unknown input {k!r}" for k in inputs if k not in known]
        for name, cat, typ, opts in _inputs(ni):
            if name not in inputs:
                if cat == "required":
                    errors.append(f"node {nid} ({ct}): required input {name!r} missing")
                continue
            val = inputs[name]
            if isinstance(val, list):
                if len(val) != 2 or str(val[0]) not in prompt:
                    errors.append(f"node {nid} ({ct}).{name}: bad link {val!r}")
                    continue
                src = prompt[str(val[0])]
                outs = info.get(src.get("class_type"), {}).get("output", [])
                if not isinstance(val[1], int) or not 0 <= val[1] < len(outs):
                    errors.append(f"node {nid} ({ct}).{name}: link to missing output {val!r}")
                elif not _types_match(outs[val[1]], typ):
                    errors.append(f"node {nid} ({ct}).{name}: received {outs[val[1]]} but the input takes {typ}")
            elif not is_widget(typ, opts):
                errors.append(f"node {nid} ({ct}).{name}: socket input {typ} needs a link, got {val!r}")
            else:
                errors += check_value(f"node {nid} ({ct})", name, typ, opts, val, files)
    if not any(info[n["class_type"]].get("output_node") for n in prompt.values() if n.get("class_type") in info):
        errors.append("prompt has no output node")
    return errors


def _error(kind: str, message: str, details: str, input_name: str | None = None) -> dict:
    return {"type": kind, "message": message, "details": details,
            "extra_info": {} if input_name is None else {"input_name": input_name}}


def class_info(cls) -> dict:
    """The ``/object_info``-format definition of a node class: V3 (``GET_NODE_INFO_V1``) or V1 (``INPUT_TYPES``)."""
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(getattr(cls, "RETURN_TYPES", ()))}


_DYNAMIC_INPUT_TYPES: dict[str, Any] = {}  # 0.33.0's DYNAMIC_INPUT_LOOKUP: keyed by type (our nodes have none)


def _expand_v3_inputs(info: dict) -> None:
    """``comfy_api.latest._io.parse_class_inputs`` (0.33.0): each input's type is looked up in a dict."""
    for cat in ("required", "optional"):
        for spec in info["input"].get(cat, {}).values():
            if spec[0] in _DYNAMIC_INPUT_TYPES:  # TypeError: unhashable type: 'list', as in the real host
                raise NotImplementedError("dynamic inputs are not modelled by the stubs")


def node_errors(node_id: str, prompt: dict, cls, outputs, host: HostProfile = OLDEST) -> list[dict]:
    """The errors ``execution.validate_inputs`` of ``host`` gives for node ``node_id`` of ``prompt`` (class ``cls``).

    Copied from the host, gaps included: link types (``validate_node_input``); for the inputs that are *not*
    arguments of the node's ``validate_inputs``, min/max and combo membership (0.3.64: only for combos whose
    type is their list of options; 0.33.0: also ``"COMBO"`` against its ``options``); then ``validate_inputs``
    itself, called with those arguments (links as None), whose result when not True is filed once under *each*
    of its arguments; an exception in it is one error of the node (it is always an inner node here). With
    ``host.expands_v3_inputs`` a V3 node's inputs are expanded first, which raises ``TypeError`` for a type
    that is a list, as the real host does (the whole prompt is then rejected). ``outputs(class_type)`` gives the
    output types of a linked node.
    """
    info = class_info(cls)
    if host.expands_v3_inputs and hasattr(cls, "GET_NODE_INFO_V1"):
        _expand_v3_inputs(info)
    validate = getattr(cls, "validate_inputs" if hasattr(cls, "GET_NODE_INFO_V1") else "VALIDATE_INPUTS", None)
    args = inspect.getfullargspec(validate).args if validate is not None else []  # includes "cls"
    inputs, errors = prompt[node_id]["inputs"], []
    for name, cat, typ, opts in _inputs(info):
        if name not in inputs:
            if cat == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name, name))
            continue
        val = inputs[name]
        if isinstance(val, list):
            received = outputs(prompt[str(val[0])]["class_type"])[val[1]]
            if "input_types" not in args and not _types_match(received, typ):
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"{name}, received_type({received}) mismatch input_type({typ})", name))
            continue
        if name in args:
            continue
        options = typ if isinstance(typ, list) else \
            opts.get("options", []) if typ == "COMBO" and host.checks_combo_values else None
        if "min" in opts and val < opts["min"]:
            errors.append(_error("value_smaller_than_min", f"Value {val} smaller than min of {opts['min']}",
                                 name, name))
        elif "max" in opts and val > opts["max"]:
            errors.append(_error("value_bigger_than_max", f"Value {val} bigger than max of {opts['max']}",
                                 name, name))
        elif options is not None and val not in options:
            shown = f"(list of length {len(options)})" if len(options) > 20 else str(options)
            value = repr(val) if host.repr_in_combo_details else f"'{val}'"
            errors.append(_error("value_not_in_list", "Value not in list", f"{name}: {value} not in {shown}", name))
    if args:
        call = {k: (None if isinstance(v, list) else v) for k, v in inputs.items() if k in args}
        try:
            result = validate(**call)
        except Exception as ex:  # noqa: BLE001 - ComfyUI turns any exception into an error entry
            errors.append(_error("exception_during_inner_validation", "Exception when validating inner node",
                                 str(ex)))
        else:
            if result is not True:
                errors += [_error("custom_validation_failed", "Custom validation failed for node",
                                  x if result is False else f"{x} - {result}", x) for x in call]
    return errors


def core_object_info(host: HostProfile = OLDEST) -> dict[str, dict]:
    """:data:`CORE_OBJECT_INFO` as ``host`` lists it (0.33.0 declares the outputs of SaveImage and PreviewImage)."""
    info = copy.deepcopy(CORE_OBJECT_INFO)
    for name, outputs in host.core_outputs:
        info[name]["output"] = list(outputs)
    return info


def comfy_node_errors(prompt: dict, classes: dict, core_info: dict[str, dict] | None = None,
                      host: HostProfile = OLDEST) -> dict[str, list]:
    """The ``node_errors`` the POST /prompt of ``host`` gives for ``prompt`` (:func:`node_errors` of each of the
    pack's nodes). ``classes`` maps class_type to the pack's node classes; ``core_info`` (default
    :func:`core_object_info` of ``host``) gives the outputs of core nodes."""
    core_info = core_object_info(host) if core_info is None else core_info

    def outputs(class_type):
        if class_type in classes:
            return classes[class_type].GET_NODE_INFO_V1()["output"]
        return core_info[class_type]["output"]

    found = {nid: node_errors(nid, prompt, classes[node["class_type"]], outputs, host)
             for nid, node in prompt.items() if node["class_type"] in classes}
    return {nid: errors for nid, errors in found.items() if errors}


def make_execution(host: HostProfile, node_classes: dict) -> types.ModuleType:
    """ComfyUI's ``execution`` module, as far as the pack uses it: ``validate_inputs`` of one node of a prompt
    (``nodes/host.py`` probes it). Links are not followed (the pack's probe has none)."""
    execution = types.ModuleType("execution")

    async def validate_inputs(prompt_id, prompt, item, validated, visiting=None):
        cls = node_classes[prompt[item]["class_type"]]
        errors = node_errors(item, prompt, cls, lambda ct: class_info(node_classes[ct])["output"], host)
        validated[item] = (not errors, errors, item)
        return validated[item]

    execution.validate_inputs = validate_inputs
    return execution


def _widget_slots(ni: dict):
    """The widgets_values layout of a node: (input name or None for an extra UI-only value, spec)."""
    for name, _cat, typ, opts in _inputs(ni):
        if not is_widget(typ, opts):
            continue
        yield name, typ, opts
        if opts.get("control_after_generate"):
            yield None, "control_after_generate", {}
        if opts.get("image_upload"):
            yield None, "upload", {}


def validate_ui_workflow(wf: dict, info: dict[str, dict], files: set[str] = frozenset()) -> list[str]:
    """Structural checks of a LiteGraph (UI-format) workflow as the frontend loads it."""
    errors = []
    for key in ("nodes", "links", "last_node_id", "last_link_id", "version"):
        if key not in wf:
            errors.append(f"workflow: missing {key!r}")
    if "id" in wf and not isinstance(wf["id"], str):  # the frontend's zod schema wants a string (uuid)
        errors.append(f"workflow: id must be a string, got {wf['id']!r}")
    nodes = {n["id"]: n for n in wf.get("nodes", [])}
    links = {ln[0]: ln for ln in wf.get("links", [])}
    if nodes and max(nodes) > wf.get("last_node_id", 0):
        errors.append("workflow: last_node_id is smaller than a node id")
    if links and max(links) > wf.get("last_link_id", 0):
        errors.append("workflow: last_link_id is smaller than a link id")
    for nid, n in nodes.items():
        ct = n.get("type")
        if ct not in info:
            errors.append(f"node {nid}: unknown type {ct!r} (missing node)")
            continue
        ni, tag = info[ct], f"node {nid} ({ct})"
        # widgets_values: one value per widget, in input order, with the UI-only extras
        slots = list(_widget_slots(ni))
        values = n.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{tag}: {len(values)} widgets_values, expected {len(slots)} "
                          f"({[s[0] or s[1] for s in slots]})")
        else:
            for (name, typ, opts), v in zip(slots, values):
                if name is None:
                    if typ == "control_after_generate" and v not in CONTROL_VALUES:
                        errors.append(f"{tag}: control_after_generate {v!r} not in {sorted(CONTROL_VALUES)}")
                    continue
                errors += check_value(tag, name, typ, opts, v, files)
        # sockets: names and types from the schema; every required one linked
        sockets = {name: (cat, typ) for name, cat, typ, opts in _inputs(ni) if not is_widget(typ, opts)}
        for inp in n.get("inputs", []):
            if inp.get("widget"):
                continue
            if inp["name"] not in sockets:
                errors.append(f"{tag}: unknown input socket {inp['name']!r}")
                continue
            if not _types_match(inp["type"], sockets[inp["name"]][1]):
                errors.append(f"{tag}: socket {inp['name']!r} has type {inp['type']}, "
                              f"schema says {sockets[inp['name']][1]}")
            link = inp.get("link")
            if link is not None:
                ln = links.get(link)
                if ln is None:
                    errors.append(f"{tag}: input {inp['name']!r} refers to missing link {link}")
                    continue
                slot = [i["name"] for i in n["inputs"]].index(inp["name"])
                if ln[3] != nid or ln[4] != slot:
                    errors.append(f"{tag}: link {link} target is ({ln[3]}, {ln[4]}), expected ({nid}, {slot})")
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        for name, (cat, typ) in sockets.items():
            if cat == "required" and name not in linked:
                errors.append(f"{tag}: required input {name!r} ({typ}) is not linked")
        # outputs: names and types from the schema. An output node saved against ComfyUI 0.3.64 lacks the
        # outputs 0.33.0 declares for it (SaveImage returns its images there); the frontend adds them on load.
        outs = n.get("outputs", [])
        declared = list(ni["output"])[:len(outs)] if ni.get("output_node") else list(ni["output"])
        if [o["type"] for o in outs] != declared:
            errors.append(f"{tag}: output types {[o['type'] for o in outs]} != schema {ni['output']}")
        for slot, o in enumerate(outs):
            for link in o.get("links") or []:
                ln = links.get(link)
                if ln is None or ln[1] != nid or ln[2] != slot:
                    errors.append(f"{tag}: output {slot} lists link {link} that does not start there")
    for lid, (_, src, src_slot, dst, dst_slot, typ) in links.items():
        if src not in nodes or dst not in nodes:
            errors.append(f"link {lid}: missing node")
            continue
        s_info, d_info = info.get(nodes[src]["type"]), info.get(nodes[dst]["type"])
        if s_info is None or d_info is None:
            continue
        if src_slot >= len(s_info["output"]) or dst_slot >= len(nodes[dst].get("inputs", [])):
            errors.append(f"link {lid}: slot out of range")
            continue
        out_t = s_info["output"][src_slot]
        in_name = nodes[dst]["inputs"][dst_slot]["name"]
        _, in_t, _ = _spec(d_info, in_name)
        if typ != out_t or not _types_match(out_t, in_t):
            errors.append(f"link {lid}: {nodes[src]['type']}[{src_slot}] {out_t} -> "
                          f"{nodes[dst]['type']}.{in_name} {in_t} (link type {typ})")
        if lid not in (nodes[src]["outputs"][src_slot].get("links") or []):
            errors.append(f"link {lid}: not listed in the outputs of node {src}")
    return errors


def ui_to_api(wf: dict, info: dict[str, dict]) -> dict:
    """The API prompt the frontend's ``graphToPrompt`` produces from a UI workflow (class_type + inputs)."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {ln[0]: ln for ln in wf["links"]}
    prompt = {}
    for nid, n in sorted(nodes.items()):
        if n.get("mode", 0) != 0:
            continue
        ni = info[n["type"]]
        inputs = {}
        for (name, _typ, _opts), v in zip(_widget_slots(ni), n.get("widgets_values", [])):
            if name is not None:
                inputs[name] = v
        for inp in n.get("inputs", []):
            if inp.get("link") is not None:
                ln = links[inp["link"]]
                inputs[inp["name"]] = [str(ln[1]), ln[2]]
        prompt[str(nid)] = {"inputs": inputs, "class_type": n["type"]}
    return prompt


# Core ComfyUI nodes the example workflows and the tests use: their /object_info entries in ComfyUI 0.3.64
# (trimmed to what the checks read). test_comfyui_live.py checks the workflows against the real server as well.
CORE_OBJECT_INFO: dict[str, dict] = {
    "LoadImage": {"input": {"required": {"image": [[], {"image_upload": True}]}},
                  "input_order": {"required": ["image"]}, "output": ["IMAGE", "MASK"], "output_node": False},
    "ImageToMask": {"input": {"required": {"image": ["IMAGE"], "channel": [["red", "green", "blue", "alpha"]]}},
                    "input_order": {"required": ["image", "channel"]}, "output": ["MASK"], "output_node": False},
    "MaskToImage": {"input": {"required": {"mask": ["MASK"]}}, "input_order": {"required": ["mask"]},
                    "output": ["IMAGE"], "output_node": False},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}],
                                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
                  "input_order": {"required": ["images", "filename_prefix"]}, "output": [], "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE"]}}, "input_order": {"required": ["images"]},
                     "output": [], "output_node": True},
    "PrimitiveString": {"input": {"required": {"value": ["STRING", {}]}}, "input_order": {"required": ["value"]},
                        "output": ["STRING"], "output_node": False},
    "JoinImageWithAlpha": {"input": {"required": {"image": ["IMAGE", {}], "alpha": ["MASK", {}]}},
                           "input_order": {"required": ["image", "alpha"]}, "output": ["IMAGE"],
                           "output_node": False},
}
