"""The TWGTM ComfyUI nodes, run on the tiny model with ComfyUI replaced by tests/comfy_stubs.py.

Every test that uses the ``pack`` fixture runs once per host profile of the stubs (``comfy_stubs.HOSTS``:
ComfyUI 0.3.64 and 0.33.0), so a declaration that one of the hosts rejects fails here in seconds.
"""
from __future__ import annotations

import ast
import gc
import importlib
import json
import os
import weakref
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_stubs  # noqa: E402

from twgtm.config import TWGTMConfig  # noqa: E402
from twgtm.components import TWGTMComponents  # noqa: E402
from twgtm.weights import save_twgtm  # noqa: E402

STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two OpenMP threads can be 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(comfy_stubs.HOSTS.values()), ids=lambda h: f"comfyui-{h.version}")
def host(request) -> comfy_stubs.HostProfile:
    return request.param


@pytest.fixture(scope="module")
def base(tmp_path_factory, host) -> Path:
    return tmp_path_factory.mktemp(f"comfy_base_{host.version}")


@pytest.fixture(scope="module")
def pack(base, host):
    with comfy_stubs.load_pack(base, host=host) as module:
        yield module


@pytest.fixture(scope="module")
def tiny_file(pack, base) -> str:
    """The example checkpoint name, holding a seeded tiny model with its base components."""
    torch.manual_seed(0)
    model = TWGTMComponents.build(TWGTMConfig.tiny(), random_prompts=True)
    save_twgtm(model, base / "models" / "twgtm" / pack.nodes.loader.EXAMPLE_CHECKPOINT, include_base=True)
    return pack.nodes.loader.EXAMPLE_CHECKPOINT


def lib(pack, name: str):
    """A module of the pack's own copy of the twgtm library (the one the nodes use)."""
    return importlib.import_module(f"{pack.__name__}.twgtm.{name}")


def run(node, **kwargs):
    return node.execute(**kwargs).result


@pytest.fixture(scope="module")
def handle(pack, tiny_file):
    (h,) = run(pack.registered.classes["TWGTMModelLoader"], twgtm_file=tiny_file,
               base_model=pack.nodes.loader.BUNDLED, vae=pack.nodes.loader.NO_VAE,
               clip_vision=pack.nodes.loader.BUNDLED, dtype="fp32")
    return h


@pytest.fixture()
def stubs(pack):
    mm, utils = pack.stubs["comfy.model_management"], pack.stubs["comfy.utils"]
    mm.state.update(interrupt=False, load_calls=[])
    utils.PROGRESS_BAR_HOOK = None
    yield pack.stubs
    mm.state.update(interrupt=False, load_calls=[])
    utils.PROGRESS_BAR_HOOK = None


def images(b=2, h=80, w=60, seed=0):
    """ComfyUI layout: person IMAGE (B, H, W, 3), garment IMAGE (1, 64, 48, 3), mask MASK (1, H/2, W/2)."""
    g = torch.Generator().manual_seed(seed)
    person = torch.rand(b, h, w, 3, generator=g)
    garment = torch.rand(1, 64, 48, 3, generator=g)
    mask = torch.zeros(1, h // 2, w // 2)
    mask[:, 10:30, 5:25] = 1.0
    return person, garment, mask


def sample(pack, handle, cond, **kw):
    opts = dict(seed=7, steps=STEPS, cfg=2.5, scheduler="ddim", denoise=1.0) | kw
    return run(pack.registered.classes["TWGTMSampler"], model=handle, conditioning=cond, **opts)


def try_on_cond(pack, person, garment, mask, **kw):
    (cond,) = run(pack.registered.classes["TWGTMTryOnConditioning"], person=person, garment=garment, mask=mask,
                  category=kw.pop("category", "upper"), paste_back=kw.pop("paste_back", True))
    return cond


# ----------------------------------------------------------------------------- registration and schemas
def test_pack_registers_v3_nodes_with_prefixed_ids_and_tooltips(pack):
    io = pack.stubs["comfy_api.v0_0_2"].io
    assert set(pack.registered.classes) == {"TWGTMModelLoader", "TWGTMTryOnConditioning", "TWGTMTryOffConditioning",
                                             "TWGTMGarmentMask", "TWGTMSampler", "TWGTMMaskToBox"}
    assert set(pack.registered.display_names) == set(pack.registered.classes)
    for node_id, cls in pack.registered.classes.items():
        assert issubclass(cls, io.ComfyNode)
        schema = cls.GET_SCHEMA()
        assert schema.node_id == node_id and node_id.startswith("TWGTM")
        assert schema.display_name == pack.registered.display_names[node_id]
        assert schema.display_name.startswith("TWGTM ")
        assert schema.category == "TWGTM" and schema.description
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.tooltip, f"{node_id} output {out.display_name} has no tooltip"


def test_nodes_are_registered_through_comfy_entrypoint(pack):
    """ComfyUI 0.3.64 uses a pack's NODE_CLASS_MAPPINGS when it has one and then ignores comfy_entrypoint;
    the pack root has none, so ComfyUI calls the entrypoint and lists the extension's nodes."""
    assert pack.registered.via == "comfy_entrypoint"
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack, "NODE_DISPLAY_NAME_MAPPINGS")
    extension = comfy_stubs.asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, pack.stubs["comfy_api.v0_0_2"].ComfyExtension)
    assert comfy_stubs.asyncio.run(extension.get_node_list()) == list(pack.registered.classes.values())


