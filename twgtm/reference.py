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
from .errors import ConfigError
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
        # Variant 1 (use_srm false): no SRM and so no Decoder; F_SAM through the standard cross-attention only
        self.srm: SpatialRefinementModule | None = SpatialRefinementModule(config) if config.use_srm else None
        self.decoder: SRMDecoder | None = SRMDecoder(config) if config.stage == 2 and config.use_srm else None
        if text_encoder is not None:
            self.sam.prompts.build(text_encoder, tokenizer)
        elif random_prompts:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.sam.prompts.build(build_clip_text(config), None)

    def add_decoder(self) -> None:
        """Stage 1 -> stage 2: create the Decoder on this encoder's device and dtype (config.stage is set by
        :meth:`twgtm.components.TWGTMComponents.enable_stage2`, the one place that changes the stage)."""
        if self.decoder is None and self.srm is not None:  # without an SRM (Variant 1) there is nothing to decode
            p = next(self.srm.parameters())
            self.decoder = SRMDecoder(self.config).to(device=p.device, dtype=p.dtype)

    @property
    def has_srm(self) -> bool:
        """Whether this encoder has the SRM, and so predicts the flat-garment mask TFQ_0 (not in Variant 1)."""
        return self.srm is not None

    def _trained_tensor(self) -> torch.Tensor:
        """A trained tensor (never a frozen one, which may be stored in another dtype): device and dtype."""
        for part in (self.srm, self.sam.qformer):
            if part is not None:
                return next(part.parameters())
        return self.sam.prompts.embeds

    @property
    def device(self) -> torch.device:
        return self._trained_tensor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._trained_tensor().dtype

    def require_srm(self, what: str) -> "SpatialRefinementModule":
        """The SRM, or a ConfigError naming ``what`` needed it (a model built with ``use_srm`` false)."""
        if self.srm is None:
            raise ConfigError(f"{what}: expected a model with a Spatial Refinement Module (it predicts the garment "
                              f"mask), got one built with use_srm=false (ablation Variant 1)")
        return self.srm

    def forward(self, reference: torch.Tensor, category_idx: torch.Tensor, *,
                with_srm: bool | None = None) -> ReferenceFeatures:
        """Reference pixels in [-1, 1] (B, 3, H, W) and category indices (B,) -> :class:`ReferenceFeatures`.

        ``with_srm`` (default: whether a Decoder exists) also runs the SRM, and the Decoder when present; True
        on a model without an SRM is a ConfigError.
        """
        if with_srm:
            self.require_srm("with_srm")
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
        srm = self.require_srm("garment mask")
        return srm(reference, self.sam(reference, category_idx).f_qf).tfq0_logits[-1]
