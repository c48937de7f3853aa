"""Pieces shared by the TWGTM node adapters: wire types, the conditioning payload and layout conversion.

ComfyUI passes images as IMAGE ``(B, H, W, C)`` float in [0, 1] and masks as MASK ``(B, H, W)``; the
``twgtm`` library wants channels first, ``(B, C, H, W)`` and ``(B, 1, H, W)``. The conversions live here
so every node converts the same way. Nothing in this module picks a device or loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io
from einops import rearrange

from ..twgtm.config import CATEGORIES
from ..twgtm.errors import InputError

NODE_CATEGORY = "TWGTM"

# Custom wire types: only TWGTM nodes produce and consume them.
TWGTMModelWire = io.Custom("TWGTM_MODEL")
TWGTMConditioningWire = io.Custom("TWGTM_CONDITIONING")

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
    garment: torch.Tensor | None = None  # (1 or B, C, Hg, Wg), try-on only
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
    return rearrange(image.float().cpu(), "b h w c -> b c h w").contiguous()  # (B, C, H, W)


def bchw_to_image(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Library layout (B, C, H, W) -> ComfyUI IMAGE (B, H, W, C) float32 on ``device``."""
    return rearrange(x.float(), "b c h w -> b h w c").contiguous().to(device)  # (B, H, W, C)


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


def check_category(category: str) -> str:
    """ComfyUI 0.3.x does not check V3 combo values on the server, so the nodes do."""
    if category not in CATEGORY_OPTIONS:
        raise InputError(f"category: expected one of {CATEGORY_OPTIONS}, got {category!r}")
    return category
