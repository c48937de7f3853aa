"""TWGTM Model Loader: a TWGTM ``.safetensors`` from ``models/twgtm/`` (+ base components) -> TWGTM_MODEL.

The components (UNet, VAE, reference encoder) are built on ComfyUI's offload device, and each is handed
to ComfyUI's model management through its own ``ModelPatcher``; the nodes that run the model load only
the components they need, when they need them (``nodes/memory.py``), so ComfyUI decides when weights
move to the GPU and when they are offloaded again. The loader keeps nothing itself: ComfyUI's output
cache reuses the loaded model while the inputs and the file stay the same (``fingerprint_inputs``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..twgtm.errors import MissingFileError
from . import requirements
from .common import NODE_CATEGORY, Combo, TWGTMModelWire, check_option

logger = logging.getLogger(__name__)

MODEL_FOLDER = "twgtm"  # models/twgtm/, registered with folder_paths below
# The file name the example workflows load: the tiny model trained on synthetic data (include_base=True).
EXAMPLE_CHECKPOINT = "twgtm_synthetic_tiny.safetensors"
BUNDLED = "(bundled in the TWGTM file)"
NO_VAE = "(none)"
DIFFUSERS_PREFIX = "diffusers/"
DTYPES = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register_model_folder() -> None:
    """Add ``models/twgtm`` to ComfyUI's model folders; paths from extra_model_paths.yaml are kept."""
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


register_model_folder()


# ----------------------------------------------------------------------------- file lists
def _folders(name: str) -> str:
    try:
        return ", ".join(folder_paths.get_folder_paths(name))
    except KeyError:
        return os.path.join(folder_paths.models_dir, name)


def twgtm_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(MODEL_FOLDER) if f.lower().endswith(".safetensors")]


def diffusers_dirs() -> list[str]:
    """Diffusers pipeline folders (with model_index.json) under models/diffusers, like ComfyUI's DiffusersLoader."""
    found = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for here, _dirs, files in os.walk(root, followlinks=True):
            if "model_index.json" in files:
                found.append(os.path.relpath(here, root).replace(os.sep, "/"))
    return sorted(found)


def base_model_options() -> list[str]:
    return [BUNDLED] + folder_paths.get_filename_list("checkpoints") + [DIFFUSERS_PREFIX + d for d in diffusers_dirs()]


def vae_options() -> list[str]:
    return [NO_VAE] + folder_paths.get_filename_list("vae")


def clip_vision_options() -> list[str]:
    return [BUNDLED] + folder_paths.get_filename_list("clip_vision")


# ----------------------------------------------------------------------------- resolving choices
def _missing(what: str, value: str, folder: str, hint: str) -> MissingFileError:
    return MissingFileError(f"{what}: {value!r} was not found. Put {hint} in {_folders(folder)} "
                            f"(ComfyUI's '{folder}' model folder), then refresh the node list (press R).")


def resolve_twgtm_file(name: str) -> str:
    path = folder_paths.get_full_path(MODEL_FOLDER, name) if name else None
    if path is None:
        raise _missing("twgtm_file", name, MODEL_FOLDER, "TWGTM .safetensors files (e.g. "
                       f"{EXAMPLE_CHECKPOINT})")
    return path


def resolve_base_model(name: str) -> str | None:
    if name == BUNDLED:
        return None
    if name.startswith(DIFFUSERS_PREFIX):
        rel = name[len(DIFFUSERS_PREFIX):]
        for root in folder_paths.get_folder_paths("diffusers"):
            d = os.path.join(root, rel)
            if os.path.isfile(os.path.join(d, "model_index.json")):
                return d
        raise _missing("base_model", name, "diffusers", "a diffusers SD1.5-inpainting folder (with model_index.json)")
    path = folder_paths.get_full_path("checkpoints", name)
    if path is None:
        raise _missing("base_model", name, "checkpoints", "an SD1.5-inpainting checkpoint (.safetensors)")
    return path


def resolve_vae(name: str) -> str | None:
    if name == NO_VAE:
        return None
    path = folder_paths.get_full_path("vae", name)
    if path is None:
        raise _missing("vae", name, "vae", "the VAE file (e.g. sd-vae-ft-mse .safetensors)")
    return path


