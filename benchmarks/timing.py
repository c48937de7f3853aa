"""Wall time and peak memory of whole calls and of one UNet step, TWGTM against the baseline.

All cases run in one process on one set of random-weight components (tiny config on CPU by default,
full config with random weights on a GPU: ``scripts/gpu_check.py``), warm-up first, then interleaved
run by run; the median is reported. The cases are those of :mod:`benchmarks.cases`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from twgtm.attention import model_output, precompute_srm_kv
from twgtm.components import TWGTMComponents
from twgtm.config import TWGTMConfig
from twgtm.latents import concat_halves, vae_decode, vae_encode
from twgtm.pipeline import TWGTMPipeline

from .cases import (baseline_context, baseline_pipeline, build_components, make_config, model_cpu_offload,
                    naive_srm_inputs, try_on_loop)
from .flops import TFLOP, flop_breakdown, size_key

GIB = 2.0 ** 30


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


def weights_gib(components: TWGTMComponents, dtype: torch.dtype | None = None) -> dict[str, float]:
    """Parameter + buffer memory per component (GiB) at their dtype, or as if cast to ``dtype`` (floating-point
    tensors only, as ``Module.to(dtype)`` casts); the reference-encoder parts are 0 for the baseline."""
    def nbytes(t: torch.Tensor) -> int:
        itemsize = dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()
        return t.numel() * itemsize

    def size(module: nn.Module | None, skip: Callable[[str], bool] = lambda n: False) -> float:
        if module is None:
            return 0.0
        tensors = [t for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not skip(n)]
        return sum(nbytes(t) for t in tensors) / GIB

    unet, ref = components.unet, components.reference_encoder
    sam = ref.sam if ref is not None else None
    out = {
        "unet": size(unet, lambda n: ".processor." in n),
        "extended_attention": size(unet) - size(unet, lambda n: ".processor." in n),
        "vae": size(components.vae),
        "clip_vision": size(sam.clip_vision if sam is not None else None),
        "qformer_prompts": size(sam) - size(sam.clip_vision if sam is not None else None),
        "srm": size(ref.srm if ref is not None else None),
        "decoder": size(ref.decoder if ref is not None else None),
    }
    out["total"] = sum(out.values())
    out["baseline"] = out["unet"] + out["vae"]
    return out


# ---------------------------------------------------------------------------------------------------
# whole calls
# ---------------------------------------------------------------------------------------------------
Case = Callable[[], ContextManager[Callable[[], Any]]]  # entered around a run (not timed), yields the call


def call_cases(components: TWGTMComponents, inputs: dict[str, torch.Tensor], *, steps: int = 50,
               guidance_scale: float = 2.5, naive: bool = False, offload: bool = False, scheduler: str = "ddim",
               seed: int = 0) -> dict[str, Case]:
    """The whole-call cases, ``{name: case}``; ``with case() as call: call()`` runs one.

    ``baseline`` (:func:`~benchmarks.cases.baseline_pipeline` try-on), ``tryon``, ``tryoff`` (mask-free),
    with ``naive`` the naive Extended Attention try-on (:func:`~benchmarks.cases.try_on_loop`), with
    ``offload`` try-on with the pipeline's encoder offload (:func:`~benchmarks.cases.model_cpu_offload`).
    """
    x = inputs
    opts = dict(num_inference_steps=steps, guidance_scale=guidance_scale, generator=seed, scheduler=scheduler)

    def tryon(pipe: TWGTMPipeline) -> Callable[[], Any]:
        return lambda: pipe.try_on(x["person"], x["garment"], x["mask"], "upper", **opts)

    pipe, base = TWGTMPipeline.from_components(components), baseline_pipeline(components)
    cases: dict[str, Case] = {
        "baseline": lambda: contextlib.nullcontext(tryon(base)),
        "tryon": lambda: contextlib.nullcontext(tryon(pipe)),
        "tryoff": lambda: contextlib.nullcontext(lambda: pipe.try_off(x["person"], "upper", **opts)),
    }
    if naive:
        cases["tryon_naive"] = lambda: contextlib.nullcontext(
            lambda: try_on_loop(components, x["person"], x["garment"], x["mask"], "upper", naive=True, **opts))
    if offload:
        @contextlib.contextmanager
        def offloaded():
            with model_cpu_offload(components, components.unet.device) as off:
                yield tryon(off)

        cases["tryon_offload_encoders"] = offloaded
    return cases


def time_cases(components: TWGTMComponents, *, steps: int = 50, guidance_scale: float = 2.5, repeats: int = 3,
               warmup: int = 1, naive: bool = False, offload: bool = False, scheduler: str = "ddim",
               seed: int = 0) -> dict[str, Any]:
    """Median wall time and peak memory of the whole calls (:func:`call_cases`), interleaved run by run."""
    device = components.unet.device
    cases = call_cases(components, sample_inputs(components.config, seed=seed), steps=steps,
                       guidance_scale=guidance_scale, naive=naive, offload=offload, scheduler=scheduler, seed=seed)
    for _ in range(warmup):
        for case in cases.values():
            with case() as call:
                call()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(max(1, repeats)):
        for name, case in cases.items():
            with case() as call:
                runs[name].append(measure(call, device))
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


# ---------------------------------------------------------------------------------------------------
# one UNet step
# ---------------------------------------------------------------------------------------------------
def step_inputs(components: TWGTMComponents, *, cfg_on: bool = True, seed: int = 0) -> dict[str, Any]:
    """Random UNet-step inputs as the pipeline builds them: x (rows, 9, h, 2w), F_SAM with a zero unconditional
    row, F_SRM from the real reference encoder on a random reference, and the K'/V' computed once."""
    cfg, unet, ref = components.config, components.unet, components.reference_encoder
    dev, dtype = unet.device, unet.dtype
    g = torch.Generator().manual_seed(seed)
    rows = 2 if cfg_on else 1
    h, w = cfg.latent_size
    reference = (torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1).to(ref.device, ref.dtype)
    with torch.no_grad():
        feats = ref(reference, torch.zeros(1, dtype=torch.long, device=ref.device), with_srm=True)
        f_srm = {k: v.to(dev) for k, v in feats.f_srm.items()}
        kv = precompute_srm_kv(unet, f_srm)
    half = torch.randn(rows, 9, h, w, generator=g)
    x = concat_halves(half, torch.randn(rows, 9, h, w, generator=g), cfg.concat_dim).to(dev, dtype)
    f_sam = feats.sam.f_sam.to(dev, dtype)
    if cfg_on:
        f_sam = torch.cat([torch.zeros_like(f_sam), f_sam])
    return {"x": x, "t": torch.tensor(500, device=dev), "f_sam": f_sam, "f_srm": f_srm, "srm_kv": kv,
            "srm_rows": slice(rows - 1, rows) if cfg_on else None, "rows": rows}


def step_functions(components: TWGTMComponents, inp: dict[str, Any]) -> dict[str, Callable[[], torch.Tensor]]:
    """One UNet call each: the baseline (zero context, no SRM input), TWGTM as the pipeline runs it (K'/V'
    once, conditional rows), naive TWGTM (F_SRM on every row, gate [0, 1], K'/V' projected in the step)."""
    unet, rows = components.unet, inp["rows"]
    f_full, gate = naive_srm_inputs(inp["f_srm"], slice(rows - 1, rows), rows)
    ctx = baseline_context(components, rows)
    return {
        "baseline": lambda: model_output(unet, inp["x"], inp["t"], ctx),
        "twgtm": lambda: model_output(unet, inp["x"], inp["t"], inp["f_sam"], srm_kv=inp["srm_kv"], srm_gate=1.0,
                                      srm_rows=inp["srm_rows"]),
        "twgtm_naive": lambda: model_output(unet, inp["x"], inp["t"], inp["f_sam"], f_srm=f_full, srm_gate=gate),
    }


def time_steps(components: TWGTMComponents, *, iters: int = 10, warmup: int = 2, flops: dict[str, int] | None = None,
               peak_tflops: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Median time of one UNet step (CFG batch 2) per variant, with TFLOP/s and the fraction of ``peak_tflops``."""
    device = components.unet.device
    fns = step_functions(components, step_inputs(components, seed=seed))
    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, fn in fns.items():
            times = []
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


