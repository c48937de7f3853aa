"""``python -m training evaluate``: the paper's evaluation protocols (shared/design/DATA_AND_METRICS.md section 2).

* ``vton_paired``: each test person re-dressed in their own garment; SSIM and LPIPS against the person
  (CatVTON / LaDI-VTON).
* ``vton_unpaired``: the test pairs file (another garment of the same category); FID and KID against the
  set of real test persons, DINO against the rendered ground truth where the set has one
  (``test/unpaired-gt/``, synthetic data) and otherwise against the input person.
* ``vtoff``: person -> flat garment; SSIM, MS-SSIM, CW-SSIM (Y channel, as TryOffDiff's pyiqa setting),
  LPIPS, FID, CLIP-FID, KID, DISTS against ``test/cloth`` (+ the predicted mask's IoU with ``cloth-mask``).

DressCode is reported per category and over all. Every metric comes from :mod:`training.metrics`;
backbones are read from local files only. A metric whose file is missing is reported as skipped with
a message naming the file and where to place it (``--strict`` turns that into an error); the weight-free
metrics always run. Writes ``<protocol>.json`` / ``<protocol>.md`` per protocol and ``evaluation.json`` /
``evaluation.md`` with everything.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import default_collate

from twgtm.components import TWGTMComponents
from twgtm.errors import ConfigError, MissingFileError
from twgtm.weights import BaseSources, load_twgtm

from .config import EvalConfig
from .data import open_split
from .metrics import VTOFF, VTON_PAIRED, MetricResults, compute_metrics, write_report
from .sampling import run_model, to_unit

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "EvalOptions", "evaluate", "evaluate_checkpoint"]

PROTOCOLS = ("vton_paired", "vton_unpaired", "vtoff")


@dataclass
class EvalOptions(EvalConfig):
    """The run config's ``eval`` section (:class:`training.config.EvalConfig`: sampler, seed, batch, metric
    backbones) plus the options of one ``evaluate`` call."""

    size: Optional[tuple[int, int]] = None  # evaluation (H, W); default the model size
    save_images: bool = False
    strict: bool = False
    categories: Optional[list[str]] = None  # DressCode categories (default: all present)
    kind: str = "auto"                      # dataset layout: auto or one of training.config.DATASET_KINDS

    @classmethod
    def from_config(cls, ev: EvalConfig, **options: Any) -> "EvalOptions":
        return cls(**{**dataclasses.asdict(ev), **options})


def _load_items(root: str, opts: EvalOptions, pairs: str, size: tuple[int, int]) -> dict[str, Any]:
    ds = open_split(root, opts.kind, split="test", pairs=pairs, size=size, categories=opts.categories)
    n = len(ds) if opts.max_items is None else min(len(ds), opts.max_items)
    if n == 0:
        raise ConfigError(f"--data {root}: the test split ({pairs}) has no items")
    items = [ds[i] for i in range(n)]
    batch = default_collate(items)
    out = {"person": to_unit(batch["person"]), "garment": to_unit(batch["garment"]), "mask": batch["person_mask"],
           "garment_mask": batch["garment_mask"], "categories": list(batch["category"]),
           "ids": [f"{a}__{b}" for a, b in zip(batch["person_id"], batch["garment_id"])], "kind": ds.kind}
    if "garment_target" in batch:
        out["target"] = to_unit(batch["garment_target"])
    return out


def _merge(*parts):
    out = MetricResults()
    for p in parts:
        out.update(p)
        out.skipped.update(getattr(p, "skipped", {}))
    return out


def _by_category(categories: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
    """Row name -> item indices: "all", plus one row per category for DressCode (or mixed sets)."""
    groups = {"all": torch.arange(len(categories))}
    distinct = sorted(set(categories))
    if kind == "dresscode" or len(distinct) > 1:
        for c in distinct:
            groups[c] = torch.tensor([i for i, x in enumerate(categories) if x == c])
    return groups


def _save_images(images: torch.Tensor, ids: Sequence[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, ids):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        Image.fromarray(arr).save(folder / f"{name}.png")


def evaluate(model: TWGTMComponents, data_root: str, out_dir: str | Path, *, protocols: Sequence[str] = PROTOCOLS,
             opts: Optional[EvalOptions] = None) -> dict[str, Any]:
    """Run the protocols on ``data_root``'s test split; write JSON and Markdown into ``out_dir``."""
    opts = opts or EvalOptions()
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"--protocol: expected names from {PROTOCOLS}, got {bad}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    size = tuple(opts.size) if opts.size else (cfg.height, cfg.width)
    model.eval()
    common = dict(weights_dir=opts.weights_dir, lpips_net=opts.lpips_net, clip_dir=opts.clip_dir,
                  dino_dir=opts.dino_dir)
    gen = dict(steps=opts.num_inference_steps, guidance_scale=opts.guidance_scale, eta=opts.eta, seed=opts.seed,
               scheduler=opts.scheduler, batch_size=opts.batch_size)
    summary: dict[str, Any] = {"data": str(data_root), "size": list(size), "settings": dataclasses.asdict(opts),
                               "protocols": {}}
    md_parts = []
    for proto in protocols:
        t0 = time.perf_counter()
        pairs = "unpaired" if proto == "vton_unpaired" else "paired"
        d = _load_items(data_root, opts, pairs, size)
        # 1. generate
        if proto.startswith("vton"):
            pred = run_model(model, d["person"], d["garment"], d["mask"], d["categories"], **gen,
                             tryoff_region="full", garment_mask=d["garment_mask"], tasks=("tryon",))["tryon"]
        else:
            outs = run_model(model, d["person"], d["garment"], d["mask"], d["categories"], **gen,
                             tryoff_region=opts.tryoff_region, garment_mask=d["garment_mask"], tasks=("tryoff", "mask"))
            pred, pred_mask = outs["tryoff"], outs["mask"]
        if opts.save_images:
            _save_images(pred, d["ids"], out_dir / "images" / proto)
        # 2. metrics, per category group
        rows = {}
        for row, idx in _by_category(d["categories"], d["kind"]).items():
            p = pred[idx]
            if proto == "vton_paired":
                res = compute_metrics(p, d["person"][idx], list(VTON_PAIRED), **common)
            elif proto == "vton_unpaired":
                dist = compute_metrics(p, d["person"][idx], ["fid", "kid"], **common)
                ref = d.get("target", d["person"])[idx]
                rows_dino = compute_metrics(p, ref, ["dino"], **common)
                res = _merge(dist, rows_dino)
            else:
                res = compute_metrics(p, d["garment"][idx], list(VTOFF) + ["mask_iou"], y_channel=True,
                                      pred_mask=pred_mask[idx], gt_mask=d["garment_mask"][idx], **common)
            rows[row] = res
        paths = write_report(rows, out_dir, proto)
        md_parts.append(paths.markdown.read_text())
        summary["protocols"][proto] = {
            "items": len(d["ids"]), "seconds": round(time.perf_counter() - t0, 1),
            "rows": {r: dict(v) for r, v in rows.items()},
            "skipped": {r: dict(v.skipped) for r, v in rows.items() if v.skipped},
            "dino_reference": (("rendered ground truth" if "target" in d else "input person")
                               if proto == "vton_unpaired" else None),
        }
    (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text("\n".join(md_parts))
    skipped = {f"{p}/{r}/{m}": why for p, v in summary["protocols"].items() for r, s in v["skipped"].items()
               for m, why in s.items()}
    if skipped:
        for reason in sorted(set(skipped.values())):
            logger.warning("metric skipped: %s", reason)
        if opts.strict:
            raise MissingFileError("evaluate --strict: metrics were skipped: " +
                                   "; ".join(sorted(set(skipped.values()))))
    return summary


def evaluate_checkpoint(checkpoint: str, data_root: str, out_dir: str | Path, *, base: Optional[BaseSources] = None,
                        protocols: Sequence[str] = PROTOCOLS, opts: Optional[EvalOptions] = None,
                        device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Load a TWGTM ``.safetensors`` file (plus base sources if it holds trained parts only) and evaluate."""
    model = load_twgtm(checkpoint, base=base, device=device, dtype=dtype)
    return evaluate(model, data_root, out_dir, protocols=protocols, opts=opts)
