"""Inference: ``TWGTMPipeline.try_on``, ``try_off`` and ``predict_garment_mask``.

Images are float tensors in [0, 1], channels first (see :mod:`twgtm.images`). Inputs of any size are
resized-and-padded to the model aspect and the result is restored to the input size, so faces and
bodies are never stretched. For try-on the pixels outside the mask are pasted back from the input by
default (``paste_back=True``), so they are bit-identical to the input.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from .config import canonical_category
from .errors import ConfigError, InputError
from .images import Placement, as_image_batch, as_mask_batch, broadcast_batch, fit_to_canvas, resize, restore_from_canvas
from .latents import (LatentCondition, build_condition, concat_halves, largest_component, mask_to_box,
                      target_half, unconditional, unet_input, white_canvas)
from .model import ReferenceFeatures, TWGTMModel

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "ddpm": DDPMScheduler,
}

Callback = Callable[[int, int, torch.Tensor], None]


@dataclass
class TWGTMOutput:
    images: torch.Tensor                   # (B, 3, H, W) in [0, 1]
    garment_mask: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1], predicted flat-garment mask (try-off)


def make_scheduler(name: str, config: dict):
    """A fresh scheduler per call (no state shared between runs, so an interrupted run harms nothing)."""
    key = name.lower().replace("dpmpp", "dpm++").replace("dpm_solver++", "dpm++")
    if key not in SCHEDULERS:
        raise InputError(f"scheduler: expected one of {sorted(SCHEDULERS)}, got {name!r}")
    kwargs = dict(config)
    if key == "dpm++":
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2)
    return SCHEDULERS[key].from_config(kwargs)


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
    """Try-on, try-off and garment-mask prediction with one :class:`TWGTMModel`."""

    def __init__(self, model: TWGTMModel, *, encoder_offload_device: str | torch.device | None = None):
        """Args:
            model: the TWGTM model (its device and dtype are used as they are).
            encoder_offload_device: when set (e.g. "cpu"), the reference encoders (CLIP image encoder,
                Q-Former, SRM, Decoder) are moved to the model's device only while the reference features
                are computed, then parked here: their ~0.9 GiB (bf16, full size) is free during the
                denoising loop and the decode. Outputs are unchanged.
        """
        self.model = model
        self.config = model.config
        self.encoder_offload_device = encoder_offload_device

    def _encoders_to(self, device) -> None:
        m = self.model
        for part in (m.sam.clip_vision, m.sam.qformer, m.srm, m.decoder):
            if part is not None:
                part.to(device)

    @contextlib.contextmanager
    def _encoders_on_device(self):
        """The reference encoders sit on the model's device only inside this block (when offloading)."""
        if self.encoder_offload_device is None:
            yield
            return
        self._encoders_to(self.model.device)
        try:
            yield
        finally:
            self._encoders_to(self.encoder_offload_device)

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
        return torch.tensor(idx, dtype=torch.long, device=self.model.device)

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

    def _to_model(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> [-1, 1] on the model's device and dtype."""
        return (x01 * 2.0 - 1.0).to(self.model.device, self.model.dtype)

    # ------------------------------------------------------------------ the denoising loop
    @torch.no_grad()
    def _generate(self, target: torch.Tensor, reference: torch.Tensor, region: torch.Tensor, cat_idx: torch.Tensor, *,
                  steps: int, guidance_scale: float, eta: float, generator: torch.Generator, scheduler: str,
                  strength: float, callback: Callback | None,
                  feats: ReferenceFeatures | None = None) -> torch.Tensor:
        """Model-size target/reference/region in [-1, 1] -> generated target half in [-1, 1].

        ``feats``: the reference features when the caller already computed them (try-off needs them for
        its mask anyway); otherwise they are computed here.
        """
        model, cfg = self.model, self.config
        dev, dtype = model.device, model.dtype
        b = target.shape[0]

        # 1. step-independent features: F_SAM, SRM, F_SRM, K'/V' (once per call, never per step)
        if feats is None:
            with self._encoders_on_device():
                feats = model.encode_reference(reference, cat_idx, with_srm=model.stage == 2)
        srm_kv = model.precompute_srm_kv(feats.f_srm) if feats.f_srm is not None else None  # UNet weights only

        # 2. latent condition, encoding one image at a time
        encode = lambda x: model.encode_images(x, chunk=1)  # noqa: E731
        e_ref = encode(reference)
        cond = build_condition(target, reference, region, encode, concat_dim=cfg.concat_dim, encoded_reference=e_ref)

        # 3. CFG batch [uncond, cond]: reference half of E(h_f), F_SAM and the SRM gate are 0 in uncond
        do_cfg = guidance_scale > 1.0
        f_sam = feats.sam.f_sam
        srm_rows, srm_gate = None, (1.0 if srm_kv is not None else None)  # K'/V': conditional rows only
        if do_cfg:
            unc = unconditional(cond, cfg.concat_dim)
            cond = LatentCondition(guidance=torch.cat([unc.guidance, cond.guidance]), mask=torch.cat([cond.mask, cond.mask]))
            f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
            srm_rows = slice(b, 2 * b)  # the unconditional half gets no Extended-Attention work (gate 0)

        # 4. timesteps and starting latents (the reference half is generated too)
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

        # 5. denoising loop
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            z_in = sched.scale_model_input(latents, t)
            if do_cfg:
                z_in = torch.cat([z_in, z_in])
            x_in = unet_input(z_in.to(dtype), cond)
            eps = model.predict_noise(x_in, t, f_sam, srm_kv=srm_kv, srm_gate=srm_gate, srm_rows=srm_rows).float()
            if do_cfg:
                eps_u, eps_c = eps.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = sched.step(eps, t, latents, **extra, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, total, latents)

        # 6. decode the generated half only, one image at a time
        return model.decode_latents(target_half(latents, cfg.concat_dim), chunk=1).float()

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
        out = self._generate(self._to_model(person_c), self._to_model(garment_c), mask_c.to(self.model.device),
                             cat_idx, steps=steps, guidance_scale=scale, eta=eta, generator=gen, scheduler=scheduler,
                             strength=strength, callback=callback)
        out = ((out + 1.0) / 2.0).clamp(0, 1).cpu()

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
        person = as_image_batch(person, "person")
        b = person.shape[0]
        canvas = (self.config.height, self.config.width)
        cat_idx = self._categories(category, b)
        gen = _generator(generator)
        person_c, _ = self._canvas(person, 1.0)
        reference = self._to_model(person_c)

        # 2. reference features, once: they also give the predicted flat-garment mask (TFQ_0)
        with self._encoders_on_device():
            feats = self.model.encode_reference(reference, cat_idx, with_srm=True)
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
        out = self._generate(target, reference, region.to(self.model.device), cat_idx, steps=steps,
                             guidance_scale=scale, eta=eta, generator=gen, scheduler=scheduler, strength=strength,
                             callback=callback, feats=feats)
        out = ((out + 1.0) / 2.0).clamp(0, 1).cpu()
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
        person = as_image_batch(person, "person")
        b = person.shape[0]
        cat_idx = self._categories(category, b)
        person_c, _ = self._canvas(person, 1.0)
        reference = self._to_model(person_c)
        with self._encoders_on_device():
            srm = self.model.srm(reference, self.model.sam(reference, cat_idx).f_qf)  # no Decoder needed
        size = tuple(output_size) if output_size is not None else (self.config.height, self.config.width)
        return self._mask_probs(srm.tfq0_logits[-1], size)