def resolve_clip_vision(name: str) -> str | None:
    if name == BUNDLED:
        return None
    path = folder_paths.get_full_path("clip_vision", name)
    if path is None:
        raise _missing("clip_vision", name, "clip_vision", "the CLIP ViT-L/14 image encoder (.safetensors)")
    return path


def resolve_dtype(name: str, load_device: torch.device) -> torch.dtype:
    """``auto``: bf16 where ComfyUI says the load device runs it well, else fp16 there, else fp32."""
    check_option("dtype", name, list(DTYPES))
    if DTYPES[name] is not None:
        return DTYPES[name]
    if mm.should_use_bf16(load_device):
        return torch.bfloat16
    if mm.should_use_fp16(load_device):
        return torch.float16
    return torch.float32


# ----------------------------------------------------------------------------- the loaded model
class ComponentHolder(torch.nn.Module):
    """The module one ComfyUI ``ModelPatcher`` manages: one TWGTM component, held as ``net``.

    ``ModelPatcher`` writes bookkeeping attributes (``device``, ``model_loaded_weight_memory``, ...) on the
    module it manages, and a diffusers ``ModelMixin`` (the UNet, the VAE) and the reference encoder have a
    read-only ``device`` property, so each component gets a holder. The pipeline uses ``net`` itself.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net


# One holder class per component, so that ComfyUI's log names what it loads ("Requested to load TWGTMUNet").
class TWGTMUNet(ComponentHolder):
    """Holds the UNet (with TWGTM's attention processors)."""


class TWGTMVAE(ComponentHolder):
    """Holds the VAE."""


class TWGTMReferenceEncoder(ComponentHolder):
    """Holds the reference encoder (SAM + SRM + Decoder)."""


HOLDERS: dict[str, type[ComponentHolder]] = {"unet": TWGTMUNet, "vae": TWGTMVAE,
                                             "reference_encoder": TWGTMReferenceEncoder}


@dataclass(frozen=True, eq=False)
class TWGTMHandle:
    """What travels on a TWGTM_MODEL wire: one ``ModelPatcher`` per component, and what describes them.

    ``patchers`` maps ``"unet"``, ``"vae"`` and ``"reference_encoder"`` (absent when the components have
    none: the CatVTON-class baseline) to a ``comfy.model_patcher.ModelPatcher`` around the component's
    holder (:data:`HOLDERS`). Nothing else keeps the components: once ComfyUI drops this output from its
    cache, they are freed.
    """

    patchers: Mapping[str, object]
    config: object       # twgtm.config.TWGTMConfig
    dtype: torch.dtype
    name: str            # the TWGTM file name, for messages

    def module(self, name: str) -> torch.nn.Module:
        """The component ``name`` (on whatever device ComfyUI has put it)."""
        return self.patchers[name].model.net

    def components(self):
        """The components as a ``twgtm.components.TWGTMComponents`` (read through the holders)."""
        from ..twgtm.components import TWGTMComponents

        ref = self.module("reference_encoder") if "reference_encoder" in self.patchers else None
        return TWGTMComponents(config=self.config, unet=self.module("unet"), vae=self.module("vae"),
                               reference_encoder=ref)


def load_handle(twgtm_file: str, base_model: str, vae: str, clip_vision: str, dtype: str) -> TWGTMHandle:
    """Resolve the choices, read the file onto ComfyUI's offload device and give each component a patcher.

    There is no cache here: ComfyUI keeps the loader's output between runs while its inputs and
    :meth:`TWGTMModelLoader.fingerprint_inputs` stay the same, and its model management keeps the
    components loaded on the GPU while there is room.
    """
    from ..twgtm.weights import BaseSources, load_twgtm, read_metadata

    path = resolve_twgtm_file(twgtm_file)
    base_path, vae_path, clip_path = resolve_base_model(base_model), resolve_vae(vae), resolve_clip_vision(clip_vision)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    torch_dtype = resolve_dtype(dtype, load_device)

    meta = read_metadata(path)  # a file that is not TWGTM fails here, with a message saying what it is
    base = None
    if meta.get("includes_base") == "1":
        if base_path or vae_path or clip_path:
            logger.warning("TWGTM: %s bundles its base components; base_model, vae and clip_vision are ignored",
                           twgtm_file)
    else:
        if base_path is None or clip_path is None:
            raise MissingFileError(
                f"twgtm_file: {twgtm_file!r} holds only the trained TWGTM parts, not the base components. Set "
                f"base_model to an SD1.5-inpainting checkpoint in {_folders('checkpoints')} (single file) or a "
                f"diffusers folder in {_folders('diffusers')}, and clip_vision to the CLIP ViT-L/14 image encoder "
                f"in {_folders('clip_vision')}; got base_model={base_model!r}, clip_vision={clip_vision!r}.")
        base = BaseSources(unet=base_path, vae=vae_path or base_path, clip_vision=clip_path)

    logger.info("TWGTM: loading %s as %s on %s", twgtm_file, torch_dtype, offload_device)
    components = load_twgtm(path, base=base, device=offload_device, dtype=torch_dtype)
    patchers = {name: comfy.model_patcher.ModelPatcher(HOLDERS[name](module), load_device=load_device,
                                                       offload_device=offload_device)
                for name, module in components.modules().items()}
    return TWGTMHandle(patchers=patchers, config=components.config, dtype=torch_dtype, name=twgtm_file)


class TWGTMModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = twgtm_files()
        return io.Schema(
            node_id="TWGTMModelLoader",
            display_name="TWGTM Model Loader",
            category=NODE_CATEGORY,
            description="Loads a TWGTM model (virtual try-on and try-off in one model) from models/twgtm/. "
                        "ComfyUI's model management moves each part (UNet, VAE, reference encoder) to the "
                        "GPU when a node needs it, and offloads it when others need the room.",
            inputs=[
                Combo("twgtm_file", options=files,
                      default=EXAMPLE_CHECKPOINT if EXAMPLE_CHECKPOINT in files else None,
                      tooltip="TWGTM .safetensors file in models/twgtm/."),
                Combo("base_model", options=base_model_options(), default=BUNDLED,
                      tooltip="SD1.5-inpainting UNet and VAE: a checkpoint in models/checkpoints/ or a "
                              "diffusers folder in models/diffusers/. Only for TWGTM files that hold the "
                              "trained parts alone; ignored for files that bundle them."),
                Combo("vae", options=vae_options(), default=NO_VAE,
                      tooltip="Optional VAE from models/vae/ that replaces the base model's VAE. "
                              "(none): use the VAE of base_model. Ignored for files that bundle it."),
                Combo("clip_vision", options=clip_vision_options(), default=BUNDLED,
                      tooltip="CLIP ViT-L/14 image encoder from models/clip_vision/. Only for TWGTM files "
                              "that hold the trained parts alone; ignored for files that bundle it."),
                Combo("dtype", options=list(DTYPES), default="auto",
                      tooltip="Weight precision. auto: bf16 or fp16 where the GPU supports it, else fp32."),
            ],
            outputs=[TWGTMModelWire.Output(display_name="model", tooltip="The loaded TWGTM model.")],
        )

    @classmethod
    def validate_inputs(cls, twgtm_file):
        """Before the run: the requirements are installed, and a missing TWGTM file names its folder.

        Only ``twgtm_file`` is an argument: ComfyUI files the returned message under every argument of
        ``validate_inputs``. ComfyUI itself checks the other combos (:class:`Combo`), so a missing base
        component or a wrong dtype is reported once, under its own input, as "Value not in list".
        """
        requirements.require("TWGTM Model Loader")
        try:
            resolve_twgtm_file(twgtm_file)
        except MissingFileError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, twgtm_file, base_model, vae, clip_vision, dtype):
        """Re-run when the file on disk changes."""
        path = folder_paths.get_full_path(MODEL_FOLDER, twgtm_file)
        if path is None:
            return None
        stat = os.stat(path)
        return (path, stat.st_mtime_ns, stat.st_size, base_model, vae, clip_vision, dtype)

    @classmethod
    def execute(cls, twgtm_file, base_model, vae, clip_vision, dtype) -> io.NodeOutput:
        requirements.require("TWGTM Model Loader")
        return io.NodeOutput(load_handle(twgtm_file, base_model, vae, clip_vision, dtype))
