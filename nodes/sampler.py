"""TWGTM Sampler: model + conditioning -> IMAGE (+ MASK). Runs the library's concatenated-latent loop.

ComfyUI's model management loads the components phase by phase (``nodes/memory.py``): the reference
encoder first (reference features, once per run), then the UNet and the VAE (the denoising loop and the
decode), freeing other models, or the reference encoder, if it needs the room. Every denoising step
reports progress (``comfy.utils.ProgressBar``) and checks ComfyUI's interrupt flag; an interrupt raises
out of the loop, and since the pipeline keeps no state between calls the model stays usable for the next run.
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.v0_0_2 import io

from ..twgtm.errors import InputError
from ..twgtm.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES
from . import memory, requirements
from .common import (TRY_OFF, TRY_ON, NODE_CATEGORY, Combo, TWGTMConditioning, TWGTMConditioningWire, TWGTMModelWire,
                     b1hw_to_mask, bchw_to_image, check_option)

# The names TWGTMPipeline accepts; twgtm.schedulers does not import diffusers, so the node list can use them.
SCHEDULERS = list(SCHEDULER_NAMES)
MAX_SEED = 0xFFFF_FFFF_FFFF_FFFF
# DDIM with the SD schedule (1000 training steps, steps_offset 1) indexes past its table at 1000 steps
MAX_STEPS = 500


def progress_callback(total: int):
    """``callback(step, total, latents)`` for the pipeline: progress bar + ComfyUI's interrupt check."""
    pbar = comfy.utils.ProgressBar(total)

    def callback(step: int, steps: int, _latents: torch.Tensor) -> None:
        pbar.update_absolute(step, steps)
        mm.throw_exception_if_processing_interrupted()

    return callback


class TWGTMSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TWGTMSampler",
            display_name="TWGTM Sampler",
            category=NODE_CATEGORY,
            description="Runs TWGTM for a try-on or try-off conditioning. Try-on returns the dressed person at "
                        "its own size; try-off returns the flat garment at the model's size.",
            inputs=[
                TWGTMModelWire.Input("model", tooltip="From TWGTM Model Loader."),
                TWGTMConditioningWire.Input("conditioning",
                                            tooltip="From TWGTM Try-On Conditioning or TWGTM Try-Off Conditioning."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Random seed of the starting noise; the same seed gives the same image."),
                io.Int.Input("steps", default=30, min=1, max=MAX_STEPS,
                             tooltip="Denoising steps; 30 to 50 are typical."),
                io.Float.Input("cfg", default=2.5, min=1.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale; 1 disables guidance (twice as fast), "
                                       "2 to 3 are typical."),
                Combo("scheduler", options=SCHEDULERS, default=DEFAULT_SCHEDULER,
                      tooltip="Sampler: ddim (the paper's, eta 1), dpm++ (2M, good at fewer steps), "
                              "euler or ddpm."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1 starts from pure noise; lower values keep more of the input inside "
                                       "the region (the person for try-on, the white canvas for try-off)."),
            ],
            outputs=[
                io.Image.Output(display_name="image",
                                tooltip="Try-on: the dressed person, at the person's size. Try-off: the flat "
                                        "garment on white, at the model's size (3:4)."),
                io.Mask.Output(display_name="mask",
                               tooltip="Try-off: the predicted flat-garment mask (probabilities; a model "
                                       "without a Spatial Refinement Module predicts none and returns the "
                                       "region generated). Try-on: the region that was dressed."),
            ],
        )

    @classmethod
    def validate_inputs(cls) -> bool:
        """Before the run: the pack's requirements are installed (combos and wires ComfyUI checks itself)."""
        requirements.require("TWGTM Sampler")
        return True

    @classmethod
    def execute(cls, model, conditioning: TWGTMConditioning, seed: int, steps: int, cfg: float,
                scheduler: str, denoise: float) -> io.NodeOutput:
        requirements.require("TWGTM Sampler")
        from ..twgtm.images import as_mask_batch

        check_option("scheduler", scheduler, SCHEDULERS)
        if not isinstance(conditioning, TWGTMConditioning):
            raise InputError("conditioning: expected the output of a TWGTM conditioning node, "
                             f"got {type(conditioning).__name__}")
        pipe = memory.pipeline(model, conditioning.batch_size, cfg)  # loads each phase's components first
        options = dict(num_inference_steps=int(steps), guidance_scale=float(cfg), generator=int(seed),
                       scheduler=scheduler, strength=float(denoise), callback=progress_callback(int(steps)))
        out_device = mm.intermediate_device()
        c = conditioning
        if c.task == TRY_ON:
            out = pipe.try_on(c.person, c.garment, c.mask, c.category, paste_back=c.paste_back, **options)
            region = as_mask_batch(c.mask, "mask", tuple(c.person.shape[-2:]), c.batch_size)  # (B, 1, H, W)
            return io.NodeOutput(bchw_to_image(out.images, out_device), b1hw_to_mask(region, out_device))
        if c.task == TRY_OFF:
            out = pipe.try_off(c.person, c.category, c.mask, **options)
            mask = out.garment_mask
            if mask is None:  # a model without an SRM (ablation Variant 1) predicts no mask: the region generated
                size = tuple(out.images.shape[-2:])
                mask = torch.ones(out.images.shape[0], 1, *size) if c.mask is None else \
                    as_mask_batch(c.mask, "mask", size, c.batch_size)
                mask[mask.flatten(1).amax(1) == 0] = 1.0  # an empty mask means the whole canvas (the pipeline's rule)
            return io.NodeOutput(bchw_to_image(out.images, out_device), b1hw_to_mask(mask, out_device))
        raise InputError(f"conditioning.task: expected {TRY_ON!r} or {TRY_OFF!r}, got {c.task!r}")
