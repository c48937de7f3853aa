"""Training losses (eq. 14-16, spec 1.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from twgtm.latents import target_half


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, *, region: str = "full", concat_dim: int = -1) -> torch.Tensor:
    """MSE between the UNet's prediction and its target (the noise for SD's epsilon parameterisation), in fp32.

    ``region="full"`` averages over the whole concatenated latent (CatVTON / TryOffAnyone practice);
    ``"target"`` restricts it to the generated half.
    """
    if region == "target":
        pred, target = target_half(pred, concat_dim), target_half(target, concat_dim)
    return F.mse_loss(pred.float(), target.float())


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample soft dice ``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)``: (B,), each in [0, 1]."""
    p = torch.sigmoid(logits.float()).flatten(1)
    y = target.float().flatten(1)
    return 1.0 - (2.0 * (p * y).sum(1) + 1.0) / (p.sum(1) + y.sum(1) + 1.0)


def mask_loss(
    unit_logits: list[torch.Tensor],
    garment_mask: torch.Tensor,
    is_vtoff: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
) -> torch.Tensor:
    """Deep-supervised dice + BCE on the TFQ_0 logits of every TaskFormer unit, VTOFF samples only.

    Args:
        unit_logits: per unit, (B, 1, h, w) pre-sigmoid TFQ_0.
        garment_mask: (B, 1, H, W) flat-garment mask M_c in {0, 1}; area-downsampled to (h, w) (soft).
        is_vtoff: (B,) bool, which samples are try-off samples.
    Returns:
        A scalar; exactly 0 when no sample is a VTOFF sample.
    """
    sel = is_vtoff.bool()
    if not bool(sel.any()):
        return unit_logits[0].new_zeros(()).float()
    y = F.interpolate(garment_mask[sel].float(), size=unit_logits[0].shape[-2:], mode="area")
    total = []
    for logits in unit_logits:
        lg = logits[sel].float()
        dice = dice_loss(lg, y).mean()
        bce = F.binary_cross_entropy_with_logits(lg, y)
        total.append(dice_weight * dice + bce_weight * bce)
    return torch.stack(total).mean()
