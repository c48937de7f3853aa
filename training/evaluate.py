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
``evaluation.md`` with everything. Items stream a batch at a time, resumable and shardable (see `evaluate`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image

from twgtm.components import TWGTMComponents
from twgtm.errors import ConfigError, MissingFileError
from twgtm.weights import BaseSources, load_twgtm

from .config import EvalConfig
from .data import open_split
from .metrics import VTOFF, VTON_PAIRED, ItemScorer, reduce_items, write_report
from .sampling import batches, broadcast_from_rank0, dist_info, gather_to_rank0, run_model, shard, to_unit

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
    resume: bool = True                     # reuse the outputs of items already in out_dir (same settings)
    num_workers: int = 0                    # DataLoader workers

    @classmethod
    def from_config(cls, ev: EvalConfig, **options: Any) -> "EvalOptions":
        return cls(**{**dataclasses.asdict(ev), **options})


_NAMES = {"vton_paired": list(VTON_PAIRED), "vton_unpaired": ["fid", "kid", "dino"], "vtoff": list(VTOFF) + ["mask_iou"]}


def _by_category(categories: Sequence[str], kind: str) -> dict[str, list[int]]:
    """Row name -> item positions: "all", plus one row per category for DressCode (or mixed sets)."""
    groups = {"all": list(range(len(categories)))}
    distinct = sorted(set(categories))
    if kind == "dresscode" or len(distinct) > 1:
        for c in distinct:
            groups[c] = [i for i, x in enumerate(categories) if x == c]
    return groups


def _save_images(images: torch.Tensor, ids: Sequence[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, ids):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        Image.fromarray(arr).save(folder / f"{name}.png")


def _fingerprint(opts: EvalOptions, proto: str, data_root: str, size, model_id: Optional[str]) -> dict:
    """What an item's output depends on: records made with anything else are not reused."""
    keys = ("num_inference_steps", "guidance_scale", "scheduler", "eta", "seed", "tryoff_region", "kind",
            "weights_dir", "lpips_net", "clip_dir", "dino_dir")
    return {"protocol": proto, "data": str(Path(data_root).resolve()), "size": list(size), "model": model_id,
            **{k: getattr(opts, k) for k in keys}}


def _open_records(folder: Path, want: dict, resume: bool, rank: int) -> None:
    """Check (or start) a protocol's records folder: resuming needs records made with the same settings."""
    settings = folder / "settings.json"
    if settings.is_file() and resume:
        have = json.loads(settings.read_text())
        differ = {k: have.get(k) for k in want if have.get(k) != want[k]}
        if differ:
            raise ConfigError(f"evaluate: {str(folder)!r} holds outputs made with {differ}, this call asks for "
                              f"{({k: want[k] for k in differ})}; delete that folder or choose another --out")
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for old in folder.glob("*.pt"):
                old.unlink()
        tmp = settings.with_suffix(".tmp")
        tmp.write_text(json.dumps(want, indent=2) + "\n")
        os.replace(tmp, settings)


def _write_record(folder: Path, rec: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{rec['id']}.{os.getpid()}.tmp"
    torch.save(rec, tmp)
    os.replace(tmp, folder / f"{rec['id']}.pt")


def _run_protocol(model: TWGTMComponents, proto: str, ds, n: int, opts: EvalOptions, common: dict, gen: dict,
                  out_dir: Path, folder: Path, rank: int, world: int) -> list[dict]:
    """This process's records of ``proto``: read back where an item's outputs exist, else generated and scored
    a batch at a time (images written as they are made)."""
    ids = [f"{Path(a).stem}__{Path(b).stem}" for a, b, _ in ds.items[:n]]
    image_dir = out_dir / "images" / proto
    records, pending = [], []
    for j in shard(n, rank, world):
        path = folder / f"{ids[j]}.pt"
        if opts.resume and path.is_file() and (not opts.save_images or (image_dir / f"{ids[j]}.png").is_file()):
            records.append(torch.load(path, map_location="cpu", weights_only=True))
        else:
            pending.append(j)
    if records:
        logger.info("%s: %d of %d items read back from %s", proto, len(records), len(records) + len(pending), folder)
    if proto == "vton_unpaired":
        scorers = {"person": ItemScorer(["fid", "kid"], **common), "ref": ItemScorer(["dino"], **common)}
    elif proto == "vton_paired":
        scorers = {"person": ItemScorer(VTON_PAIRED, **common)}
    else:
        scorers = {"garment": ItemScorer(_NAMES["vtoff"], y_channel=True, **common)}
    for batch in batches(ds, pending, opts.batch_size, opts.num_workers):
        person, garment = to_unit(batch["person"]), to_unit(batch["garment"])
        cats = list(batch["category"])
        if proto.startswith("vton"):
            pred = run_model(model, person, garment, batch["person_mask"], cats, **gen, tryoff_region="full",
                             garment_mask=batch["garment_mask"], tasks=("tryon",), indices=batch["index"])["tryon"]
            recs = scorers["person"](pred, person)
            if proto == "vton_unpaired":
                ref = to_unit(batch["garment_target"]) if "garment_target" in batch else person
                for rec, extra in zip(recs, scorers["ref"](pred, ref)):
                    rec["scores"].update(extra["scores"])
                    rec["skipped"].update(extra["skipped"])
        else:
            outs = run_model(model, person, garment, batch["person_mask"], cats, **gen,
                             tryoff_region=opts.tryoff_region, garment_mask=batch["garment_mask"],
                             tasks=("tryoff", "mask"), indices=batch["index"])
            pred = outs["tryoff"]
            recs = scorers["garment"](pred, garment, pred_mask=outs.get("mask"), gt_mask=batch["garment_mask"])
        batch_ids = [ids[int(j)] for j in batch["index"]]
        if opts.save_images:
            _save_images(pred, batch_ids, image_dir)
        for rec, j, i, c in zip(recs, batch["index"].tolist(), batch_ids, cats):
            rec.update(index=j, id=i, category=c)
            _write_record(folder, rec)
            records.append(rec)
    return records


def evaluate(model: TWGTMComponents, data_root: str, out_dir: str | Path, *, protocols: Sequence[str] = PROTOCOLS,
             opts: Optional[EvalOptions] = None, model_id: Optional[str] = None) -> dict[str, Any]:
    """Run the protocols on ``data_root``'s test split; write JSON and Markdown into ``out_dir``.

    Streams: a batch of items at a time through a DataLoader; per item only its scores (and FID/KID/CLIP-FID
    backbone features) are kept, in ``out_dir/records/<protocol>/<id>.pt`` (and its image with
    ``save_images``). Resumable: items whose outputs exist (made with the same settings and ``model_id``) are
    read back, not generated. Sharded when ``torch.distributed`` is initialised: rank r takes items
    r, r + world, ...; the records are gathered on rank 0, which writes the files; every rank returns the summary.
    """
    opts = opts or EvalOptions()
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"--protocol: expected names from {PROTOCOLS}, got {bad}")
    rank, world = dist_info()
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
        ds = open_split(data_root, opts.kind, split="test", pairs=pairs, size=size, categories=opts.categories)
        n = len(ds) if opts.max_items is None else min(len(ds), opts.max_items)
        if n == 0:
            raise ConfigError(f"--data {data_root}: the test split ({pairs}) has no items")
        folder = out_dir / "records" / proto
        _open_records(folder, _fingerprint(opts, proto, data_root, size, model_id), opts.resume, rank)
        mine = _run_protocol(model, proto, ds, n, opts, common, gen, out_dir, folder, rank, world)
        gathered = gather_to_rank0(mine)
        if rank != 0:
            continue
        records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        rows = {row: reduce_items([records[i] for i in idx], _NAMES[proto])
                for row, idx in _by_category([r["category"] for r in records], ds.kind).items()}
        paths = write_report(rows, out_dir, proto)
        md_parts.append(paths.markdown.read_text())
        summary["protocols"][proto] = {
            "items": len(records), "seconds": round(time.perf_counter() - t0, 1),
            "rows": {r: dict(v) for r, v in rows.items()},
            "skipped": {r: dict(v.skipped) for r, v in rows.items() if v.skipped},
            "dino_reference": (("rendered ground truth" if getattr(ds, "has_target", False) else "input person")
                               if proto == "vton_unpaired" else None),
        }
    if rank == 0:
        (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out_dir / "evaluation.md").write_text("\n".join(md_parts))
    summary = broadcast_from_rank0(summary)
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
    st = Path(checkpoint).stat()
    return evaluate(model, data_root, out_dir, protocols=protocols, opts=opts,
                    model_id=f"{Path(checkpoint).resolve()}:{st.st_size}:{st.st_mtime_ns}:{dtype}")
