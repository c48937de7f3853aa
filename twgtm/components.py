"""The components of a TWGTM model, as a diffusers pipeline has them: UNet, VAE, reference encoder.

* ``unet``: the SD1.5-inpainting UNet (9 input channels) with TWGTM's attention processors: plain SDPA
  in stage 1, and in stage 2 an Extended Attention processor (:mod:`twgtm.attention`) on every ``attn1``;
* ``vae``: the frozen ``AutoencoderKL``;
* ``reference_encoder``: SAM + SRM (+ Decoder in stage 2), :class:`twgtm.reference.ReferenceEncoder`,
  or ``None`` for the CatVTON-class baseline (try-on only, no reference features);
* the scheduler is made per call from ``config.scheduler`` (:func:`twgtm.schedulers.make_scheduler`).

The **stage** has one source of truth, ``config.stage``: the components are built from it and
:meth:`TWGTMComponents.enable_stage2` is the only place that changes it. A TWGTM ``.safetensors`` file
holds the components' weights under ``unet.*``, ``vae.*`` and the reference encoder's ``sam.*``,
``srm.*``, ``decoder.*`` (:mod:`twgtm.weights`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel

from .attention import add_extended_attention, extended_processors, set_plain_processors
from .config import TWGTMConfig
from .errors import ConfigError
from .reference import ReferenceEncoder

COMPONENT_NAMES = ("unet", "vae", "reference_encoder")


def is_unet_transformer(name: str) -> bool:
    """UNet Transformer2D modules (attn1, attn2, ff, norms, proj_in/out) live under ``*.attentions.*``; they
    and the Extended Attention processors are the UNet's trained part (spec 1.6)."""
    return ".attentions." in name


def move(module: nn.Module, **kwargs) -> nn.Module:
    """``module.to(**kwargs)``, without diffusers' false warning on a dtype cast.

    diffusers' ``ModelMixin.to`` (since diffusers PR #13872, June 2026) logs "There are modules in
    UNet2DConditionModel that should be kept in float32: [] ..." on every dtype cast, also when the model keeps no
    module in float32: it tests ``(self._keep_in_fp32_modules or []) is not None``, which is always true. For an
    unquantized diffusers model that keeps none (SD's UNet and VAE), its ``to`` ends in torch's ``Module.to``
    (TWGTM never turns on diffusers' group offloading, the one other case it handles), so that is called
    directly; a model that does keep modules in float32 goes through diffusers' ``to`` and its warning, which is
    then true. ``tests/test_components.py`` checks that a load and a try-on print nothing.
    """
    if "dtype" in kwargs and isinstance(module, ModelMixin) and not module._keep_in_fp32_modules \
            and not getattr(module, "is_quantized", False):
        return nn.Module.to(module, **kwargs)
    return module.to(**kwargs)


