"""Inference: ``TWGTMPipeline.try_on``, ``try_off`` and ``predict_garment_mask``.

Images are float tensors in [0, 1], channels first (see :mod:`twgtm.images`). Inputs of any size are
resized-and-padded to the model aspect and the result is restored to the input size, so faces and
bodies are never stretched. For try-on the pixels outside the mask are pasted back from the input by
default (``paste_back=True``), so they are bit-identical to the input.

Sampling (docs/DESIGN.md, "Timesteps, denoise and seeds"): every scheduler uses "trailing" timesteps, so the
first step is at t = T (pure noise) for any step count; ``strength`` follows ComfyUI's denoise (the last
``num_inference_steps`` of a schedule of ``round(steps / strength)``); and each batch item has its own noise
generator, so item i of a batch equals a single call with seed + i.
"""
from __future__ import annotations

import inspect
import logging
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from .attention import SpatialGate, model_output, precompute_srm_kv
from .components import TWGTMComponents
from .config import TWGTMConfig, canonical_category
from .errors import ConfigError, InputError, NumericalError
from .images import (Placement, as_image_batch, as_mask_batch, as_output_size, broadcast_batch, fit_to_canvas, resize,
                     restore_from_canvas)
from .latents import (LatentCondition, build_condition, concat_halves, largest_component, mask_to_box,
                      target_half, task_gate, unconditional, unet_input, vae_decode, vae_encode, white_canvas)
from .reference import ReferenceEncoder, ReferenceFeatures
from .sam import SAMOutput
from .schedulers import DEFAULT_SCHEDULER, canonical_scheduler, make_scheduler

logger = logging.getLogger(__name__)

SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts

Callback = Callable[[int, int, torch.Tensor], None]
Prepare = Callable[..., None]  # prepare(*component_names)


@dataclass
class TWGTMOutput:
    images: torch.Tensor                   # (B, 3, H, W) in [0, 1]
    garment_mask: torch.Tensor | None = None  # (B, 1, H, W) in [0, 1], predicted flat-garment mask (try-off;
                                              # None: a model without an SRM predicts none)


def schedule_length(steps: int, strength: float) -> int:
    """How many timesteps the schedule has for ``steps`` model calls at ``strength`` (ComfyUI's denoise)."""
    return max(steps, round(steps / strength))


def denoise_timesteps(sched, steps: int, strength: float, device=None) -> tuple[torch.Tensor, bool]:
    """Set ``sched``'s timesteps for ``steps`` calls at ``strength``; return the timesteps to run and whether
    the run starts from the noised input (True) or from pure noise (False).

    ComfyUI's denoise convention: the schedule is made for ``round(steps / strength)`` steps and only its last
    ``steps`` are run, so exactly ``steps`` model calls happen, for any step count, and the first one is at
    about ``strength * T`` (trailing spacing: ``round(steps / total * T) - 1``).
    """
    total = schedule_length(steps, strength)
    sched.set_timesteps(total, device=device)
    skip = (total - steps) * sched.order
    if skip and hasattr(sched, "set_begin_index"):  # multistep / sigma schedulers: start mid-schedule
        sched.set_begin_index(skip)
    return sched.timesteps[skip:], skip > 0


