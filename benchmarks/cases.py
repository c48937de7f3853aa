"""The benchmark's models and the cases it compares, built on the library's components.

No model or pipeline method is replaced; every case is a plain call of the library's public functions:

* **TWGTM** (try-on / try-off): :class:`twgtm.pipeline.TWGTMPipeline` over the components, as users run it;
* **baseline** (CatVTON class): the *same* pipeline class with ``reference_encoder=None`` over the *same*
  UNet and VAE (:func:`baseline_pipeline`): a fixed zero cross-attention context of the F_SAM shape and no
  Extended-Attention work (no F_SRM, so the Extended Attention processors take their plain path);
* **baseline without cross-attention** (CatVTON's UNet): :func:`skip_cross_attention`, CatVTON's
  ``SkipAttnProcessor`` on every ``attn2`` through diffusers' public ``set_attn_processor``, restored after;
* **naive Extended Attention**, the reference path the optimised one must equal: K'/V' projected in every
  step and the branch run on the whole CFG batch with a 0/1 gate tensor. One step is
  :func:`twgtm.attention.model_output` with :func:`naive_srm_inputs`; the whole call is
  :func:`try_on_loop`, a copy of the pipeline's denoising loop made of the library's functions (with
  ``naive=False`` it reproduces ``TWGTMPipeline.try_on`` bit for bit, which the tests check);
* **encoder offload**: :func:`model_cpu_offload`, the pipeline's own
  :meth:`~twgtm.pipeline.TWGTMPipeline.enable_model_cpu_offload` (:class:`twgtm.offload.ModelOffload`).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
from diffusers.utils.torch_utils import randn_tensor

from twgtm.attention import ATTN1_SUFFIX, SpatialGate, model_output, precompute_srm_kv
from twgtm.components import TWGTMComponents
from twgtm.config import TWGTMConfig, canonical_category
from twgtm.errors import ConfigError, InputError
from twgtm.images import as_image_batch, as_mask_batch
from twgtm.latents import (LatentCondition, build_condition, target_half, task_gate, unconditional, unet_input,
                           vae_decode, vae_encode)
from twgtm.pipeline import TWGTMPipeline, denoise_timesteps, item_generators
from twgtm.schedulers import make_scheduler

CONFIGS = ("full", "tiny")


def make_config(name: str, size: tuple[int, int] | None = None) -> TWGTMConfig:
    """``"full"`` / ``"tiny"`` preset, optionally at another (height, width); always stage 2."""
    if name not in CONFIGS:
        raise ConfigError(f"config: expected 'full' or 'tiny', got {name!r}")
    preset = TWGTMConfig.full if name == "full" else TWGTMConfig.tiny
    kwargs: dict[str, Any] = {"stage": 2}
    if size is not None:
        kwargs.update(height=size[0], width=size[1])
    return preset(**kwargs).validate()


def build_components(cfg: TWGTMConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0, build_device: str | torch.device | None = None) -> TWGTMComponents:
    """Random-weight stage-2 components in eval mode, gradients off.

    Off the meta device the prompts are filled by a seeded random CLIP text encoder and every ZLL is
    randomised (N(0, 0.02)), so the Extended-Attention branch contributes to the output as after
    training. On ``meta`` nothing is initialised (counting only). The modules are constructed (and
    randomly initialised) on ``build_device`` (default ``device``, fast on a GPU), then moved.
    """
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            comps = TWGTMComponents.build(cfg)
    else:
        with torch.random.fork_rng(devices=[]), torch.device(build_device or device):
            torch.manual_seed(seed)
            comps = TWGTMComponents.build(cfg, random_prompts=True)
            for proc in comps.extended_attention_processors().values():
                nn.init.normal_(proc.zll.weight, std=0.02)
                nn.init.normal_(proc.zll.bias, std=0.02)
    place(comps, device)
    for module in comps.modules().values():
        if dtype != torch.get_default_dtype():
            module.to(dtype)
        module.requires_grad_(False)  # FlopCounterMode's module tracker trips on leaves that require grad
    return comps.eval()


def place(components: TWGTMComponents, device: str | torch.device) -> None:
    """Every component to ``device``. Not ``components.to(device)``: it passes ``dtype=None``, and diffusers'
    ``ModelMixin.to`` warns ("should be kept in float32") about any ``dtype`` keyword, even None."""
    for module in components.modules().values():
        module.to(device)


# ---------------------------------------------------------------------------------------------------
# the baseline and CatVTON's UNet
# ---------------------------------------------------------------------------------------------------
def baseline_pipeline(components: TWGTMComponents) -> TWGTMPipeline:
    """The CatVTON-class baseline: the same pipeline over the same UNet and VAE, without a reference encoder."""
    return TWGTMPipeline(components.unet, components.vae, None, components.config)


def baseline_context(components: TWGTMComponents, batch: int) -> torch.Tensor:
    """The baseline's cross-attention context for one UNet step: zeros of the F_SAM shape (B, 1 + N, D), as
    :class:`~twgtm.pipeline.TWGTMPipeline` uses without a reference encoder."""
    unet = components.unet
    ctx = TWGTMPipeline(unet, components.vae, None, components.config).baseline_features(batch).sam.f_sam
    return ctx.to(device=unet.device, dtype=unet.dtype)


class SkipAttnProcessor:
    """CatVTON's ``SkipAttnProcessor``: the attention is removed, the hidden states pass unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skip_cross_attention(unet: nn.Module) -> Iterator[None]:
    """CatVTON's UNet for the duration: every cross-attention (``attn2``) skipped, every other processor
    kept; the original processors are put back (diffusers' ``set_attn_processor``)."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({n: p if n.endswith(ATTN1_SUFFIX) else SkipAttnProcessor() for n, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


# ---------------------------------------------------------------------------------------------------
# the naive Extended Attention
# ---------------------------------------------------------------------------------------------------
def naive_srm_inputs(f_srm: dict[int, torch.Tensor], rows: slice, batch: int,
                     gate_value: float = 1.0) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """F_SRM on every row of a UNet batch of ``batch`` (zeros outside ``rows``) and the gate tensor (batch,)
    that is ``gate_value`` on ``rows`` and 0 elsewhere: the naive Extended Attention's inputs for
    :func:`twgtm.attention.model_output` (``f_srm=..., srm_gate=...``; no ``srm_rows``, no ``srm_kv``)."""
    first = next(iter(f_srm.values()))
    gate = torch.zeros(batch, device=first.device, dtype=first.dtype)  # (B_cfg,)
    gate[rows] = gate_value
    full = {}
    for lvl, feat in f_srm.items():
        padded = feat.new_zeros((batch,) + tuple(feat.shape[1:]))  # (B_cfg, T_l, C_l)
        padded[rows] = feat
        full[lvl] = padded
    return full, gate


@torch.no_grad()
def try_on_loop(components: TWGTMComponents, person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor,
                category: str | Sequence[str], *, num_inference_steps: int, guidance_scale: float, generator,
                scheduler: str = "ddim", eta: float | None = None, naive: bool = True) -> torch.Tensor:
    """Try-on at the model size, through a copy of ``TWGTMPipeline._generate`` written with the library's
    functions: the benchmark's naive Extended Attention try-on (``naive=True``).

    ``naive=True``: F_SRM goes to every CFG row (zeros in the unconditional ones) with a 0/1 gate tensor
    and every step projects K'/V' itself. ``naive=False``: K'/V' once and the conditional rows only, as the
    pipeline does; the result then equals :meth:`TWGTMPipeline.try_on` exactly (a test checks it, so this
    copy cannot drift from the pipeline unnoticed).

    Inputs as for ``try_on`` but already at the model size (B, 3, H, W) / (B, 1, H, W), strength 1,
    pixels pasted back outside the mask. Returns the images (B, 3, H, W) in [0, 1] on the CPU.
    """
    cfg, unet, vae, ref = components.config, components.unet, components.vae, components.reference_encoder
    if ref is None:
        raise ConfigError("try_on_loop: expected components with a reference encoder, got the baseline")
    size = (cfg.height, cfg.width)
    person = as_image_batch(person, "person")
    b = person.shape[0]
    garment = as_image_batch(garment, "garment")
    if tuple(person.shape[-2:]) != size or tuple(garment.shape[-2:]) != size or garment.shape[0] != b:
        raise InputError(f"person, garment: expected the model size {size} and batch {b}, got "
                         f"{tuple(person.shape)} and {tuple(garment.shape)}")
    mask = as_mask_batch(mask, "mask", size, b)
    cats = [category] * b if isinstance(category, str) else list(category)
    cat_idx = torch.tensor([cfg.categories.index(canonical_category(c)) for c in cats], dtype=torch.long)
    generators = item_generators(generator, b, unet.device)
    eta = cfg.eta if eta is None else float(eta)
    target, reference = person.float() * 2.0 - 1.0, garment.float() * 2.0 - 1.0

    # 1. reference features once; 2. K'/V' once (optimised path only)
    feats = ref(reference.to(ref.device, ref.dtype), cat_idx.to(ref.device))
    dev, dtype = unet.device, unet.dtype
    f_srm = {k: v.to(dev) for k, v in feats.f_srm.items()}
    srm_kv = None if naive else precompute_srm_kv(unet, f_srm)

    # 3. latent condition, one image at a time
    encode = lambda x: vae_encode(vae, x, cfg, chunk=1).to(dev)  # noqa: E731
    e_ref = encode(reference)
    cond = build_condition(target.to(dev), reference.to(dev), mask.to(dev), encode, concat_dim=cfg.concat_dim,
                           encoded_reference=e_ref)

    # 4. CFG batch [uncond, cond]
    do_cfg = guidance_scale > 1.0
    f_sam = feats.sam.f_sam.to(dev, dtype)
    rows = slice(0, b)
    if do_cfg:
        unc = unconditional(cond, cfg.concat_dim)
        cond = LatentCondition(guidance=torch.cat([unc.guidance, cond.guidance]), mask=torch.cat([cond.mask, cond.mask]))
        f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
        rows = slice(b, 2 * b)
    gate = task_gate((mask > 0.5).float().to(dev), e_ref.shape[-2:], cfg.concat_dim).to(dtype)  # given mask
    if naive:  # the task gate on every row too (zeros in the unconditional ones)
        srm = dict(zip(("f_srm", "srm_gate"), naive_srm_inputs(f_srm, rows, f_sam.shape[0])))
        full = gate.new_zeros((f_sam.shape[0],) + tuple(gate.shape[1:]))
        full[rows] = gate
        srm["srm_mask"] = SpatialGate(full)
    else:
        srm = {"srm_kv": srm_kv, "srm_gate": 1.0, "srm_rows": rows if do_cfg else None, "srm_mask": SpatialGate(gate)}

    # 5. timesteps and starting latents
    sched = make_scheduler(scheduler, cfg.scheduler)
    timesteps, _ = denoise_timesteps(sched, num_inference_steps, 1.0, device=dev)
    shape = e_ref.shape[:1] + e_ref.shape[1:2] + cond.mask.shape[2:]
    latents = randn_tensor(shape, generator=generators, device=dev, dtype=torch.float32) * sched.init_noise_sigma
    params = set(inspect.signature(sched.step).parameters)
    extra = {k: v for k, v in (("eta", eta), ("generator", generators)) if k in params}

    # 6. denoising loop
    for t in timesteps:
        z_in = sched.scale_model_input(latents, t)
        if do_cfg:
            z_in = torch.cat([z_in, z_in])
        out = model_output(unet, unet_input(z_in.to(dtype), cond), t, f_sam, **srm).float()
        if do_cfg:
            out_u, out_c = out.chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        latents = sched.step(out, t, latents, **extra, return_dict=False)[0]

    # 7. decode the generated half; paste the unmasked pixels back
    images = vae_decode(vae, target_half(latents, cfg.concat_dim), cfg, chunk=1).float().cpu()
    images = ((images + 1.0) / 2.0).clamp(0, 1)
    return images * mask + person * (1.0 - mask)


# ---------------------------------------------------------------------------------------------------
# encoder offload
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def model_cpu_offload(components: TWGTMComponents, device: str | torch.device,
                      offload_device: str | torch.device = "cpu") -> Iterator[TWGTMPipeline]:
    """A pipeline over ``components`` with the library's offload (``enable_model_cpu_offload``: the reference
    encoder is off ``device`` during the denoising loop); every component is back on ``device`` after."""
    pipe = TWGTMPipeline.from_components(components)
    pipe.enable_model_cpu_offload(device, offload_device)
    try:
        yield pipe
    finally:
        place(components, device)

