"""FLOPs of one image's try-on / try-off and of the baseline, counted on the ``meta`` device.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (no weights, no memory, runs anywhere), for
one image per size, CFG on (UNet batch 2):

* per denoising step: the baseline UNet, TWGTM as the pipeline runs it (K'/V' projected once per call,
  Extended Attention on the conditional CFG rows only), the naive TWGTM step (Extended Attention on both
  CFG halves, K'/V' projected every step), the two half-way variants, and CatVTON's UNet without
  cross-attention;
* one-off, per image: VAE encodes (reference and masked target), SAM, SRM, Decoder, K'/V', VAE decode;
* totals for ``steps`` steps and the ratios TWGTM / baseline.

SDPA FLOPs: on CPU PyTorch runs ``_scaled_dot_product_flash_attention_for_cpu``, which the stock
counter does not know; :func:`count_flops` adds it (4·B·h·Sq·Sk·d, as for the CUDA kernels), so CPU
and meta counts agree.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from twgtm.attention import model_output, precompute_srm_kv
from twgtm.components import TWGTMComponents
from twgtm.errors import InputError
from twgtm.latents import concat_halves, vae_decode, vae_encode

from .cases import baseline_context, build_components, make_config, naive_srm_inputs, skip_cross_attention

logger = logging.getLogger(__name__)

TFLOP = 1e12
DEFAULT_SIZES = ((1024, 768), (512, 384))


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


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._scaled_dot_product_flash_attention_for_cpu``: Q K^T and P V, 2 FLOPs per MAC."""
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    """FLOPs of its backward (recomputed P, dV, dP, dQ, dK: torch's own SDPA backward count)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_mapping() -> dict:
    """``FlopCounterMode(custom_mapping=...)`` for the CPU flash-attention ops the stock counter leaves at 0 (the
    inference benchmarks here and the training-step count of ``scripts/plan_fullsize.py``)."""
    out = {}
    for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
                     ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            out[op] = fn
    return out


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``fn`` without gradients under ``FlopCounterMode``; return (FLOPs, its result)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        out = fn()
    return int(counter.get_total_flops()), out


OP_KINDS = {"convolution": "conv", "mm": "linear", "addmm": "linear", "bmm": "attention", "baddbmm": "attention"}


def flops_by_kind(fn: Callable[[], Any]) -> dict[str, int]:
    """FLOPs of ``fn`` split into conv / linear / attention (matmuls of Q K^T and P V) / other."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    out = {"conv": 0, "linear": 0, "attention": 0, "other": 0}
    for op, n in counter.get_flop_counts()["Global"].items():
        name = str(op).split(".")[-1]
        kind = "attention" if "attention" in name else OP_KINDS.get(name, "other")
        out[kind] += int(n)
    return out


def flop_breakdown(components: TWGTMComponents, *, cfg_on: bool = True) -> dict[str, dict[str, int]]:
    """FLOPs of every piece of one image's try-on / try-off, as :class:`~twgtm.pipeline.TWGTMPipeline` runs them.

    Returns ``{"one_off": {...}, "per_step": {...}, "per_step_by_kind": {...}}``. One-off pieces are per
    image (a call encodes two images with the VAE: the reference and the masked target). Per-step pieces
    are one UNet call on the CFG batch (2 rows when ``cfg_on``).
    """
    cfg, unet, vae, ref = components.config, components.unet, components.vae, components.reference_encoder
    dev, dtype = unet.device, unet.dtype
    rows = 2 if cfg_on else 1
    img = torch.zeros(1, 3, cfg.height, cfg.width, device=dev, dtype=dtype)
    cat_idx = torch.zeros(1, dtype=torch.long, device=dev)
    h, w = cfg.latent_size
    one_off: dict[str, int] = {}
    one_off["vae_encode"], _ = count_flops(lambda: vae_encode(vae, img, cfg))
    one_off["sam"], sam = count_flops(lambda: ref.sam(img, cat_idx))
    one_off["srm"], srm = count_flops(lambda: ref.srm(img, sam.f_qf))
    one_off["decoder"], f_srm = count_flops(lambda: ref.decoder(srm.tfq))
    one_off["srm_kv"], kv = count_flops(lambda: precompute_srm_kv(unet, f_srm))
    half = torch.zeros(1, cfg.latent_channels, h, w, device=dev, dtype=dtype)
    one_off["vae_decode"], _ = count_flops(lambda: vae_decode(vae, half, cfg))

    zero = torch.zeros(rows, 9, h, w, device=dev, dtype=dtype)
    x = concat_halves(zero, zero, cfg.concat_dim)  # (rows, 9, h, 2w): [z_t, m, E(h_f)]
    t = torch.tensor(500, device=dev)
    f_sam = torch.zeros(rows, *sam.f_sam.shape[1:], device=dev, dtype=dtype)  # (rows, 1 + N, D)
    cond = slice(rows - 1, rows) if cfg_on else None                          # conditional CFG row
    f_full, gate = naive_srm_inputs(f_srm, slice(rows - 1, rows), rows)     # (rows, T_l, C_l), [0, 1]
    kv_full = precompute_srm_kv(unet, f_full)
    base_ctx = baseline_context(components, rows)
    steps: dict[str, Callable[[], Any]] = {
        "baseline": lambda: model_output(unet, x, t, base_ctx),
        "twgtm": lambda: model_output(unet, x, t, f_sam, srm_kv=kv, srm_gate=1.0, srm_rows=cond),
        "twgtm_naive": lambda: model_output(unet, x, t, f_sam, f_srm=f_full, srm_gate=gate),
        "twgtm_kv_once_both_halves": lambda: model_output(unet, x, t, f_sam, srm_kv=kv_full, srm_gate=gate),
        "twgtm_cond_rows_kv_every_step": lambda: model_output(unet, x, t, f_sam, f_srm=f_srm, srm_gate=1.0,
                                                              srm_rows=cond),
    }
    per_step = {"baseline": count_flops(steps["baseline"])[0]}
    with skip_cross_attention(unet):
        per_step["baseline_no_xattn"], _ = count_flops(lambda: model_output(unet, x, t, f_sam))
    per_step.update({name: count_flops(fn)[0] for name, fn in steps.items() if name != "baseline"})
    kinds = {name: flops_by_kind(steps[name]) for name in ("baseline", "twgtm")}
    return {"one_off": one_off, "per_step": per_step, "per_step_by_kind": kinds}


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
        components = build_components(make_config(config, size), device="meta")
        parts = flop_breakdown(components, cfg_on=cfg_on)
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
        del components
    return out