def item_generators(generator, batch: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One noise generator per batch item, so an item's noise depends only on its own seed and position.

    * int seed ``s``: item ``i`` uses a CPU generator seeded ``s + i`` (wrapping at 2**64), so item ``i`` of a
      batch equals a single call with seed ``s + i``;
    * a list or tuple of ``torch.Generator``, one per item (as diffusers): used as they are;
    * a single ``torch.Generator``: one seed ``s`` is drawn from it (it advances), then as an int seed;
    * None: a random seed ``s``, then as an int seed.

    Every random draw of a call (the starting noise and each step's noise) comes from these generators.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise InputError(f"generator: expected a list of {batch} torch.Generator (one per person), got "
                             f"{len(generator)} items of types {sorted({type(g).__name__ for g in generator})}")
        kinds = {g.device.type for g in generator}
        allowed = {"cpu", torch.device(device).type}
        if len(kinds) != 1 or not kinds <= allowed:
            raise InputError(f"generator: expected generators all on one device, 'cpu' or the model's "
                             f"{torch.device(device).type!r}, got devices {sorted(kinds)}")
        return list(generator)
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2 ** 63 - 1, (1,), generator=generator, device=generator.device))
    elif generator is None:
        seed = torch.Generator("cpu").seed() % 2 ** 63
    elif isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        seed = int(generator)
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise InputError(f"generator: expected an int seed in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed}")
    else:
        raise InputError(f"generator: expected an int seed, a torch.Generator, a list of {batch} torch.Generator "
                         f"or None, got {type(generator).__name__}")
    wrap = (lambda x: x % 2 ** 64) if seed >= 0 else (lambda x: x)
    return [torch.Generator("cpu").manual_seed(wrap(seed + i)) for i in range(batch)]


