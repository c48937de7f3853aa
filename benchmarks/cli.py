"""The command line: ``python -m benchmarks``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

import torch

from twgtm.errors import InputError

from . import __doc__ as package_doc
from .cases import build_components, make_config
from .flops import DEFAULT_SIZES, flop_report, parse_size, size_key
from .report import flat_keys, to_markdown
from .targets import evaluate
from .timing import machine_info, timing_report, weights_gib

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m benchmarks``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(package_doc or "").split("\n\n")[0])
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
    meta = build_components(make_config(args.config or "full"), device="meta")
    report["weights_gib_bf16"] = weights_gib(meta, torch.bfloat16)  # exact parameter + buffer bytes, no allocation
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
    report["targets"] = evaluate(report["flops"], report["timing"])
    report.update(flat_keys(report))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    report = run(argv)
    # the command's product goes to stdout (logging goes to stderr)
    sys.stdout.write(json.dumps(report, indent=1) + "\n" if report["options"]["json"] else to_markdown(report))
    return 0
