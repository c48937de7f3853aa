"""The reference encoder: SAM + SRM (+ the SRM Decoder in stage 2), one separately loadable component.

It turns the reference image (the garment for try-on, the dressed person for try-off) and the category
into everything the denoising loop and the mask outputs need, once per call:

* ``F_SAM`` (B, 1 + N, D), the cross-attention context of every UNet ``attn2`` (:mod:`twgtm.sam`);
* the SRM outputs, among them the flat-garment mask logits TFQ_0 (:mod:`twgtm.srm`);
* in stage 2, ``F_SRM`` per UNet attention level, the keys/values of Extended Attention (the Decoder).

The Garment Mask node needs this component alone; the UNet and VAE are other components
(:class:`twgtm.components.TWGTMComponents`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import TWGTMConfig
from .sam import SAMOutput, SemanticAbstractionModule, build_clip_text
from .srm import SpatialRefinementModule, SRMDecoder, SRMOutput


@dataclass
class ReferenceFeatures:
    """Step-independent features of the reference image, computed once per call."""

    sam: SAMOutput                       # F_SAM (B, 1+N, D) and parts
    srm: SRMOutput | None                # TaskFormer outputs (TFQ, mask logits)
    f_srm: dict[int, torch.Tensor] | None  # Decoder output per UNet level (stage 2), (B, T_l, C_l)


class ReferenceEncoder(nn.Module):
    """SAM (frozen CLIP image encoder, cached prompts, Q-Former), SRM (Swin, pixel decoder, TaskFormer,
    heads) and, when ``config.stage == 2``, the SRM Decoder.

    Its state-dict keys are ``sam.*``, ``srm.*`` and ``decoder.*``, as in a TWGTM file.

    Args:
        config: the model configuration (its ``stage`` decides whether the Decoder exists).
        clip_vision: a pretrained CLIP image encoder, else one built from the config (random weights).
        text_encoder, tokenizer: used once to fill the cached category prompts. Without them the prompts
            stay unbuilt unless ``random_prompts`` is True: then a seeded random CLIP text encoder encodes
            them (toy models only: the synthetic preset and the tests).
    """

    def __init__(self, config: TWGTMConfig, *, clip_vision: nn.Module | None = None, text_encoder: nn.Module | None = None,
                 tokenizer=None, random_prompts: bool = False):
        super().__init__()
        self.config = config
        self.sam = SemanticAbstractionModule(config, clip_vision=clip_vision)
        self.srm = SpatialRefinementModule(config)
        self.decoder: SRMDecoder | None = SRMDecoder(config) if config.stage == 2 else None
        if text_encoder is not None:
            self.sam.prompts.build(text_encoder, tokenizer)
        elif random_prompts:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.sam.prompts.build(build_clip_text(config), None)

    def add_decoder(self) -> None:
        """Stage 1 -> stage 2: create the Decoder on this encoder's device and dtype (config.stage is set by
        :meth:`twgtm.components.TWGTMComponents.enable_stage2`, the one place that changes the stage)."""
        if self.decoder is None:
            p = next(self.srm.parameters())
            self.decoder = SRMDecoder(self.config).to(device=p.device, dtype=p.dtype)

    @property
    def device(self) -> torch.device:
        return next(self.srm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.srm.parameters()).dtype

    def forward(self, reference: torch.Tensor, category_idx: torch.Tensor, *,
                with_srm: bool | None = None) -> ReferenceFeatures:
        """Reference pixels in [-1, 1] (B, 3, H, W) and category indices (B,) -> :class:`ReferenceFeatures`.

        ``with_srm`` (default: whether a Decoder exists) also runs the SRM, and the Decoder when present.
        """
        sam_out = self.sam(reference, category_idx)
        if with_srm is None:
            with_srm = self.decoder is not None
        if not with_srm:
            return ReferenceFeatures(sam=sam_out, srm=None, f_srm=None)
        srm_out = self.srm(reference, sam_out.f_qf)
        f_srm = self.decoder(srm_out.tfq) if self.decoder is not None else None
        return ReferenceFeatures(sam=sam_out, srm=srm_out, f_srm=f_srm)

    def garment_mask_logits(self, reference: torch.Tensor, category_idx: torch.Tensor) -> torch.Tensor:
        """TFQ_0 logits of the last TaskFormer unit (B, 1, H/4, W/4): SAM and SRM only, no Decoder."""
        return self.srm(reference, self.sam(reference, category_idx).f_qf).tfq0_logits[-1]