def test_the_pack_imports_the_versioned_comfy_api_only():
    """Every ``comfy_api`` import of the pack is ``comfy_api.v0_0_2`` (not ``latest``, which changes)."""
    sources = [comfy_stubs.PACK_ROOT / "__init__.py", *sorted((comfy_stubs.PACK_ROOT / "nodes").glob("*.py"))]
    seen = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.split(".")[0] == "comfy_api":
                    seen.add(name)
                    assert name == "comfy_api.v0_0_2", f"{path.name} imports {name}"
    assert seen == {"comfy_api.v0_0_2"}


def test_wire_types_of_the_schema(pack):
    info = comfy_stubs.object_info(pack)
    assert info["TWGTMModelLoader"]["output"] == ["TWGTM_MODEL"]
    assert info["TWGTMTryOnConditioning"]["input"]["required"]["mask"][0] == "MASK"
    assert info["TWGTMTryOffConditioning"]["input"]["optional"]["mask"][0] == "MASK"
    assert info["TWGTMSampler"]["output"] == ["IMAGE", "MASK"]
    assert info["TWGTMSampler"]["input"]["required"]["conditioning"][0] == "TWGTM_CONDITIONING"
    assert info["TWGTMSampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True


def test_model_folder_is_registered(pack, base):
    fp = pack.stubs["folder_paths"]
    assert fp.get_folder_paths("twgtm") == [str(base / "models" / "twgtm")]


def test_scheduler_names_match_the_library(pack):
    assert pack.nodes.sampler.SCHEDULERS == list(lib(pack, "schedulers").SCHEDULER_NAMES)


def test_nodes_pick_no_device_at_import(base):
    """Importing the pack and building its schemas must not ask ComfyUI for a device."""
    stubs = comfy_stubs.make_stub_modules(base)
    calls = []
    for name in ("get_torch_device", "unet_offload_device", "intermediate_device"):
        setattr(stubs["comfy.model_management"], name, lambda name=name: calls.append(name))
    with comfy_stubs.load_pack(base, name="twgtm_import_probe", stubs=stubs) as probe:
        for cls in probe.registered.classes.values():
            cls.GET_SCHEMA()
    assert calls == []


# ----------------------------------------------------------------------------- loader
COMPONENTS = ("unet", "vae", "reference_encoder")


def test_loader_gives_each_component_its_own_model_patcher(pack, handle, stubs):
    loader = pack.nodes.loader
    assert set(handle.patchers) == set(COMPONENTS)
    components = handle.components()
    for name in COMPONENTS:
        patcher = handle.patchers[name]
        assert isinstance(patcher, stubs["comfy.model_patcher"].ModelPatcher)
        assert type(patcher.model) is loader.HOLDERS[name]  # ModelPatcher writes `device` on it
        assert isinstance(patcher.model, loader.ComponentHolder)
        assert patcher.model.net is handle.module(name) is getattr(components, name)
        assert patcher.load_device == torch.device("cpu") and patcher.offload_device == torch.device("cpu")
        assert all(p.dtype == torch.float32 for p in handle.module(name).parameters())
    assert type(handle.module("unet")).__name__ == "UNet2DConditionModel"
    assert isinstance(handle.module("reference_encoder"), lib(pack, "reference").ReferenceEncoder)
    assert components.config is handle.config and handle.config.height == 64
    assert handle.dtype == torch.float32 and handle.name == loader.EXAMPLE_CHECKPOINT


def test_a_component_without_a_holder_cannot_be_managed(pack, tiny_file, stubs):
    """Why the holders: ModelPatcher sets ``device`` on the module it manages, a read-only property of the
    diffusers UNet and VAE and of the reference encoder."""
    loader = pack.nodes.loader
    fresh = loader.load_handle(tiny_file, loader.BUNDLED, loader.NO_VAE, loader.BUNDLED, "fp32")
    ModelPatcher, mm = stubs["comfy.model_patcher"].ModelPatcher, stubs["comfy.model_management"]
    for name in COMPONENTS:
        bare = ModelPatcher(fresh.module(name), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
        with pytest.raises(AttributeError):
            mm.load_models_gpu([bare])


def test_loader_keeps_no_module_level_cache(pack, tiny_file, stubs):
    """ComfyUI's output cache and model management reuse a loaded model; the pack keeps none itself, so a
    model ComfyUI drops is freed (a module-level cache would keep its weights in memory)."""
    loader = pack.nodes.loader
    node = pack.registered.classes["TWGTMModelLoader"]
    opts = dict(twgtm_file=tiny_file, base_model=loader.BUNDLED, vae=loader.NO_VAE, clip_vision=loader.BUNDLED,
                dtype="fp32")
    (first,) = run(node, **opts)
    (second,) = run(node, **opts)
    assert second is not first and second.patchers["unet"] is not first.patchers["unet"]  # read again
    refs = [weakref.ref(x) for h in (first, second) for x in (h, *h.patchers.values(), *h.components().modules().values())]
    del first, second
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert not hasattr(loader, "_CACHE") and not hasattr(loader, "clear_cache")


def test_loader_fingerprint_changes_with_the_file(pack, base, tiny_file):
    """ComfyUI re-runs the loader (instead of reusing its cached output) when the file on disk changes."""
    loader = pack.registered.classes["TWGTMModelLoader"]
    opts = dict(twgtm_file=tiny_file, base_model=pack.nodes.loader.BUNDLED, vae=pack.nodes.loader.NO_VAE,
                clip_vision=pack.nodes.loader.BUNDLED, dtype="fp32")
    before = loader.fingerprint_inputs(**opts)
    path = base / "models" / "twgtm" / tiny_file
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    try:
        assert loader.fingerprint_inputs(**opts) != before
        assert loader.fingerprint_inputs(**opts) == loader.fingerprint_inputs(**opts)
        assert loader.fingerprint_inputs(**opts | {"dtype": "bf16"}) != loader.fingerprint_inputs(**opts)
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_loader_bf16(pack, tiny_file):
    loader = pack.nodes.loader
    h = loader.load_handle(tiny_file, loader.BUNDLED, loader.NO_VAE, loader.BUNDLED, "bf16")
    assert h.dtype == torch.bfloat16
    for name in COMPONENTS:
        assert all(p.dtype == torch.bfloat16 for p in h.module(name).parameters()), name


def test_loader_missing_file_names_the_folder(pack, base):
    loader = pack.registered.classes["TWGTMModelLoader"]
    msg = loader.validate_inputs(twgtm_file="absent.safetensors")
    assert isinstance(msg, str) and str(base / "models" / "twgtm") in msg and "absent.safetensors" in msg
    errors = lib(pack, "errors")
    with pytest.raises(errors.MissingFileError, match="models.twgtm"):
        run(loader, twgtm_file="absent.safetensors", base_model=pack.nodes.loader.BUNDLED,
            vae=pack.nodes.loader.NO_VAE, clip_vision=pack.nodes.loader.BUNDLED, dtype="auto")


def test_loader_missing_base_component_names_its_folder_when_run(pack, base, tiny_file):
    """Called from Python (no POST /prompt before it), a missing base component still names its folder."""
    loader = pack.registered.classes["TWGTMModelLoader"]
    missing = lib(pack, "errors").MissingFileError
    opts = dict(twgtm_file=tiny_file, base_model=pack.nodes.loader.BUNDLED, vae=pack.nodes.loader.NO_VAE,
                clip_vision=pack.nodes.loader.BUNDLED, dtype="fp32")
    with pytest.raises(missing, match=f"base_model.*{base / 'models' / 'checkpoints'}"):
        run(loader, **opts | {"base_model": "sd15_inpainting.safetensors"})
    with pytest.raises(missing, match=f"clip_vision.*{base / 'models' / 'clip_vision'}"):
        run(loader, **opts | {"clip_vision": "clip_l.safetensors"})
    with pytest.raises(missing, match=f"vae.*{base / 'models' / 'vae'}"):
        run(loader, **opts | {"vae": "vae.safetensors"})
    with pytest.raises(lib(pack, "errors").InputError, match="dtype.*int8"):
        run(loader, **opts | {"dtype": "int8"})
    assert loader.validate_inputs(twgtm_file=tiny_file) is True


def test_loader_rejects_a_checkpoint_that_is_not_twgtm(pack, base):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 9, 3, 3)},
              str(base / "models" / "twgtm" / "sd15.safetensors"))
    loader = pack.nodes.loader
    with pytest.raises(lib(pack, "errors").WeightsError, match="not a TWGTM checkpoint.*Stable Diffusion"):
        loader.load_handle("sd15.safetensors", loader.BUNDLED, loader.NO_VAE, loader.BUNDLED, "fp32")


