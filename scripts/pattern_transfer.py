"""How much of the garments' patterns a trained model transfers, in both directions (analysis for issue 11).

    python scripts/pattern_transfer.py RUN_DIR [--eval-data DIR] [--max-items N] [--min-rms R] [--sigma S]
                                       [--layout]

RUN_DIR is a main-job folder (its ``config.yaml`` and exported model). The items are the report's: the run's
test split, or the test split of ``--eval-data`` (a validation set). Sampling uses the run's ``eval`` settings,
so the images are the report's. Try-off is scored inside the ground-truth flat-garment mask, try-on inside the
changed region (``training.report.changed_region``), with ``training.metrics.pattern_scores`` (high-passed
luminance, correlation and energy against the ground truth). Only items whose ground truth carries a pattern
(high-pass RMS at least ``--min-rms``) count. For reference it scores the ground truth passed through the run's
own VAE (what the latent space can hold) and, for try-off, the item's own-category mean garment (no pattern).

``--layout`` adds a check one step before patterns: does try-on follow the garment's layout or only its colours?
Each item is dressed three times with the same seed: in its garment, in that garment turned upside down (the same
colours, another layout) and in the next test garment of the same category. ``flip`` and ``swap`` are the mean
absolute changes inside the repaint mask against the first output, ``ratio`` = flip / swap. Two references are
scored on the same items: the garment image pasted into the mask (follows the layout) and the mask filled with the
garment's mean colour (ignores it: ratio 0).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import load_run_config  # noqa: E402
from training.metrics import pattern_scores  # noqa: E402
from training.report import changed_region, report_items, training_means  # noqa: E402
from training.sampling import batches, run_model, to_unit  # noqa: E402
from twgtm.config import CATEGORIES  # noqa: E402
from twgtm.latents import vae_decode, vae_encode  # noqa: E402
from twgtm.weights import load_twgtm  # noqa: E402


def pattern_transfer(model, run, *, eval_root: str | None = None, max_items: int | None = None,
                     min_rms: float = 0.04, sigma: float = 2.0) -> dict:
    """{task: {candidate: {category: {"items", "corr", "energy"}}}} over the patterned items (see the module)."""
    items = report_items(run, model.config, eval_root)
    n = len(items) if max_items is None else min(len(items), max_items)
    if n == 0:
        raise ValueError(f"pattern_transfer: no items to score (split {eval_root or run.data.eval_split}, "
                         f"max_items {max_items})")
    means = training_means(run, model.config)
    ev, cfg = run.eval, model.config
    model.eval()

    def through_vae(images: torch.Tensor) -> torch.Tensor:  # what the latent space can hold
        with torch.no_grad():
            z = vae_encode(model.vae, images * 2 - 1, cfg, chunk=len(images))
            return ((vae_decode(model.vae, z, cfg, chunk=len(images)) + 1) / 2).clamp(0, 1)

    rows: list[tuple[str, str, str, dict]] = []  # (task, candidate, category, scores of one item)
    for batch in batches(items, range(n), ev.batch_size):
        person, gt_on, gt_off = (to_unit(batch[k]) for k in ("person", "tryon_gt", "own_garment"))
        cats = list(batch["category"])
        outs = run_model(model, person, to_unit(batch["garment"]), batch["mask"], cats,
                         steps=ev.num_inference_steps, guidance_scale=ev.guidance_scale, eta=ev.eta, seed=ev.seed,
                         scheduler=ev.scheduler, batch_size=ev.batch_size, tryoff_region=ev.tryoff_region,
                         garment_mask=batch["garment_mask"], indices=batch["index"], tasks=("tryon", "tryoff"))
        tasks = {"tryoff": (gt_off, batch["garment_mask"], {"model": outs["tryoff"], "gt_through_vae": through_vae(gt_off),
                                                           "category_mean_garment": means.for_items(cats)[0]}),
                 "tryon": (gt_on, changed_region(person, gt_on, batch["mask"]),
                           {"model": outs["tryon"], "gt_through_vae": through_vae(gt_on)})}
        for task, (gt, region, candidates) in tasks.items():
            for name, pred in candidates.items():
                s = pattern_scores(pred, gt, region, sigma=sigma)
                rows += [(task, name, c, {k: float(v[i]) for k, v in s.items()}) for i, c in enumerate(cats)]
    result: dict = {}
    for task in ("tryoff", "tryon"):
        for name in dict.fromkeys(r[1] for r in rows if r[0] == task):
            for cat in ("all", *CATEGORIES):
                sel = [r[3] for r in rows if r[0] == task and r[1] == name and cat in ("all", r[2])
                       and r[3]["gt_rms"] >= min_rms]
                if sel:
                    result.setdefault(task, {}).setdefault(name, {})[cat] = {
                        "items": len(sel), "corr": math.fsum(x["corr"] for x in sel) / len(sel),
                        "energy": math.fsum(x["energy"] for x in sel) / len(sel)}
    return result


def _paste_garment(person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference that follows the layout: the garment image itself inside the mask (no warp)."""
    return person * (1 - mask) + garment * mask


