"""Image grids: :func:`save_image_grid` (rows of images -> one labelled PNG) and :func:`sample_grid` (a model's
try-on and try-off of a batch of dataset items: the trainer's samples). The report's grid and stage 0's
reconstruction grid are :func:`save_image_grid` too."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from twgtm.components import TWGTMComponents

from .sampling import run_model, to_unit

__all__ = ["save_image_grid", "sample_grid"]


def _to_pil(x: torch.Tensor) -> Image.Image:
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    arr = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")  # (H, W, 3)
    return Image.fromarray(arr)


def save_image_grid(rows: Sequence[Sequence[torch.Tensor]], path: str | Path, *,
                    row_labels: Optional[Sequence[str]] = None, scale: int = 2, pad: int = 2) -> Path:
    """Write a PNG grid: ``rows[r][c]`` is an image (3 or 1, H, W) in [0, 1]; labels on the left."""
    cells = [[_to_pil(x) for x in row] for row in rows]
    ch = max(im.height for row in cells for im in row) * scale
    cw = max(im.width for row in cells for im in row) * scale
    ncol = max(len(r) for r in cells)
    font = ImageFont.load_default()
    label_w = 0
    if row_labels:
        label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in row_labels) + 8
    grid = Image.new("RGB", (label_w + ncol * (cw + pad) + pad, len(cells) * (ch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(cells):
        y = pad + r * (ch + pad)
        if row_labels:
            draw.text((4, y + ch // 2 - 6), row_labels[r], fill=(0, 0, 0), font=font)
        for c, im in enumerate(row):
            grid.paste(im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST),
                       (label_w + pad + c * (cw + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


@torch.no_grad()
def sample_grid(model: TWGTMComponents, items: dict, path: str | Path, *, steps: int = 10, seed: int = 0,
                guidance_scale: Optional[float] = None, eta: Optional[float] = None,
                tryoff_region: str = "full") -> Path:
    """Try-on and try-off of a batch of dataset items (as collated) -> PNG grid.

    Rows: person, garment, repaint mask, try-on, try-on ground truth (if the items carry one), try-off,
    predicted garment mask. ``guidance_scale``/``eta`` default to the model config's; ``tryoff_region`` as
    in :func:`run_model` (the ground-truth variants are not available here and fall back to "full").
    """
    person, garment = to_unit(items["person"]), to_unit(items["garment"])
    mask, cats = items["person_mask"], list(items["category"])
    outs = run_model(model, person, garment, mask, cats, steps=steps,
                     guidance_scale=model.config.guidance_scale if guidance_scale is None else guidance_scale,
                     eta=eta, seed=seed, tryoff_region=tryoff_region if tryoff_region.startswith("pred") else "full")
    rows = [list(person), list(garment), list(mask), list(outs["tryon"])]
    labels = ["person", "garment", "mask", "try-on"]
    if "garment_target" in items:
        rows.append(list(to_unit(items["garment_target"])))
        labels.append("try-on GT")
    rows.append(list(outs["tryoff"]))
    labels.append("try-off")
    if "mask" in outs:  # none from a model without an SRM (ablation Variant 1)
        rows.append(list(outs["mask"]))
        labels.append("pred. mask")
    return save_image_grid(rows, path, row_labels=labels)