def phase_memory(components: TWGTMComponents, *, seed: int = 0) -> dict[str, float | None]:
    """CUDA peak memory above the resident weights for each phase of one call (GiB), and the resident
    weights; every value is None off CUDA (the phases still run)."""
    cfg, unet, vae, ref = components.config, components.unet, components.vae, components.reference_encoder
    device = unet.device
    g = torch.Generator().manual_seed(seed)
    img = (torch.rand(1, 3, cfg.height, cfg.width, generator=g) * 2 - 1).to(device, unet.dtype)
    cat_idx = torch.zeros(1, dtype=torch.long, device=device)
    h, w = cfg.latent_size
    lat = torch.randn(1, cfg.latent_channels, h, w, generator=g).to(device, unet.dtype)
    cuda = device.type == "cuda"
    out: dict[str, float | None] = {"weights_allocated": torch.cuda.memory_allocated(device) / GIB if cuda else None}
    with torch.no_grad():
        fns = step_functions(components, step_inputs(components, seed=seed))
        phases: dict[str, Callable[[], Any]] = {
            "vae_encode_one": lambda: vae_encode(vae, img, cfg),
            "vae_encode_two_together": lambda: vae_encode(vae, torch.cat([img, img]), cfg, chunk=2),
            "encode_reference": lambda: ref(img, cat_idx, with_srm=True),
            "unet_step_baseline": fns["baseline"],
            "unet_step_twgtm": fns["twgtm"],
            "unet_step_naive": fns["twgtm_naive"],
            "vae_decode_one": lambda: vae_decode(vae, lat, cfg),
        }
        for name, fn in phases.items():
            out[name] = measure(fn, device)["peak_above_start_gib"]
    return out