def _garment_colour(person: torch.Tensor, garment: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference that ignores the layout: the mask filled with the garment's mean colour (its non-white pixels)."""
    fg = (garment < 0.95).any(dim=1, keepdim=True).float()
    mean = (garment * fg).sum(dim=(2, 3), keepdim=True) / fg.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    return person * (1 - mask) + mean * mask


def layout_sensitivity(model, run, *, eval_root: str | None = None, max_items: int | None = None) -> dict:
    """{candidate: {category: {"items", "flip", "swap", "ratio"}}} for try-on, categories with "all" (see the
    module's ``--layout``). Candidates: the model, and two references on the same items: ``paste_garment`` (the
    garment image in the mask: follows the layout) and ``garment_colour`` (its mean colour: ratio 0).

    Items without another test item of their category are left out."""
    items = report_items(run, model.config, eval_root)
    n = len(items) if max_items is None else min(len(items), max_items)
    cats_all = [items[i]["category"] for i in range(n)]
    partner = {}
    for i, c in enumerate(cats_all):   # the next item of the same category, cyclically
        others = [j for j in list(range(i + 1, n)) + list(range(i)) if cats_all[j] == c]
        if others:
            partner[i] = others[0]
    if not partner:
        raise ValueError(f"layout_sensitivity: no two items of one category among the {n} items scored")
    ev = run.eval
    model.eval()
    rows: list[tuple[str, str, float, float]] = []  # (candidate, category, flip, swap) per item
    for batch in batches(items, sorted(partner), ev.batch_size):
        person, garment, mask = to_unit(batch["person"]), to_unit(batch["garment"]), batch["mask"].float()
        cats, idx = list(batch["category"]), [int(i) for i in batch["index"]]
        other = torch.stack([to_unit(items[partner[i]]["garment"]) for i in idx])

        def model_dress(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return run_model(model, p, g, m, cats, steps=ev.num_inference_steps, guidance_scale=ev.guidance_scale,
                             eta=ev.eta, seed=ev.seed, scheduler=ev.scheduler, batch_size=ev.batch_size,
                             indices=idx, tasks=("tryon",))["tryon"]

        area = (mask.sum(dim=(1, 2, 3)) * person.shape[1]).clamp_min(1.0)
        for name, dress in (("model", model_dress), ("paste_garment", _paste_garment),
                            ("garment_colour", _garment_colour)):
            base, flipped, swapped = (dress(person, g, mask) for g in (garment, garment.flip(-2), other))
            change = lambda x: ((x - base).abs() * mask).sum(dim=(1, 2, 3)) / area  # noqa: E731
            rows += [(name, c, float(f), float(w)) for c, f, w in zip(cats, change(flipped), change(swapped))]
    result: dict = {}
    for name in ("model", "paste_garment", "garment_colour"):
        for cat in ("all", *CATEGORIES):
            sel = [r for r in rows if r[0] == name and cat in ("all", r[1])]
            if sel:
                flip, swap = math.fsum(r[2] for r in sel) / len(sel), math.fsum(r[3] for r in sel) / len(sel)
                result.setdefault(name, {})[cat] = {"items": len(sel), "flip": flip, "swap": swap,
                                                    "ratio": flip / swap if swap > 0 else math.nan}
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--eval-data", default=None, help="a synthetic folder whose test split to use (validation)")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--min-rms", type=float, default=0.04, help="ground-truth high-pass RMS of a patterned item")
    ap.add_argument("--sigma", type=float, default=2.0, help="the high-pass's Gaussian sigma in pixels")
    ap.add_argument("--layout", action="store_true",
                    help="also check whether try-on follows the garment's layout (upside-down garment vs another)")
    args = ap.parse_args(argv)
    if args.max_items is not None and args.max_items < 1:
        ap.error(f"--max-items: expected an int >= 1; received {args.max_items}")
    if not args.min_rms >= 0:
        ap.error(f"--min-rms: expected a number >= 0; received {args.min_rms}")
    run_dir = Path(args.run_dir)
    run = load_run_config(run_dir / "config.yaml", [f"output_dir={run_dir}"])
    model = load_twgtm(run.resolve(run.export.filename), device="cpu")
    result = pattern_transfer(model, run, eval_root=args.eval_data, max_items=args.max_items,
                              min_rms=args.min_rms, sigma=args.sigma)
    print(f"{run_dir} ({args.eval_data or 'test split'}): items whose ground truth has a pattern "
          f"(high-pass RMS >= {args.min_rms}); corr: pattern correlation with the ground truth, energy: "
          f"high-pass RMS / the ground truth's")
    print(f"{'task':7s} {'candidate':22s} {'category':8s} {'n':>3s} {'corr':>7s} {'energy':>7s}")
    for task, candidates in result.items():
        for name, per_cat in candidates.items():
            for cat, r in per_cat.items():
                print(f"{task:7s} {name:22s} {cat:8s} {r['items']:3d} {r['corr']:7.3f} {r['energy']:7.3f}")
    if args.layout:
        layout = layout_sensitivity(model, run, eval_root=args.eval_data, max_items=args.max_items)
        print("try-on layout: mean change inside the repaint mask with the garment upside down (flip) and with "
              "another garment of the category (swap); ratio = flip / swap (paste_garment follows the layout, "
              "garment_colour ignores it: 0)")
        print(f"{'candidate':15s} {'category':8s} {'n':>3s} {'flip':>7s} {'swap':>7s} {'ratio':>7s}")
        for name, per_cat in layout.items():
            for cat, r in per_cat.items():
                print(f"{name:15s} {cat:8s} {r['items']:3d} {r['flip']:7.4f} {r['swap']:7.4f} {r['ratio']:7.3f}")
        result = dict(result, layout=layout)
    return result


if __name__ == "__main__":
    main()
