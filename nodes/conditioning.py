"""Try-on and try-off conditioning: images and masks in ComfyUI layout -> TWGTM_CONDITIONING.

The nodes only convert layouts and bundle the inputs; the TWGTM Sampler runs the model. Sizes do not
have to match: the library fits every image to the model canvas (aspect kept) and resizes masks.
A garment with transparency (a PNG cut-out) is put on white: by its own alpha for a 4-channel IMAGE, or by
the LoadImage MASK wired into ``garment_transparency`` (LoadImage gives RGB, black where transparent).
"""
from __future__ import annotations

from comfy_api.v0_0_2 import io

from .common import (CATEGORY_OPTIONS, CATEGORY_TOOLTIP, NODE_CATEGORY, TRY_OFF, TRY_ON, Combo, TWGTMConditioning,
                     TWGTMConditioningWire, check_category, image_to_bchw, mask_to_b1hw, with_transparency)


class TWGTMTryOnConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TWGTMTryOnConditioning",
            display_name="TWGTM Try-On Conditioning",
            category=NODE_CATEGORY,
            description="Dress the person in the garment, inside the mask. Pixels outside the mask are kept.",
            inputs=[
                io.Image.Input("person", tooltip="Person photo(s); a batch dresses every person."),
                io.Image.Input("garment", tooltip="In-shop garment image on a plain background. One garment is "
                                                  "used for every person; or one per person. A 4-channel "
                                                  "(RGBA) image is put on white by its alpha."),
                io.Mask.Input("garment_transparency", optional=True,
                              tooltip="Optional: the transparent part of the garment image, 1 = transparent. "
                                      "Connect the MASK output of the LoadImage that loads a garment PNG with "
                                      "alpha (that MASK is 1 - alpha); those pixels become white, the "
                                      "catalogue background, instead of LoadImage's black."),
                io.Mask.Input("mask", tooltip="Region to dress on the person (1 = repaint), e.g. from a "
                                              "segmentation node or the mask editor. Resized to the person."),
                Combo("category", options=CATEGORY_OPTIONS, default="upper", tooltip=CATEGORY_TOOLTIP),
                io.Boolean.Input("paste_back", default=True,
                                 tooltip="Copy every pixel outside the mask from the person photo, so face, "
                                         "hands and background stay exactly as they were."),
            ],
            outputs=[TWGTMConditioningWire.Output(display_name="conditioning",
                                                  tooltip="Try-on task for the TWGTM Sampler.")],
        )

    @classmethod
    def execute(cls, person, garment, mask, category, paste_back=True, garment_transparency=None) -> io.NodeOutput:
        garment = image_to_bchw(garment, "garment")  # (B, C, H, W); C = 4 is composited on white by the library
        if garment_transparency is not None:
            garment = with_transparency(garment, garment_transparency, "garment_transparency")  # (B, 4, H, W)
        cond = TWGTMConditioning(task=TRY_ON, person=image_to_bchw(person, "person"),
                                 category=check_category(category), garment=garment,
                                 mask=mask_to_b1hw(mask, "mask"), paste_back=bool(paste_back))
        return io.NodeOutput(cond)


class TWGTMTryOffConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TWGTMTryOffConditioning",
            display_name="TWGTM Try-Off Conditioning",
            category=NODE_CATEGORY,
            description="Take the garment off the person and render it as a flat catalogue image. Needs no mask.",
            inputs=[
                io.Image.Input("person", tooltip="Dressed person photo(s); a batch gives one garment per person."),
                Combo("category", options=CATEGORY_OPTIONS, default="upper",
                      tooltip=CATEGORY_TOOLTIP + " Selects which garment is taken off."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional region of the garment on the output canvas (a rectangle, or a "
                                      "garment silhouette such as TWGTM Garment Mask -> TWGTM Mask to Box); it "
                                      "fixes the garment's proportions, and outside it the canvas stays white. "
                                      "Unconnected: the whole canvas (mask-free)."),
            ],
            outputs=[TWGTMConditioningWire.Output(display_name="conditioning",
                                                  tooltip="Try-off task for the TWGTM Sampler.")],
        )

    @classmethod
    def execute(cls, person, category, mask=None) -> io.NodeOutput:
        cond = TWGTMConditioning(task=TRY_OFF, person=image_to_bchw(person, "person"),
                                 category=check_category(category),
                                 mask=None if mask is None else mask_to_b1hw(mask, "mask"))
        return io.NodeOutput(cond)