def test_trained_parts_only_file_asks_for_base_components(pack, base):
    torch.manual_seed(0)
    save_twgtm(TWGTMComponents.build(TWGTMConfig.tiny(), random_prompts=True), base / "models" / "twgtm" / "parts.safetensors")
    loader = pack.nodes.loader
    with pytest.raises(lib(pack, "errors").MissingFileError) as exc:
        loader.load_handle("parts.safetensors", loader.BUNDLED, loader.NO_VAE, loader.BUNDLED, "fp32")
    msg = str(exc.value)
    assert "base_model" in msg and str(base / "models" / "checkpoints") in msg
    assert str(base / "models" / "clip_vision") in msg


def test_loader_lists_files_of_the_model_folders(pack, base, tiny_file):
    (base / "models" / "diffusers" / "sd15-inpainting").mkdir(exist_ok=True)
    (base / "models" / "diffusers" / "sd15-inpainting" / "model_index.json").write_text("{}")
    (base / "models" / "vae" / "vae-ft-mse.safetensors").write_bytes(b"")
    info = comfy_stubs.object_info(pack)["TWGTMModelLoader"]["input"]["required"]
    assert tiny_file in info["twgtm_file"][1]["options"]
    assert info["twgtm_file"][1]["default"] == tiny_file
    assert info["base_model"][1]["options"][0] == pack.nodes.loader.BUNDLED
    assert "diffusers/sd15-inpainting" in info["base_model"][1]["options"]
    assert info["vae"][1]["options"] == [pack.nodes.loader.NO_VAE, "vae-ft-mse.safetensors"]
    assert info["dtype"][1]["options"] == ["auto", "bf16", "fp16", "fp32"]


# ----------------------------------------------------------------------------- validation before the run
def api_workflow(name: str) -> dict:
    return json.loads((comfy_stubs.PACK_ROOT / "workflows" / f"{name}_api.json").read_text())


def comfy_errors(pack, prompt: dict) -> dict:
    """What the POST /prompt of the pack's host reports for ``prompt`` (tests/comfy_stubs.py copies its checks)."""
    return comfy_stubs.comfy_node_errors(prompt, pack.registered.classes, host=pack.host)


