"""Model outputs for the trainer's sample grids, the report and ``evaluate``: try-on, try-off and the predicted
garment mask of a batch of items (:func:`run_model`), with dataset images mapped to [0, 1] (:func:`to_unit`)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from twgtm.components import TWGTMComponents
from twgtm.latents import mask_to_box
from twgtm.pipeline import TWGTMPipeline

__all__ = ["to_unit", "run_model"]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] dataset images -> [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0, 1)


@torch.no_grad()
def run_model(model: TWGTMComponents, person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor,
              categories: list[str], *, steps: int, guidance_scale: float, seed: int, scheduler: str = "ddim",
              eta: Optional[float] = None, batch_size: int = 16, tryoff_region: str = "full",
              garment_mask: Optional[torch.Tensor] = None,
              tasks: Sequence[str] = ("tryon", "tryoff", "mask")) -> dict[str, torch.Tensor]:
    """Try-on, try-off and the predicted garment mask for all items (images in [0, 1], chunked).

    ``eta``: DDIM eta (None: the model config's). With try-off, the mask is the one try-off predicted
    (the same TFQ_0 as :meth:`TWGTMPipeline.predict_garment_mask`, computed once).

    Try-off uses the whole canvas (``tryoff_region="full"``), the box around ``garment_mask`` with a 5%
    margin (``"gt_box"``, Mask2BBox gt) or ``garment_mask`` itself (``"gt_mask"``), or the box around /
    the silhouette of the largest component of the model's own predicted mask (``"pred_box"``, Mask2BBox
    pred / ``"pred_mask"``). With a region the canvas stays white outside it (the pipeline's paste-back,
    as try-on pastes the person back outside its mask).
    """
    pipe = TWGTMPipeline.from_components(model)
    out: dict[str, list[torch.Tensor]] = {t: [] for t in tasks}
    canvas = tuple(garment.shape[-2:])
    for i in range(0, len(person), batch_size):
        sl = slice(i, i + batch_size)
        cats = categories[sl]
        gen = seed + i  # a different, reproducible seed per chunk
        if "tryon" in tasks:
            out["tryon"].append(pipe.try_on(person[sl], garment[sl], mask[sl], cats, num_inference_steps=steps,
                                            guidance_scale=guidance_scale, eta=eta, generator=gen,
                                            scheduler=scheduler).images)
        if "tryoff" in tasks:
            region = None
            if tryoff_region == "gt_box":
                region = mask_to_box(garment_mask[sl].float(), margin=0.05)
            elif tryoff_region == "gt_mask":
                region = (garment_mask[sl] > 0.5).float()
            # outside a region the canvas stays white (paste_back), as try-on pastes the person back
            off = pipe.try_off(person[sl], cats, region, predicted_box=tryoff_region == "pred_box",
                               predicted_mask=tryoff_region == "pred_mask", num_inference_steps=steps,
                               guidance_scale=guidance_scale, eta=eta, generator=gen, scheduler=scheduler,
                               output_size=canvas)
            out["tryoff"].append(off.images)
            if "mask" in tasks:
                out["mask"].append(off.garment_mask)
        elif "mask" in tasks:
            out["mask"].append(pipe.predict_garment_mask(person[sl], cats, output_size=canvas))
    return {k: torch.cat(v) for k, v in out.items()}
