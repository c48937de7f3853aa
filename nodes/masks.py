"""Mask nodes: the model's flat-garment mask (TFQ_0) and Mask2BBox (mask -> rectangle with a margin).

The Garment Mask runs the reference encoder alone, so ComfyUI loads only that component for it.
"""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.v0_0_2 import io

from ..twgtm.latents import largest_component, mask_to_box
from . import memory, requirements
from .common import (CATEGORY_OPTIONS, CATEGORY_TOOLTIP, NODE_CATEGORY, Combo, TWGTMModelWire, b1hw_to_mask,
                     check_category, image_to_bchw, mask_to_b1hw)


class TWGTMGarmentMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TWGTMGarmentMask",
            display_name="TWGTM Garment Mask",
            category=NODE_CATEGORY,
            description="Predicts the silhouette the worn garment will have as a flat catalogue image "
                        "(the model's TFQ_0 mask), on the try-off output canvas. No diffusion steps are run.",
            inputs=[
                TWGTMModelWire.Input("model", tooltip="From TWGTM Model Loader."),
                io.Image.Input("person", tooltip="Dressed person photo(s)."),
                Combo("category", options=CATEGORY_OPTIONS, default="upper", tooltip=CATEGORY_TOOLTIP),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Pixels with probability above this become 1. 0 returns the probabilities."),
            ],
            outputs=[io.Mask.Output(display_name="mask",
                                    tooltip="Flat-garment mask at the model's size (the try-off canvas).")],
        )

    @classmethod
    def validate_inputs(cls) -> bool:
        """Before the run: the pack's requirements are installed."""
        requirements.require("TWGTM Garment Mask")
        return True

    @classmethod
    def execute(cls, model, person, category, threshold) -> io.NodeOutput:
        requirements.require("TWGTM Garment Mask")
        person = image_to_bchw(person, "person")  # (B, C, H, W)
        pipe = memory.pipeline(model, person.shape[0])  # loads the reference encoder alone
        probs = pipe.predict_garment_mask(person, check_category(category))  # (B, 1, H, W)
        mask = probs if threshold <= 0.0 else (probs > threshold).float()
        return io.NodeOutput(b1hw_to_mask(mask, mm.intermediate_device()))


class TWGTMMaskToBox(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TWGTMMaskToBox",
            display_name="TWGTM Mask to Box",
            category=NODE_CATEGORY,
            description="Mask2BBox: the bounding rectangle of each mask, grown by a margin. An empty mask gives "
                        "an empty box (try-off then uses the whole canvas).",
            inputs=[
                io.Mask.Input("mask", tooltip="Mask(s); values above 0.5 count as inside."),
                io.Float.Input("margin", default=0.05, min=0.0, max=1.0, step=0.01,
                               tooltip="Growth on each side, as a fraction of the box's height and width "
                                       "(the paper uses 0.05)."),
                io.Boolean.Input("largest_region_only", default=True,
                                 tooltip="Box only the largest connected region (drops stray specks)."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="Rectangle mask, same size as the input.")],
        )

    @classmethod
    def execute(cls, mask, margin, largest_region_only) -> io.NodeOutput:
        m = (mask_to_b1hw(mask, "mask") > 0.5).float()  # (B, 1, H, W)
        if largest_region_only:
            m = largest_component(m)
        box = mask_to_box(m, margin=float(margin))
        return io.NodeOutput(b1hw_to_mask(box, mm.intermediate_device()))
