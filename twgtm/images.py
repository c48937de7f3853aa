"""Input checking and conversion for the public pipeline API, and aspect-preserving pad/restore.

Public images are float tensors in [0, 1], channels first: (B, C, H, W) or (C, H, W). C = 3 is RGB;
C = 1 (grayscale) is repeated to RGB; C = 4 (RGBA) is composited over white (a garment cut-out on a
catalogue background). Anything else is rejected with :class:`InputError`. Masks are (B, 1, H, W),
(B, H, W) or (H, W) in [0, 1]; they are resized (nearest) to their image's size and binarised at 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

_TOL = 1e-3  # allowed float slack outside [0, 1]


def _check_finite_range(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise InputError(f"{name}: expected finite values in [0, 1], got NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_TOL or hi > 1 + _TOL:
        raise InputError(f"{name}: expected values in [0, 1] (float images), got min {lo:.4g} and max {hi:.4g}"
                         + (" (looks like 0-255: divide by 255)" if hi > 1.5 else ""))


def as_image_batch(image, name: str) -> torch.Tensor:
    """Validate and convert an image to (B, 3, H, W) float32 in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (B, C, H, W) in [0, 1], got {type(image).__name__}")
    x = image
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise InputError(f"{name}: expected shape (B, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    if x.shape[0] == 0 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise InputError(f"{name}: expected a non-empty image batch, got shape {tuple(image.shape)}")
    if x.is_complex() or not (x.is_floating_point()):
        raise InputError(f"{name}: expected a floating-point tensor in [0, 1], got dtype {x.dtype}")
    x = x.float()
    _check_finite_range(x, name)
    c = x.shape[1]
    if c == 3:
        return x.clamp(0, 1)
    if c == 1:
        return x.repeat(1, 3, 1, 1).clamp(0, 1)
    if c == 4:
        rgb, alpha = x[:, :3], x[:, 3:4]
        return (rgb * alpha + (1.0 - alpha)).clamp(0, 1)
    raise InputError(f"{name}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels in dim 1, got {c} "
                     f"(shape {tuple(image.shape)}; channels-last images must be permuted first)")


def as_mask_batch(mask, name: str, size: tuple[int, int], batch: int) -> torch.Tensor:
    """Validate a mask and return it as (batch, 1, H, W) float in {0, 1} at ``size``.

    A mask batch of 1 is broadcast to ``batch``; masks of another size are resized (nearest).
    """
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (B, 1, H, W), (B, H, W) or (H, W), got {type(mask).__name__}")
    m = mask
    if m.dtype == torch.bool:
        m = m.float()
    if not m.is_floating_point():
        raise InputError(f"{name}: expected a float or bool mask in [0, 1], got dtype {m.dtype}")
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    elif m.ndim != 4 or m.shape[1] != 1:
        raise InputError(f"{name}: expected shape (B, 1, H, W), (B, H, W) or (H, W), got {tuple(mask.shape)}")
    m = m.float()
    _check_finite_range(m, name)
    if m.shape[0] not in (1, batch):
        raise InputError(f"{name}: expected a batch of 1 or {batch} masks, got {m.shape[0]}")
    if m.shape[-2:] != torch.Size(size):
        m = F.interpolate(m, size=size, mode="nearest")
    return (m > 0.5).float().expand(batch, -1, -1, -1).contiguous()


def broadcast_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A batch of 1 is repeated to ``batch``; any other mismatch is an error."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, -1, -1, -1).contiguous()
    raise InputError(f"{name}: expected a batch of 1 or {batch} (the person batch), got {x.shape[0]}")


@dataclass(frozen=True)
class Placement:
    """Where an image of ``size`` sits inside a model canvas after resize-and-pad."""

    size: tuple[int, int]           # original (H, W)
    canvas: tuple[int, int]         # model (H, W)
    box: tuple[int, int, int, int]  # top, left, height, width of the resized image in the canvas


def fit_to_canvas(x: torch.Tensor, canvas: tuple[int, int], fill: float, *, mode: str = "bilinear") -> tuple[torch.Tensor, Placement]:
    """Resize (B, C, H, W) to fit inside ``canvas`` keeping its aspect ratio, centre it, pad with ``fill``."""
    h, w = x.shape[-2:]
    ch, cw = canvas
    scale = min(ch / h, cw / w)
    nh, nw = max(1, min(ch, round(h * scale))), max(1, min(cw, round(w * scale)))
    if (nh, nw) != (h, w):
        kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
        y = F.interpolate(x, size=(nh, nw), mode=mode, **kw)
    else:
        y = x
    top, left = (ch - nh) // 2, (cw - nw) // 2
    out = x.new_full((x.shape[0], x.shape[1], ch, cw), fill)
    out[..., top:top + nh, left:left + nw] = y
    return out, Placement(size=(h, w), canvas=canvas, box=(top, left, nh, nw))


def restore_from_canvas(y: torch.Tensor, placement: Placement, *, mode: str = "bicubic") -> torch.Tensor:
    """Crop the placed region out of a model-size output and resize it back to the original size."""
    top, left, nh, nw = placement.box
    crop = y[..., top:top + nh, left:left + nw]
    if crop.shape[-2:] != torch.Size(placement.size):
        kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
        crop = F.interpolate(crop, size=placement.size, mode=mode, **kw)
    return crop


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    if x.shape[-2:] == torch.Size(size):
        return x
    kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **kw)
