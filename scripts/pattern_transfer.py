"""How much of the garments' patterns a trained model transfers, in both directions (analysis for issue 11).

    python scripts/pattern_transfer.py RUN_DIR [--eval-data DIR] [--max-items N]

RUN_DIR is a main-job folder (its ``config.yaml`` and exported model). The items are the report's: the run's
test split, or the test split of ``--eval-data`` (a validation set). Sampling uses the run's ``eval`` settings,
so the images are the report's. Try-off is scored inside the ground-truth flat-garment mask, try-on inside the
changed region (``training.report.changed_region``), with ``training.metrics.pattern_scores`` (high-passed
luminance, correlation and energy against the ground truth). Only items whose ground truth carries a pattern
(high-pass RMS at least ``--min-rms``) count. For reference it scores the ground truth passed through the run's
own VAE (what the latent space can hold) and, for try-off, the item's own-category mean garment (no pattern).
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
from training.report import _training_means, batches, changed_region, report_items  # noqa: E402
from training.sampling import run_model, to_unit  # noqa: E402
from twgtm.weights import load_twgtm  # noqa: E402


@torch.no_grad()
def _through_vae(vae, images: torch.Tensor) -> torch.Tensor:
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    return ((vae.decode(latents).sample + 1) / 2).clamp(0, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--eval-data", default=None, help="a synthetic folder whose test split to use (validation)")
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--min-rms", type=float, default=0.04, help="ground-truth high-pass RMS of a patterned item")
    ap.add_argument("--sigma", type=float, default=2.0, help="the high-pass's Gaussian sigma in pixels")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    run = load_run_config(run_dir / "config.yaml", [f"output_dir={run_dir}"])
    model = load_twgtm(run.resolve(run.export.filename), device="cpu")
    model.eval()
    items = report_items(run, model.config, args.eval_data)
    n = len(items) if args.max_items is None else min(len(items), args.max_items)
    means = _training_means(run, model.config) if n else None
    ev = run.eval
    rows: list[tuple[str, str, str, dict]] = []  # (task, candidate, category, scores of one item)
    for batch in batches(items, range(n), ev.batch_size):
        person, gt_on, gt_off = (to_unit(batch[k]) for k in ("person", "tryon_gt", "own_garment"))
        cats = list(batch["category"])
        outs = run_model(model, person, to_unit(batch["garment"]), batch["mask"], cats,
                         steps=ev.num_inference_steps, guidance_scale=ev.guidance_scale, eta=ev.eta, seed=ev.seed,
                         scheduler=ev.scheduler, batch_size=ev.batch_size, tryoff_region=ev.tryoff_region,
                         garment_mask=batch["garment_mask"], indices=batch["index"], tasks=("tryon", "tryoff"))
        tasks = {"tryoff": (gt_off, batch["garment_mask"], {"model": outs["tryoff"],
                                                           "gt_through_vae": _through_vae(model.vae, gt_off),
                                                           "category_mean_garment": means.for_items(cats)[0]}),
                 "tryon": (gt_on, changed_region(person, gt_on, batch["mask"]),
                           {"model": outs["tryon"], "gt_through_vae": _through_vae(model.vae, gt_on)})}
        for task, (gt, region, candidates) in tasks.items():
            for name, pred in candidates.items():
                s = pattern_scores(pred, gt, region, sigma=args.sigma)
                rows += [(task, name, c, {k: float(v[i]) for k, v in s.items()}) for i, c in enumerate(cats)]
    result: dict = {}
    print(f"{run_dir} ({args.eval_data or 'test split'}): items whose ground truth has a pattern "
          f"(high-pass RMS >= {args.min_rms}); corr: pattern correlation with the ground truth, energy: "
          f"high-pass RMS / the ground truth's")
    print(f"{'task':7s} {'candidate':22s} {'category':8s} {'n':>3s} {'corr':>7s} {'energy':>7s}")
    for task in ("tryoff", "tryon"):
        names = dict.fromkeys(r[1] for r in rows if r[0] == task)
        for name in names:
            for cat in ("all", "upper", "lower", "dress"):
                sel = [r[3] for r in rows if r[0] == task and r[1] == name and cat in ("all", r[2])
                       and r[3]["gt_rms"] >= args.min_rms]
                if not sel:
                    continue
                corr = math.fsum(s["corr"] for s in sel) / len(sel)
                energy = math.fsum(s["energy"] for s in sel) / len(sel)
                result.setdefault(task, {}).setdefault(name, {})[cat] = {"items": len(sel), "corr": corr,
                                                                         "energy": energy}
                print(f"{task:7s} {name:22s} {cat:8s} {len(sel):3d} {corr:7.3f} {energy:7.3f}")
    return result


if __name__ == "__main__":
    main()