def one_error(errors: dict, node_id: str) -> dict:
    assert set(errors) == {node_id}, errors
    (error,) = errors[node_id]
    return error


@pytest.mark.parametrize("name", ["twgtm_try_on", "twgtm_try_off", "twgtm_round_trip"])
def test_the_shipped_workflows_pass_comfyui_validation(pack, tiny_file, name):
    assert comfy_errors(pack, api_workflow(name)) == {}


@pytest.mark.parametrize("workflow,node_id,name,value", [
    ("twgtm_try_on", "6", "category", "shirt"),      # Try-On Conditioning
    ("twgtm_try_on", "7", "scheduler", "karras"),    # Sampler
    ("twgtm_try_on", "1", "dtype", "int8"),          # Model Loader
    ("twgtm_try_off", "5", "category", "hat"),       # Try-Off Conditioning
    ("twgtm_try_off", "3", "category", "dresses"),   # Garment Mask
])
def test_a_combo_value_outside_its_list_is_rejected_once_under_its_input(pack, tiny_file, workflow, node_id, name,
                                                                          value):
    """Refused by the host itself on both: 0.33.0 checks "COMBO" values, 0.3.64 only list-typed combos."""
    prompt = api_workflow(workflow)
    assert prompt[node_id]["inputs"][name] != value
    prompt[node_id]["inputs"][name] = value
    error = one_error(comfy_errors(pack, prompt), node_id)
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == name
    assert repr(value) in error["details"]


@pytest.mark.parametrize("name,value,folder", [
    ("twgtm_file", "absent.safetensors", "twgtm"),
    ("base_model", "sd15_inpainting.safetensors", None),
    ("vae", "vae-missing.safetensors", None),
    ("clip_vision", "clip_l.safetensors", None),
])
def test_a_missing_model_file_is_reported_once_under_its_input(pack, base, tiny_file, name, value, folder):
    prompt = api_workflow("twgtm_try_on")
    prompt["1"]["inputs"][name] = value
    error = one_error(comfy_errors(pack, prompt), "1")
    assert error["extra_info"]["input_name"] == name and value in error["details"]
    if folder:  # the TWGTM file: the message says where to put it
        assert error["type"] == "custom_validation_failed" and str(base / "models" / folder) in error["details"]
    else:       # base components: ComfyUI's own list check (the folder is in the tooltip and in the run error)
        assert error["type"] == "value_not_in_list"


@pytest.mark.parametrize("source", [{"class_type": "PrimitiveString", "inputs": {"value": "hello"}}, None])
def test_a_wrong_wire_type_into_a_mask_input_is_rejected_by_comfyui(pack, tiny_file, source):
    """The hosts check the link types of V3 inputs themselves, as long as no validate_inputs of the pack takes
    ``input_types`` (which would turn that check off)."""
    prompt = api_workflow("twgtm_try_on")
    if source is None:
        prompt["6"]["inputs"]["mask"] = ["2", 0]  # LoadImage's IMAGE
        received = "IMAGE"
    else:
        prompt["9"] = source
        prompt["6"]["inputs"]["mask"] = ["9", 0]
        received = "STRING"
    error = one_error(comfy_errors(pack, prompt), "6")
    assert error["type"] == "return_type_mismatch" and error["extra_info"]["input_name"] == "mask"
    assert f"received_type({received})" in error["details"]
    for cls in pack.registered.classes.values():
        validate = getattr(cls, "validate_inputs", None)
        assert validate is None or "input_types" not in comfy_stubs.inspect.getfullargspec(validate).args


def test_every_combo_input_is_checked_by_comfyui(pack):
    """Each combo is declared in the form its host checks (nodes/host.py asks the host): ``"COMBO"`` with the
    options in the input where the host checks such values (0.33.0), its list of options as its type where only
    that form is checked (0.3.64); the options unchanged."""
    combos = 0
    for node in comfy_stubs.object_info(pack).values():
        for cat in ("required", "optional"):
            for name, (typ, opts) in node["input"].get(cat, {}).items():
                if "options" in opts:
                    combos += 1
                    expected = "COMBO" if pack.host.checks_combo_values else opts["options"]
                    assert typ == expected, (node["name"], name, typ)
    assert combos == 9


@pytest.mark.parametrize("how", ["no execution module", "probe raises", "probe awaits"])
def test_a_host_that_cannot_be_probed_gets_plain_combos(tmp_path, monkeypatch, how):
    """When the probe cannot ask the host (no ``execution`` loaded, or its validation behaves unlike any known
    host), the pack declares ``"COMBO"``, the form every host accepts (a wrong value then fails when the node
    runs), and says so in the log."""
    stubs = comfy_stubs.make_stub_modules(tmp_path, comfy_stubs.OLDEST)
    if how == "no execution module":
        del stubs["execution"]
    elif how == "probe raises":
        async def validate_inputs(prompt_id, prompt, item, validated):
            raise KeyError(prompt[item]["class_type"])
        stubs["execution"].validate_inputs = validate_inputs
    else:
        async def validate_inputs(prompt_id, prompt, item, validated):
            await comfy_stubs.asyncio.sleep(0)
            return True, [], item
        stubs["execution"].validate_inputs = validate_inputs
    with comfy_stubs.load_pack(tmp_path, name="twgtm_unprobed", stubs=stubs) as unprobed:
        assert unprobed.nodes.host.CHECKS_COMBO_VALUES is None
        spec = comfy_stubs.object_info(unprobed)["TWGTMSampler"]["input"]["required"]["scheduler"]
        assert spec[0] == "COMBO" and spec[1]["options"] == list(unprobed.nodes.sampler.SCHEDULERS)
        assert "TWGTMHostProbe" not in stubs["nodes"].NODE_CLASS_MAPPINGS  # the probe node never stays registered
        with pytest.raises(Exception, match="scheduler: expected one of"):  # checked when the node runs
            unprobed.registered.classes["TWGTMSampler"].execute(model=None, conditioning=None, seed=0, steps=1,
                                                                 cfg=1.0, scheduler="karras", denoise=1.0)


