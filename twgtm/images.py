"""Input checking and conversion for the public pipeline API, and aspect-preserving pad/restore.

Public images are float tensors in [0, 1], channels first: (B, C, H, W) or (C, H, W). C = 3 is RGB;
C = 1 (grayscale) is repeated to RGB; C = 4 (RGBA) is composited over white (a garment cut-out on a
catalogue background). Anything else is rejected with :class:`InputError`. Masks are (B, 1, H, W),
(B, H, W) or (H, W) in [0, 1]; they are binarised at 0.5 and resized (nearest, falling back to max pooling
so a non-empty mask never vanishes) to their image's size.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError

_TOL = 1e-3  # allowed float slack outside [0, 1]
MAX_OUTPUT_SIDE = 16384  # output_size: the largest side accepted (a 16k x 16k RGB float image is 3 GiB)


def _check_tensor_storage(x: torch.Tensor, name: str) -> None:
    """A tensor without readable data (meta device) or with a non-dense layout cannot be an image or a mask."""
    if x.device.type == "meta":
        raise InputError(f"{name}: expected a tensor with data (on the CPU or a GPU), got a tensor on the 'meta' "
                         f"device (shape {tuple(x.shape)}, no values)")
    if x.layout != torch.strided:
        raise InputError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")


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
    _check_tensor_storage(image, name)
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

    A mask batch of 1 is broadcast to ``batch``; masks of another size are resized with :func:`resize_mask`
    (nearest, and never to nothing).
    """
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor (B, 1, H, W), (B, H, W) or (H, W), got {type(mask).__name__}")
    _check_tensor_storage(mask, name)
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
    return resize_mask(m, size).expand(batch, -1, -1, -1).contiguous()


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binarise (at 0.5) and resize masks (B, 1, H, W) to ``size`` with nearest sampling, never to nothing.

    Nearest sampling can miss a small or thin region entirely (a 3x3 mask on a 640x480 image at 64x48, one row
    of a 1x300 image at 8x6 latents). A mask that is non-empty before and empty after falls back to max
    pooling, so every output cell that covers a masked pixel is on and the region keeps at least one cell.
    The result has ``mask``'s dtype and values in {0, 1}.
    """
    m = (mask > 0.5).float()
    if m.shape[-2:] == torch.Size(size):
        return m.to(mask.dtype)
    out = F.interpolate(m, size=size, mode="nearest")
    lost = (m.flatten(1).amax(1) > 0) & (out.flatten(1).amax(1) == 0)
    if bool(lost.any()):
        out[lost] = F.adaptive_max_pool2d(m[lost], size)
    return out.to(mask.dtype)


def as_output_size(value, name: str = "output_size") -> tuple[int, int] | None:
    """Validate an ``output_size``: None or (height, width), two ints in [1, MAX_OUTPUT_SIDE]."""
    if value is None:
        return None
    expected = f"None or (height, width): two ints in [1, {MAX_OUTPUT_SIDE}]"
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) != 2:
        raise InputError(f"{name}: expected {expected}, got {value!r}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        raise InputError(f"{name}: expected {expected}, got {value!r} "
                         f"(types {[type(v).__name__ for v in value]})")
    h, w = int(value[0]), int(value[1])
    if not (1 <= h <= MAX_OUTPUT_SIDE and 1 <= w <= MAX_OUTPUT_SIDE):
        raise InputError(f"{name}: expected {expected}, got {value!r}")
    return h, w


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
    y = resize(x, (nh, nw), mode)
    top, left = (ch - nh) // 2, (cw - nw) // 2
    out = x.new_full((x.shape[0], x.shape[1], ch, cw), fill)
    out[..., top:top + nh, left:left + nw] = y
    return out, Placement(size=(h, w), canvas=canvas, box=(top, left, nh, nw))


def restore_from_canvas(y: torch.Tensor, placement: Placement, *, mode: str = "bicubic") -> torch.Tensor:
    """Crop the placed region out of a model-size output and resize it back to the original size."""
    top, left, nh, nw = placement.box
    crop = y[..., top:top + nh, left:left + nw]
    return resize(crop, placement.size, mode)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) to ``size``; ``mode="mask"`` is :func:`resize_mask` (binary, never to nothing)."""
    if x.shape[-2:] == torch.Size(size):
        return x
    if mode == "mask":
        return resize_mask(x, size)
    kw = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **kw)