def _real(value, name: str, expected: str) -> float:
    """``value`` as a float when it is a real number (not a bool, a str or None); the range is the caller's."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    return float(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return value


def _check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        raise NumericalError(f"{what}: expected finite values, got NaN or inf for batch index "
                             f"{torch.nonzero(bad).flatten().tolist()}; nothing is returned (a half-precision "
                             f"overflow or broken weights: try float32 or bfloat16, or check the checkpoint)")


@dataclass(frozen=True)
class SamplingOptions:
    """The checked sampling options of one call (defaults resolved from the config)."""

    steps: int
    guidance_scale: float
    eta: float
    strength: float
    scheduler: str
    output_size: tuple[int, int] | None


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
        names = f"one of {list(self.config.categories)} (or an alias)"
        if isinstance(category, str):
            cats = [category] * batch
        elif isinstance(category, (list, tuple)) and all(isinstance(c, str) for c in category):
            cats = list(category)
        else:
            raise InputError(f"category: expected a category name, {names}, or a list of them (one per person), "
                             f"got {category!r} ({type(category).__name__})")
        if len(cats) == 1 and batch > 1:
            cats = cats * batch
        if len(cats) != batch:
            raise InputError(f"category: expected one category or {batch} (the person batch), got {len(cats)}")
        try:
            idx = [self.config.categories.index(canonical_category(c)) for c in cats]
        except (ConfigError, ValueError) as exc:
            raise InputError(f"category: expected one of {self.config.categories} (or an alias), got {category!r}") from exc
        return torch.tensor(idx, dtype=torch.long)

    def _options(self, *, num_inference_steps, guidance_scale, eta, strength, scheduler, output_size, paste_back,
                 callback) -> SamplingOptions:
        """Check every sampling option's type and range (before any model work); None means the config's."""
        cfg = self.config
        max_steps = int(cfg.scheduler["num_train_timesteps"]) - int(cfg.scheduler.get("steps_offset", 0))
        steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or not 1 <= steps <= max_steps:
            raise InputError(f"num_inference_steps: expected an int in [1, {max_steps}], got {steps!r}")
        steps = int(steps)
        expected = "a float in [1, 100] (1 disables CFG)"
        scale = _real(cfg.guidance_scale if guidance_scale is None else guidance_scale, "guidance_scale", expected)
        if not 1.0 <= scale <= 100.0:
            raise InputError(f"guidance_scale: expected {expected}, got {guidance_scale!r}")
        expected = "a float in [0, 1] (DDIM's noise share: 0 deterministic, 1 as DDPM)"
        eta_f = _real(cfg.eta if eta is None else eta, "eta", expected)
        if not 0.0 <= eta_f <= 1.0:
            raise InputError(f"eta: expected {expected}, got {eta!r}")
        expected = "a float in (0, 1] (1 starts from pure noise)"
        strength_f = _real(strength, "strength", expected)
        if not 0.0 < strength_f <= 1.0:
            raise InputError(f"strength: expected {expected}, got {strength!r}")
        total = schedule_length(steps, strength_f)
        if total > max_steps:
            raise InputError(f"strength: expected at least num_inference_steps / {max_steps} = {steps / max_steps:.4g} "
                             f"(the schedule has round(steps / strength) timesteps, at most {max_steps}), "
                             f"got {strength!r} with num_inference_steps={steps} ({total} timesteps)")
        key = canonical_scheduler(scheduler)
        size = as_output_size(output_size)
        _flag(paste_back, "paste_back")
        if callback is not None and not callable(callback):
            raise InputError(f"callback: expected None or a callable (step, total, latents), got {type(callback).__name__}")
        return SamplingOptions(steps=steps, guidance_scale=scale, eta=eta_f, strength=strength_f, scheduler=key,
                               output_size=size)

    def _mask_probs(self, tfq0_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """TFQ_0 logits (B, 1, H/4, W/4) -> flat-garment mask probabilities (B, 1, H, W) at ``size``, on the CPU."""
        probs = torch.sigmoid(tfq0_logits.float()).cpu()
        _check_finite(probs, "the predicted garment mask")
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

    def baseline_features(self, batch: int) -> ReferenceFeatures:
        """The baseline's fixed cross-attention context: zeros of the F_SAM shape (B, 1 + N, D), no SRM."""
        cfg = self.config
        ctx = torch.zeros(batch, 1 + cfg.qformer.num_queries, cfg.cross_attention_dim)
        return ReferenceFeatures(sam=SAMOutput(f_sam=ctx, f_qf=ctx[:, 1:], f_clip_g=ctx[:, :1]), srm=None, f_srm=None)

    # ------------------------------------------------------------------ the denoising loop
    @torch.no_grad()
    def _generate(self, target: torch.Tensor, reference: torch.Tensor, region: torch.Tensor, cat_idx: torch.Tensor, *,
                  opts: SamplingOptions, generators: list[torch.Generator], callback: Callback | None,
                  feats: ReferenceFeatures | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Model-size target/reference/region in [-1, 1] -> generated target half in [-1, 1] (CPU, float32).

        ``generators``: one per batch item (:func:`item_generators`), for the starting noise and every step's
        noise. ``feats``: the reference features when the caller already computed them (try-off needs them for
        its mask anyway); otherwise they are computed here (the baseline: a zero context). ``gate`` (B, 1, H, W)
        in [0, 1]: the task's mask for Extended Attention (the try-on mask, or the predicted flat-garment
        mask for try-off; :func:`twgtm.latents.task_gate`), used in stage 2 only. A decode that is not
        finite raises
        :class:`NumericalError` (nothing non-finite is ever returned or pasted).
        """
        steps, guidance_scale, eta, strength = opts.steps, opts.guidance_scale, opts.eta, opts.strength
        cfg = self.config
        b = target.shape[0]

        # 1. step-independent features: F_SAM, SRM, F_SRM (once per call, never per step)
        if feats is None:
            feats = self.baseline_features(b) if self.reference_encoder is None else \
                self.reference_features(reference, cat_idx)

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
        lost = target_half(cond.mask, cfg.concat_dim).flatten(1).amax(1) == 0
        if bool(lost.any()):  # mask_to_latent keeps any non-empty region, so only an empty region gets here
            raise InputError(f"mask: expected a region that covers at least one latent cell, got none for batch "
                             f"index {torch.nonzero(lost).flatten().tolist()}")

        # 4. CFG batch [uncond, cond]: reference half of E(h_f), F_SAM and the SRM gate are 0 in uncond
        do_cfg = guidance_scale > 1.0
        f_sam = feats.sam.f_sam.to(dev, dtype)
        srm_rows, srm_gate = None, (1.0 if srm_kv is not None else None)  # K'/V': conditional rows only
        srm_mask = None
        if srm_kv is not None and gate is not None:  # stage 2: the SRM term acts inside the task's mask only
            srm_mask = SpatialGate(task_gate(gate.to(dev), e_ref.shape[-2:], cfg.concat_dim).to(dtype))
        if do_cfg:
            unc = unconditional(cond, cfg.concat_dim)
            cond = LatentCondition(guidance=torch.cat([unc.guidance, cond.guidance]), mask=torch.cat([cond.mask, cond.mask]))
            f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
            srm_rows = slice(b, 2 * b)  # the unconditional half gets no Extended-Attention work (gate 0)

        # 5. timesteps and starting latents (the reference half is generated too)
        sched = make_scheduler(opts.scheduler, cfg.scheduler)
        timesteps, from_input = denoise_timesteps(sched, steps, strength, device=dev)
        shape = e_ref.shape[:1] + e_ref.shape[1:2] + cond.mask.shape[2:]
        noise = randn_tensor(shape, generator=generators, device=dev, dtype=torch.float32)  # item i: generators[i]
        if from_input:
            z0 = concat_halves(encode(target), e_ref, cfg.concat_dim).float()
            latents = sched.add_noise(z0, noise, timesteps[:1].repeat(b))
        else:
            latents = noise * sched.init_noise_sigma
        extra = {}
        step_params = set(inspect.signature(sched.step).parameters)
        if "eta" in step_params:
            extra["eta"] = eta
        if "generator" in step_params:
            extra["generator"] = generators  # diffusers' randn_tensor: one generator per batch item

        # 6. denoising loop
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            z_in = sched.scale_model_input(latents, t)
            if do_cfg:
                z_in = torch.cat([z_in, z_in])
            x_in = unet_input(z_in.to(dtype), cond)
            out = model_output(self.unet, x_in, t, f_sam, srm_kv=srm_kv, srm_gate=srm_gate, srm_rows=srm_rows,
                               srm_mask=srm_mask).float()
            if do_cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            latents = sched.step(out, t, latents, **extra, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, total, latents)

        # 7. decode the generated half only, one image at a time
        out = vae_decode(self.vae, target_half(latents, cfg.concat_dim), cfg, chunk=1).float().cpu()
        _check_finite(out, "the decoded image")
        return out

    # ------------------------------------------------------------------ public operations
    @torch.no_grad()
    def try_on(self, person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor, category: str | Sequence[str], *,
               num_inference_steps: int | None = None, guidance_scale: float | None = None, generator=None,
               eta: float | None = None, scheduler: str = DEFAULT_SCHEDULER, output_size: tuple[int, int] | None = None,
               paste_back: bool = True, strength: float = 1.0, callback: Callback | None = None) -> TWGTMOutput:
        """Dress ``person`` in ``garment`` inside ``mask`` (1 = region to dress).

        Args:
            person: (B, C, H, W) in [0, 1]; any size (padded to the model aspect, restored after).
            garment: (B or 1, C, Hg, Wg) in [0, 1]; a single garment is broadcast to the batch.
            mask: (B or 1, 1, H, W), (B, H, W) or (H, W); resized to the person's size; must not be empty.
                A region smaller than one latent cell still gets (at least) one cell, so it is dressed.
            category: "upper", "lower" or "dress" (or an alias), one for all or one per person.
            num_inference_steps, guidance_scale, eta: default to the config (50, 2.5, 1.0). Scale in [1, 100],
                1 disables CFG; eta in [0, 1] is DDIM's noise share (0: deterministic).
            generator: int seed, a list of ``torch.Generator`` (one per person), a ``torch.Generator`` or None
                (random). Each person has its own noise: with an int seed ``s`` person ``i`` uses ``s + i``, so
                it gets exactly what a single call with seed ``s + i`` gives (see :func:`item_generators`).
            scheduler: "ddim" (default), "dpm++", "euler" or "ddpm"; every one works from 1 step (the first
                step is at t = T, "trailing" timesteps).
            output_size: (H, W) of the result, two ints >= 1; default the person's size.
            paste_back: copy pixels outside the mask from ``person`` (bit-identical), default on.
            strength: in (0, 1], ComfyUI's denoise. 1 starts from pure noise; below 1 the schedule is made for
                ``round(steps / strength)`` steps and its last ``num_inference_steps`` run from the person
                noised to about ``strength * T``, so lower keeps more of the person inside the mask.
            callback: ``callback(step, total, latents)`` after every step; raise in it to cancel.

        Raises:
            InputError: an invalid input or option (checked before any model work).
            NumericalError: the decode is not finite (nothing is returned).
        """
        # 1. check inputs (all of them before any model work)
        opts = self._options(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                             strength=strength, scheduler=scheduler, output_size=output_size,
                             paste_back=paste_back, callback=callback)
        person = as_image_batch(person, "person")
        b, (h, w) = person.shape[0], tuple(person.shape[-2:])
        garment = broadcast_batch(as_image_batch(garment, "garment"), b, "garment")
        mask = as_mask_batch(mask, "mask", (h, w), b)
        empty = mask.flatten(1).amax(1) == 0
        if bool(empty.any()):
            raise InputError(f"mask: expected a non-empty region to dress for every person, got an empty mask "
                             f"for batch index {torch.nonzero(empty).flatten().tolist()}")
        cat_idx = self._categories(category, b)
        gens = item_generators(generator, b, self.unet.device)

        # 2. to the model canvas (aspect kept; the mask keeps at least one pixel)
        person_c, placement = self._canvas(person, 1.0)
        mask_c, _ = self._canvas(mask, 0.0, mode="mask")
        garment_c, _ = self._canvas(garment, 1.0)

        # 3. generate
        out = self._generate(self._to_pixels(person_c), self._to_pixels(garment_c), mask_c, cat_idx, opts=opts,
                             generators=gens, callback=callback,
                             gate=(mask_c > 0.5).float())  # the given mask gates Extended Attention
        out = ((out + 1.0) / 2.0).clamp(0, 1)

        # 4. restore the input size and paste the unmasked pixels back (full-resolution mask)
        out = restore_from_canvas(out, placement).clamp(0, 1)
        if paste_back:
            out = out * mask + person * (1.0 - mask)
        if opts.output_size is not None:
            out = resize(out, opts.output_size).clamp(0, 1)
        return TWGTMOutput(images=out)

    @torch.no_grad()
    def try_off(self, person: torch.Tensor, category: str | Sequence[str], mask: torch.Tensor | None = None, *,
                predicted_box: bool = False, predicted_mask: bool = False, box_margin: float = 0.05,
                num_inference_steps: int | None = None, guidance_scale: float | None = None,
                eta: float | None = None, generator=None, scheduler: str = DEFAULT_SCHEDULER,
                output_size: tuple[int, int] | None = None, strength: float = 1.0, paste_back: bool = True,
                callback: Callback | None = None) -> TWGTMOutput:
        """Take the ``category`` garment off ``person`` and return it as a flat catalogue image.

        Mask-free by default (the whole canvas is generated). ``mask`` (in the garment canvas frame:
        a rectangle or a garment silhouette, any size, resized to the canvas) fixes the garment's
        proportions (the paper's Variant 3); ``predicted_box=True`` uses the box around the model's own
        predicted flat-garment mask (Mask2BBox "pred"), grown by ``box_margin`` (in [0, 1]) times its size,
        ``predicted_mask=True`` that mask's silhouette (its largest component). An empty ``mask`` (or
        nothing predicted) is treated as mask-free.
        With a region, ``paste_back`` (default) keeps the canvas exactly white outside it, as try-on keeps
        the person's pixels outside its mask. The other options (seeds per person included) are those of
        :meth:`try_on`.

        Returns ``images`` (B, 3, H, W) at ``output_size`` (default: the model canvas size) and the
        predicted flat-garment mask ``garment_mask`` (B, 1, H, W) at the same size; a model without a Spatial
        Refinement Module (``config.use_srm`` false, ablation Variant 1) predicts none: ``garment_mask`` is None
        and ``predicted_box`` / ``predicted_mask`` are a ConfigError.
        """
        # 1. check inputs (all of them before any model work)
        ref = self._need_reference_encoder("try_off")
        opts = self._options(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                             strength=strength, scheduler=scheduler, output_size=output_size,
                             paste_back=paste_back, callback=callback)
        _flag(predicted_box, "predicted_box")
        _flag(predicted_mask, "predicted_mask")
        expected = "a float in [0, 1] (the box grows by this share of its size on each side)"
        margin = _real(box_margin, "box_margin", expected)
        if not 0.0 <= margin <= 1.0:
            raise InputError(f"box_margin: expected {expected}, got {box_margin!r}")
        chosen = [n for n, on in (("mask", mask is not None), ("predicted_box", predicted_box),
                                  ("predicted_mask", predicted_mask)) if on]
        if len(chosen) > 1:
            raise InputError(f"mask/predicted_box/predicted_mask: expected at most one of them, got {chosen}")
        if predicted_box or predicted_mask:  # a model without an SRM (ablation Variant 1) predicts no mask
            ref.require_srm("predicted_box" if predicted_box else "predicted_mask")
        person = as_image_batch(person, "person")
        b = person.shape[0]
        canvas = (self.config.height, self.config.width)
        region = as_mask_batch(mask, "mask", canvas, b) if mask is not None else None
        cat_idx = self._categories(category, b)
        gens = item_generators(generator, b, self.unet.device)
        person_c, _ = self._canvas(person, 1.0)
        reference = self._to_pixels(person_c)

        # 2. reference features, once: they also give the predicted flat-garment mask (TFQ_0)
        feats = self.reference_features(reference, cat_idx, with_srm=ref.has_srm)
        probs = self._mask_probs(feats.srm.tfq0_logits[-1], canvas) if ref.has_srm else None  # (B, 1, H, W)

        # 3. the region to generate on the white canvas
        if region is not None:
            empty = region.flatten(1).amax(1) == 0
            if bool(empty.any()):
                logger.warning("try_off: empty mask for batch index %s, using the whole canvas (mask-free)",
                               torch.nonzero(empty).flatten().tolist())
                region[empty] = 1.0
        elif predicted_box or predicted_mask:
            region = largest_component((probs > 0.5).float())
            if predicted_box:
                region = mask_to_box(region, margin=margin)
            region[region.flatten(1).amax(1) == 0] = 1.0  # nothing predicted: mask-free
        else:
            region = torch.ones(b, 1, *canvas)
        target = white_canvas(reference)

        # 4. generate
        out = self._generate(target, reference, region, cat_idx, opts=opts, generators=gens, callback=callback,
                             feats=feats, gate=probs)  # the predicted mask gates Extended Attention
        out = ((out + 1.0) / 2.0).clamp(0, 1)
        if paste_back:  # exactly white outside the region
            out = out * region + (1.0 - region)
        if opts.output_size is not None:
            out = resize(out, opts.output_size).clamp(0, 1)
            if probs is not None:
                probs = self._mask_probs(feats.srm.tfq0_logits[-1], opts.output_size)  # as predict_garment_mask
        return TWGTMOutput(images=out, garment_mask=probs)

    @torch.no_grad()
    def predict_garment_mask(self, person: torch.Tensor, category: str | Sequence[str], *,
                             output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The flat-garment mask TFQ_0 (probabilities in [0, 1]) of the ``category`` garment worn by ``person``.

        The mask is in the flat-garment (catalogue canvas) frame, (B, 1, H, W) at ``output_size``
        (default: the model canvas size). No diffusion steps are run.
        """
        ref = self._need_reference_encoder("predict_garment_mask")
        ref.require_srm("predict_garment_mask")
        size = as_output_size(output_size) or (self.config.height, self.config.width)
        person = as_image_batch(person, "person")
        b = person.shape[0]
        cat_idx = self._categories(category, b)
        person_c, _ = self._canvas(person, 1.0)
        self._prepare("reference_encoder")
        logits = ref.garment_mask_logits(self._to_pixels(person_c).to(ref.device, ref.dtype), cat_idx.to(ref.device))
        return self._mask_probs(logits, size)
