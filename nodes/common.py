"""Pieces shared by the TWGTM node adapters: wire types, the conditioning payload and layout conversion.

ComfyUI passes images as IMAGE ``(B, H, W, C)`` float in [0, 1] and masks as MASK ``(B, H, W)``; the
``twgtm`` library wants channels first, ``(B, C, H, W)`` and ``(B, 1, H, W)``. The conversions live here
so every node converts the same way, and so does attaching a garment's transparency mask. Every combo
input of the pack is a :class:`Combo`, which ComfyUI checks before running (declared in the form the
running host checks: ``nodes/host.py``). Nothing in this module picks a device or loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.v0_0_2 import io

from ..twgtm.config import CATEGORIES
from ..twgtm.errors import InputError
from . import host

NODE_CATEGORY = "TWGTM"

# Custom wire types: only TWGTM nodes produce and consume them.
TWGTMModelWire = io.Custom("TWGTM_MODEL")
TWGTMConditioningWire = io.Custom("TWGTM_CONDITIONING")


class Combo(io.Combo.Input):
    """A combo input whose value the running ComfyUI checks against its options before anything runs.

    Declared the way the host checks it (``nodes/host.py``): as ``"COMBO"`` with the options in the input,
    where the host checks such values itself (ComfyUI >= v0.21, 0.33.0 here; a type that is a list would
    reject every prompt there with ``unhashable type: 'list'``), and with the list of options as its type
    where only that form is checked (ComfyUI 0.3.64). Either way a wrong value (category ``"shirt"``, dtype
    ``"int8"``) is refused at POST /prompt with one ``value_not_in_list`` error under the input. (A node's
    ``validate_inputs`` cannot do this as well: ComfyUI files whatever it returns under every one of its
    arguments, so a wrong dtype would be reported under each combo it checks.) The options and everything
    else stay as in ``io.Combo.Input``; the frontend reads both forms.
    """

    def get_io_type(self):
        if host.CHECKS_COMBO_VALUES is False:  # ComfyUI 0.3.64: only a list-typed combo is checked
            return list(self.options or [])
        return super().get_io_type()  # "COMBO"


CATEGORY_OPTIONS: list[str] = list(CATEGORIES)  # ["upper", "lower", "dress"]
CATEGORY_TOOLTIP = ("Which garment: 'upper' (tops), 'lower' (trousers, skirts) or 'dress' "
                    "(full-body garments; the DressCode 'dresses' category).")

TRY_ON, TRY_OFF = "try_on", "try_off"


@dataclass(frozen=True)
class TWGTMConditioning:
    """What the TWGTM Sampler should do. Tensors are in the library layout, on the CPU, in [0, 1]."""

    task: str                          # TRY_ON or TRY_OFF
    person: torch.Tensor               # (B, C, H, W)
    category: str                      # one of CATEGORY_OPTIONS
    garment: torch.Tensor | None = None  # (1 or B, C, Hg, Wg), try-on only; C = 4: alpha, put on white
    mask: torch.Tensor | None = None   # (1 or B, 1, Hm, Wm): region to dress (try-on) or garment region (try-off)
    paste_back: bool = True            # try-on: copy the pixels outside the mask from the person

    @property
    def batch_size(self) -> int:
        return int(self.person.shape[0])


def image_to_bchw(image: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> library layout (B, C, H, W), float32 on the CPU."""
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name}: expected an IMAGE tensor (B, H, W, C), got {type(image).__name__}")
    if image.ndim == 3:  # a single image without the batch dimension
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: expected an IMAGE of shape (B, H, W, C) with C in (1, 3, 4), "
                         f"got {tuple(image.shape)}")
    return image.float().cpu().permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def bchw_to_image(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Library layout (B, C, H, W) -> ComfyUI IMAGE (B, H, W, C) float32 on ``device``."""
    return x.float().permute(0, 2, 3, 1).contiguous().to(device)  # (B, H, W, C)


def mask_to_b1hw(mask: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI MASK (B, H, W) or (H, W) -> library layout (B, 1, H, W), float32 on the CPU."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a MASK tensor (B, H, W), got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise InputError(f"{name}: expected a MASK of shape (B, H, W) or (H, W), got {tuple(mask.shape)}")
    return mask.float().cpu().unsqueeze(1)  # (B, 1, H, W)


def b1hw_to_mask(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Library layout (B, 1, H, W) -> ComfyUI MASK (B, H, W) float32 on ``device``."""
    return x.float()[:, 0].contiguous().to(device)  # (B, H, W)


def check_option(name: str, value, options) -> str:
    """A combo value reaching ``execute`` (e.g. a node called from Python) must be one of its options."""
    if value not in options:
        raise InputError(f"{name}: expected one of {list(options)}, got {value!r}")
    return value


def check_category(category: str) -> str:
    return check_option("category", category, CATEGORY_OPTIONS)


def with_transparency(garment: torch.Tensor, transparency: torch.Tensor, name: str) -> torch.Tensor:
    """Attach a transparency mask to a garment as its alpha channel: (B, C, H, W) -> (B, 4, H, W).

    ``transparency`` is ComfyUI's mask convention for image alpha, as LoadImage's MASK output: 1 - alpha,
    so 1 = transparent. It is resized (bilinear) to the garment and multiplied into an alpha the garment
    already has. The library composites 4-channel images over white (``twgtm.images.as_image_batch``), so
    transparent pixels become the white catalogue background instead of LoadImage's black.
    """
    from ..twgtm.images import resize

    t = mask_to_b1hw(transparency, name)  # (Bt, 1, Ht, Wt), 1 = transparent
    b, c, h, w = garment.shape
    if t.shape[0] not in (1, b):
        raise InputError(f"{name}: expected a batch of 1 or {b} masks (the garment batch), got {t.shape[0]}")
    rgb = garment[:, :3] if c >= 3 else garment[:, :1].expand(-1, 3, -1, -1)  # (B, 3, H, W)
    alpha = garment[:, 3:4] if c == 4 else torch.ones_like(garment[:, :1])    # (B, 1, H, W)
    opacity = 1.0 - resize(t, (h, w), mode="bilinear").clamp(0.0, 1.0)        # (1 or B, 1, H, W)
    return torch.cat([rgb, alpha * opacity], dim=1).contiguous()             # (B, 4, H, W)
