"""The main job's report: the trained model against trivial baselines.

The report runs on held-out synthetic pairs (the test split: unpaired try-on pairs with a rendered
ground truth, ``test/unpaired-gt/``, and each person's own garment as the try-off ground truth) and
compares the model with:

* try-on (unpaired, rendered ground truth): the input person unchanged; the masked person (repaint
  region filled with mid-gray, the model's own masked input);
* try-off: the person image resized to the garment canvas; the mean training garment;
* garment mask: the mean training garment mask (binarised at 0.5).

Try-on regions: outside the repaint mask the model pastes the input back, exactly like the identity
baseline, so try-on is scored inside a region. The *changed region* is where the ground truth differs
from the input person (max channel difference > 0.1, opened with a 3x3 square, within the repaint mask):
the pixels a try-on must change. The repaint region (the whole mask) also holds background, skin and
hair that the identity baseline copies perfectly; its numbers are reported too.

Try-off is generated inside a region of the garment canvas, white outside (``eval.tryoff_region``):
the whole canvas (``full``, mask-free), the box (``pred_box``, Mask2BBox pred) or the silhouette
(``pred_mask``, the synthetic preset's choice) of the model's own predicted garment mask, or the same
from the ground-truth mask (``gt_box``, ``gt_mask``: for analysis only, they use ground truth).

**Rule:** the model beats baseline X on metric Y when its value is better (higher SSIM / IoU, lower L1).
The comparisons that decide ``passed`` (:data:`PRIMARY_COMPARISONS`): try-on L1 and SSIM in the changed
region against both try-on baselines, and in the repaint region against the masked person; try-off
L1 and SSIM against both try-off baselines; mask IoU against the mean mask. Further metrics (full-image
SSIM, MS-SSIM, CW-SSIM, LPIPS, ...) are reported for information; those that need backbone files are
listed as skipped with the reason.

Writes ``report.json``, ``report.md`` and ``grid.png`` (inputs, outputs and ground truth).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from twgtm.components import TWGTMComponents
from twgtm.images import fit_to_canvas

from .data import build_eval_dataset, build_train_dataset
from .grids import save_image_grid
from .metrics import HIGHER_IS_BETTER as METRIC_HIGHER_IS_BETTER, compute_metrics, mask_iou
from .sampling import run_model, to_unit

logger = logging.getLogger(__name__)

__all__ = ["region_l1", "region_ssim", "changed_region", "baseline_report", "PRIMARY_COMPARISONS"]

# (task, metric, baseline) triples that decide whether the model passes
PRIMARY_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("tryon", "changed_l1", "person_unchanged"), ("tryon", "changed_ssim", "person_unchanged"),
    ("tryon", "changed_l1", "masked_person"), ("tryon", "changed_ssim", "masked_person"),
    ("tryon", "region_l1", "masked_person"), ("tryon", "region_ssim", "masked_person"),
    ("tryoff", "l1", "person_resized"), ("tryoff", "ssim", "person_resized"),
    ("tryoff", "l1", "mean_garment"), ("tryoff", "ssim", "mean_garment"),
    ("mask", "mask_iou", "mean_mask"),
)
# the report's own metrics, on top of training.metrics' (SSIM, LPIPS, mask IoU, ...)
HIGHER_IS_BETTER = {**METRIC_HIGHER_IS_BETTER, "changed_l1": False, "changed_ssim": True, "region_l1": False,
                    "region_ssim": True, "l1": False}


# ---------------------------------------------------------------------------------------------- metrics
def region_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean absolute error (images in [0, 1]) over the pixels where ``mask`` is 1, averaged per image."""
    m = (mask > 0.5).float().expand_as(pred)                      # (N, 3, H, W)
    err = ((pred.float() - gt.float()).abs() * m).flatten(1).sum(1)
    return float((err / m.flatten(1).sum(1).clamp_min(1)).mean())


