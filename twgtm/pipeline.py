"""Inference: ``TWGTMPipeline.try_on``, ``try_off`` and ``predict_garment_mask``.

Images are float tensors in [0, 1], channels first (see :mod:`twgtm.images`). Inputs of any size are
resized-and-padded to the model aspect and the result is restored to the input size, so faces and
bodies are never stretched. For try-on the pixels outside the mask are pasted back from the input by
default (``paste_back=True``), so they are bit-identical to the input.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .attention import model_output, precompute_srm_kv
from .components import TWGTMComponents
from .config import TWGTMConfig, canonical_category
from .errors import ConfigError, InputError
from .images import Placement, as_image_batch, as_mask_batch, broadcast_batch, fit_to_canvas, resize, restore_from_canvas
from .latents import (LatentCondition, build_condition, concat_halves, largest_component, mask_to_box,
                      target_half, unconditional, unet_input, vae_decode, vae_encode, white_canvas)
from .reference import ReferenceEncoder, ReferenceFeatures
from .sam import SAMOutput
from .schedulers import make_scheduler

logger = logging.getLogger(__name__)

Callback = Callable[[int, int, torch.Tensor], None]
Prepare = Callable[..., None]  # prepare(*component_names)


@dataclass
class TWGTMOutput:
    images: torch.Tensor                   # (B, 3, H, W) in [0, 1]
    garment_mask: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1], predicted flat-garment mask (try-off)


def _generator(generator) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator("cpu")
    if generator is None:
        g.seed()
    elif isinstance(generator, int) and not isinstance(generator, bool):
        g.manual_seed(generator)
    else:
        raise InputError(f"generator: expected an int seed, a torch.Generator or None, got {type(generator).__name__}")
    return g


class TWGTMPipeline:
    """Try-on, try-off and garment-mask prediction with TWGTM's components, as a diffusers pipeline.

    Args:
        unet: the UNet with TWGTM's attention processors (:mod:`twgtm.components`).
        vae: the VAE.
        reference_encoder: SAM + SRM (+ Decoder), or ``None`` for the CatVTON-class baseline: try-on with a
            zero cross-attention context and no Extended Attention work (try-off and the garment mask need
            the reference encoder).
        config: the model configuration (canvas, latents, schedule, inference defaults).
        prepare: called as ``prepare("reference_encoder")`` before the reference features are computed and
            ``prepare("unet", "vae")`` before the latents, so a memory manager can put exactly those
            components on their device first (ComfyUI's ``load_models_gpu``, or
            :class:`twgtm.offload.ModelOffload`). The pipeline itself never moves a component: it reads each
            component's device and dtype when it uses it.
    """

    def __init__(self, unet, vae, reference_encoder: ReferenceEncoder | None, config: TWGTMConfig, *,
                 prepare: Prepare | None = None):
        self.unet = unet
        self.vae = vae
        self.reference_encoder = reference_encoder
        self.config = config
        self.prepare = prepare

    @classmethod
    def from_components(cls, components: TWGTMComponents, *, prepare: Prepare | None = None) -> "TWGTMPipeline":
        return cls(components.unet, components.vae, components.reference_encoder, components.config, prepare=prepare)

    def enable_model_cpu_offload(self, device: str | torch.device, offload_device: str | torch.device = "cpu") -> None:
        """Keep every component on ``offload_device`` except the ones a phase needs (moved to ``device``):
        the reference encoders are off the GPU during the denoising loop. Outputs are unchanged."""
        from .offload import ModelOffload

        self.prepare = ModelOffload(self.components(), device, offload_device)

    def components(self) -> dict[str, torch.nn.Module]:
        parts = {"unet": self.unet, "vae": self.vae, "reference_encoder": self.reference_encoder}
        return {k: v for k, v in parts.items() if v is not None}

    def _prepare(self, *names: str) -> None:
        if self.prepare is not None:
            self.prepare(*[n for n in names if n in self.components()])

    def _need_reference_encoder(self, what: str) -> ReferenceEncoder:
        if self.reference_encoder is None:
            raise ConfigError(f"{what}: expected a pipeline with a reference encoder (SAM + SRM), got the baseline "
                              "(reference_encoder=None), which can only do try-on")
        return self.reference_encoder

    # ------------------------------------------------------------------ helpers
    def _categories(self, category: str | Sequence[str], batch: int) -> torch.Tensor:
        cats = [category] * batch if isinstance(category, str) else list(category)
        if len(cats) == 1 and batch > 1:
            cats = cats * batch
        if len(cats) != batch:
            raise InputError(f"category: expected one category or {batch} (the person batch), got {len(cats)}")
        try:
            idx = [self.config.categories.index(canonical_category(c)) for c in cats]
        except (ConfigError, ValueError) as exc:
            raise InputError(f"category: expected one of {self.config.categories} (or an alias), got {category!r}") from exc
        return torch.tensor(idx, dtype=torch.long)

    def _check_options(self, steps: int, guidance_scale: float, strength: float, eta: float) -> None:
        max_steps = int(self.config.scheduler["num_train_timesteps"]) - int(self.config.scheduler.get("steps_offset", 0))
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 or steps > max_steps:
            raise InputError(f"num_inference_steps: expected an int in [1, {max_steps}], got {steps!r}")
        if not (guidance_scale >= 1.0) or guidance_scale != guidance_scale or guidance_scale > 100:
            raise InputError(f"guidance_scale: expected a float in [1, 100] (1 disables CFG), got {guidance_scale!r}")
        if not (0.0 < strength <= 1.0):
            raise InputError(f"strength: expected a float in (0, 1], got {strength!r}")
        if not (eta >= 0.0):
            raise InputError(f"eta: expected a float >= 0 (DDIM: 0 deterministic, 1 as DDPM), got {eta!r}")

    def _mask_probs(self, tfq0_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """TFQ_0 logits (B, 1, H/4, W/4) -> flat-garment mask probabilities (B, 1, H, W) at ``size``, on the CPU."""
        probs = torch.sigmoid(tfq0_logits.float()).cpu()
        return F.interpolate(probs, size=size, mode="bilinear", align_corners=False).clamp(0, 1)

    def _canvas(self, x: torch.Tensor, fill: float, mode: str = "bicubic") -> tuple[torch.Tensor, Placement]:
        return fit_to_canvas(x, (self.config.height, self.config.width), fill, mode=mode)

    @staticmethod
    def _to_pixels(x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1] (float32, on the CPU: each component call moves it to that component's device)."""
        return x01.float() * 2.0 - 1.0

    def reference_features(self, reference: torch.Tensor, cat_idx: torch.Tensor, *,
                           with_srm: bool | None = None) -> ReferenceFeatures:
        """The reference encoder on model-size pixels in [-1, 1]; ``prepare("reference_encoder")`` first."""
        ref = self._need_reference_encoder("reference features")
        self._prepare("reference_encoder")
        return ref(reference.to(ref.device, ref.dtype), cat_idx.to(ref.device), with_srm=with_srm)

    def _baseline_features(self, batch: int) -> ReferenceFeatures:
        """The baseline's fixed cross-attention context: zeros of the F_SAM shape (B, 1 + N, D)."""
        cfg = self.config
        ctx = torch.zeros(batch, 1 + cfg.qformer.num_queries, cfg.cross_attention_dim)
        return ReferenceFeatures(sam=SAMOutput(f_sam=ctx, f_qf=ctx[:, 1:], f_clip_g=ctx[:, :1]), srm=None, f_srm=None)

    # ------------------------------------------------------------------ the denoising loop
    @torch.no_grad()
    def _generate(self, target: torch.Tensor, reference: torch.Tensor, region: torch.Tensor, cat_idx: torch.Tensor, *,
                  steps: int, guidance_scale: float, eta: float, generator: torch.Generator, scheduler: str,
                  strength: float, callback: Callback | None,
                  feats: ReferenceFeatures | None = None) -> torch.Tensor:
        """Model-size target/reference/region in [-1, 1] -> generated target half in [-1, 1] (CPU, float32).

        ``feats``: the reference features when the caller already computed them (try-off needs them for
        its mask anyway); otherwise they are computed here (the baseline: a zero context).
        """
        cfg = self.config
        b = target.shape[0]

        # 1. step-independent features: F_SAM, SRM, F_SRM (once per call, never per step)
        if feats is None:
            if self.reference_encoder is None:
                feats = self._baseline_features(b)
            else:
                feats = self.reference_features(reference, cat_idx)

        # 2. the UNet and VAE on their devices; K'/V' from F_SRM once per call (UNet weights only)
        self._prepare("unet", "vae")
        dev, dtype = self.unet.device, self.unet.dtype
        srm_kv = precompute_srm_kv(self.unet, {k: v.to(dev) for k, v in feats.f_srm.items()}) \
            if feats.f_srm is not None else None

        # 3. latent condition, encoding one image at a time
        encode = lambda x: vae_encode(self.vae, x, cfg, chunk=1).to(dev)  # noqa: E731
        e_ref = encode(reference)
        cond = build_condition(target.to(dev), reference.to(dev), region.to(dev), encode, concat_dim=cfg.concat_dim,
                               encoded_reference=e_ref)

        # 4. CFG batch [uncond, cond]: reference half of E(h_f), F_SAM and the SRM gate are 0 in uncond
        do_cfg = guidance_scale > 1.0
        f_sam = feats.sam.f_sam.to(dev, dtype)
        srm_rows, srm_gate = None, (1.0 if srm_kv is not None else None)  # K'/V': conditional rows only
        if do_cfg:
            unc = unconditional(cond, cfg.concat_dim)
            cond = LatentCondition(guidance=torch.cat([unc.guidance, cond.guidance]), mask=torch.cat([cond.mask, cond.mask]))
            f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
            srm_rows = slice(b, 2 * b)  # the unconditional half gets no Extended-Attention work (gate 0)

        # 5. timesteps and starting latents (the reference half is generated too)
        sched = make_scheduler(scheduler, cfg.scheduler)
        sched.set_timesteps(steps, device=dev)
        timesteps = sched.timesteps
        shape = e_ref.shape[:1] + e_ref.shape[1:2] + cond.mask.shape[2:]
        noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(dev)
        if strength < 1.0:
            start = steps - max(1, int(round(steps * strength)))
            timesteps = timesteps[start * sched.order:]
            z0 = concat_halves(encode(target), e_ref, cfg.concat_dim).float()
            latents = sched.add_noise(z0, noise, timesteps[:1].repeat(b))
        else:
            latents = noise * sched.init_noise_sigma
        extra = {}
        step_params = set(inspect.signature(sched.step).parameters)
        if "eta" in step_params:
            extra["eta"] = eta
        if "generator" in step_params:
            extra["generator"] = generator

        # 6. denoising loop
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            z_in = sched.scale_model_input(latents, t)
            if do_cfg:
                z_in = torch.cat([z_in, z_in])
            x_in = unet_input(z_in.to(dtype), cond)
            out = model_output(self.unet, x_in, t, f_sam, srm_kv=srm_kv, srm_gate=srm_gate, srm_rows=srm_rows).float()
            if do_cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            latents = sched.step(out, t, latents, **extra, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, total, latents)

        # 7. decode the generated half only, one image at a time
        return vae_decode(self.vae, target_half(latents, cfg.concat_dim), cfg, chunk=1).float().cpu()

    # ------------------------------------------------------------------ public operations
    @torch.no_grad()
    def try_on(self, person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor, category: str | Sequence[str], *,
               num_inference_steps: int | None = None, guidance_scale: float | None = None, generator=None,
               eta: float | None = None, scheduler: str = "ddim", output_size: tuple[int, int] | None = None,
               paste_back: bool = True, strength: float = 1.0, callback: Callback | None = None) -> TWGTMOutput:
        """Dress ``person`` in ``garment`` inside ``mask`` (1 = region to dress).

        Args:
            person: (B, C, H, W) in [0, 1]; any size (padded to the model aspect, restored after).
            garment: (B or 1, C, Hg, Wg) in [0, 1]; a single garment is broadcast to the batch.
            mask: (B or 1, 1, H, W), (B, H, W) or (H, W); resized to the person's size; must not be empty.
            category: "upper", "lower" or "dress" (or an alias), one for all or one per person.
            num_inference_steps, guidance_scale, eta: default to the config (50, 2.5, 1.0). Scale 1 disables
                CFG; eta is DDIM's noise share (0: deterministic).
            generator: int seed, ``torch.Generator`` (CPU) or None (random).
            scheduler: "ddim" (default), "dpm++", "euler" or "ddpm".
            output_size: (H, W) of the result; default the person's size.
            paste_back: copy pixels outside the mask from ``person`` (bit-identical), default on.
            strength: 1 starts from pure noise; lower keeps more of the person inside the mask.
            callback: ``callback(step, total, latents)`` after every step; raise in it to cancel.
        """
        # 1. check inputs
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        eta = self.config.eta if eta is None else float(eta)
        self._check_options(steps, scale, strength, eta)
        person = as_image_batch(person, "person")
        b, (h, w) = person.shape[0], tuple(person.shape[-2:])
        garment = broadcast_batch(as_image_batch(garment, "garment"), b, "garment")
        mask = as_mask_batch(mask, "mask", (h, w), b)
        empty = mask.flatten(1).amax(1) == 0
        if bool(empty.any()):
            raise InputError(f"mask: expected a non-empty region to dress for every person, got an empty mask "
                             f"for batch index {torch.nonzero(empty).flatten().tolist()}")
        cat_idx = self._categories(category, b)
        gen = _generator(generator)

        # 2. to the model canvas (aspect kept)
        person_c, placement = self._canvas(person, 1.0)
        mask_c, _ = self._canvas(mask, 0.0, mode="nearest")
        garment_c, _ = self._canvas(garment, 1.0)

        # 3. generate
        out = self._generate(self._to_pixels(person_c), self._to_pixels(garment_c), mask_c, cat_idx, steps=steps,
                             guidance_scale=scale, eta=eta, generator=gen, scheduler=scheduler, strength=strength,
                             callback=callback)
        out = ((out + 1.0) / 2.0).clamp(0, 1)

        # 4. restore the input size and paste the unmasked pixels back
        out = restore_from_canvas(out, placement).clamp(0, 1)
        if paste_back:
            out = out * mask + person * (1.0 - mask)
        if output_size is not None:
            out = resize(out, tuple(output_size)).clamp(0, 1)
        return TWGTMOutput(images=out)

    @torch.no_grad()
    def try_off(self, person: torch.Tensor, category: str | Sequence[str], mask: torch.Tensor | None = None, *,
                predicted_box: bool = False, predicted_mask: bool = False, box_margin: float = 0.05,
                num_inference_steps: int | None = None, guidance_scale: float | None = None,
                eta: float | None = None, generator=None, scheduler: str = "ddim",
                output_size: tuple[int, int] | None = None, strength: float = 1.0, paste_back: bool = True,
                callback: Callback | None = None) -> TWGTMOutput:
        """Take the ``category`` garment off ``person`` and return it as a flat catalogue image.

        Mask-free by default (the whole canvas is generated). ``mask`` (in the garment canvas frame:
        a rectangle or a garment silhouette, any size, resized to the canvas) fixes the garment's
        proportions (the paper's Variant 3); ``predicted_box=True`` uses the box around the model's own
        predicted flat-garment mask (Mask2BBox "pred"), ``predicted_mask=True`` that mask's silhouette
        (its largest component). An empty ``mask`` (or nothing predicted) is treated as mask-free.
        With a region, ``paste_back`` (default) keeps the canvas exactly white outside it, as try-on keeps
        the person's pixels outside its mask. The other options are those of :meth:`try_on`.

        Returns ``images`` (B, 3, H, W) at ``output_size`` (default: the model canvas size) and the
        predicted flat-garment mask ``garment_mask`` (B, 1, H, W) at the same size.
        """
        # 1. check inputs
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        eta = self.config.eta if eta is None else float(eta)
        self._check_options(steps, scale, strength, eta)
        chosen = [n for n, on in (("mask", mask is not None), ("predicted_box", predicted_box),
                                  ("predicted_mask", predicted_mask)) if on]
        if len(chosen) > 1:
            raise InputError(f"mask/predicted_box/predicted_mask: expected at most one of them, got {chosen}")
        self._need_reference_encoder("try_off")
        person = as_image_batch(person, "person")
        b = person.shape[0]
        canvas = (self.config.height, self.config.width)
        cat_idx = self._categories(category, b)
        gen = _generator(generator)
        person_c, _ = self._canvas(person, 1.0)
        reference = self._to_pixels(person_c)

        # 2. reference features, once: they also give the predicted flat-garment mask (TFQ_0)
        feats = self.reference_features(reference, cat_idx, with_srm=True)
        probs = self._mask_probs(feats.srm.tfq0_logits[-1], canvas)  # (B, 1, H, W)

        # 3. the region to generate on the white canvas
        if mask is not None:
            region = as_mask_batch(mask, "mask", canvas, b)
            empty = region.flatten(1).amax(1) == 0
            if bool(empty.any()):
                logger.warning("try_off: empty mask for batch index %s, using the whole canvas (mask-free)",
                               torch.nonzero(empty).flatten().tolist())
                region[empty] = 1.0
        elif predicted_box or predicted_mask:
            region = largest_component((probs > 0.5).float())
            if predicted_box:
                region = mask_to_box(region, margin=box_margin)
            region[region.flatten(1).amax(1) == 0] = 1.0  # nothing predicted: mask-free
        else:
            region = torch.ones(b, 1, *canvas)
        target = white_canvas(reference)

        # 4. generate
        out = self._generate(target, reference, region, cat_idx, steps=steps, guidance_scale=scale, eta=eta,
                             generator=gen, scheduler=scheduler, strength=strength, callback=callback, feats=feats)
        out = ((out + 1.0) / 2.0).clamp(0, 1)
        if paste_back:  # exactly white outside the region
            out = out * region + (1.0 - region)
        if output_size is not None:
            out = resize(out, tuple(output_size)).clamp(0, 1)
            probs = self._mask_probs(feats.srm.tfq0_logits[-1], tuple(output_size))  # as predict_garment_mask
        return TWGTMOutput(images=out, garment_mask=probs)

    @torch.no_grad()
    def predict_garment_mask(self, person: torch.Tensor, category: str | Sequence[str], *,
                             output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The flat-garment mask TFQ_0 (probabilities in [0, 1]) of the ``category`` garment worn by ``person``.

        The mask is in the flat-garment (catalogue canvas) frame, (B, 1, H, W) at ``output_size``
        (default: the model canvas size). No diffusion steps are run.
        """
        ref = self._need_reference_encoder("predict_garment_mask")
        person = as_image_batch(person, "person")
        b = person.shape[0]
        cat_idx = self._categories(category, b)
        person_c, _ = self._canvas(person, 1.0)
        self._prepare("reference_encoder")
        logits = ref.garment_mask_logits(self._to_pixels(person_c).to(ref.device, ref.dtype), cat_idx.to(ref.device))
        size = tuple(output_size) if output_size is not None else (self.config.height, self.config.width)
        return self._mask_probs(logits, size)