def timing_report(config: str, device: str, dtype: torch.dtype, *, steps: int = 50, guidance_scale: float = 2.5,
                  repeats: int = 3, warmup: int = 1, naive: bool = False, offload: bool = False,
                  size: tuple[int, int] | None = None, step_iters: int = 10) -> dict[str, Any]:
    """Build random-weight components on ``device`` and time the cases, the UNet step and (CUDA) the phases."""
    dev = torch.device(device)
    cfg = make_config(config, size if config == "full" else None)
    t0 = time.perf_counter()
    components = build_components(cfg, device=dev, dtype=dtype)
    build_s = time.perf_counter() - t0
    flops = flop_breakdown(build_components(cfg, device="meta"), cfg_on=guidance_scale > 1.0)["per_step"]
    peak = matmul_peak_tflops(dev, dtype)
    report: dict[str, Any] = {
        "config": config, "size": size_key((cfg.height, cfg.width)), "device": device_name(dev),
        "device_type": dev.type, "dtype": str(dtype).replace("torch.", ""), "steps": steps,
        "guidance_scale": guidance_scale, "scheduler": "ddim", "repeats": repeats, "warmup": warmup,
        "build_s": build_s, "weights_gib": weights_gib(components), "matmul_peak_tflops": peak,
    }
    report["step"] = time_steps(components, iters=step_iters, flops=flops, peak_tflops=peak)
    report["cases"] = time_cases(components, steps=steps, guidance_scale=guidance_scale, repeats=repeats,
                                 warmup=warmup, naive=naive, offload=offload)
    report["phases_gib"] = phase_memory(components) if dev.type == "cuda" else None
    return report


# ---------------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------------
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
