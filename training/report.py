"""The main job's report: the trained model against trivial baselines.

The report runs on held-out synthetic pairs (the test split: unpaired try-on pairs with a rendered
ground truth, ``test/unpaired-gt/``, and each person's own garment as the try-off ground truth) and
compares the model with:

* try-on (unpaired, rendered ground truth): the input person unchanged; the masked person (repaint
  region filled with mid-gray, the model's own masked input);
* try-off: the person image resized to the garment canvas; the mean training garment; the mean training
  garment of the item's own category (upper, lower, dress: ``category_mean_garment``);
* garment mask: the mean training garment mask (binarised at 0.5), over all and of the item's own category
  (``category_mean_mask``).

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
L1 and SSIM against both try-off baselines; mask IoU against the mean mask; and in every category present
(over that category's items, :data:`CATEGORY_COMPARISONS`) try-off L1 and SSIM against the category's mean
garment and mask IoU against its mean mask. Every metric is also reported per category. Further metrics (full-image
SSIM, MS-SSIM, CW-SSIM, LPIPS, ...) are reported for information; those that need backbone files are
listed as skipped with the reason.

Writes ``report.json``, ``report.md`` and ``grid.png`` (inputs, outputs and ground truth).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from twgtm.components import TWGTMComponents
from twgtm.config import CATEGORIES
from twgtm.images import fit_to_canvas

from .data import build_eval_dataset, build_train_dataset
from .grids import save_image_grid
from .metrics import HIGHER_IS_BETTER as METRIC_HIGHER_IS_BETTER, ItemScorer, mask_iou_scores, reduce_items
from .sampling import batches, run_model, to_unit

logger = logging.getLogger(__name__)

__all__ = ["region_l1", "region_ssim", "region_l1_scores", "region_ssim_scores", "changed_region",
           "baseline_report", "report_items", "training_means", "PRIMARY_COMPARISONS", "CATEGORY_COMPARISONS"]

# (task, metric, baseline) triples that decide whether the model passes
PRIMARY_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("tryon", "changed_l1", "person_unchanged"), ("tryon", "changed_ssim", "person_unchanged"),
    ("tryon", "changed_l1", "masked_person"), ("tryon", "changed_ssim", "masked_person"),
    ("tryon", "region_l1", "masked_person"), ("tryon", "region_ssim", "masked_person"),
    ("tryoff", "l1", "person_resized"), ("tryoff", "ssim", "person_resized"),
    ("tryoff", "l1", "mean_garment"), ("tryoff", "ssim", "mean_garment"),
    ("mask", "mask_iou", "mean_mask"),
)
# (task, metric, baseline) triples that must hold in every category present, each over that category's items
CATEGORY_COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("tryoff", "l1", "category_mean_garment"), ("tryoff", "ssim", "category_mean_garment"),
    ("mask", "mask_iou", "category_mean_mask"),
)
# the report's own metrics, on top of training.metrics' (SSIM, LPIPS, mask IoU, ...)
HIGHER_IS_BETTER = {**METRIC_HIGHER_IS_BETTER, "changed_l1": False, "changed_ssim": True, "region_l1": False,
                    "region_ssim": True, "l1": False}


# ---------------------------------------------------------------------------------------------- metrics
def region_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean absolute error (images in [0, 1]) over the pixels where ``mask`` is 1, averaged per image."""
    return float(region_l1_scores(pred, gt, mask).mean())