def test_the_host_probe_leaves_the_registry_as_it_was(pack):
    registry = pack.stubs["nodes"].NODE_CLASS_MAPPINGS
    assert set(registry) == set(pack.registered.classes)
    assert pack.nodes.host.checks_combo_values() is pack.host.checks_combo_values
    assert set(registry) == set(pack.registered.classes)


# ----------------------------------------------------------------------------- requirements
def test_required_modules_are_the_requirements_file(pack):
    names = [ln.split(">")[0].split("=")[0].split("<")[0].strip()
             for ln in (comfy_stubs.PACK_ROOT / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert list(pack.nodes.requirements.REQUIRED_MODULES) == names
    assert pack.nodes.requirements.MISSING == []


MISSING_REQUIREMENTS_PROBE = textwrap.dedent("""
    import io, json, logging, sys
    HIDDEN = {"diffusers", "transformers", "timm"}

    class Hide:  # a Python without the pack's requirements
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    sys.path.insert(0, sys.argv[1])
    import torch
    import comfy_stubs
    out = {}
    with comfy_stubs.load_pack(sys.argv[2]) as pack:
        out["nodes"] = sorted(pack.registered.classes)
        out["log"] = log.getvalue().splitlines()
        out["missing"] = pack.nodes.requirements.MISSING
        errors = {}
        for name, call in [
            ("loader.validate", lambda: pack.registered.classes["TWGTMModelLoader"].validate_inputs(twgtm_file="x")),
            ("sampler.validate", lambda: pack.registered.classes["TWGTMSampler"].validate_inputs()),
            ("garment_mask.validate", lambda: pack.registered.classes["TWGTMGarmentMask"].validate_inputs()),
            ("loader.execute", lambda: pack.registered.classes["TWGTMModelLoader"].execute(
                twgtm_file="x", base_model="b", vae="v", clip_vision="c", dtype="auto")),
            ("sampler.execute", lambda: pack.registered.classes["TWGTMSampler"].execute(
                model=None, conditioning=None, seed=0, steps=1, cfg=1.0, scheduler="ddim", denoise=1.0)),
        ]:
            try:
                call()
                errors[name] = None
            except Exception as ex:
                errors[name] = [type(ex).__name__, isinstance(ex, ImportError), str(ex)]
        out["errors"] = errors
        (cond,) = pack.registered.classes["TWGTMTryOnConditioning"].execute(
            person=torch.rand(1, 8, 6, 3), garment=torch.rand(1, 8, 6, 3), mask=torch.ones(1, 8, 6),
            category="upper").result
        out["conditioning_runs"] = cond.task
    print(json.dumps(out))
""")


def test_missing_requirements_are_named_once_at_import_and_by_the_nodes(tmp_path):
    """Without diffusers/transformers/timm: the nodes are listed, one warning says how to install them,
    and the nodes that need them fail with that command instead of "No module named 'diffusers'"."""
    proc = subprocess.run([sys.executable, "-c", MISSING_REQUIREMENTS_PROBE, str(Path(__file__).parent),
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    command = f"{sys.executable} -m pip install -r {comfy_stubs.PACK_ROOT / 'requirements.txt'}"
    assert len(out["nodes"]) == 6 and out["missing"] == ["diffusers", "transformers", "timm"]
    (line,) = out["log"]  # one line, at warning level
    assert command in line and "diffusers, transformers, timm" in line
    for name, error in out["errors"].items():
        assert error is not None, name
        kind, is_import_error, msg = error
        assert kind == "MissingRequirementError" and is_import_error, (name, error)
        assert command in msg and "diffusers" in msg and "restart ComfyUI" in msg, (name, msg)
    assert out["conditioning_runs"] == "try_on"  # nodes that need no requirement still work


# ----------------------------------------------------------------------------- try-on
def test_try_on_batch_broadcast_resize_and_progress(pack, handle, stubs):
    person, garment, mask = images(b=2)
    seen = []
    stubs["comfy.utils"].PROGRESS_BAR_HOOK = lambda value, total, preview, node_id=None: seen.append((value, total))
    image, region = sample(pack, handle, try_on_cond(pack, person, garment, mask))
    assert image.shape == (2, 80, 60, 3) and region.shape == (2, 80, 60)
    assert image.dtype == torch.float32 and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # the half-size mask was resized to the person (nearest) and broadcast to the batch
    expected = torch.nn.functional.interpolate(mask[:, None], size=(80, 60), mode="nearest")[:, 0].expand(2, -1, -1)
    assert torch.equal(region, expected)
    outside = region == 0
    assert torch.equal(image[outside], person[outside])  # paste-back: unmasked pixels untouched
    assert not torch.allclose(image[~outside], person[~outside])
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    calls = stubs["comfy.model_management"].state["load_calls"]
    assert [c["models"] for c in calls] == [[handle.patchers["reference_encoder"]],
                                           [handle.patchers["unet"], handle.patchers["vae"]]]
    assert all(c["force_full_load"] and c["memory_required"] > 0 for c in calls)
    for patcher in handle.patchers.values():
        assert patcher.model.device == torch.device("cpu")  # ModelPatcher's bookkeeping attribute


def test_try_on_node_equals_the_library_call(pack, handle, stubs):
    """The node is a thin adapter: same result as TWGTMPipeline with channels-first tensors."""
    person, garment, mask = images(b=1, h=64, w=48, seed=3)
    image, _ = sample(pack, handle, try_on_cond(pack, person, garment, mask, category="dress"), seed=11,
                      scheduler="euler", cfg=1.0)
    pipe = lib(pack, "pipeline").TWGTMPipeline.from_components(handle.components())
    ref = pipe.try_on(person.permute(0, 3, 1, 2), garment.permute(0, 3, 1, 2), mask, "dress",
                      num_inference_steps=STEPS, guidance_scale=1.0, generator=11, scheduler="euler")
    assert torch.equal(image, ref.images.permute(0, 2, 3, 1))


def test_try_on_garment_batch_must_broadcast(pack, handle, stubs):
    person, _, mask = images(b=2)
    garments = torch.rand(3, 64, 48, 3)
    with pytest.raises(lib(pack, "errors").InputError, match="garment"):
        sample(pack, handle, try_on_cond(pack, person, garments, mask))


def transparent_garment(h=64, w=48):
    """A blue top cut out on a transparent background, as ComfyUI's LoadImage gives a PNG with alpha:
    IMAGE RGB, black where transparent, and MASK = 1 - alpha. Also the same top on white."""
    alpha = torch.zeros(1, h, w)
    alpha[:, 8:56, 6:42] = 1.0
    blue = torch.tensor([0.1, 0.2, 0.9])
    rgb = alpha[..., None] * blue                            # (1, H, W, 3): black background
    on_white = rgb + (1.0 - alpha[..., None])                # (1, H, W, 3): the catalogue image
    return rgb, 1.0 - alpha, on_white, torch.cat([rgb, alpha[..., None]], dim=-1)


def test_try_on_garment_transparency_puts_the_garment_on_white(pack, handle, stubs):
    person, _, mask = images(b=1, h=64, w=48, seed=5)
    rgb, transparency, on_white, _ = transparent_garment()
    node = pack.registered.classes["TWGTMTryOnConditioning"]
    (cond,) = run(node, person=person, garment=rgb, mask=mask, category="upper", garment_transparency=transparency)
    seen = lib(pack, "images").as_image_batch(cond.garment, "garment")  # what the model gets
    assert torch.equal(seen, on_white.permute(0, 3, 1, 2))
    result, _ = sample(pack, handle, cond)
    reference, _ = sample(pack, handle, try_on_cond(pack, person, on_white, mask))
    unwired, _ = sample(pack, handle, try_on_cond(pack, person, rgb, mask))
    assert torch.equal(result, reference) and not torch.equal(unwired, reference)


def test_try_on_garment_transparency_is_resized_and_batch_checked(pack):
    person, garment, mask = images(b=1)
    node = pack.registered.classes["TWGTMTryOnConditioning"]
    # LoadImage gives a 64x64 zero MASK for an image without alpha: the garment stays as it is
    (cond,) = run(node, person=person, garment=garment, mask=mask, category="upper",
                  garment_transparency=torch.zeros(1, 64, 64))
    assert torch.equal(lib(pack, "images").as_image_batch(cond.garment, "garment"), garment.permute(0, 3, 1, 2))
    # a mask at another size is resized to the garment; soft edges stay soft
    half = torch.full((1, 32, 24), 0.5)
    (cond,) = run(node, person=person, garment=garment, mask=mask, category="upper", garment_transparency=half)
    assert cond.garment.shape == (1, 4, 64, 48) and torch.allclose(cond.garment[:, 3], torch.full((1, 64, 48), 0.5))
    with pytest.raises(lib(pack, "errors").InputError, match="garment_transparency.*batch"):
        run(node, person=person, garment=garment, mask=mask, category="upper",
            garment_transparency=torch.zeros(3, 64, 48))
    info = comfy_stubs.object_info(pack)["TWGTMTryOnConditioning"]["input"]
    assert info["optional"]["garment_transparency"][0] == "MASK"
    assert "1 - alpha" in info["optional"]["garment_transparency"][1]["tooltip"]


def test_try_on_rgba_garment_is_put_on_white_by_its_alpha(pack, handle, stubs):
    person, _, mask = images(b=1, h=64, w=48, seed=5)
    rgb, transparency, on_white, rgba = transparent_garment()
    result, _ = sample(pack, handle, try_on_cond(pack, person, rgba, mask))
    reference, _ = sample(pack, handle, try_on_cond(pack, person, on_white, mask))
    assert torch.equal(result, reference)
    # an RGBA garment with a transparency mask as well: both make pixels transparent
    node = pack.registered.classes["TWGTMTryOnConditioning"]
    more = torch.zeros(1, 64, 48)
    more[:, :, :24] = 1.0  # the left half transparent too
    (cond,) = run(node, person=person, garment=rgba, mask=mask, category="upper", garment_transparency=more)
    seen = lib(pack, "images").as_image_batch(cond.garment, "garment")
    assert torch.equal(seen[..., :24], torch.ones(1, 3, 64, 24))
    assert torch.equal(seen[..., 24:], on_white.permute(0, 3, 1, 2)[..., 24:])


def test_conditioning_rejects_bad_layouts_and_values(pack):
    errors = lib(pack, "errors")
    person, garment, mask = images(b=1)
    with pytest.raises(errors.InputError, match="person"):  # channels-first tensor instead of an IMAGE
        try_on_cond(pack, person.permute(0, 3, 1, 2).repeat(1, 2, 1, 1), garment, mask)
    with pytest.raises(errors.InputError, match="mask"):
        try_on_cond(pack, person, garment, mask[:, None])
    with pytest.raises(errors.InputError, match="category"):
        try_on_cond(pack, person, garment, mask, category="hat")


def test_sampler_rejects_unknown_scheduler_and_foreign_conditioning(pack, handle):
    errors = lib(pack, "errors")
    person, garment, mask = images(b=1)
    with pytest.raises(errors.InputError, match="scheduler"):
        sample(pack, handle, try_on_cond(pack, person, garment, mask), scheduler="lms")
    with pytest.raises(errors.InputError, match="conditioning"):
        sample(pack, handle, [[torch.zeros(1, 77, 768), {}]])  # ComfyUI's own CONDITIONING


# ----------------------------------------------------------------------------- try-off and masks
def test_try_off_mask_free_and_with_a_box(pack, handle, stubs):
    person, _, _ = images(b=2)
    (cond,) = run(pack.registered.classes["TWGTMTryOffConditioning"], person=person, category="lower")
    garment, probs = sample(pack, handle, cond)
    assert garment.shape == (2, 64, 48, 3) and probs.shape == (2, 64, 48)  # the model canvas
    assert 0.0 <= float(probs.min()) and float(probs.max()) <= 1.0
    box = torch.zeros(1, 64, 48)
    box[:, 8:56, 6:42] = 1.0
    (boxed,) = run(pack.registered.classes["TWGTMTryOffConditioning"], person=person, category="lower", mask=box)
    garment_box, _ = sample(pack, handle, boxed)
    assert garment_box.shape == garment.shape and not torch.equal(garment_box, garment)


def test_a_model_without_srm_returns_its_region_and_refuses_the_garment_mask(pack, base, stubs):
    """Ablation Variant 1 (``use_srm`` false) predicts no garment mask: the Sampler's try-off mask output is the
    region it generated (the whole canvas, or the given box), and the Garment Mask node is a typed error."""
    torch.manual_seed(0)
    model = TWGTMComponents.build(TWGTMConfig.tiny(use_srm=False), random_prompts=True)
    save_twgtm(model, base / "models" / "twgtm" / "no_srm.safetensors", include_base=True)
    loader = pack.nodes.loader
    (h,) = run(pack.registered.classes["TWGTMModelLoader"], twgtm_file="no_srm.safetensors",
               base_model=loader.BUNDLED, vae=loader.NO_VAE, clip_vision=loader.BUNDLED, dtype="fp32")
    person, _, _ = images(b=1)
    (cond,) = run(pack.registered.classes["TWGTMTryOffConditioning"], person=person, category="lower")
    garment, region = sample(pack, h, cond, cfg=1.0)
    assert garment.shape == (1, 64, 48, 3) and torch.equal(region, torch.ones(1, 64, 48))
    box = torch.zeros(1, 64, 48)
    box[:, 8:56, 6:42] = 1.0
    (boxed,) = run(pack.registered.classes["TWGTMTryOffConditioning"], person=person, category="lower", mask=box)
    assert torch.equal(sample(pack, h, boxed, cfg=1.0)[1], box)
    with pytest.raises(lib(pack, "errors").ConfigError, match="predict_garment_mask: expected a model with a "
                                                              "Spatial Refinement Module"):
        run(pack.registered.classes["TWGTMGarmentMask"], model=h, person=person, category="upper", threshold=0.5)


def test_garment_mask_threshold(pack, handle, stubs):
    person, _, _ = images(b=2)
    node = pack.registered.classes["TWGTMGarmentMask"]
    (soft,) = run(node, model=handle, person=person, category="upper", threshold=0.0)
    (hard,) = run(node, model=handle, person=person, category="upper", threshold=0.5)
    pipe = lib(pack, "pipeline").TWGTMPipeline.from_components(handle.components())
    ref = pipe.predict_garment_mask(person.permute(0, 3, 1, 2), "upper")
    assert soft.shape == (2, 64, 48) and torch.equal(soft, ref[:, 0])
    assert torch.equal(hard, (ref[:, 0] > 0.5).float())


# ----------------------------------------------------------------------------- loading through ComfyUI
@pytest.fixture()
def events(pack, handle, stubs):
    """One list of what happens, in order: ``("load", names)`` for each load_models_gpu call (the patchers'
    component names) and ``("run", name)`` when a component starts computing (any of its modules)."""
    log = []
    mm = stubs["comfy.model_management"]
    names = {id(p): n for n, p in handle.patchers.items()}
    real_load = mm.load_models_gpu

    def load_models_gpu(models, *args, **kwargs):
        log.append(("load", tuple(names[id(m)] for m in models)))
        return real_load(models, *args, **kwargs)

    def hook(name):
        def pre(_module, _args):
            if log[-1:] != [("run", name)]:
                log.append(("run", name))
        return pre

    hooks = [m.register_forward_pre_hook(hook(name)) for name in COMPONENTS for m in handle.module(name).modules()]
    mm.load_models_gpu = load_models_gpu
    yield log
    mm.load_models_gpu = real_load
    for h in hooks:
        h.remove()


def phases(log):
    """The order of first uses: loads as they are, runs once per component."""
    out, ran = [], set()
    for kind, what in log:
        if kind == "run":
            if what in ran:
                continue
            ran.add(what)
        out.append((kind, what))
    return out


def test_garment_mask_loads_only_the_reference_encoder(pack, handle, stubs, events):
    person, _, _ = images(b=1)
    run(pack.registered.classes["TWGTMGarmentMask"], model=handle, person=person, category="upper", threshold=0.5)
    assert events == [("load", ("reference_encoder",)), ("run", "reference_encoder")]
    (call,) = stubs["comfy.model_management"].state["load_calls"]
    assert call["force_full_load"] and call["memory_required"] > 0


@pytest.mark.parametrize("task", ["try_on", "try_off"])
def test_sampler_loads_the_reference_encoder_then_unet_and_vae(pack, handle, stubs, events, task):
    person, garment, mask = images(b=1)
    if task == "try_on":
        cond = try_on_cond(pack, person, garment, mask)
    else:
        (cond,) = run(pack.registered.classes["TWGTMTryOffConditioning"], person=person, category="upper")
    sample(pack, handle, cond)
    first = phases(events)
    assert first[:3] == [("load", ("reference_encoder",)), ("run", "reference_encoder"), ("load", ("unet", "vae"))]
    assert {what for kind, what in first[3:]} == {"unet", "vae"} and all(k == "run" for k, _ in first[3:])
    assert [e for e in events if e[0] == "load"] == [("load", ("reference_encoder",)), ("load", ("unet", "vae"))]
    assert ("run", "reference_encoder") not in events[events.index(("load", ("unet", "vae"))):]


def test_phase_memory_estimates(pack, handle):
    """Each phase asks ComfyUI to keep room for its own activations; the denoising estimate grows with CFG."""
    memory = pack.nodes.memory
    full = lib(pack, "config").TWGTMConfig.full()
    ref = memory.inference_memory(full, ("reference_encoder",), 1, 2.5, torch.bfloat16)
    denoise = memory.inference_memory(full, ("unet", "vae"), 1, 2.5, torch.bfloat16)
    assert ref == 160 * 1024 * 768 * 2  # 240 MiB, under ComfyUI's own floor (0.8 GiB + reserve)
    assert denoise == 2178 * 128 * 96 * 64 * 2  # the VAE decode of one 1024x768 image dominates at batch 1
    assert memory.inference_memory(full, ("unet", "vae"), 8, 2.5, torch.bfloat16) > \
        memory.inference_memory(full, ("unet", "vae"), 8, 1.0, torch.bfloat16)
    assert memory.inference_memory(full, ("reference_encoder",), 2, 1.0, torch.float32) == 4 * ref


def test_mask_to_box(pack):
    node = pack.registered.classes["TWGTMMaskToBox"]
    mask = torch.zeros(2, 40, 30)
    mask[0, 10:30, 5:15] = 1.0   # the garment: a 20 x 10 block
    mask[0, 2, 28] = 1.0         # a stray speck
    (box,) = run(node, mask=mask, margin=0.1, largest_region_only=True)
    expected = torch.zeros(40, 30)
    expected[8:32, 4:16] = 1.0   # grown by 10 % of 20 = 2 rows and 10 % of 10 = 1 column on each side
    assert torch.equal(box[0], expected)
    assert torch.equal(box[1], torch.zeros(40, 30))  # empty mask -> empty box
    (with_speck,) = run(node, mask=mask, margin=0.0, largest_region_only=False)
    assert with_speck[0, 2:30, 5:29].min() == 1.0


# ----------------------------------------------------------------------------- interrupt
def test_interrupt_stops_promptly_and_leaves_the_model_usable(pack, handle, stubs):
    """After an interrupt the next run (another garment and person) gives exactly what it gives without one."""
    person, garment, mask = images(b=1)
    other_person, other_garment, _ = images(b=1, seed=9)
    mm = stubs["comfy.model_management"]
    cond = try_on_cond(pack, person, garment, mask)
    other = try_on_cond(pack, other_person, other_garment, mask, category="dress")
    clean, _ = sample(pack, handle, other, steps=4)
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 2:
            mm.interrupt_current_processing()  # what POST /interrupt does

    stubs["comfy.utils"].PROGRESS_BAR_HOOK = hook
    with pytest.raises(mm.InterruptProcessingException):
        sample(pack, handle, cond, steps=4)
    assert seen == [1, 2]  # stopped right after the step that saw the flag
    stubs["comfy.utils"].PROGRESS_BAR_HOOK = None
    assert not mm.processing_interrupted()  # the flag was consumed by the interrupt
    again, _ = sample(pack, handle, other, steps=4)
    assert torch.equal(again, clean)
    (mask_after,) = run(pack.registered.classes["TWGTMGarmentMask"], model=handle, person=other_person,
                        category="dress", threshold=0.0)
    pipe = lib(pack, "pipeline").TWGTMPipeline.from_components(handle.components())
    assert torch.equal(mask_after, pipe.predict_garment_mask(other_person.permute(0, 3, 1, 2), "dress")[:, 0])
