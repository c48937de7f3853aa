"""Time and peak RSS of full-size inference on CPU, each measurement in its own process (issue 12, item 2).

    nice -n 19 python scripts/measure_fullsize.py [--size 256x192] [--steps 2] [--dtypes fp32,bf16]
        [--ops try_on,try_off,try_off_box,try_off_pred_mask,predict_garment_mask] [--sources single_safetensors]
        [--guidance 2.5]

The components come from the fixture files of scripts/make_fullsize_fixtures.py (built on first use): a TWGTM
file with the trained parts only, on the base components in the chosen layout. Prints one JSON line per run
and a Markdown table. The peak RSS of the load and that of the operation are reported apart (VmHWM is reset
after loading).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPS = ("try_on", "try_off", "try_off_box", "try_off_pred_mask", "predict_garment_mask")


def _hwm_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(HERE))
    import make_fullsize_fixtures as fx

    from twgtm.pipeline import TWGTMPipeline
    from twgtm.weights import load_twgtm

    h, w = args.height, args.width
    torch.set_num_threads(os.cpu_count() or 1)
    paths = fx.build()
    path = fx.trained_file(paths, h, w)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    comps = load_twgtm(path, base=fx.sources(paths, args.sources), dtype=dtype)
    load_s = time.perf_counter() - t0
    load_peak = _hwm_gib()
    reset = _reset_hwm()
    pipe = TWGTMPipeline.from_components(comps)
    g = torch.Generator().manual_seed(0)
    person = torch.rand(1, 3, h, w, generator=g)
    garment = torch.rand(1, 3, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    kw = dict(num_inference_steps=args.steps, generator=1, guidance_scale=args.guidance)
    t0 = time.perf_counter()
    if args.op == "try_on":
        out = pipe.try_on(person, garment, mask, "upper", **kw).images
    elif args.op == "try_off":
        out = pipe.try_off(person, "upper", **kw).images
    elif args.op == "try_off_box":
        out = pipe.try_off(person, "upper", mask=mask, **kw).images
    elif args.op == "try_off_pred_mask":
        out = pipe.try_off(person, "upper", predicted_mask=True, **kw).images
    else:
        out = pipe.predict_garment_mask(person, "upper")
    op_s = time.perf_counter() - t0
    ok = bool(torch.isfinite(out).all())
    print("RESULT " + json.dumps({
        "op": args.op, "dtype": args.dtype, "size": f"{h}x{w}", "steps": args.steps, "cfg": args.guidance or 2.5, "sources": args.sources,
        "load_s": round(load_s, 1), "op_s": round(op_s, 1), "load_peak_gib": round(load_peak, 2),
        "op_peak_gib": round(_hwm_gib(), 2) if reset else None, "finite": ok, "out_shape": list(out.shape),
        "threads": torch.get_num_threads()}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="256x192")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--sources", default="single_safetensors")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the config's 2.5; 1 = no CFG)")
    p.add_argument("--child", action="store_true")
    p.add_argument("--op")
    p.add_argument("--dtype")
    args = p.parse_args()
    args.height, args.width = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        child(args)
        return 0
    rows = []
    for dtype in args.dtypes.split(","):
        for op in args.ops.split(","):
            load = Path("/proc/loadavg").read_text().split()[:3]
            cmd = [sys.executable, __file__, "--child", "--op", op, "--dtype", dtype, "--size", args.size,
                   "--steps", str(args.steps), "--sources", args.sources]
            cmd += ["--guidance", str(args.guidance)] if args.guidance is not None else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"FAILED {op} {dtype} (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(line[0][7:])
            row["loadavg_before"] = " ".join(load)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| op | dtype | canvas | steps | load s | op s | peak RSS load GiB | peak RSS op GiB | load avg before |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['dtype']} | {r['size']} | {r['steps']} | {r['load_s']} | {r['op_s']} | "
              f"{r['load_peak_gib']} | {r['op_peak_gib']} | {r['loadavg_before']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
