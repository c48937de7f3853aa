"""GPU check: the full-size random-weight TWGTM against the CatVTON-class baseline, in one run (< 5 min).

What it measures (one JSON object on stdout, and in ``--out``):

* FLOPs at 1024x768 (meta device, as ``python -m benchmarks --flops-only``);
* the model: full config, random weights, bf16, built on the GPU; weights per component;
* the dense bf16 matmul peak of this GPU (8192^3), the denominator of the step efficiency;
* peak memory above the resident weights per phase (VAE encode one / two images, SAM+SRM+Decoder,
  UNet step baseline / TWGTM / naive, VAE decode one);
* one UNet step (CFG batch 2): baseline, TWGTM (K'/V' once, EA on conditional rows), naive TWGTM;
  ms, TFLOP/s, fraction of the matmul peak;
* the whole calls at 1024x768, 50 steps, CFG 2.5, DDIM: baseline try-on, TWGTM try-on, try-off, naive
  try-on, try-on with the encoders offloaded to the CPU; median of 3 after 1 warm-up, peak memory;
* channels-last UNet (step times, largest output difference), the UNet step under each SDPA backend
  (flash, memory-efficient, cuDNN), and with ``--compile`` torch.compile'd UNet step times;
* the targets (:mod:`benchmarks.targets`: limits and source in one place): pass, fail or no verdict.

How to run it on a device machine (H100 / H200; no network there; diffusers is not installed there and
travels as a wheel, pure Python; the other dependencies are in its image), from the repository root:

    here:   echo /.whl/ >> .git/info/exclude
            python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1
    there:  (run tool, carry [".whl"], timeout_s 420)
            python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
              && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
              && python3 scripts/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

Sections that fail are recorded as ``{"error": ...}`` and the run goes on (one device run is precious);
sections that would pass ``--budget-s`` are skipped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ and twgtm/

from benchmarks import cases, flops as bench_flops, targets as bench_targets, timing
from benchmarks.cli import DTYPES
from benchmarks.report import flat_keys

logger = logging.getLogger("gpu_check")


def _section(report: dict[str, Any], name: str, fn: Callable[[], Any], start: float, budget_s: float) -> Any:
    """Run one section, record its result (or its error) and its duration."""
    elapsed = time.perf_counter() - start
    if elapsed > budget_s:
        report[name] = {"skipped": f"time budget {budget_s:.0f} s spent ({elapsed:.0f} s)"}
        logger.warning("%s skipped: budget spent", name)
        return None
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 -- keep the other sections of a one-shot device run
        logger.exception("%s failed", name)
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return None
    report[name] = result
    report.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
    logger.info("%s done in %.1f s (total %.1f s)", name, time.perf_counter() - t0, time.perf_counter() - start)
    return result


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def memory_model(weights: dict[str, float], phases: dict[str, float]) -> dict[str, float]:
    """Projected call peaks (GiB) from the measured pieces: everything resident, or the encoders offloaded
    once their features exist (resident then: UNet + Extended Attention + VAE)."""
    encoders = weights["clip_vision"] + weights["qformer_prompts"] + weights["srm"] + weights["decoder"]
    encode_phase = max(phases["encode_reference"], phases["vae_encode_one"])
    later_phase = max(phases["unet_step_twgtm"], phases["vae_decode_one"])
    return {
        "encoders_gib": encoders,
        "all_resident_gib": weights["total"] + max(encode_phase, later_phase),
        "encoders_offloaded_gib": max(weights["total"] + encode_phase, weights["total"] - encoders + later_phase),
        "baseline_gib": weights["baseline"] + max(phases["vae_encode_one"], phases["unet_step_baseline"],
                                                  phases["vae_decode_one"]),
    }


def targets(report: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The targets (:func:`benchmarks.targets.evaluate`) for this run's sections."""
    measured = {"config": report["config"], "size": report["size"], "device_type": report["device_type"],
                "dtype": dtype, "steps": report["steps"], "guidance_scale": report["guidance_scale"],
                "cases": report.get("cases"), "step": report.get("step")}
    flops = report.get("flops") if isinstance(report.get("flops"), dict) and "sizes" in report["flops"] else None
    step_compiled = report.get("step_compiled") if isinstance(report.get("step_compiled"), dict) else None
    return bench_targets.evaluate(flops, measured, step_compiled)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=2.5)
    p.add_argument("--size", default="1024x768")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--step-iters", type=int, default=20)
    p.add_argument("--no-channels-last", action="store_true", help="skip the channels-last step timing")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd UNet step (+1-2 min)")
    p.add_argument("--budget-s", type=float, default=270.0, help="skip sections that would start after this")
    p.add_argument("--no-cudnn-benchmark", action="store_true")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a dry run of this script with the tiny config (checks the script only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        logger.error("no CUDA device: this script is for a GPU machine (--device cpu: a tiny dry run)")
        return 2
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    dev = torch.device(args.device)
    config = "full" if dev.type == "cuda" else "tiny"
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # the dry run: tiny ops, shared cores
    dtype = DTYPES[args.dtype]
    size = bench_flops.parse_size(args.size) if cuda else (64, 48)
    args.size = bench_flops.size_key(size)
    report: dict[str, Any] = {"machine": timing.machine_info(), "device": timing.device_name(dev),
                              "device_type": dev.type, "config": config,
                              "dtype": args.dtype, "size": args.size, "steps": args.steps,
                              "guidance_scale": args.guidance_scale, "scheduler": "ddim",
                              "cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "sdpa": "F.scaled_dot_product_attention"}

    # 1. FLOPs (meta device)
    flops = _section(report, "flops", lambda: bench_flops.flop_report(config, [size], args.steps,
                                                                       cfg_on=args.guidance_scale > 1.0), start, 1e9)
    if flops:
        report.update(flat_keys({"flops": flops}))
    step_flops = flops["sizes"][args.size]["per_step"] if flops else None

    # 2. the components
    def build() -> dict[str, Any]:
        t0 = time.perf_counter()
        cfg = cases.make_config(config, size)
        try:
            c = cases.build_components(cfg, device=dev, dtype=dtype)
            where = dev.type
        except Exception:  # noqa: BLE001 -- any construction problem on the GPU: build on the CPU, move
            logger.exception("building on the GPU failed; building on the CPU")
            c = cases.build_components(cfg, device=dev, dtype=dtype, build_device="cpu")
            where = "cpu"
        if cuda:
            torch.cuda.synchronize()
        report["_components"] = c
        return {"seconds": time.perf_counter() - t0, "built_on": where, "weights_gib": timing.weights_gib(c),
                "allocated_gib": torch.cuda.memory_allocated() / timing.GIB if cuda else None}

    _section(report, "build", build, start, 1e9)
    comps = report.pop("_components", None)
    if comps is None:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
        return 1

    # 3. matmul peak, phases, steps, whole calls
    peak = _section(report, "matmul_peak_tflops", lambda: timing.matmul_peak_tflops(dev, dtype), start,
                    args.budget_s)
    _section(report, "phases_gib", lambda: timing.phase_memory(comps), start, args.budget_s)
    _section(report, "step", lambda: timing.time_steps(comps, iters=args.step_iters, flops=step_flops,
                                                       peak_tflops=peak), start, args.budget_s)
    _section(report, "cases", lambda: timing.time_cases(comps, steps=args.steps, guidance_scale=args.guidance_scale,
                                                        repeats=args.repeats, warmup=args.warmup, naive=True,
                                                        offload=True), start, args.budget_s)
    if cuda and isinstance(report.get("phases_gib"), dict) and "error" not in report["phases_gib"]:
        weights = report["build"]["weights_gib"]
        report["memory_model_gib"] = memory_model(weights, report["phases_gib"])

    # 4. channels-last UNet: step times and the largest output difference to the default layout
    def channels_last() -> dict[str, Any]:
        fns = timing.step_functions(comps, timing.step_inputs(comps, seed=0))
        with torch.no_grad():
            ref = {n: fn() for n, fn in fns.items() if n != "baseline"}
            comps.unet.to(memory_format=torch.channels_last)
            try:
                out = {n: fn() for n, fn in fns.items() if n != "baseline"}
                steps = timing.time_steps(comps, iters=args.step_iters, flops=step_flops, peak_tflops=peak)
            finally:
                comps.unet.to(memory_format=torch.contiguous_format)
        return {"step": steps, "max_abs_diff": {n: _max_abs_diff(ref[n], out[n]) for n in ref},
                "output_abs_max": {n: float(ref[n].float().abs().max()) for n in ref}}

    if not args.no_channels_last:
        _section(report, "channels_last", channels_last, start, args.budget_s)

    # 5. SDPA backends one by one (level-0 head dim is 40: kernels differ in how they pad it)
    def sdpa_backends() -> dict[str, Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        out: dict[str, Any] = {}
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            backend = getattr(SDPBackend, name, None)
            if backend is None:
                out[name] = {"error": "not in this torch"}
                continue
            try:
                with sdpa_kernel(backend):
                    out[name] = timing.time_steps(comps, iters=max(3, args.step_iters // 2), flops=step_flops,
                                                  peak_tflops=peak)
            except RuntimeError as exc:
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return out

    _section(report, "sdpa_backends", sdpa_backends, start, args.budget_s)

    # 6. torch.compile'd UNet (in place, so processors and K'/V' lookups keep working)
    def compiled() -> dict[str, Any]:
        fns = timing.step_functions(comps, timing.step_inputs(comps, seed=0))
        with torch.no_grad():
            ref = fns["twgtm"]()
            comps.unet.compile()
            t0 = time.perf_counter()
            out = fns["twgtm"]()
            timing.sync(dev)
            first_s = time.perf_counter() - t0
        report["step_compiled"] = timing.time_steps(comps, iters=args.step_iters, warmup=3, flops=step_flops,
                                                    peak_tflops=peak)
        return {"first_call_s": first_s, "max_abs_diff_twgtm": _max_abs_diff(ref, out)}

    if args.compile:
        _section(report, "compile", compiled, start, args.budget_s)

    report["targets"] = targets(report, str(dtype).replace("torch.", ""))
    report["total_seconds"] = time.perf_counter() - start
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
