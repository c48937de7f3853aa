"""The numbers for sizing a real run of the paper recipe at 1024x768 (issue 12, item 5; docs/TRAINING.md).

    nice -n 19 python scripts/plan_fullsize.py WORKDIR [--sizes 128x96,256x192] [--batch 4] [--skip-measure]

1. **Counted** on the ``meta`` device (no memory): parameters of the full model, trainable per stage (spec 1.6,
   ``training.objective.spec_parameter_groups``), and the bytes of fp32 weights, fp32 gradients and AdamW's two
   fp32 states.
2. **Measured at reduced canvases and extrapolated**: one training step (forward + backward, bf16 autocast, batch 1,
   stage 2, random full-size weights) at each size in ``--sizes``, with ``torch.utils.flop_counter.FlopCounterMode``
   (FLOPs) and a ``saved_tensors_hooks`` tally of the bytes autograd keeps for the backward pass (activations; each
   storage once), with and without gradient checkpointing. Per sample, both are fitted as ``a*s + b*s^2`` in the
   pixel ratio ``s`` to the first size (convolutions and projections grow with the pixels, self- and extended
   attention with their square) and evaluated at 1024x768, then multiplied by ``--batch``.
3. **Data loader throughput**: the preset's training dataset (VITON-HD + DressCode readers at 1024x768, the preset's
   transforms: resize/pad, masks from label maps, hflip off) over 1024x768 JPEGs of ``make_fullsize_dataset.py``,
   through a DataLoader with 0 (in the main process) and 1 worker: samples (person + garment pairs) per second.

Prints and writes ``WORKDIR/plan.json``. Peak memory about 9 GB (the 256x192 step without checkpointing).
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
            "weights_fp32_gib": round(4 * total / GIB, 2), "grads_fp32_gib": round(4 * trainable / GIB, 2),
            "adamw_fp32_gib": round(8 * trainable / GIB, 2),
        }
        del model
    return out


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward (on the CPU: real tensors)."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            self.seen.setdefault(st.data_ptr(), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @property
    def gib(self) -> float:
        return sum(self.seen.values()) / GIB


def measure_step(height: int, width: int, checkpointing: bool, flops: bool) -> dict:
    from diffusers import DDPMScheduler
    from torch.utils.flop_counter import FlopCounterMode

    from twgtm.components import TWGTMComponents
    from twgtm.config import TWGTMConfig
    from training.objective import TrainingObjective, spec_parameter_groups

    torch.manual_seed(0)
    cfg = TWGTMConfig.full(height=height, width=width)
    cfg.stage = 1
    model = TWGTMComponents.build(cfg, random_prompts=True)
    model.enable_stage2()
    spec_parameter_groups(model)
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.reference_encoder.srm.enable_gradient_checkpointing(True)
    objective = TrainingObjective(model, DDPMScheduler.from_config(model.config.scheduler)).train()
    g = torch.Generator().manual_seed(0)
    batch = {"person": torch.rand(1, 3, height, width, generator=g) * 2 - 1,
             "garment": torch.rand(1, 3, height, width, generator=g) * 2 - 1,
             "person_mask": torch.zeros(1, 1, height, width), "garment_mask": torch.zeros(1, 1, height, width),
             "category_idx": torch.tensor([0])}
    batch["person_mask"][..., height // 4:3 * height // 4, width // 4:3 * width // 4] = 1
    batch["garment_mask"][..., height // 8:7 * height // 8, width // 8:7 * width // 8] = 1
    saved = SavedBytes()
    counter = FlopCounterMode(display=False) if flops else None
    t0 = time.perf_counter()
    with (counter if counter else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                loss = objective(batch, 0)["loss"]
        loss.backward()
    seconds = time.perf_counter() - t0
    out = {"size": [height, width], "checkpointing": checkpointing, "saved_gib": round(saved.gib, 4),
           "step_s": round(seconds, 1)}
    if counter:
        out["flops"] = counter.get_total_flops()
    del model, objective, loss
    gc.collect()
    return out


def fit(values: list[float], ratios: list[float], target: float) -> float:
    """``a*s + b*s^2`` through the points (s, v); its value at ``target`` (linear through the origin if 1 point)."""
    if len(values) == 1:
        return values[0] * target / ratios[0]
    (s1, v1), (s2, v2) = (ratios[0], values[0]), (ratios[-1], values[-1])
    b = (v2 / s2 - v1 / s1) / (s2 - s1)
    a = v1 / s1 - b * s1
    return max(a * target + b * target * target, 0.0)


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
    p.add_argument("--sizes", default="128x96,256x192")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-measure", action="store_true", help="counting and the loader only")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"load_before": os.getloadavg(), "counted": counted()}
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    target = 1024 * 768
    if not args.skip_measure:
        steps = []
        for h, w in sizes:
            steps.append(measure_step(h, w, checkpointing=True, flops=True))
            steps.append(measure_step(h, w, checkpointing=False, flops=False))
        result["measured"] = steps
        ratios = [h * w / (sizes[0][0] * sizes[0][1]) for h, w in sizes]
        t = target / (sizes[0][0] * sizes[0][1])
        ext = {}
        for ck in (True, False):
            vals = [s["saved_gib"] for s in steps if s["checkpointing"] == ck]
            ext[f"activations_gib_per_sample_{'ckpt' if ck else 'no_ckpt'}"] = round(fit(vals, ratios, t), 2)
        flops = [s["flops"] for s in steps if "flops" in s]
        ext["train_step_tflops_per_sample"] = round(fit(flops, ratios, t) / 1e12, 1)
        ext["batch"] = args.batch
        ext["train_step_tflops_per_gpu_batch"] = round(ext["train_step_tflops_per_sample"] * args.batch, 1)
        result["at_1024x768"] = ext
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
