"""How the TWGTM nodes hand their components to ComfyUI's model management.

Every component (UNet, VAE, reference encoder) has its own ``ModelPatcher`` (``nodes/loader.py``). A node
loads only the components it needs, when it needs them, with ``comfy.model_management.load_models_gpu``:
the pipeline calls its ``prepare`` hook (:class:`ComfyPrepare`) with the components of each phase,
``("reference_encoder",)`` before the reference features and ``("unet", "vae")`` before the latents.
ComfyUI then frees other models (or parts of them) when it needs room, and may offload the reference
encoder while the UNet runs. The pack never moves a component itself.

**Why force_full_load.** ComfyUI can load a model partially (lowvram): ``ModelPatcher.load`` with
``full_load=False`` (``comfy/model_patcher.py``, ComfyUI 0.3.64) moves a module to the GPU only while it
fits in the memory it was given, and for the modules that are not ComfyUI's own ``comfy.ops`` layers (no
``comfy_cast_weights``, which would copy the weights in at each call) it leaves the rest on the offload
device, without marking the model as partially loaded (``model_lowvram`` stays False, the log says
"loaded completely"); and such a load never moves the parameters of non-leaf modules (CLIP's class
embedding, the Q-Former queries, Swin's relative position tables), even when everything would fit. The
TWGTM components are plain diffusers / timm / transformers modules, so such a load ends in "Tensor on
device cpu is not on the expected device ...". ``force_full_load=True`` makes ComfyUI free memory and then
load each named component entirely (a component that cannot fit is an out-of-memory error).
tests/test_comfyui_live.py ``test_a_partial_comfyui_load_leaves_plain_modules_behind`` shows this with the
real ``ModelPatcher``: with half the memory, 44 of the tiny UNet's 480 tensors move, 36 of the VAE's 180
and 42 of the reference encoder's 436, each then fails on a device mismatch; with room to spare, 12 of the
reference encoder's tensors still stay behind.
"""
from __future__ import annotations

from typing import Iterable

import comfy.model_management as mm
import torch

from ..twgtm.errors import InputError
from .loader import TWGTMHandle

FORCE_FULL_LOAD = True  # see the module docstring: a partial load leaves plain torch modules split

# Reference encoder activations per canvas pixel (H x W) per image per byte of dtype. Measured on the CPU for
# the full model (random weights) at 1024x768 in fp32, as the peak rise of the process memory over one
# forward with SRM: 310 MiB at batch 1, 790 MiB at batch 2, i.e. 100 to 130; 160 leaves some headroom. (No
# GPU was available; the CPU's attention keeps whole score matrices, so a GPU should need no more.)
REFERENCE_BYTES_PER_PIXEL = 160


def _dtype_size(dtype: torch.dtype) -> int:
    return 2 if dtype in (torch.float16, torch.bfloat16) else 4


def reference_encoder_memory(config, batch: int, dtype: torch.dtype) -> int:
    """Bytes to keep free for the reference encoder (SAM + SRM + Decoder) on ``batch`` canvas images."""
    return int(REFERENCE_BYTES_PER_PIXEL * config.height * config.width * _dtype_size(dtype) * batch)


def denoise_memory(config, batch: int, guidance_scale: float, dtype: torch.dtype) -> int:
    """Bytes to keep free for the UNet steps and the VAE, from ComfyUI's own SD1.5 estimates.

    UNet: ``model_base.memory_required`` (area x dtype size x 0.01 MiB) over the CFG batch of concatenated
    latents. VAE: the SD AutoencoderKL decode estimate from ``comfy.sd.VAE`` (2178 bytes per output pixel per
    dtype byte: 64 pixels per latent for the SD VAE, ``vae_scale_factor ** 2`` in general), one image at a
    time; it is larger than ComfyUI's encode estimate (1767 per pixel) of the same image.
    """
    h, w = config.latent_size
    size = _dtype_size(dtype)
    area = batch * (2 if guidance_scale > 1.0 else 1) * h * (2 * w)
    unet = area * size * 0.01 * 1024 * 1024
    vae = 2178 * h * w * config.vae_scale_factor ** 2 * size
    return int(max(unet, vae))


def inference_memory(config, names: Iterable[str], batch: int, guidance_scale: float, dtype: torch.dtype) -> int:
    """Bytes to keep free while the components ``names`` run (one after another: the largest of them)."""
    names = set(names)
    need = [0]
    if "reference_encoder" in names:
        need.append(reference_encoder_memory(config, batch, dtype))
    if names & {"unet", "vae"}:
        need.append(denoise_memory(config, batch, guidance_scale, dtype))
    return max(need)


class ComfyPrepare:
    """The pipeline's ``prepare`` hook: ``load_models_gpu`` on the named components' patchers.

    ``handle`` is a TWGTM_MODEL (``nodes.loader.TWGTMHandle``); ``batch`` and ``guidance_scale`` size the
    memory estimate of each phase.
    """

    def __init__(self, handle, batch: int, guidance_scale: float = 1.0):
        self.handle, self.batch, self.guidance_scale = handle, int(batch), float(guidance_scale)

    def __call__(self, *names: str) -> None:
        patchers = [self.handle.patchers[n] for n in names]
        memory = inference_memory(self.handle.config, names, self.batch, self.guidance_scale, self.handle.dtype)
        mm.load_models_gpu(patchers, memory_required=memory, force_full_load=FORCE_FULL_LOAD)


def pipeline(handle, batch: int, guidance_scale: float = 1.0):
    """A ``TWGTMPipeline`` over the handle's components whose phases load through ComfyUI."""
    from ..twgtm.pipeline import TWGTMPipeline

    if not isinstance(handle, TWGTMHandle):
        raise InputError(f"model: expected the output of TWGTM Model Loader, got {type(handle).__name__}")
    return TWGTMPipeline.from_components(handle.components(), prepare=ComfyPrepare(handle, batch, guidance_scale))
