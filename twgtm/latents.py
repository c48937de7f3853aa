"""Latent-space processing (paper section "Processing in Latent Space", spec 1.1).

Conventions (ARCHITECTURE.md section 0):

* pixels in [-1, 1]; masked pixels are 0; "white" is +1;
* region masks use SD-inpainting polarity: **1 = generate**, 0 = keep;
* the generated (target) half comes first, the reference half second, along ``concat_dim``
  (-1 = width, the paper's ``3 x H x 2W``; -2 = height, as CatVTON);
* UNet input channel order is ``[z_t, m, E(h_f)]`` (4 + 1 + 4 = 9).

Every one of the six cases of the spec is the same construction with a different target, region
and reference, so it lives in one function, :func:`build_condition`:

======================================  ==================  ==================  ===========
case                                    target pixels       region R (1 = gen)  reference
======================================  ==================  ==================  ===========
VTON train / inference                  person x            agnostic mask M     garment c
VTOFF stage 1                           garment c           flat mask M_c       person x
VTOFF stage 2                           garment c           square mask R       person x
VTOFF inference, mask-free (default)    white canvas        ones                person x
VTOFF inference, rectangle (Mask2BBox)  white canvas        box R               person x
======================================  ==================  ==================  ===========
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .images import resize_mask

Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LatentCondition:
    """The step-independent parts of the UNet input, both halves joined."""

    guidance: torch.Tensor  # E(h_f): (B, 4, h, 2w) for concat_dim=-1
    mask: torch.Tensor      # m: (B, 1, h, 2w), reference half always 0
    z0: torch.Tensor | None = None  # clean latent [E(target), E(reference)], training only


def concat_halves(target: torch.Tensor, reference: torch.Tensor, concat_dim: int) -> torch.Tensor:
    """Join the generated half (first) and the reference half (second)."""
    return torch.cat([target, reference], dim=concat_dim)


def split_halves(x: torch.Tensor, concat_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`concat_halves`: (target half, reference half)."""
    size = x.shape[concat_dim] // 2
    a, b = x.split(size, dim=concat_dim)
    return a, b


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a binary pixel mask (B, 1, H, W) to latent size (B, 1, h, w).

    A non-empty mask never becomes empty: when nearest sampling misses it (a region smaller than a latent
    cell), every latent cell that covers a masked pixel is on (:func:`twgtm.images.resize_mask`).
    """
    return resize_mask(mask.float(), size)


def build_condition(
    target: torch.Tensor,
    reference: torch.Tensor,
    region: torch.Tensor,
    encode: Encode,
    *,
    concat_dim: int = -1,
    with_z0: bool = False,
    encoded_reference: torch.Tensor | None = None,
) -> LatentCondition:
    """Build ``E(h_f)``, ``m`` (and ``z0`` for training) for any of the six cases.

    Args:
        target: (B, 3, H, W) in [-1, 1], the half to generate (person for VTON, garment or white
            canvas for VTOFF).
        reference: (B, 3, H, W) in [-1, 1], the conditioning image (garment for VTON, person for VTOFF).
        region: (B, 1, H, W) binary, 1 where the target is generated.
        encode: pixels -> scaled latents, e.g. ``lambda x: vae.encode(x).latent_dist.sample() * 0.18215``.
        concat_dim: -1 (width) or -2 (height).
        with_z0: also return the clean concatenated latent ``[E(target), E(reference)]``.
        encoded_reference: ``E(reference)`` when the caller already has it (saves one VAE pass).
    """
    region = (region > 0.5).to(target.dtype)                      # (B, 1, H, W), exactly binary
    masked_target = target * (1.0 - region)                      # masked pixels are exactly 0
    e_ref = encode(reference) if encoded_reference is None else encoded_reference  # (B, 4, h, w)
    e_masked = encode(masked_target)
    h, w = e_ref.shape[-2:]
    m_half = mask_to_latent(region, (h, w)).to(e_ref.dtype)      # (B, 1, h, w)
    guidance = concat_halves(e_masked, e_ref, concat_dim)         # (B, 4, h, 2w)
    mask = concat_halves(m_half, torch.zeros_like(m_half), concat_dim)  # (B, 1, h, 2w)
    z0 = concat_halves(encode(target), e_ref, concat_dim) if with_z0 else None
    return LatentCondition(guidance=guidance, mask=mask, z0=z0)


def task_gate(gate: torch.Tensor, latent_size: tuple[int, int], concat_dim: int) -> torch.Tensor:
    """The Extended-Attention task gate over the joined latent (:class:`twgtm.attention.SpatialGate`'s map).

    ``gate`` (B, 1, H, W) in [0, 1] is the task's mask in pixels: the try-on mask (given) or the predicted
    flat-garment mask TFQ_0 (try-off), at any size; it is area-resized to the latent half ``latent_size``
    (soft at the edges) and joined with zeros on the reference half. Returns (B, 1, h, 2w) (concat_dim -1).
    """
    g = gate.float()
    if tuple(g.shape[-2:]) != tuple(latent_size):
        g = F.interpolate(g, size=tuple(latent_size), mode="area")
    return concat_halves(g, torch.zeros_like(g), concat_dim)


def unet_input(z_t: torch.Tensor, cond: LatentCondition) -> torch.Tensor:
    """Channel-wise ``[z_t, m, E(h_f)]``: (B, 9, h, 2w)."""
    return torch.cat([z_t, cond.mask.to(z_t.dtype), cond.guidance.to(z_t.dtype)], dim=1)


def unconditional(cond: LatentCondition, concat_dim: int) -> LatentCondition:
    """CFG unconditional branch: the reference half of ``E(h_f)`` is exactly 0; ``m`` is shared."""
    tgt, ref = split_halves(cond.guidance, concat_dim)
    return LatentCondition(guidance=concat_halves(tgt, torch.zeros_like(ref), concat_dim), mask=cond.mask, z0=cond.z0)


def target_half(latents: torch.Tensor, concat_dim: int) -> torch.Tensor:
    """Output crop: only the generated half goes to the VAE decoder (CatVTON ``split(...)[0]``)."""
    return split_halves(latents, concat_dim)[0]


def white_canvas(like: torch.Tensor) -> torch.Tensor:
    """The VTOFF inference target: a white catalogue canvas (+1) shaped like ``like``."""
    return torch.ones_like(like)


# --------------------------------------------------------------------------------------------
# masks: morphology, boxes (stage-2 sampler and Mask2BBox)
# --------------------------------------------------------------------------------------------
def dilate(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Square-kernel dilation with max-pooling; ``k`` odd."""
    if k <= 1:
        return mask
    return F.max_pool2d(mask, kernel_size=k, stride=1, padding=k // 2)


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Square-kernel erosion: ``-maxpool(-x)``."""
    if k <= 1:
        return mask
    return -F.max_pool2d(-mask, kernel_size=k, stride=1, padding=k // 2)


def mask_to_box(mask: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Mask2BBox: the bounding box of each mask (B, 1, H, W) grown by ``margin`` x its size.

    An empty mask gives an empty box (all zeros); the caller decides what that means.
    """
    b, _, hgt, wid = mask.shape
    out = torch.zeros_like(mask, dtype=torch.float32)
    fg = mask[:, 0] > 0.5
    for i in range(b):
        ys = torch.nonzero(fg[i].any(dim=1)).flatten()
        xs = torch.nonzero(fg[i].any(dim=0)).flatten()
        if ys.numel() == 0:
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        dy, dx = round((y1 - y0) * margin), round((x1 - x0) * margin)
        out[i, 0, max(0, y0 - dy):min(hgt, y1 + dy), max(0, x0 - dx):min(wid, x1 + dx)] = 1.0
    return out.to(mask.dtype)


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 4-connected component of each binary mask (B, 1, H, W).

    Label propagation by iterated max-pooling of pixel indices: pure torch, no compiled deps.
    """
    b, _, hgt, wid = mask.shape
    fg = mask > 0.5
    idx = torch.arange(1, hgt * wid + 1, device=mask.device, dtype=torch.float32).view(1, 1, hgt, wid)
    labels = torch.where(fg, idx.expand(b, -1, -1, -1), torch.zeros((), device=mask.device))
    while True:  # labels only grow and are bounded, so this converges
        # 4-connectivity: max over the cross-shaped neighbourhood only
        cross = torch.maximum(
            torch.maximum(F.pad(labels, (0, 0, 1, 0))[..., :-1, :], F.pad(labels, (0, 0, 0, 1))[..., 1:, :]),
            torch.maximum(F.pad(labels, (1, 0))[..., :, :-1], F.pad(labels, (0, 1))[..., :, 1:]),
        )
        new = torch.where(fg, torch.maximum(labels, cross), labels)
        if torch.equal(new, labels):
            break
        labels = new
    out = torch.zeros_like(mask)
    for i in range(b):
        lab = labels[i, 0][fg[i, 0]]
        if lab.numel() == 0:
            continue
        values, counts = torch.unique(lab, return_counts=True)
        keep = values[counts.argmax()]
        out[i, 0] = (labels[i, 0] == keep).to(mask.dtype)
    return out


def latent_hw(height: int, width: int, factor: int) -> tuple[int, int]:
    return math.ceil(height / factor), math.ceil(width / factor)


# --------------------------------------------------------------------------------------------
# the VAE's latent convention: z = (E(x) - shift) * scale (SD3's; SD1.x has shift 0)
# --------------------------------------------------------------------------------------------
def _latent_shift(shift_factor, z: torch.Tensor) -> torch.Tensor | float:
    """``config.shift_factor`` as a number or a (1, C, 1, 1) tensor on ``z``'s device and dtype."""
    if isinstance(shift_factor, (list, tuple)):
        return torch.tensor(shift_factor, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
    return float(shift_factor)


def vae_encode(vae, x: torch.Tensor, config, *, generator: torch.Generator | None = None, sample: bool = False,
               chunk: int = 1) -> torch.Tensor:
    """VAE-encode pixels in [-1, 1] (B, 3, H, W) to scaled latents (B, C, H/f, W/f), ``chunk`` images at a time.

    ``sample`` draws from the posterior (training); otherwise the posterior mean is used (inference).
    ``config`` gives ``scaling_factor`` and ``shift_factor``. The input goes to the VAE's device and dtype.
    """
    p = next(vae.parameters())
    outs = []
    for part in x.split(max(1, chunk)):
        dist = vae.encode(part.to(device=p.device, dtype=p.dtype)).latent_dist
        z = dist.sample(generator=generator) if sample else dist.mode()
        outs.append((z - _latent_shift(config.shift_factor, z)) * config.scaling_factor)
    return torch.cat(outs)


def vae_decode(vae, z: torch.Tensor, config, *, chunk: int = 1) -> torch.Tensor:
    """Scaled latents (B, C, h, w) -> pixels in [-1, 1] (B, 3, f*h, f*w), ``chunk`` at a time."""
    p = next(vae.parameters())
    outs = []
    for part in z.split(max(1, chunk)):
        part = part.to(device=p.device, dtype=p.dtype) / config.scaling_factor
        outs.append(vae.decode(part + _latent_shift(config.shift_factor, part)).sample)
    return torch.cat(outs)