def region_l1_scores(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image `region_l1` (N,)."""
    m = (mask > 0.5).float().expand_as(pred)                      # (N, 3, H, W)
    err = ((pred.float() - gt.float()).abs() * m).flatten(1).sum(1)
    return err / m.flatten(1).sum(1).clamp_min(1)


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


@torch.no_grad()
def region_ssim(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """The SSIM map (torchmetrics, Gaussian 11x11, sigma 1.5, data range 1) averaged inside ``mask``."""
    return float(region_ssim_scores(pred, gt, mask).mean())


@torch.no_grad()
def region_ssim_scores(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image `region_ssim` (N,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, smap = structural_similarity_index_measure(pred.float(), gt.float(), data_range=1.0, reduction="none",
                                                  return_full_image=True)  # (N, 3, H, W)
    m = (mask > 0.5).float().expand_as(smap)
    return (smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


# ---------------------------------------------------------------------------------------------- the report
# the per-image metrics of each task (means over items; see training.metrics.reduce_items)
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "tryon": ("changed_l1", "changed_ssim", "region_l1", "region_ssim", "l1", "ssim", "lpips"),
    "tryoff": ("l1", "ssim", "ms_ssim", "cw_ssim", "lpips", "dists"),
    "mask": ("mask_iou",),
}
_BACKBONE_METRICS = {"tryon": ("ssim", "lpips"), "tryoff": ("ssim", "ms_ssim", "cw_ssim", "lpips", "dists")}


class _ReportItems(Dataset):
    """Item i: the unpaired test pair (person, another garment, rendered ground truth) and the person's own
    garment and garment mask from the paired split (the try-off ground truth)."""

    def __init__(self, unpaired: Dataset, paired: Dataset) -> None:
        self.unpaired, self.paired = unpaired, paired

    def __len__(self) -> int:
        return len(self.unpaired)

    def __getitem__(self, i: int) -> dict:
        u, p = self.unpaired[i], self.paired[i]
        if u["person_id"] != p["person_id"]:
            raise ValueError("report: paired and unpaired test items are not in the same person order")
        return {"person": u["person"], "garment": u["garment"], "mask": u["person_mask"],
                "tryon_gt": u["garment_target"], "own_garment": p["garment"], "garment_mask": p["garment_mask"],
                "category": u["category"], "id": f"{u['person_id']}__{u['garment_id']}"}


def report_items(run, cfg, root: Optional[str] = None) -> Dataset:
    """The report's held-out items (see ``_ReportItems``): the run's evaluation split, or the test split of the
    synthetic folder ``root`` (a validation set)."""
    unpaired = build_eval_dataset(run, cfg, pairs="unpaired", root=root)
    paired = build_eval_dataset(run, cfg, pairs="paired", root=root)
    if not getattr(unpaired, "has_target", False):
        raise FileNotFoundError(f"report: expected the unpaired ground truth ({run.data.eval_split}/unpaired-gt/) "
                                f"of a synthetic set; the report compares against rendered try-on ground truth")
    return _ReportItems(unpaired, paired)


@dataclass
class TrainingMeans:
    """Mean training garment (3, H, W) in [0, 1] and mean garment mask binarised at 0.5 (1, H, W), over all
    training items and per category (``by_category[c] = (garment, mask)``)."""

    garment: torch.Tensor
    mask: torch.Tensor
    by_category: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def for_items(self, categories: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) and (N, 1, H, W): each item's own-category means (the all-category ones for a category
        without training items)."""
        pairs = [self.by_category.get(c, (self.garment, self.mask)) for c in categories]
        return torch.stack([g for g, _ in pairs]), torch.stack([m for _, m in pairs])


def training_means(run, cfg) -> TrainingMeans:
    """The means of the run's training set, read one item at a time (never cached in memory)."""
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, cache_in_memory=False))
    ds = build_train_dataset(run, cfg)
    sums: dict[str, list] = {}
    for i in range(len(ds)):
        item = ds[i]  # a FlipDataset reads a plain index unflipped
        g, m = to_unit(item["garment"]).double(), item["garment_mask"].double()
        for key in ("all", item["category"]):
            acc = sums.setdefault(key, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + g, acc[1] + m, acc[2] + 1
    if "all" not in sums:
        raise ValueError("report: the run's training set is empty; the mean-garment baselines need training items")

    def mean(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        g, m, n = sums[key]
        return (g / n).float(), ((m / n) >= 0.5).float()

    garment, mask = mean("all")
    return TrainingMeans(garment, mask, {c: mean(c) for c in CATEGORIES if c in sums})


def _item_records(batch: dict, outs: dict[str, torch.Tensor], means: TrainingMeans,
                  scorers: dict[str, ItemScorer]) -> list[dict]:
    """Per item of a batch: every task's candidates (model and baselines) scored against the ground truth."""
    person, region, gt_on = to_unit(batch["person"]), batch["mask"], to_unit(batch["tryon_gt"])
    gt_off, gt_mask = to_unit(batch["own_garment"]), batch["garment_mask"]
    n, canvas = len(person), tuple(gt_off.shape[-2:])
    cat_garment, cat_mask = means.for_items(batch["category"])
    changed = changed_region(person, gt_on, region)
    candidates = {
        "tryon": {"model": outs["tryon"], "person_unchanged": person,
                  "masked_person": person * (1 - region) + 0.5 * region},
        "tryoff": {"model": outs["tryoff"],
                   "person_resized": fit_to_canvas(person, canvas, 1.0, mode="bicubic")[0].clamp(0, 1),
                   "mean_garment": means.garment.expand(n, -1, -1, -1).contiguous(),
                   "category_mean_garment": cat_garment},
        "mask": {"mean_mask": means.mask.expand(n, -1, -1, -1).contiguous(), "category_mean_mask": cat_mask},
    }
    if "mask" in outs:  # a model without an SRM (ablation Variant 1) predicts no garment mask
        candidates["mask"] = {"model": outs["mask"], **candidates["mask"]}
    per_item: list[dict] = [{"index": int(j), "id": i, "category": c, "results": {t: {} for t in candidates},
                             "changed_fraction": float(changed[k].mean()),
                             "repaint_fraction": float((region[k] > 0.5).float().mean())}
                            for k, (j, i, c) in enumerate(zip(batch["index"], batch["id"], batch["category"]))]
    for task, rows in candidates.items():
        for name, pred in rows.items():
            if task == "mask":
                recs = [{"scores": {"mask_iou": float(v)}, "features": {}, "skipped": {}}
                        for v in mask_iou_scores(pred, gt_mask).tolist()]
            else:
                gt = gt_on if task == "tryon" else gt_off
                recs = scorers[task](pred, gt)
                own = {"l1": (pred.float() - gt.float()).abs().flatten(1).mean(1)}
                if task == "tryon":
                    own.update(changed_l1=region_l1_scores(pred, gt, changed),
                               changed_ssim=region_ssim_scores(pred, gt, changed),
                               region_l1=region_l1_scores(pred, gt, region),
                               region_ssim=region_ssim_scores(pred, gt, region))
                for metric, values in own.items():
                    for rec, v in zip(recs, values.tolist()):
                        rec["scores"][metric] = float(v)
            for item, rec in zip(per_item, recs):
                item["results"][task][name] = rec
    return per_item


def _reduce(records: Sequence[dict]) -> tuple[dict, dict[str, str]]:
    """{task: {candidate: {metric: value}}} over ``records`` and the skipped metrics' reasons. A task the model
    has no output for (the garment mask of a model without an SRM) gets a model row of None values."""
    results: dict[str, dict[str, dict[str, Optional[float]]]] = {}
    skipped: dict[str, str] = {}
    for task, rows in records[0]["results"].items():
        results[task] = {} if "model" in rows else {"model": {m: None for m in TASK_METRICS[task]}}
        for name in rows:
            res = reduce_items([r["results"][task][name] for r in records], TASK_METRICS[task])
            results[task][name] = dict(res)
            skipped.update({f"{task}/{m}": why for m, why in res.skipped.items()})
    return results, skipped


def _compare(results: dict, category: str, triples) -> list[dict]:
    """The comparisons; one the model has no value for (no predicted mask without an SRM) has
    ``model_better`` None: not available, neither won nor lost."""
    out = []
    for task, metric, baseline in triples:
        mv, bv = results[task]["model"][metric], results[task][baseline][metric]
        better = mv is not None and bv is not None and ((mv > bv) if HIGHER_IS_BETTER[metric] else (mv < bv))
        out.append({"category": category, "task": task, "metric": metric, "baseline": baseline, "model": mv,
                    "baseline_value": bv, "model_better": None if mv is None else bool(better)})
    return out


def baseline_report(model: TWGTMComponents, run, out_dir: str | Path, *, timings: Optional[dict] = None,
                    eval_root: Optional[str] = None, loss_curves: Optional[Path] = None) -> dict:
    """Evaluate ``model`` and the baselines on the held-out synthetic pairs; write report.json/.md and grid.png.

    ``eval_root``: take the held-out pairs from the test split of another synthetic folder (a validation set);
    the mean-garment and mean-mask baselines still come from the run's training set. The items stream through
    a DataLoader ``eval.batch_size`` at a time: only per-item scores and the grid's first items are kept.
    ``loss_curves``: a PNG in ``out_dir`` (training.tracking.plot_losses) that report.md shows.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    ev = run.eval
    items = report_items(run, cfg, eval_root)
    means = training_means(run, cfg)
    n = len(items) if ev.max_items is None else min(len(items), ev.max_items)
    if n == 0:
        raise ValueError(f"report: the held-out split ({eval_root or run.data.eval_split}) has no items")
    weights = dict(weights_dir=run.resolve(ev.weights_dir), lpips_net=ev.lpips_net)
    scorers = {task: ItemScorer(names, **weights) for task, names in _BACKBONE_METRICS.items()}

    model.eval()
    eta = model.config.eta if ev.eta is None else float(ev.eta)
    gen_seconds, records, grid_parts = 0.0, [], []
    for batch in batches(items, range(n), ev.batch_size):
        t_gen = time.perf_counter()
        outs = run_model(model, to_unit(batch["person"]), to_unit(batch["garment"]), batch["mask"],
                         list(batch["category"]), steps=ev.num_inference_steps, guidance_scale=ev.guidance_scale,
                         eta=eta, seed=ev.seed, scheduler=ev.scheduler, batch_size=ev.batch_size,
                         tryoff_region=ev.tryoff_region, garment_mask=batch["garment_mask"],
                         indices=batch["index"])
        gen_seconds += time.perf_counter() - t_gen
        records += _item_records(batch, outs, means, scorers)
        if sum(len(b["person"]) for b, _ in grid_parts) < _GRID_ITEMS:
            grid_parts.append((batch, outs))

    # metrics over all items and per category present (CATEGORIES order); the rule
    results, skipped = _reduce(records)
    present = [c for c in CATEGORIES if any(r["category"] == c for r in records)]
    present += sorted({r["category"] for r in records} - set(present))
    per_category = {}
    for c in present:
        group = [r for r in records if r["category"] == c]
        per_category[c] = {"items": len(group), "results": _reduce(group)[0]}
    comparisons = _compare(results, "all", PRIMARY_COMPARISONS)
    for c in present:
        comparisons += _compare(per_category[c]["results"], c, CATEGORY_COMPARISONS)
    failed = [f"{x['task']} {x['metric']} vs {x['baseline']} ({x['category']})"
              for x in comparisons if x["model_better"] is False]
    passed = not failed
    notes = [f"no training item of category {c!r}: its category baselines are the all-category means"
             for c in present if c not in means.by_category]
    if not cfg.use_srm:
        notes.append("the model has no Spatial Refinement Module (use_srm false, ablation Variant 1), so it predicts "
                     "no garment mask: its mask IoU is not available (null) and the mask comparisons are left out "
                     "of 'passed'")

    report = {
        "passed": passed,
        "rule": "the model beats baseline X on metric Y when its value is better (higher SSIM/IoU, lower L1); "
                "'passed' requires every comparison in 'comparisons' (over all items, and per category against "
                "the category's own mean garment and mean mask)",
        "failed": failed,
        "items": n, "ids": [r["id"] for r in records],
        "held_out": (f"test split of {eval_root}" if eval_root else f"{run.data.eval_split} split of the run's data"),
        "changed_region_fraction": round(math.fsum(r["changed_fraction"] for r in records) / n, 4),
        "repaint_region_fraction": round(math.fsum(r["repaint_fraction"] for r in records) / n, 4),
        "settings": {"num_inference_steps": ev.num_inference_steps, "guidance_scale": ev.guidance_scale,
                     "scheduler": ev.scheduler, "eta": eta, "seed": ev.seed,
                     "tryoff_region": ev.tryoff_region,
                     "size": [cfg.height, cfg.width]},
        "results": results, "per_category": per_category, "comparisons": comparisons, "skipped": skipped,
        "notes": notes,
        "timings": dict(timings or {}, report_generation_s=round(gen_seconds, 1)),
    }
    grid_path = _report_grid(grid_parts, out_dir / "grid.png")
    report["grid"] = grid_path.name
    if loss_curves is not None:
        report["loss_curves"] = Path(loss_curves).name
    report["timings"]["report_s"] = round(time.perf_counter() - t0, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    logger.info("report: %s (passed=%s)", out_dir / "report.md", passed)
    return report


_GRID_ITEMS = 8


def _report_grid(parts: list[tuple[dict, dict]], path: Path, n: int = _GRID_ITEMS) -> Path:
    cat = lambda key, src: torch.cat([(b if src == "batch" else o)[key] for b, o in parts])[:n]  # noqa: E731
    person, gt_on = to_unit(cat("person", "batch")), to_unit(cat("tryon_gt", "batch"))
    mask = cat("mask", "batch")
    rows = [person, mask, to_unit(cat("garment", "batch")), cat("tryon", "outs"), gt_on,
            changed_region(person, gt_on, mask), cat("tryoff", "outs"), to_unit(cat("own_garment", "batch")),
            cat("mask", "outs") if "mask" in parts[0][1] else torch.zeros_like(cat("garment_mask", "batch")),
            cat("garment_mask", "batch")]
    labels = ["person", "repaint mask", "garment", "try-on (model)", "try-on GT", "changed region",
              "try-off (model)", "try-off GT",
              "mask (model)" if "mask" in parts[0][1] else "mask (model: none)", "mask GT"]
    return save_image_grid([list(r) for r in rows], path, row_labels=labels)


def _better(value: Optional[bool]) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


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
    if report.get("failed"):
        lines += ["Failed comparisons: " + "; ".join(report["failed"]) + ".", ""]
    lines += [f"Note: {note}." for note in report.get("notes", [])] + ([""] if report.get("notes") else [])
    for task, rows in report["results"].items():
        cols = [m for m in names if any(m in r for r in rows.values())]
        lines += [f"## {titles[task]}", "", "| | " + " | ".join(names[c] for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for row, vals in rows.items():
            lines.append(f"| {row} | " + " | ".join(_fmt(vals.get(c)) for c in cols) + " |")
        lines.append("")
    per_cols = {"tryon": ("changed_l1", "changed_ssim", "region_l1", "region_ssim"), "tryoff": ("l1", "ssim"),
                "mask": ("mask_iou",)}
    for task, cols in per_cols.items():
        lines += [f"## Per category: {titles[task]}", "",
                  "| category | items | | " + " | ".join(names[c] for c in cols) + " |",
                  "|---|---:|---|" + "---:|" * len(cols)]
        for cat, part in report.get("per_category", {}).items():
            for row, vals in part["results"][task].items():
                lines.append(f"| {cat} | {part['items']} | {row} | " + " | ".join(_fmt(vals.get(c)) for c in cols)
                             + " |")
        lines.append("")
    lines += ["## Comparisons", "",
              "| category | task | metric | baseline | model | baseline value | model better |",
              "|---|---|---|---|---:|---:|:---:|"]
    for c in report["comparisons"]:
        lines.append(f"| {c.get('category', 'all')} | {c['task']} | {c['metric']} | {c['baseline']} | {_fmt(c['model'])} | "
                     f"{_fmt(c['baseline_value'])} | {_better(c['model_better'])} |")
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
    if report.get("loss_curves"):
        lines += ["## Training loss curves", "", "Each stage's loss, diffusion loss and mask loss per step, from its "
                  "log.csv (`python -m training plot RUN_DIR` draws them for any run).", "",
                  f"![loss curves]({report['loss_curves']})", ""]
    return "\n".join(lines)
