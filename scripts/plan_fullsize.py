"""The numbers for sizing a real run of the paper recipe at 1024x768 (issue 12, item 5; docs/TRAINING.md).

    nice -n 19 python scripts/plan_fullsize.py WORKDIR [--sizes 128x96,256x192] [--batch 4] [--skip-measure]

1. **Counted** on the ``meta`` device (no memory): parameters of the full model, trainable per stage (spec 1.6,
   ``training.objective.spec_parameter_groups``), and the bytes of fp32 weights, fp32 gradients and AdamW's two
   fp32 states.
2. **Measured at reduced canvases and extrapolated**: one training step (forward + backward, bf16 autocast, stage 2,
   the frozen weights in bf16 as the preset trains, random full-size weights) at three sizes (``--sizes``) with
   batch 1 and at the first size with batch 2, with and without gradient checkpointing. Memory: the forward's
   peak RSS increase over the loaded model (VmHWM reset before it; glibc is made to map every allocation of 64 KiB
   or more on its own, so freed tensors leave the RSS and the peak is the live tensors' peak): activations,
   autocast's bf16 copies of the fp32 trained weights, temporaries. Backward's peak (gradients allocated as activations are freed) is
   measured too; under checkpointing it is the larger (the recomputed block and the activations' gradients).
   The larger of the two (backward's less the gradients) is modelled as ``c + n*(k + a*s)`` (``n``
   samples, ``s`` the pixel ratio to the first size; flash attention keeps no score matrix, so memory grows with
   the pixels, not their square): see ``extrapolate``. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the
   checkpointed step (the recomputed forward included; the CPU flash-attention ops, which the stock counter
   leaves at 0, through ``benchmarks.flops.flop_mapping``), fitted as ``c + a*s + b*s^2`` (exact: constant,
   per-pixel and attention terms). The bytes autograd saves
   outside checkpointed blocks (``saved_tensors_hooks``, each storage once, parameters left out) are recorded too.
3. **Data loader throughput**: the preset's training dataset (VITON-HD + DressCode readers at 1024x768, the preset's
   transforms: resize/pad, masks from label maps, hflip off) over 1024x768 JPEGs of ``make_fullsize_dataset.py``,
   through a DataLoader with 0 (in the main process) and 1 worker: samples (person + garment pairs) per second.

Prints and writes ``WORKDIR/plan.json``. Peak memory about 12 GB (the 384x288 step without checkpointing).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

GIB = 2**30
MMAP_THRESHOLD = 65536


def counted() -> dict:
    from twgtm.components import TWGTMComponents
    from twgtm.config import TWGTMConfig
    from training.objective import spec_parameter_groups

    out = {}
    for stage in (1, 2):
        cfg = TWGTMConfig.full()
        cfg.stage = stage
        with torch.device("meta"):
            model = TWGTMComponents.build(cfg, random_prompts=True)
        groups = spec_parameter_groups(model)
        total = sum(p.numel() for m in model.modules().values() for p in m.parameters())
        trainable = sum(p.numel() for g in groups for p in g["params"])
        out[f"stage{stage}"] = {
            "parameters": total, "trainable": trainable,
            "groups": {g["name"]: sum(p.numel() for p in g["params"]) for g in groups},
            "weights_fp32_gib": round(4 * total / GIB, 2),
            # frozen_dtype: bf16 (the preset): trained weights fp32, the rest bf16
            "weights_frozen_bf16_gib": round((4 * trainable + 2 * (total - trainable)) / GIB, 2),
            "grads_fp32_gib": round(4 * trainable / GIB, 2),
            "adamw_fp32_gib": round(8 * trainable / GIB, 2),
        }
        del model
    return out


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward (on the CPU: real tensors), the model's own
    parameters left out (they are counted as weights). Tensors saved inside gradient-checkpointed blocks are
    not seen (the checkpoint's own hooks pack them), so with checkpointing this is a lower bound; the step's
    peak RSS increase is measured beside it."""

    def __init__(self, params: set[int]):
        self.seen: dict[int, int] = {}
        self.params = params

    def pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            if st.data_ptr() not in self.params:
                self.seen.setdefault(st.data_ptr(), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @property
    def gib(self) -> float:
        return sum(self.seen.values()) / GIB


def _rss_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def measure_step(height: int, width: int, checkpointing: bool, flops: bool, batch: int = 1) -> dict:
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from twgtm.components import TWGTMComponents
    from twgtm.config import TWGTMConfig
    from training.objective import TrainingObjective, spec_parameter_groups
    from training.trainer import cast_frozen

    torch.manual_seed(0)
    cfg = TWGTMConfig.full(height=height, width=width)
    cfg.stage = 1
    model = TWGTMComponents.build(cfg, random_prompts=True)
    model.enable_stage2()
    groups = spec_parameter_groups(model)
    cast_frozen(model, groups, "bf16")  # as the preset trains (frozen_dtype: bf16)
    trained = [p for g in groups for p in g["params"]]
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.reference_encoder.srm.enable_gradient_checkpointing(True)
    objective = TrainingObjective(model, DDPMScheduler.from_config(model.config.scheduler)).train()
    g = torch.Generator().manual_seed(0)
    n = batch
    batch = {"person": torch.rand(n, 3, height, width, generator=g) * 2 - 1,
             "garment": torch.rand(n, 3, height, width, generator=g) * 2 - 1,
             "person_mask": torch.zeros(n, 1, height, width), "garment_mask": torch.zeros(n, 1, height, width),
             "category_idx": torch.arange(n) % 3}
    batch["person_mask"][..., height // 4:3 * height // 4, width // 4:3 * width // 4] = 1
    batch["garment_mask"][..., height // 8:7 * height // 8, width // 8:7 * width // 8] = 1
    saved = SavedBytes({p.untyped_storage().data_ptr() for m in model.modules().values() for p in m.parameters()})
    from benchmarks.flops import flop_mapping  # the CPU flash-attention ops, forward and backward (else counted 0)

    counter = FlopCounterMode(display=False, custom_mapping=flop_mapping()) if flops else None
    gc.collect()
    rss0 = _rss_gib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    with (counter if counter else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                loss = objective(batch, 0)["loss"]
        forward_peak = _rss_gib("VmHWM") - rss0
        held = _rss_gib("VmRSS") - rss0
        _reset_peak_rss()
        loss.backward()
    seconds = time.perf_counter() - t0
    backward_peak = _rss_gib("VmHWM") - rss0
    grads = sum(p.numel() * 4 for p in trained) / GIB
    out = {"size": [height, width], "batch": n, "checkpointing": checkpointing, "saved_gib": round(saved.gib, 4),
           # the forward's peak above the loaded model (activations, autocast's bf16 copies of the fp32 trained
           # weights, temporaries), what it still holds when backward starts, and backward's peak (with gradients)
           "forward_peak_gib": round(forward_peak, 3), "held_for_backward_gib": round(held, 3),
           "backward_peak_gib": round(backward_peak, 3), "grads_gib": round(grads, 3), "step_s": round(seconds, 1)}
    if counter:
        out["flops"] = counter.get_total_flops()
    del model, objective, loss
    gc.collect()
    return out


def fit(values: list[float], ratios: list[float], target: float) -> tuple[float, float, float, float]:
    """``c + a*s + b*s^2`` through three points (s, v): (its value at ``target``, c, a, b). Convolutions and
    projections grow with the pixels (a), self- and extended attention with their square (b); CLIP at its fixed
    224 px input and the Q-Former do not grow (c)."""
    if len(values) != 3:
        raise SystemExit(f"--sizes: expected 3 sizes for the fit, got {len(values)}")
    m = torch.tensor([[1.0, r, r * r] for r in ratios], dtype=torch.float64)
    c, a, b = torch.linalg.solve(m, torch.tensor(values, dtype=torch.float64)).tolist()
    return c + a * target + b * target * target, c, a, b


def extrapolate(steps: list[dict], sizes: list[tuple[int, int]], batch: int, target: int = 1024 * 768) -> dict:
    """Memory and FLOPs of a training step at 1024x768 and ``batch`` from the measured steps.

    Memory above the loaded model, gradients excluded: the larger of the forward's peak and the backward's peak
    less the gradients (under checkpointing the backward's recompute of a block and the activations' gradients
    are the larger one; without it the forward's end). Linear in the pixels (CPU and GPU flash attention keep no
    score matrix): the slope of the two largest sizes (a quadratic fit of these near-flat values blows up 7x beyond
    the last size). The part that grows with neither pixels nor batch (autocast's bf16 copies of the fp32 trained
    weights) comes from the forward peaks at batch 1 and 2 of the first size; backward peaks are not used for it,
    since the first step of a process carries one-time allocations into its backward peak."""
    ratios = [h * w / (sizes[0][0] * sizes[0][1]) for h, w in sizes]
    t = target / (sizes[0][0] * sizes[0][1])
    ext: dict = {"batch": batch}
    for ck in (True, False):
        tag = "ckpt" if ck else "no_ckpt"
        one = [s for s in steps if s["checkpointing"] == ck and s["batch"] == 1]
        two = next(s for s in steps if s["checkpointing"] == ck and s["batch"] == 2)
        fwd_slope = (one[-1]["forward_peak_gib"] - one[-2]["forward_peak_gib"]) / (ratios[-1] - ratios[-2])
        fwd_c = one[-1]["forward_peak_gib"] - fwd_slope * ratios[-1]   # constant + per-sample constant
        k = two["forward_peak_gib"] - one[0]["forward_peak_gib"] - fwd_slope  # per-sample constant
        const = fwd_c - k
        m = [max(s["forward_peak_gib"], s["backward_peak_gib"] - s["grads_gib"]) for s in one]
        slope = (m[-1] - m[-2]) / (ratios[-1] - ratios[-2])
        per_sample = m[-1] + slope * (t - ratios[-1]) - const
        ext[f"activations_constant_gib_{tag}"] = round(const, 2)
        ext[f"activations_per_sample_gib_{tag}"] = round(per_sample, 2)
        ext[f"activations_gib_batch_{batch}_{tag}"] = round(const + batch * per_sample, 2)
    flops = [s["flops"] for s in steps if "flops" in s]
    ext["train_step_tflops_per_sample_ckpt"] = round(fit(flops, ratios, t)[0] / 1e12, 1)
    ext["train_step_tflops_per_gpu_batch_ckpt"] = round(ext["train_step_tflops_per_sample_ckpt"] * batch, 1)
    return ext


def loader_throughput(root: Path, workers: int, n_batches: int = 6, batch_size: int = 4) -> dict:
    from torch.utils.data import DataLoader

    from training.config import load_run_config
    from training.data import build_train_dataset

    data = {"vitonhd": root / "zalando-hd-resized", "dresscode": root / "DressCode"}
    run = load_run_config(REPO / "configs" / "paper_vitonhd_dresscode.yaml",
                          [f"data.datasets.0.root={data['vitonhd']}", f"data.datasets.1.root={data['dresscode']}"])
    ds = build_train_dataset(run, run.model.build())
    sampler = [[(i * batch_size + j) % len(ds) for j in range(batch_size)] for i in range(n_batches + 1)]
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not timed
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"workers": workers, "samples_per_s": round(n_batches * batch_size / dt, 2), "items": len(ds)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--sizes", default="128x96,256x192,384x288",
                   help="three canvases (height a multiple of 64, width of 32) for the fit")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-measure", action="store_true", help="counting and the loader only")
    args = p.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):
        # every allocation of 64 KiB or more gets its own mapping, returned to the system when freed: the RSS then
        # follows the live tensors and its peak (VmHWM) is the step's real peak, not glibc's retained heap
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD)))
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_before": os.getloadavg(), "counted": counted()}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if not args.skip_measure:
        # three sizes at batch 1 and the first size at batch 2, with and without checkpointing (extrapolate())
        steps = []
        for i, (h, w) in enumerate(sizes):
            for ck in (True, False):
                steps.append(measure_step(h, w, checkpointing=ck, flops=ck))
                if i == 0:
                    steps.append(measure_step(h, w, checkpointing=ck, flops=False, batch=2))
                print(json.dumps(steps[-1]), flush=True)
        result["measured"] = steps
        result["at_1024x768"] = extrapolate(steps, sizes, args.batch)
    data_root = work / "data-1024"
    if not (data_root / "DressCode").is_dir():
        import make_fullsize_dataset as mds

        mds.write_both(data_root, n=4)
    result["loader"] = [loader_throughput(data_root, w) for w in (0, 1)]
    result["load_after"] = os.getloadavg()
    (work / "plan.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