def changed_region(person: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Where the ground truth differs from the input person (images in [0, 1]): (N, 1, H, W) in {0, 1}.

    Max channel difference > ``threshold`` (above JPEG noise), opened with a 3x3 square (drops isolated
    pixels), within the repaint ``mask``. An item with no changed pixel falls back to its mask.
    """
    diff = ((gt.float() - person.float()).abs().amax(dim=1, keepdim=True) > threshold).float()  # (N, 1, H, W)
    opened = F.max_pool2d(-F.max_pool2d(-diff, 3, 1, 1), 3, 1, 1)    # erode, then dilate
    changed = opened * (mask > 0.5).float()
    empty = changed.flatten(1).amax(1) == 0
    changed[empty] = (mask[empty] > 0.5).float()
    return changed


def l1(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return float((pred.float() - gt.float()).abs().mean())


@torch.no_grad()
def region_ssim(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """The SSIM map (torchmetrics, Gaussian 11x11, sigma 1.5, data range 1) averaged inside ``mask``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, smap = structural_similarity_index_measure(pred.float(), gt.float(), data_range=1.0, reduction="none",
                                                  return_full_image=True)  # (N, 3, H, W)
    m = (mask > 0.5).float().expand_as(smap)
    return float(((smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)).mean())


# ---------------------------------------------------------------------------------------------- the report
def _load_split(run, cfg, root: Optional[str] = None) -> dict[str, Any]:
    unpaired = build_eval_dataset(run, cfg, pairs="unpaired", root=root)
    paired = build_eval_dataset(run, cfg, pairs="paired", root=root)
    if not getattr(unpaired, "has_target", False):
        raise FileNotFoundError(f"report: expected the unpaired ground truth ({run.data.eval_split}/unpaired-gt/) "
                                f"of a synthetic set; the report compares against rendered try-on ground truth")
    n = len(unpaired) if run.eval.max_items is None else min(len(unpaired), run.eval.max_items)
    u = default_collate([unpaired[i] for i in range(n)])
    p = default_collate([paired[i] for i in range(n)])
    if list(u["person_id"]) != list(p["person_id"]):
        raise ValueError("report: paired and unpaired test items are not in the same person order")
    return {"person": to_unit(u["person"]), "garment": to_unit(u["garment"]), "mask": u["person_mask"],
            "tryon_gt": to_unit(u["garment_target"]), "own_garment": to_unit(p["garment"]),
            "garment_mask": p["garment_mask"], "categories": list(u["category"]),
            "ids": [f"{a}__{b}" for a, b in zip(u["person_id"], u["garment_id"])]}


def _training_means(run, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean training garment (3, H, W) in [0, 1] and mean garment mask binarised at 0.5 (1, H, W)."""
    ds = build_train_dataset(run, cfg)
    total_g, total_m, n = None, None, 0
    for i in range(len(ds)):
        item = ds[i]  # a FlipDataset reads a plain index unflipped
        g, m = to_unit(item["garment"]), item["garment_mask"].float()
        total_g = g if total_g is None else total_g + g
        total_m = m if total_m is None else total_m + m
        n += 1
    return total_g / n, ((total_m / n) >= 0.5).float()


def _task_metrics(task: str, pred: torch.Tensor, gt: torch.Tensor, region: Optional[dict[str, torch.Tensor]],
                  run) -> tuple[dict[str, Optional[float]], dict[str, str]]:
    values: dict[str, Optional[float]] = {}
    if task == "tryon":
        values["changed_l1"] = region_l1(pred, gt, region["changed"])
        values["changed_ssim"] = region_ssim(pred, gt, region["changed"])
        values["region_l1"] = region_l1(pred, gt, region["mask"])
        values["region_ssim"] = region_ssim(pred, gt, region["mask"])
    values["l1"] = l1(pred, gt)
    extra = ["ssim", "lpips"] if task == "tryon" else ["ssim", "ms_ssim", "cw_ssim", "lpips", "dists"]
    res = compute_metrics(pred, gt, extra, weights_dir=run.resolve(run.eval.weights_dir),
                          lpips_net=run.eval.lpips_net)
    values.update(res)
    return values, dict(res.skipped)


def baseline_report(model: TWGTMComponents, run, out_dir: str | Path, *, timings: Optional[dict] = None,
                    eval_root: Optional[str] = None) -> dict:
    """Evaluate ``model`` and the baselines on the held-out synthetic pairs; write report.json/.md and grid.png.

    ``eval_root``: take the held-out pairs from the test split of another synthetic folder (a validation set);
    the mean-garment and mean-mask baselines still come from the run's training set.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    ev = run.eval
    data = _load_split(run, cfg, eval_root)
    mean_garment, mean_mask = _training_means(run, cfg)
    n = len(data["person"])

    # 1. model outputs
    model.eval()
    eta = model.config.eta if ev.eta is None else float(ev.eta)
    t_gen = time.perf_counter()
    outs = run_model(model, data["person"], data["garment"], data["mask"], data["categories"],
                     steps=ev.num_inference_steps, guidance_scale=ev.guidance_scale, eta=eta, seed=ev.seed,
                     scheduler=ev.scheduler, batch_size=ev.batch_size, tryoff_region=ev.tryoff_region,
                     garment_mask=data["garment_mask"])
    gen_seconds = time.perf_counter() - t_gen

    # 2. baselines
    person, region = data["person"], data["mask"]
    canvas = tuple(data["own_garment"].shape[-2:])
    candidates = {
        "tryon": {"model": outs["tryon"], "person_unchanged": person,
                  "masked_person": person * (1 - region) + 0.5 * region},
        "tryoff": {"model": outs["tryoff"],
                   "person_resized": fit_to_canvas(person, canvas, 1.0, mode="bicubic")[0].clamp(0, 1),
                   "mean_garment": mean_garment.expand(n, -1, -1, -1).contiguous()},
    }
    gts = {"tryon": data["tryon_gt"], "tryoff": data["own_garment"]}
    regions = {"mask": region, "changed": changed_region(person, data["tryon_gt"], region)}

    # 3. metrics
    results: dict[str, dict[str, dict[str, Optional[float]]]] = {"tryon": {}, "tryoff": {}, "mask": {}}
    skipped: dict[str, str] = {}
    for task, rows in candidates.items():
        for name, pred in rows.items():
            values, why = _task_metrics(task, pred, gts[task], regions if task == "tryon" else None, run)
            results[task][name] = values
            for metric, reason in why.items():
                skipped[f"{task}/{metric}"] = reason
    results["mask"]["model"] = {"mask_iou": mask_iou(outs["mask"], data["garment_mask"])}
    results["mask"]["mean_mask"] = {"mask_iou": mask_iou(mean_mask.expand(n, -1, -1, -1), data["garment_mask"])}

    # 4. the rule
    comparisons = []
    for task, metric, baseline in PRIMARY_COMPARISONS:
        mv, bv = results[task]["model"][metric], results[task][baseline][metric]
        better = (mv > bv) if HIGHER_IS_BETTER[metric] else (mv < bv)
        comparisons.append({"task": task, "metric": metric, "baseline": baseline, "model": mv,
                            "baseline_value": bv, "model_better": bool(better)})
    passed = all(c["model_better"] for c in comparisons)

    # 5. files
    report = {
        "passed": passed,
        "rule": "the model beats baseline X on metric Y when its value is better (higher SSIM/IoU, lower L1); "
                "'passed' requires every comparison in 'comparisons'",
        "items": n, "ids": data["ids"],
        "held_out": (f"test split of {eval_root}" if eval_root else f"{run.data.eval_split} split of the run's data"),
        "changed_region_fraction": round(float(regions["changed"].mean()), 4),
        "repaint_region_fraction": round(float((region > 0.5).float().mean()), 4),
        "settings": {"num_inference_steps": ev.num_inference_steps, "guidance_scale": ev.guidance_scale,
                     "scheduler": ev.scheduler, "eta": eta, "seed": ev.seed,
                     "tryoff_region": ev.tryoff_region,
                     "size": [cfg.height, cfg.width]},
        "results": results, "comparisons": comparisons, "skipped": skipped,
        "timings": dict(timings or {}, report_generation_s=round(gen_seconds, 1)),
    }
    grid_path = _report_grid(data, outs, regions["changed"], out_dir / "grid.png")
    report["grid"] = grid_path.name
    report["timings"]["report_s"] = round(time.perf_counter() - t0, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    logger.info("report: %s (passed=%s)", out_dir / "report.md", passed)
    return report


def _report_grid(data: dict, outs: dict, changed: torch.Tensor, path: Path, n: int = 8) -> Path:
    k = min(n, len(data["person"]))
    rows = [data["person"][:k], data["mask"][:k], data["garment"][:k], outs["tryon"][:k], data["tryon_gt"][:k],
            changed[:k], outs["tryoff"][:k], data["own_garment"][:k], outs["mask"][:k], data["garment_mask"][:k]]
    labels = ["person", "repaint mask", "garment", "try-on (model)", "try-on GT", "changed region",
              "try-off (model)", "try-off GT", "mask (model)", "mask GT"]
    return save_image_grid([list(r) for r in rows], path, row_labels=labels)


def _fmt(v: Optional[float]) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _markdown(report: dict) -> str:
    names = {"changed_l1": "L1 changed region ↓", "changed_ssim": "SSIM changed region ↑",
             "region_l1": "L1 repaint region ↓", "region_ssim": "SSIM repaint region ↑",
             "l1": "L1 ↓", "ssim": "SSIM ↑",
             "ms_ssim": "MS-SSIM ↑", "cw_ssim": "CW-SSIM ↑", "lpips": "LPIPS ↓", "dists": "DISTS ↓",
             "mask_iou": "mask IoU ↑"}
    titles = {"tryon": "Try-on (unpaired, rendered ground truth)", "tryoff": "Try-off (person -> flat garment)",
              "mask": "Garment mask"}
    lines = ["# Synthetic main job: model vs trivial baselines", "",
             f"Held-out pairs: {report['items']} ({report.get('held_out', 'test split')}). Sampler: {report['settings']['scheduler']} "
             f"{report['settings']['num_inference_steps']} steps, guidance {report['settings']['guidance_scale']}, "
             f"seed {report['settings']['seed']}; try-off region: {report['settings']['tryoff_region']}. "
             f"Changed region: {100 * report['changed_region_fraction']:.1f}% of the pixels, repaint region "
             f"{100 * report['repaint_region_fraction']:.1f}% (see training/report.py).", "",
             f"**Rule:** {report['rule']}.", "",
             f"**Result: {'PASSED' if report['passed'] else 'FAILED'}**", ""]
    for task, rows in report["results"].items():
        cols = [m for m in names if any(m in r for r in rows.values())]
        lines += [f"## {titles[task]}", "", "| | " + " | ".join(names[c] for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for row, vals in rows.items():
            lines.append(f"| {row} | " + " | ".join(_fmt(vals.get(c)) for c in cols) + " |")
        lines.append("")
    lines += ["## Comparisons", "", "| task | metric | baseline | model | baseline value | model better |",
              "|---|---|---|---:|---:|:---:|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['task']} | {c['metric']} | {c['baseline']} | {_fmt(c['model'])} | "
                     f"{_fmt(c['baseline_value'])} | {'yes' if c['model_better'] else 'NO'} |")
    if report["skipped"]:
        lines += ["", "Skipped metrics (no backbone files; nothing is downloaded):", ""]
        seen = set()
        for key, reason in report["skipped"].items():
            if reason not in seen:
                lines.append(f"- {key}: {reason}")
                seen.add(reason)
    if report.get("timings"):
        lines += ["", "## Timings (seconds)", "", "| part | s |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["timings"].items()]
    lines += ["", f"![grid]({report['grid']})", ""]
    return "\n".join(lines)
