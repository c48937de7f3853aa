"""Performance benchmark: TWGTM try-on / try-off against a CatVTON-class baseline.

``python -m twgtm.bench [--json] [--flops-only] [--device cpu|cuda] [--dtype bf16|fp16|fp32]
[--config tiny|full] [--steps 50] [--sizes 1024x768,512x384] [--naive]``

Two parts, side by side in one run (``docs/PERFORMANCE.md`` holds the results):

1. **FLOPs**, counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (no
   weights, no memory, runs anywhere), for one image per size, CFG on (UNet batch 2):

   * per denoising step: the baseline UNet, TWGTM as the pipeline runs it (K'/V' projected once per
     call, Extended Attention on the conditional CFG rows only), the naive TWGTM step (Extended
     Attention on both CFG halves, K'/V' projected every step) and the two half-way variants;
   * one-off, per image: VAE encodes (reference and masked target), SAM, SRM, Decoder, K'/V', VAE decode;
   * totals for ``steps`` steps and the ratios TWGTM / baseline.

2. **Wall time and peak memory** of the whole ``try_on`` / ``try_off`` call and of the baseline, in
   the same process on whatever device is given (tiny config on CPU by default, full config with random
   weights on a GPU: ``scripts/gpu_check.py``), warm-up first, median of ``--repeats`` runs.

Baseline (CatVTON class): the *same* SD1.5-inpainting UNet, scheduler, VAE and 9-channel concatenated
latent, run through the same :class:`~twgtm.pipeline.TWGTMPipeline` code with SAM, SRM, Decoder and
Extended Attention removed (:func:`baseline_mode`): plain SDPA processors everywhere and a fixed,
step-independent context of the F_SAM shape (1 + N = 33 tokens of width 768, zeros, like a cached empty
prompt) for the UNet cross-attention. CatVTON itself deletes the cross-attention; keeping it at the
F_SAM length means the difference measured is exactly SAM + SRM + Decoder + Extended Attention (the
cross-attention to F_SAM *replaces* SD's text cross-attention, it is not an addition), and it matches
the issue's reference point (16.9 TFLOP per CFG step). The cross-attention-free UNet is reported too
(``baseline_no_xattn``), for the stricter comparison.

SDPA FLOPs: on CPU PyTorch runs ``_scaled_dot_product_flash_attention_for_cpu``, which the stock
counter does not know; :func:`count_flops` adds it (4·B·h·Sq·Sk·d, as for the CUDA kernels), so CPU
and meta counts agree.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .attention import TWGTMAttnProcessor, extended_processors
from .config import TWGTMConfig
from .errors import ConfigError, InputError
from .latents import concat_halves
from .model import ReferenceFeatures, TWGTMModel
from .pipeline import TWGTMPipeline
from .sam import SAMOutput

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TFLOP = 1e12
GIB = 2.0 ** 30
DEFAULT_SIZES = ((1024, 768), (512, 384))
# per-image targets of the issue (1024x768, 50 steps, CFG 2.5, bf16)
TARGET_RATIO = 1.15
TARGET_PEAK_GIB = 4.0
TARGET_MFU = 0.50


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"sizes: expected HEIGHTxWIDTH such as '1024x768', got {text!r}") from exc
    if h <= 0 or w <= 0 or h % 8 or w % 8:
        raise InputError(f"sizes: expected positive multiples of 8, got {text!r}")
    return h, w


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def make_config(name: str, size: tuple[int, int] | None = None) -> TWGTMConfig:
    """``"full"`` / ``"tiny"`` preset, optionally at another (height, width); always stage 2."""
    if name not in ("full", "tiny"):
        raise ConfigError(f"config: expected 'full' or 'tiny', got {name!r}")
    preset = TWGTMConfig.full if name == "full" else TWGTMConfig.tiny
    kwargs: dict[str, Any] = {"stage": 2}
    if size is not None:
        kwargs.update(height=size[0], width=size[1])
    return preset(**kwargs).validate()


def build_model(cfg: TWGTMConfig, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0, build_device: str | torch.device | None = None) -> TWGTMModel:
    """A random-weight stage-2 model in eval mode, gradients off.

    Off the meta device the prompts are filled by a seeded random CLIP text encoder and every ZLL is
    randomised (N(0, 0.02)), so the Extended-Attention branch contributes to the output as after
    training. On ``meta`` nothing is initialised (counting only). The modules are constructed (and
    randomly initialised) on ``build_device`` (default ``device``, fast on a GPU), then moved.
    """
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            model = TWGTMModel(cfg)
    else:
        with torch.random.fork_rng(devices=[]), torch.device(build_device or device):
            torch.manual_seed(seed)
            model = TWGTMModel(cfg, random_prompts=True)
            for proc in extended_processors(model.unet).values():
                nn.init.normal_(proc.zll.weight, std=0.02)
                nn.init.normal_(proc.zll.bias, std=0.02)
    model = model.to(device=device, dtype=dtype)
    model.requires_grad_(False)  # FlopCounterMode's module tracker trips on leaves that require grad
    return model.eval()


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``: Q K^T and P V, 2 FLOPs per MAC."""
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _flop_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_sdpa_flops} if op is not None else {}


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` without gradients under ``FlopCounterMode``; return (FLOPs, its result)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        out = fn()
    return int(counter.get_total_flops()), out


OP_KINDS = {"convolution": "conv", "mm": "linear", "addmm": "linear", "bmm": "attention", "baddbmm": "attention"}


def flops_by_kind(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn`` split into conv / linear / attention (matmuls of Q K^T and P V) / other."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        fn()
    out = {"conv": 0, "linear": 0, "attention": 0, "other": 0}
    for op, n in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1]
        kind = "attention" if "attention" in name else OP_KINDS.get(name, "other")
        out[kind] += int(n)
    return out


# ---------------------------------------------------------------------------------------------------
# execution modes of one model: baseline, naive Extended Attention, skipped cross-attention
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def plain_processors(unet: nn.Module) -> Iterator[None]:
    """Plain SDPA processors on every attention for the duration; the original ones are put back."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: TWGTMAttnProcessor() for name in saved})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


class SkipAttnProcessor:
    """CatVTON's ``SkipAttnProcessor``: the attention is removed, the hidden states pass unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skip_cross_attention(unet: nn.Module) -> Iterator[None]:
    """CatVTON UNet: plain self-attention and no cross-attention (``attn2`` skipped)."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({n: SkipAttnProcessor() if n.endswith(".attn2.processor") else TWGTMAttnProcessor()
                             for n in saved})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


def baseline_context(model: TWGTMModel, batch: int) -> torch.Tensor:
    """The baseline's fixed cross-attention context: zeros of the F_SAM shape (B, 1 + N, D)."""
    cfg = model.config
    return torch.zeros(batch, 1 + cfg.qformer.num_queries, cfg.cross_attention_dim, device=model.device,
                       dtype=model.dtype)


@contextlib.contextmanager
def baseline_mode(model: TWGTMModel) -> Iterator[None]:
    """Make ``model`` the CatVTON-class baseline for the duration (try-on only).

    No SAM, SRM, Decoder or Extended Attention: ``encode_reference`` returns the fixed zero context
    without running any encoder, so the pipeline skips K'/V' and calls the UNet with plain processors.
    """
    def encode_reference(reference: torch.Tensor, category_idx: torch.Tensor, *, with_srm=None) -> ReferenceFeatures:
        ctx = baseline_context(model, reference.shape[0])  # (B, 1 + N, D)
        return ReferenceFeatures(sam=SAMOutput(f_sam=ctx, f_qf=ctx[:, 1:], f_clip_g=ctx[:, :1]), srm=None, f_srm=None)

    model.encode_reference = encode_reference
    try:
        with plain_processors(model.unet):
            yield
    finally:
        del model.encode_reference


class _NaiveKV(dict):
    """Marker handed through the pipeline in :func:`naive_mode`: holds F_SRM instead of K'/V'."""

    def __init__(self, f_srm: dict[int, torch.Tensor]):
        super().__init__()
        self.f_srm = f_srm

    def __bool__(self) -> bool:
        return True


@contextlib.contextmanager
def naive_mode(model: TWGTMModel) -> Iterator[None]:
    """The naive Extended Attention, through the unchanged pipeline: K'/V' projected in every step and the
    branch run on the whole CFG batch, the unconditional rows switched off by a gate tensor [0.., 1..].

    This is the reference path the optimised one (K'/V' once, ``srm_rows`` = conditional rows) must equal.
    """
    predict = model.predict_noise

    def precompute_srm_kv(f_srm: dict[int, torch.Tensor]) -> dict:
        return _NaiveKV(f_srm)

    def predict_noise(latent_input, timestep, f_sam, *, f_srm=None, srm_gate=None, srm_rows=None, srm_kv=None):
        if not isinstance(srm_kv, _NaiveKV):
            return predict(latent_input, timestep, f_sam, f_srm=f_srm, srm_gate=srm_gate, srm_rows=srm_rows,
                           srm_kv=srm_kv)
        f_srm = srm_kv.f_srm
        n = latent_input.shape[0]
        rows = srm_rows if srm_rows is not None else slice(0, n)
        gate = torch.zeros(n, device=latent_input.device, dtype=latent_input.dtype)  # (B_cfg,)
        gate[rows] = 1.0 if srm_gate is None else float(srm_gate)
        full = {}
        for lvl, feat in f_srm.items():
            padded = feat.new_zeros((n,) + tuple(feat.shape[1:]))  # (B_cfg, T_l, C_l)
            padded[rows] = feat
            full[lvl] = padded
        return predict(latent_input, timestep, f_sam, f_srm=full, srm_gate=gate)

    model.precompute_srm_kv = precompute_srm_kv
    model.predict_noise = predict_noise
    try:
        yield
    finally:
        del model.precompute_srm_kv
        del model.predict_noise


@contextlib.contextmanager
def _meta_prompts(model: TWGTMModel) -> Iterator[None]:
    """On ``meta`` the prompt bank cannot be built and its range check reads values: index it directly."""
    bank = model.sam.prompts
    if not bank.embeds.is_meta:
        yield
        return

    def forward(category_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = category_idx.to(bank.embeds.device)
        return bank.embeds[idx], bank.mask[idx]  # (B, T, Dt), (B, T)

    bank.forward = forward
    try:
        yield
    finally:
        del bank.forward


@contextlib.contextmanager
def offload_encoders(model: TWGTMModel, offload_device: str | torch.device = "cpu") -> Iterator[None]:
    """Memory lever (experiment): CLIP vision, Q-Former, SRM and Decoder live on ``offload_device`` except
    while ``encode_reference`` runs (moved in by a pre-hook on SAM, out by a post-hook on the Decoder).
    Outputs are unchanged; the cost is two weight transfers per call."""
    parts = [model.sam.clip_vision, model.sam.qformer, model.srm, model.decoder]
    device = model.device

    def move_in(module, args):
        for p in parts:
            p.to(device)

    def move_out(module, args, output):
        for p in parts:
            p.to(offload_device)

    for p in parts:
        p.to(offload_device)
    handles = [model.sam.register_forward_pre_hook(move_in), model.decoder.register_forward_hook(move_out)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p in parts:
            p.to(device)


# ---------------------------------------------------------------------------------------------------
# 1. FLOPs
# ---------------------------------------------------------------------------------------------------
def _image(model: TWGTMModel, batch: int = 1) -> torch.Tensor:
    cfg = model.config
    return torch.zeros(batch, 3, cfg.height, cfg.width, device=model.device, dtype=model.dtype)


def flop_breakdown(model: TWGTMModel, *, cfg_on: bool = True) -> dict[str, dict[str, int]]:
    """FLOPs of every piece of one image's try-on / try-off, as :meth:`TWGTMPipeline._generate` runs them.

    Returns ``{"one_off": {...}, "per_step": {...}}``. One-off pieces are per image (a call encodes two
    images with the VAE: the reference and the masked target). Per-step pieces are one UNet call on the
    CFG batch (2 rows when ``cfg_on``).
    """
    cfg = model.config
    dev, dtype = model.device, model.dtype
    rows = 2 if cfg_on else 1
    img = _image(model)
    cat_idx = torch.zeros(1, dtype=torch.long, device=dev)
    h, w = cfg.latent_size
    one_off: dict[str, int] = {}
    with _meta_prompts(model):
        one_off["vae_encode"], _ = count_flops(lambda: model.encode_images(img))
        one_off["sam"], sam = count_flops(lambda: model.sam(img, cat_idx))
        one_off["srm"], srm = count_flops(lambda: model.srm(img, sam.f_qf))
        one_off["decoder"], f_srm = count_flops(lambda: model.decoder(srm.tfq))
        one_off["srm_kv"], kv = count_flops(lambda: model.precompute_srm_kv(f_srm))
        half = torch.zeros(1, cfg.latent_channels, h, w, device=dev, dtype=dtype)
        one_off["vae_decode"], _ = count_flops(lambda: model.decode_latents(half))

    zero = torch.zeros(rows, 9, h, w, device=dev, dtype=dtype)
    x = concat_halves(zero, zero, cfg.concat_dim)  # (rows, 9, h, 2w): [z_t, m, E(h_f)]
    t = torch.tensor(500, device=dev)
    f_sam = torch.zeros(rows, *sam.f_sam.shape[1:], device=dev, dtype=dtype)  # (rows, 1 + N, D)
    cond = slice(rows - 1, rows) if cfg_on else None                          # conditional CFG row
    gate = torch.tensor([0.0, 1.0][-rows:], device=dev, dtype=dtype)           # (rows,)
    f_full = {lvl: torch.cat([f] * rows) for lvl, f in f_srm.items()}          # (rows, T_l, C_l)
    kv_full = model.precompute_srm_kv(f_full)
    unet = model.unet
    per_step: dict[str, int] = {}
    with plain_processors(unet):
        per_step["baseline"], _ = count_flops(lambda: model.predict_noise(x, t, baseline_context(model, rows)))
    with skip_cross_attention(unet):
        per_step["baseline_no_xattn"], _ = count_flops(lambda: model.predict_noise(x, t, f_sam))
    per_step["twgtm"], _ = count_flops(lambda: model.predict_noise(
        x, t, f_sam, srm_kv=kv, srm_gate=1.0, srm_rows=cond))
    per_step["twgtm_naive"], _ = count_flops(lambda: model.predict_noise(
        x, t, f_sam, f_srm=f_full, srm_gate=gate))
    per_step["twgtm_kv_once_both_halves"], _ = count_flops(lambda: model.predict_noise(
        x, t, f_sam, srm_kv=kv_full, srm_gate=gate))
    per_step["twgtm_cond_rows_kv_every_step"], _ = count_flops(lambda: model.predict_noise(
        x, t, f_sam, f_srm=f_srm, srm_gate=1.0, srm_rows=cond))
    with plain_processors(unet):
        base_kinds = flops_by_kind(lambda: model.predict_noise(x, t, baseline_context(model, rows)))
    twgtm_kinds = flops_by_kind(lambda: model.predict_noise(x, t, f_sam, srm_kv=kv, srm_gate=1.0, srm_rows=cond))
    return {"one_off": one_off, "per_step": per_step,
            "per_step_by_kind": {"baseline": base_kinds, "twgtm": twgtm_kinds}}


def flop_totals(parts: dict[str, dict[str, int]], steps: int) -> dict[str, int]:
    """Per-image totals for ``steps`` steps. Try-on and try-off run the same graph (the reference and
    target images swap roles; try-off's mask-free region changes values only), so they cost the same."""
    o, s = parts["one_off"], parts["per_step"]
    vae = 2 * o["vae_encode"] + o["vae_decode"]
    encoders = o["sam"] + o["srm"] + o["decoder"]
    twgtm = vae + encoders + o["srm_kv"] + steps * s["twgtm"]
    return {
        "baseline": vae + steps * s["baseline"],
        "baseline_no_xattn": vae + steps * s["baseline_no_xattn"],
        "tryon": twgtm,
        "tryoff": twgtm,
        "tryon_naive": vae + encoders + steps * s["twgtm_naive"],
        "tryon_kv_once_both_halves": vae + encoders + o["srm_kv"] + steps * s["twgtm_kv_once_both_halves"],
        "tryon_cond_rows_kv_every_step": vae + encoders + steps * s["twgtm_cond_rows_kv_every_step"],
    }


def flop_report(config: str = "full", sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, steps: int = 50,
                cfg_on: bool = True) -> dict[str, Any]:
    """FLOPs on the meta device for every size: parts, totals, ratios (see :func:`flop_breakdown`)."""
    out: dict[str, Any] = {"config": config, "steps": steps, "cfg": cfg_on, "unet_batch": 2 if cfg_on else 1,
                           "device": "meta", "counter": "torch.utils.flop_counter.FlopCounterMode", "sizes": {}}
    for size in sizes:
        t0 = time.perf_counter()
        model = build_model(make_config(config, size), device="meta")
        parts = flop_breakdown(model, cfg_on=cfg_on)
        totals = flop_totals(parts, steps)
        base, s = totals["baseline"], parts["per_step"]
        out["sizes"][size_key(size)] = {
            **parts,
            "total": totals,
            "ratio": {
                "tryon": totals["tryon"] / base,
                "tryoff": totals["tryoff"] / base,
                "tryon_naive": totals["tryon_naive"] / base,
                "tryon_kv_once_both_halves": totals["tryon_kv_once_both_halves"] / base,
                "tryon_cond_rows_kv_every_step": totals["tryon_cond_rows_kv_every_step"] / base,
                "tryon_vs_no_xattn": totals["tryon"] / totals["baseline_no_xattn"],
                "step": s["twgtm"] / s["baseline"],
                "step_naive": s["twgtm_naive"] / s["baseline"],
            },
        }
        logger.info("FLOPs %s counted in %.1f s", size_key(size), time.perf_counter() - t0)
        del model
    return out


# ---------------------------------------------------------------------------------------------------
# 2. wall time and peak memory
# ---------------------------------------------------------------------------------------------------
def sample_inputs(cfg: TWGTMConfig, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded person, garment in [0, 1] (B, 3, H, W) and an upper-body mask (B, 1, H, W) at model size."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.height, cfg.width
    mask = torch.zeros(batch, 1, h, w)
    mask[..., h // 5: 3 * h // 5, w // 6: 5 * w // 6] = 1.0
    return {"person": torch.rand(batch, 3, h, w, generator=g), "garment": torch.rand(batch, 3, h, w, generator=g),
            "mask": mask}


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels run asynchronously); no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_max_mib() -> float:
    """The process's RSS high-water mark (monotone, so only its growth is a peak; MiB); 0 where unknown."""
    try:
        import resource  # POSIX only
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2.0 ** 20


def measure(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """One timed run: seconds, and on CUDA the peak allocated memory (absolute and above the start)."""
    rss0 = _rss_max_mib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_mem = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    out: dict[str, Any] = {"seconds": time.perf_counter() - t0}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_gib=peak / GIB, peak_above_start_gib=(peak - start_mem) / GIB)
    else:
        out.update(peak_gib=None, peak_above_start_gib=None, rss_max_growth_mib=_rss_max_mib() - rss0)
    return out


def weights_gib(model: TWGTMModel) -> dict[str, float]:
    """Parameter + buffer memory per component at the model's dtype (GiB)."""
    def size(module: nn.Module | None, skip: Callable[[str], bool] = lambda n: False) -> float:
        if module is None:
            return 0.0
        tensors = [t for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not skip(n)]
        return sum(t.numel() * t.element_size() for t in tensors) / GIB

    out = {
        "unet": size(model.unet, lambda n: ".processor." in n),
        "extended_attention": size(model.unet) - size(model.unet, lambda n: ".processor." in n),
        "vae": size(model.vae),
        "clip_vision": size(model.sam.clip_vision),
        "qformer_prompts": size(model.sam) - size(model.sam.clip_vision),
        "srm": size(model.srm),
        "decoder": size(model.decoder),
    }
    out["total"] = sum(out.values())
    out["baseline"] = out["unet"] + out["vae"]
    return out


def time_cases(model: TWGTMModel, *, steps: int = 50, guidance_scale: float = 2.5, repeats: int = 3, warmup: int = 1,
               naive: bool = False, offload: bool = False, scheduler: str = "ddim", seed: int = 0) -> dict[str, Any]:
    """Median wall time and peak memory of the whole calls, in this process, interleaved run by run.

    Cases: ``baseline`` (:func:`baseline_mode` try-on), ``tryon``, ``tryoff`` (mask-free), and with
    ``naive`` the naive Extended Attention try-on, with ``offload`` try-on under :func:`offload_encoders`.
    """
    device = model.device
    pipe = TWGTMPipeline(model)
    x = sample_inputs(model.config, seed=seed)
    opts = dict(num_inference_steps=steps, guidance_scale=guidance_scale, generator=seed, scheduler=scheduler)

    def tryon():
        return pipe.try_on(x["person"], x["garment"], x["mask"], "upper", **opts)

    def plain(m: TWGTMModel) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    # (mode entered around the run, outside the timed region; the call)
    cases: dict[str, tuple[Callable[[TWGTMModel], Any], Callable[[], Any]]] = {
        "baseline": (baseline_mode, tryon),
        "tryon": (plain, tryon),
        "tryoff": (plain, lambda: pipe.try_off(x["person"], "upper", **opts)),
    }
    if naive:
        cases["tryon_naive"] = (naive_mode, tryon)
    if offload:
        cases["tryon_offload_encoders"] = (offload_encoders, tryon)
    for _ in range(warmup):
        for mode, fn in cases.values():
            with mode(model):
                fn()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(max(1, repeats)):
        for name, (mode, fn) in cases.items():
            with mode(model):
                runs[name].append(measure(fn, device))
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        peaks = [r["peak_gib"] for r in rs if r["peak_gib"] is not None]
        above = [r["peak_above_start_gib"] for r in rs if r["peak_above_start_gib"] is not None]
        out[name] = {
            "median_s": statistics.median(r["seconds"] for r in rs),
            "runs_s": [r["seconds"] for r in rs],
            "peak_gib": max(peaks) if peaks else None,
            "peak_above_start_gib": max(above) if above else None,
            "rss_max_growth_mib": max((r.get("rss_max_growth_mib") or 0.0) for r in rs) if not peaks else None,
        }
    base = out["baseline"]["median_s"]
    for name in out:
        out[name]["ratio_to_baseline"] = out[name]["median_s"] / base
    return out


def step_inputs(model: TWGTMModel, *, cfg_on: bool = True, seed: int = 0) -> dict[str, Any]:
    """Random UNet-step inputs as the pipeline builds them: x (rows, 9, h, 2w), F_SAM with a zero unconditional
    row, F_SRM from the real encoders on a random reference, and the K'/V' computed once."""
    cfg = model.config
    dev, dtype = model.device, model.dtype
    g = torch.Generator().manual_seed(seed)
    rows = 2 if cfg_on else 1
    h, w = cfg.latent_size
    ref = (torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1).to(dev, dtype)
    with torch.no_grad():
        feats = model.encode_reference(ref, torch.zeros(1, dtype=torch.long, device=dev), with_srm=True)
        kv = model.precompute_srm_kv(feats.f_srm)
    half = torch.randn(rows, 9, h, w, generator=g)
    x = concat_halves(half, torch.randn(rows, 9, h, w, generator=g), cfg.concat_dim).to(dev, dtype)
    f_sam = feats.sam.f_sam
    if cfg_on:
        f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
    return {"x": x, "t": torch.tensor(500, device=dev), "f_sam": f_sam, "f_srm": feats.f_srm, "srm_kv": kv,
            "srm_rows": slice(rows - 1, rows) if cfg_on else None, "rows": rows}


StepFunctions = dict[str, tuple[Callable[[], Any], Callable[[], torch.Tensor]]]


def step_functions(model: TWGTMModel, inp: dict[str, Any]) -> StepFunctions:
    """One UNet call each, as ``{name: (context factory, call)}``: the baseline (plain processors, entered
    once around its calls so swapping processors is never timed), TWGTM as the pipeline runs it, naive TWGTM."""
    rows = inp["rows"]
    gate = torch.tensor([0.0, 1.0][-rows:], device=model.device, dtype=model.dtype)
    f_full = {lvl: torch.cat([f] * rows) for lvl, f in inp["f_srm"].items()}
    ctx = baseline_context(model, rows)
    return {
        "baseline": (lambda: plain_processors(model.unet), lambda: model.predict_noise(inp["x"], inp["t"], ctx)),
        "twgtm": (contextlib.nullcontext, lambda: model.predict_noise(
            inp["x"], inp["t"], inp["f_sam"], srm_kv=inp["srm_kv"], srm_gate=1.0, srm_rows=inp["srm_rows"])),
        "twgtm_naive": (contextlib.nullcontext, lambda: model.predict_noise(
            inp["x"], inp["t"], inp["f_sam"], f_srm=f_full, srm_gate=gate)),
    }


def time_steps(model: TWGTMModel, *, iters: int = 10, warmup: int = 2, flops: dict[str, int] | None = None,
               peak_tflops: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Median time of one UNet step (CFG batch 2) per variant, with TFLOP/s and the fraction of ``peak_tflops``."""
    device = model.device
    fns = step_functions(model, step_inputs(model, seed=seed))
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, (context, fn) in fns.items():
            times = []
            with context():
                for i in range(warmup + max(1, iters)):
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    if i >= warmup:
                        times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            row: dict[str, Any] = {"median_ms": ms}
            if flops is not None and name in flops:
                row["tflops_per_s"] = flops[name] / TFLOP / (ms / 1e3)
                if peak_tflops:
                    row["fraction_of_peak"] = row["tflops_per_s"] / peak_tflops
            out[name] = row
    for name in out:
        out[name]["ratio_to_baseline"] = out[name]["median_ms"] / out["baseline"]["median_ms"]
    return out


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                       iters: int = 10) -> float | None:
    """Achievable dense matmul TFLOP/s on ``device`` (CUDA only; the step-efficiency denominator)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) / TFLOP


def phase_memory(model: TWGTMModel, *, seed: int = 0) -> dict[str, float | None]:
    """CUDA peak memory above the resident weights for each phase of one call (GiB), and the resident
    weights; every value is None off CUDA (the phases still run)."""
    device = model.device
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    img = (torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1).to(device, model.dtype)
    cat_idx = torch.zeros(1, dtype=torch.long, device=device)
    h, w = cfg.latent_size
    lat = torch.randn(1, cfg.latent_channels, h, w, generator=g).to(device, model.dtype)
    cuda = device.type == "cuda"
    out: dict[str, float | None] = {"weights_allocated": torch.cuda.memory_allocated(device) / GIB if cuda else None}
    with torch.no_grad():
        inp = step_inputs(model, seed=seed)
        fns = step_functions(model, inp)
        none = contextlib.nullcontext
        phases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "vae_encode_one": (none, lambda: model.encode_images(img)),
            "vae_encode_two_together": (none, lambda: model.encode_images(torch.cat([img, img]), chunk=2)),
            "encode_reference": (none, lambda: model.encode_reference(img, cat_idx, with_srm=True)),
            "unet_step_baseline": fns["baseline"],
            "unet_step_twgtm": fns["twgtm"],
            "unet_step_naive": fns["twgtm_naive"],
            "vae_decode_one": (none, lambda: model.decode_latents(lat)),
        }
        for name, (context, fn) in phases.items():
            with context():
                out[name] = measure(fn, device)["peak_above_start_gib"]
    return out


def timing_report(config: str, device: str, dtype: torch.dtype, *, steps: int = 50, guidance_scale: float = 2.5,
                  repeats: int = 3, warmup: int = 1, naive: bool = False, offload: bool = False,
                  size: tuple[int, int] | None = None, step_iters: int = 10) -> dict[str, Any]:
    """Build a random-weight model on ``device`` and time the three cases, the UNet step and (CUDA) the phases."""
    dev = torch.device(device)
    cfg = make_config(config, size if config == "full" else None)
    t0 = time.perf_counter()
    model = build_model(cfg, device=dev, dtype=dtype)
    build_s = time.perf_counter() - t0
    flops = flop_breakdown(build_model(cfg, device="meta"), cfg_on=guidance_scale > 1.0)["per_step"]
    peak = matmul_peak_tflops(dev, dtype)
    report: dict[str, Any] = {
        "config": config, "size": size_key((cfg.height, cfg.width)), "device": device_name(dev),
        "dtype": str(dtype).replace("torch.", ""), "steps": steps, "guidance_scale": guidance_scale,
        "scheduler": "ddim", "repeats": repeats, "warmup": warmup, "build_s": build_s,
        "weights_gib": weights_gib(model), "matmul_peak_tflops": peak,
    }
    report["step"] = time_steps(model, iters=step_iters, flops=flops, peak_tflops=peak)
    report["cases"] = time_cases(model, steps=steps, guidance_scale=guidance_scale, repeats=repeats, warmup=warmup,
                                 naive=naive, offload=offload)
    report["phases_gib"] = phase_memory(model) if dev.type == "cuda" else None
    return report


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores ({_cpu_model()})"


def machine_info() -> dict[str, Any]:
    """Date, platform, CPU count, load average (other processes sharing the cores skew CPU timings)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "load_average_1_5_15": load,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def flat_keys(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers as flat JSON keys (``flops_ratio_tryon_1024x768`` ...)."""
    out: dict[str, Any] = {}
    for key, rec in report.get("flops", {}).get("sizes", {}).items():
        for name, value in rec["ratio"].items():
            out[f"flops_ratio_{name}_{key}"] = value
        out[f"flops_step_baseline_tflop_{key}"] = rec["per_step"]["baseline"] / TFLOP
        out[f"flops_step_twgtm_tflop_{key}"] = rec["per_step"]["twgtm"] / TFLOP
    timing = report.get("timing")
    if timing:
        for name, rec in timing["cases"].items():
            out[f"time_s_{name}"] = rec["median_s"]
            out[f"time_ratio_{name}"] = rec["ratio_to_baseline"]
            if rec["peak_gib"] is not None:
                out[f"peak_gib_{name}"] = rec["peak_gib"]
        for name, rec in timing["step"].items():
            out[f"step_ms_{name}"] = rec["median_ms"]
    return out


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def to_markdown(report: dict[str, Any]) -> str:
    """Human-readable tables of a report (also the source of the tables in ``docs/PERFORMANCE.md``)."""
    lines: list[str] = []
    fl = report.get("flops")
    if fl:
        lines += [f"FLOPs ({fl['counter']}, {fl['device']} device), config `{fl['config']}`, {fl['steps']} steps, "
                  f"CFG {'on' if fl['cfg'] else 'off'} (UNet batch {fl['unet_batch']}), one image; TFLOP", "",
                  "| size | case | per step | one-off | total | ratio to baseline |", "|---|---|---:|---:|---:|---:|"]
        for key, rec in fl["sizes"].items():
            s, o, tot, r = rec["per_step"], rec["one_off"], rec["total"], rec["ratio"]
            vae = 2 * o["vae_encode"] + o["vae_decode"]
            enc = o["sam"] + o["srm"] + o["decoder"]
            rows = [
                ("baseline (same UNet, 33-token cross-attn)", s["baseline"], vae, tot["baseline"], 1.0),
                ("baseline without cross-attn (CatVTON)", s["baseline_no_xattn"], vae, tot["baseline_no_xattn"],
                 tot["baseline_no_xattn"] / tot["baseline"]),
                ("TWGTM try-on", s["twgtm"], vae + enc + o["srm_kv"], tot["tryon"], r["tryon"]),
                ("TWGTM try-off", s["twgtm"], vae + enc + o["srm_kv"], tot["tryoff"], r["tryoff"]),
                ("TWGTM naive EA (both halves, K'/V' every step)", s["twgtm_naive"], vae + enc, tot["tryon_naive"],
                 r["tryon_naive"]),
                ("TWGTM K'/V' once, EA on both halves", s["twgtm_kv_once_both_halves"], vae + enc + o["srm_kv"],
                 tot["tryon_kv_once_both_halves"], r["tryon_kv_once_both_halves"]),
                ("TWGTM EA on cond rows, K'/V' every step", s["twgtm_cond_rows_kv_every_step"], vae + enc,
                 tot["tryon_cond_rows_kv_every_step"], r["tryon_cond_rows_kv_every_step"]),
            ]
            for name, step, once, total, ratio in rows:
                lines.append(f"| {key} | {name} | {step / TFLOP:.3f} | {once / TFLOP:.3f} | {total / TFLOP:.1f} "
                             f"| {ratio:.4f} |")
        lines += ["", "One-off pieces per image (TFLOP)", "",
                  "| size | VAE encode (x2) | SAM | SRM | Decoder | K'/V' | VAE decode |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for key, rec in fl["sizes"].items():
            o = rec["one_off"]
            lines.append(f"| {key} | {o['vae_encode'] / TFLOP:.3f} (x2) | {o['sam'] / TFLOP:.3f} | "
                         f"{o['srm'] / TFLOP:.3f} | {o['decoder'] / TFLOP:.3f} | {o['srm_kv'] / TFLOP:.4f} | "
                         f"{o['vae_decode'] / TFLOP:.3f} |")
        lines += ["", "UNet step FLOPs by kind (TFLOP, CFG batch)", "",
                  "| size | step | conv | linear | attention (QK^T, PV) | other |", "|---|---|---:|---:|---:|---:|"]
        for key, rec in fl["sizes"].items():
            for name, k in rec["per_step_by_kind"].items():
                lines.append(f"| {key} | {name} | {k['conv'] / TFLOP:.3f} | {k['linear'] / TFLOP:.3f} | "
                             f"{k['attention'] / TFLOP:.3f} | {k['other'] / TFLOP:.3f} |")
    tm = report.get("timing")
    if tm:
        lines += ["", f"Wall time: config `{tm['config']}` at {tm['size']}, {tm['device']}, {tm['dtype']}, "
                  f"{tm['steps']} steps, CFG {tm['guidance_scale']}, {tm['scheduler']}, median of {tm['repeats']} "
                  f"after {tm['warmup']} warm-up", "",
                  "| case | median s | ratio to baseline | peak GiB | peak above start GiB |",
                  "|---|---:|---:|---:|---:|"]
        for name, rec in tm["cases"].items():
            lines.append(f"| {name} | {rec['median_s']:.3f} | {rec['ratio_to_baseline']:.3f} | {_f(rec['peak_gib'])} | "
                         f"{_f(rec['peak_above_start_gib'])} |")
        lines += ["", "| UNet step (CFG batch 2) | median ms | ratio to baseline | TFLOP/s | fraction of matmul peak |",
                  "|---|---:|---:|---:|---:|"]
        for name, rec in tm["step"].items():
            lines.append(f"| {name} | {rec['median_ms']:.2f} | {rec['ratio_to_baseline']:.3f} | "
                         f"{_f(rec.get('tflops_per_s'), '.4g')} | {_f(rec.get('fraction_of_peak'))} |")
        if tm.get("phases_gib"):
            lines += ["", "| phase | GiB |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in tm["phases_gib"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m twgtm.bench``."""
    p = argparse.ArgumentParser(prog="python -m twgtm.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--flops-only", action="store_true", help="skip the timing part")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="timing device (default: cuda if present)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="timing dtype (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--config", choices=("tiny", "full"), default=None,
                   help="model preset (default: full for FLOPs; tiny for CPU timing, full for CUDA timing)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=2.5)
    p.add_argument("--sizes", default=",".join(size_key(s) for s in DEFAULT_SIZES),
                   help="FLOP sizes HxW, comma-separated; the first is also the full-config timing size")
    p.add_argument("--naive", action="store_true", help="also time the naive Extended Attention try-on")
    p.add_argument("--offload", action="store_true", help="also time try-on with the encoders offloaded (cuda only)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    p.add_argument("--step-iters", type=int, default=10, help="timed UNet steps per variant")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the timing part (default: 1 on cpu, the tiny model's ops are too small "
                        "for intra-op threads and shared cores make them noisy; torch's default on cuda)")
    return p.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark for a command line; return the report (what ``--json`` prints)."""
    args = parse_args(argv)
    if args.steps < 1:
        raise InputError(f"--steps: expected >= 1, got {args.steps}")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes:
        raise InputError(f"--sizes: expected at least one HxW, got {args.sizes!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device: expected 'cpu' on a machine without CUDA, got 'cuda'")
    report: dict[str, Any] = {"machine": machine_info(), "options": vars(args)}
    report["flops"] = flop_report(args.config or "full", sizes, args.steps, cfg_on=args.guidance_scale > 1.0)
    meta = build_model(make_config(args.config or "full"), device="meta", dtype=torch.bfloat16)
    report["weights_gib_bf16"] = weights_gib(meta)  # exact parameter + buffer bytes, no allocation
    report["timing"] = None
    if not args.flops_only:
        config = args.config or ("full" if device == "cuda" else "tiny")
        dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
        threads = args.threads or (1 if device == "cpu" else None)
        saved = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            report["timing"] = timing_report(config, device, dtype, steps=args.steps,
                                             guidance_scale=args.guidance_scale, repeats=args.repeats,
                                             warmup=args.warmup, naive=args.naive,
                                             offload=args.offload and device == "cuda", size=sizes[0],
                                             step_iters=args.step_iters)
        finally:
            torch.set_num_threads(saved)
        report["timing"]["threads"] = threads or saved
    report.update(flat_keys(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    report = run(argv)
    # the command's product goes to stdout (logging goes to stderr)
    sys.stdout.write(json.dumps(report, indent=1) + "\n" if report["options"]["json"] else to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