@dataclass
class TWGTMComponents:
    """A TWGTM model as its separately useful parts. Build with :meth:`build` or load with
    :func:`twgtm.weights.load_twgtm`; run with :class:`twgtm.pipeline.TWGTMPipeline`."""

    config: TWGTMConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    reference_encoder: ReferenceEncoder | None = None

    @classmethod
    def build(cls, config: TWGTMConfig, *, unet: UNet2DConditionModel | None = None, vae: AutoencoderKL | None = None,
              clip_vision: nn.Module | None = None, text_encoder: nn.Module | None = None, tokenizer=None,
              random_prompts: bool = False, reference_encoder: bool = True) -> "TWGTMComponents":
        """Components for ``config`` (random weights where no pretrained part is given).

        ``reference_encoder=False`` builds the CatVTON-class baseline (no SAM, SRM or Decoder).
        ``text_encoder``/``tokenizer``/``random_prompts``: see :class:`~twgtm.reference.ReferenceEncoder`.
        """
        config.validate()
        # the order of the random initialisations is part of the seeded toy models' behaviour: VAE, UNet,
        # SAM, SRM, Decoder, Extended Attention
        vae = vae if vae is not None else AutoencoderKL(**config.vae)
        unet = unet if unet is not None else UNet2DConditionModel(**config.unet)
        vae.requires_grad_(False).eval()
        set_plain_processors(unet)
        ref = None
        if reference_encoder:
            ref = ReferenceEncoder(config, clip_vision=clip_vision, text_encoder=text_encoder, tokenizer=tokenizer,
                                   random_prompts=random_prompts)
        if config.stage == 2 and ref is not None and ref.has_srm:  # Variant 1 (no SRM): no F_SRM to fuse
            add_extended_attention(unet, config.srm_fusion)
        return cls(config=config, unet=unet, vae=vae, reference_encoder=ref)

    # ------------------------------------------------------------------ stage
    @property
    def stage(self) -> int:
        return self.config.stage

    def enable_stage2(self) -> None:
        """Stage 1 -> stage 2: the Decoder and the Extended Attention processors (K'/V' copied from
        to_k/to_v, ZLL zero), so the model's output right after this call equals stage 1's. Ablation variants
        (``config.use_srm`` false: nothing is added; ``srm_fusion: concat``: Variant 6's processors) differ."""
        if self.config.stage == 2:
            return
        if self.reference_encoder is None:
            raise ConfigError("enable_stage2: expected components with a reference encoder, got the baseline "
                              "(reference_encoder=None), which has no stage 2")
        self.config.stage = 2
        self.reference_encoder.add_decoder()
        if self.reference_encoder.has_srm:  # Variant 1 (use_srm false): stage 2 adds nothing
            add_extended_attention(self.unet, self.config.srm_fusion)

    def extended_attention_processors(self) -> dict:
        return extended_processors(self.unet)

    # ------------------------------------------------------------------ modules and weights
    def modules(self) -> dict[str, nn.Module]:
        """The present components by name (``unet``, ``vae``, ``reference_encoder``)."""
        parts = {"unet": self.unet, "vae": self.vae, "reference_encoder": self.reference_encoder}
        return {k: v for k, v in parts.items() if v is not None}

    def to(self, device=None, dtype: torch.dtype | None = None) -> "TWGTMComponents":
        """Every component to ``device`` and/or ``dtype`` (``to(torch.bfloat16)`` works as for a module). Only
        the arguments given are passed on (:func:`move`)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in self.modules().values():
            move(m, **kwargs)
        return self

    def eval(self) -> "TWGTMComponents":
        for m in self.modules().values():
            m.eval()
        return self

    def state_dict(self, *, include_base: bool = True) -> dict[str, torch.Tensor]:
        """Every weight under its TWGTM file key; ``include_base=False`` keeps the trained parts only: the
        UNet Transformer2D modules (Extended Attention included) and the reference encoder without its frozen
        CLIP image encoder, plus the cached category prompts."""
        out = {}
        for name, module in self.modules().items():
            prefix = "" if name == "reference_encoder" else name + "."
            for k, v in module.state_dict().items():
                out[prefix + k] = v
        if not include_base:
            out = {k: v for k, v in out.items() if is_trained_key(k)}
        return out

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict(include_base=False)

    def load_state_dict(self, state: dict[str, torch.Tensor], *, strict: bool = True, assign: bool = False) -> None:
        """Inverse of :meth:`state_dict`; ``strict`` requires exactly this component set's keys."""
        parts: dict[str, dict[str, torch.Tensor]] = {n: {} for n in self.modules()}
        for k, v in state.items():
            head = k.split(".", 1)[0]
            if head in ("unet", "vae") and head in parts:
                parts[head][k[len(head) + 1:]] = v
            elif "reference_encoder" in parts:
                parts["reference_encoder"][k] = v
            elif strict:
                raise KeyError(k)
        for name, module in self.modules().items():
            module.load_state_dict(parts[name], strict=strict, assign=assign)


def is_trained_key(key: str) -> bool:
    """Whether a TWGTM file key belongs to the trained parts (see :meth:`TWGTMComponents.state_dict`)."""
    if key.startswith("vae.") or key.startswith("sam.clip_vision."):
        return False
    if key.startswith("unet."):
        return is_unet_transformer(key)
    return True
