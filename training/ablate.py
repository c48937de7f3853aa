"""``python -m training ablate``: the paper's Table-4 ablations at toy scale (docs/ABLATIONS.md).

Every variant is the main job (``python -m training main``, :func:`training.cli.cmd_main`) with a few ``--set``
overrides of the same run config: model switches (``model.overrides.use_srm`` ...) and run settings
(``stage*.vtoff_prob`` ...). Nothing here trains or evaluates by itself:

* a trained variant ``v`` and seed index ``k`` is one main job in ``<output_dir>/<v>/seed<k>``, training seed
  ``seed + k`` (the run config's ``seed``); the synthetic data (``data.synthetic.seed``) is generated once into
  ``<output_dir>/data`` (and ``data_val``) and shared, so every variant trains and is scored on the same items;
* Variant 3 trains nothing: it reports the TWGTM run of the same seed again (:func:`training.cli._report`) with
  other try-off regions, into ``<output_dir>/v3/seed<k>/report_<region>`` (and ``report_val_<region>``);
* a run whose ``ablate.json`` says it finished is skipped; any other is started or resumed by the main job's
  own resume (``--resume auto``: finished stages are skipped, a stage continues from its last checkpoint);
* at the end every run's test and validation ``report.json`` are aggregated into ``ablations.json`` and
  ``ablations.md``: per variant, the mean and the min-max spread over seeds (the JSON also has the standard
  deviation and the values) of the per-category try-off L1/SSIM, mask IoU and try-on changed-region L1/SSIM,
  and the wall-clock and CPU time of every call (``ablate.json`` of each run).
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from twgtm.config import CATEGORIES
from twgtm.errors import ConfigError

from .config import RunConfig, load_run_config
from .rundir import RunLock

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "Variant", "variant_overrides", "run_ablation", "aggregate", "RUN_RECORD"]

RUN_RECORD = "ablate.json"  # per run folder: {"done": bool, "calls": [{"wall_s", "cpu_s"}], "argv": [...]}

#: (report task, metric, column title) of the aggregated table, in column order
METRICS: tuple[tuple[str, str, str], ...] = (
    ("tryoff", "l1", "try-off L1 ↓"), ("tryoff", "ssim", "try-off SSIM ↑"), ("mask", "mask_iou", "mask IoU ↑"),
    ("tryon", "changed_l1", "try-on changed L1 ↓"), ("tryon", "changed_ssim", "try-on changed SSIM ↑"),
)


def _stage1_steps(run: RunConfig) -> list[str]:
    """Variants without the stage-1 mask warm-up drop its steps too, so the UNet gets the same joint (diffusion)
    steps at the same learning-rate schedule as TWGTM: the warm-up trains only the reference encoder's mask."""
    s1 = run.stage1
    return ["stage1.mask_warmup_steps=0", f"stage1.max_steps={s1.max_steps - s1.mask_warmup_steps}"]


def _no_srm(run: RunConfig) -> list[str]:
    region = run.eval.tryoff_region
    # no SRM, no predicted mask: the whole canvas (mask-free), never a ground-truth region TWGTM does not get
    return ["model.overrides.use_srm=false", *_stage1_steps(run)] + \
        (["eval.tryoff_region=full"] if region.startswith("pred") else [])


@dataclass(frozen=True)
class Variant:
    name: str
    title: str                            # the paper's Table-4 row
    overrides: Callable[[RunConfig], list[str]] = lambda run: []  # --set overrides from the base run config
    trained_for: tuple[str, ...] = ("tryon", "tryoff")  # the tasks its training samples hold
    regions: tuple[str, ...] = ()         # inference-only: reports the TWGTM run again with these try-off regions
    notes: str = ""

    @property
    def trains(self) -> bool:
        return not self.regions


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("twgtm", "TWGTM (both tasks, both stages): the main job's config"),
    Variant("v1", "Variant 1: without the Spatial Refinement Module", _no_srm,
            notes="use_srm false: SAM through the standard cross-attention only; no SRM, Decoder or Extended "
                  "Attention, so no predicted mask (try-off on the whole canvas, mask IoU not available)"),
    Variant("v3", "Variant 3: with Mask2BBox at try-off inference (TWGTM's checkpoint)",
            regions=("pred_box", "gt_box", "full"),
            notes="no training: the TWGTM run reported again with the predicted box, the ground-truth box (its "
                  "ceiling) and the whole canvas (mask-free, as Variant 1)"),
    Variant("v4", "Variant 4: trained on try-on only",
            lambda run: ["stage1.vtoff_prob=0", "stage2.vtoff_prob=0", *_stage1_steps(run)], trained_for=("tryon",),
            notes="vtoff_prob 0; the mask warm-up (try-off samples) is dropped with its steps"),
    Variant("v5", "Variant 5: trained on try-off only",
            lambda run: ["stage1.vtoff_prob=1", "stage2.vtoff_prob=1"], trained_for=("tryoff",),
            notes="vtoff_prob 1; the mask warm-up is kept (it is try-off training)"),
    Variant("v6", "Variant 6: SRM features concatenated before self-attention",
            lambda run: ["model.overrides.srm_fusion=concat"],
            notes="srm_fusion concat: F_SRM tokens joined to attn1's keys/values instead of eq. 13's cross term"),
    Variant("v8", "Variant 8: without the Q-Former",
            lambda run: ["model.overrides.use_qformer=false"],
            notes="use_qformer false: CLIP image tokens and the category prompt's CLIP text tokens straight to "
                  "cross-attention (and to the SRM's S1 memory)"),
)}


def variant_overrides(name: str, run: RunConfig) -> list[str]:
    """The ``--set`` overrides that turn the base run ``run`` into variant ``name``."""
    return list(_variant(name).overrides(run))


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConfigError(f"--variants: expected names among {list(VARIANTS)}, got {name!r}")
    return VARIANTS[name]


def _check_args(variants: Sequence[str], seeds: int, max_steps: Optional[int]) -> list[str]:
    if isinstance(variants, str) or not variants:
        raise ConfigError(f"--variants: expected one or more names among {list(VARIANTS)}, got {variants!r}")
    for v in variants:
        _variant(v)
    if len(set(variants)) != len(variants):
        raise ConfigError(f"--variants: expected distinct names, got {list(variants)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds: expected an integer >= 1, got {seeds!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"--max-steps: expected an integer >= 1, got {max_steps!r}")
    # Variant 3 reports the TWGTM run of each seed: it is trained first when not asked for
    order = [v for v in VARIANTS if v in variants]
    return ["twgtm"] + order if "v3" in order and "twgtm" not in order else order


def _step_overrides(run: RunConfig, max_steps: Optional[int]) -> list[str]:
    """``--max-steps N``: every stage N steps; the stage-1 mask warm-up keeps its share of stage 1 (rounded down)."""
    if max_steps is None:
        return []
    warm = run.stage1.mask_warmup_steps * max_steps // run.stage1.max_steps
    return [f"stage0.max_steps={max_steps}", f"stage1.max_steps={max_steps}", f"stage2.max_steps={max_steps}",
            f"stage1.mask_warmup_steps={warm}"]


# ---------------------------------------------------------------------------------------------- running
def _usage() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished child processes: the CPU workers)."""
    try:
        import resource

        cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
    except ImportError:  # Windows: this process only
        cpu = time.process_time()
    return time.perf_counter(), cpu


def _record(folder: Path) -> dict:
    path = folder / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else {"done": False, "calls": []}


def _timed(folder: Path, argv: list[str], work: Callable[[], None]) -> None:
    """Run ``work`` and add its wall-clock and CPU time to the folder's record; ``done`` when it returns."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = _record(folder)
    wall0, cpu0 = _usage()
    work()
    wall1, cpu1 = _usage()
    rec["calls"].append({"wall_s": round(wall1 - wall0, 1), "cpu_s": round(cpu1 - cpu0, 1),
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    rec.update(done=True, argv=argv)
    (folder / RUN_RECORD).write_text(json.dumps(rec, indent=2) + "\n")


def _main_argv(base_argv: list[str], folder: Path, sets: list[str], log_level: str, cpu: bool) -> list[str]:
    argv = ["--log-level", log_level, "main", *base_argv, "--output-dir", str(folder)]
    argv += [a for s in sets for a in ("--set", s)]
    return argv + (["--cpu"] if cpu else [])


def _train_run(main_job: Callable[[list[str]], int], argv: list[str]) -> None:
    rc = main_job(argv)
    if rc:
        raise ConfigError(f"ablate: the main job `python -m training {' '.join(argv)}` failed (exit code {rc}); "
                          f"see its message above; rerun the same ablate command to resume it")


def _report_again(report: Callable, twgtm_dir: Path, folder: Path, region: str) -> None:
    """Variant 3: the TWGTM run's exported model reported with another try-off region (test and validation)."""
    from .data import validation_root
    from .trainer import configure_torch

    run = load_run_config(twgtm_dir / "config.yaml", [f"eval.tryoff_region={region}"])
    configure_torch(run)
    checkpoint = run.resolve(run.export.filename)
    report(run, checkpoint, out=str(folder / f"report_{region}"))
    val = validation_root(run)
    if val is not None:
        report(run, checkpoint, eval_data=str(val), out=str(folder / f"report_val_{region}"))


def run_ablation(variants: Sequence[str], seeds: int, output_dir: str | os.PathLike, *, main_job: Callable,
                 report: Callable, config: Optional[str] = None, sets: Sequence[str] = (),
                 max_steps: Optional[int] = None, log_level: str = "INFO", cpu: bool = False) -> dict:
    """Train (or resume) and report every variant and seed, then aggregate; returns ``ablations.json``'s content.

    ``main_job(argv)`` is ``python -m training`` in this process (:func:`training.cli.main`) and ``report`` the
    main job's report (:func:`training.cli._report`): the CLI passes them, so this module never imports it."""
    order = _check_args(list(variants), seeds, max_steps)
    root = Path(output_dir)
    base_sets = list(sets)
    base = load_run_config(config, base_sets + [f"output_dir={root}"])
    shared: list[str] = []
    if base.data.synthetic is not None:  # one data set for every variant and seed
        shared = [f"data.synthetic.root={root / 'data'}", f"data.synthetic.val_root={root / 'data_val'}"]
    steps = _step_overrides(base, max_steps)
    base = load_run_config(config, base_sets + steps + [f"output_dir={root}"])
    base_argv = ["--config", str(config)] if config else []
    root.mkdir(parents=True, exist_ok=True)
    with RunLock(root):
        for k in range(seeds):
            for name in order:
                v = VARIANTS[name]
                folder = root / name / f"seed{k}"
                if _record(folder).get("done"):
                    logger.info("ablate: %s seed %d done (%s), skipping", name, k, folder / RUN_RECORD)
                    continue
                if v.trains:
                    run_sets = base_sets + shared + steps + [f"seed={base.seed + k}"] + variant_overrides(name, base)
                    argv = _main_argv(base_argv, folder, run_sets, log_level, cpu)
                    load_run_config(config, run_sets + [f"output_dir={folder}"])  # a bad variant config fails here
                    logger.info("ablate: %s seed %d -> %s", name, k, folder)
                    _timed(folder, argv, lambda argv=argv: _train_run(main_job, argv))
                else:
                    twgtm_dir = root / "twgtm" / f"seed{k}"
                    if not _record(twgtm_dir).get("done"):
                        raise ConfigError(f"ablate: {name} reports the TWGTM run of seed {k}, expected it finished "
                                          f"in {str(twgtm_dir)!r}")
                    logger.info("ablate: %s seed %d (regions %s of %s) -> %s", name, k, v.regions, twgtm_dir, folder)
                    _timed(folder, [f"report {twgtm_dir} {r}" for r in v.regions],
                           lambda v=v, d=twgtm_dir, f=folder: [_report_again(report, d, f, r) for r in v.regions])
        result = aggregate(root, order, seeds)
    logger.info("ablate: %s", root / "ablations.md")
    return result


# ---------------------------------------------------------------------------------------------- aggregation
@dataclass
class _Row:
    variant: str
    label: str
    region: Optional[str]                 # the try-off region of an inference-only row (Variant 3)
    reports: dict[str, list[Path]] = field(default_factory=dict)  # split -> report.json per seed


def _rows(root: Path, order: Sequence[str], seeds: int) -> list[_Row]:
    rows = []
    for name in order:
        v = VARIANTS[name]
        folders = [root / name / f"seed{k}" for k in range(seeds)]
        if v.trains:
            rows.append(_Row(name, name, None, {"test": [f / "report" / "report.json" for f in folders],
                                                "validation": [f / "report_val" / "report.json" for f in folders]}))
        for region in v.regions:
            rows.append(_Row(name, f"{name} ({region})", region,
                             {"test": [f / f"report_{region}" / "report.json" for f in folders],
                              "validation": [f / f"report_val_{region}" / "report.json" for f in folders]}))
    return rows


def _stats(values: list[Optional[float]]) -> dict:
    """Mean, min, max and standard deviation over seeds; None (not available) if any seed has none."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return {"mean": None, "min": None, "max": None, "std": None, "values": values}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def _metric(report: dict, category: str, task: str, metric: str) -> Optional[float]:
    if category == "all":
        results = report["results"]
    elif category in report.get("per_category", {}):
        results = report["per_category"][category]["results"]
    else:
        return None
    return results.get(task, {}).get("model", {}).get(metric)


def _times(root: Path, name: str, seeds: int) -> dict:
    calls = [c for k in range(seeds) for c in _record(root / name / f"seed{k}").get("calls", [])]
    return {"calls": len(calls), "wall_s": round(math.fsum(c["wall_s"] for c in calls), 1),
            "cpu_s": round(math.fsum(c["cpu_s"] for c in calls), 1)}


def aggregate(root: str | os.PathLike, variants: Sequence[str], seeds: int) -> dict:
    """Read every run's test and validation ``report.json``; write ``ablations.json`` and ``ablations.md``."""
    root = Path(root)
    rows_out, missing = [], []
    for row in _rows(root, variants, seeds):
        splits = {}
        for split, paths in row.reports.items():
            found = [p for p in paths if p.is_file()]
            if not found:
                if split == "test":
                    missing += [str(p) for p in paths]
                continue  # no validation set (data.synthetic.n_val 0)
            if len(found) != len(paths):
                missing += [str(p) for p in paths if not p.is_file()]
                continue
            reports = [json.loads(p.read_text()) for p in paths]
            cats = ["all"] + [c for c in CATEGORIES if all(c in r.get("per_category", {}) for r in reports)]
            splits[split] = {c: {f"{t}/{m}": _stats([_metric(r, c, t, m) for r in reports]) for t, m, _ in METRICS}
                             for c in cats}
            splits[split]["items"] = reports[0]["items"]
            splits[split]["tryoff_region"] = reports[0]["settings"]["tryoff_region"]
        v = VARIANTS[row.variant]
        rows_out.append({"variant": row.variant, "label": row.label, "title": v.title, "notes": v.notes,
                         "trained_for": list(v.trained_for), "region": row.region, "seeds": seeds,
                         "splits": splits})
    if missing:
        raise ConfigError(f"ablate: expected every run's report.json, missing {missing[:4]}"
                          f"{f' and {len(missing) - 4} more' if len(missing) > 4 else ''}")
    times = {name: _times(root, name, seeds) for name in variants}
    total = {"calls": sum(t["calls"] for t in times.values()),
             "wall_s": round(math.fsum(t["wall_s"] for t in times.values()), 1),
             "cpu_s": round(math.fsum(t["cpu_s"] for t in times.values()), 1)}
    result = {"spread": "mean over seeds with min-max (std and the per-seed values too)", "seeds": seeds,
              "metrics": [f"{t}/{m}" for t, m, _ in METRICS], "rows": rows_out, "time": times, "total_time": total}
    (root / "ablations.json").write_text(json.dumps(result, indent=2) + "\n")
    (root / "ablations.md").write_text(_markdown(result))
    return result


def _cell(stats: dict, mark: str = "") -> str:
    if stats["mean"] is None:
        return "n/a"
    spread = f" [{stats['min']:.4f}, {stats['max']:.4f}]" if len(stats["values"]) > 1 else ""
    return f"{stats['mean']:.4f}{spread}{mark}"


def _markdown(result: dict) -> str:
    lines = ["# Ablations (toy scale): the paper's Table 4 on the synthetic benchmark", "",
             f"Mean over {result['seeds']} training seed(s), [min, max] over seeds; every variant trained on the "
             "same data with the same steps and sampling (docs/ABLATIONS.md). n/a: the model has no such output "
             "(mask IoU without an SRM). †: a task the variant was not trained on. ‡: Variant 3 re-samples try-off "
             "only; its try-on and mask are TWGTM's.", ""]
    lines += ["| variant | what |", "|---|---|"]
    seen: dict[str, dict] = {r["variant"]: r for r in result["rows"]}
    lines += [f"| {n} | {r['title']}{'; ' + r['notes'] if r['notes'] else ''} |" for n, r in seen.items()]
    lines.append("")
    for split in ("test", "validation"):
        rows = [r for r in result["rows"] if split in r["splits"]]
        if not rows:
            continue
        cats = [c for c in ["all", *CATEGORIES] if all(c in r["splits"][split] for r in rows)]
        for c in cats:
            lines += [f"## {split} split, {'all items' if c == 'all' else c}", "",
                      "| variant | try-off region | " + " | ".join(t for _, _, t in METRICS) + " |",
                      "|---|---|" + "---:|" * len(METRICS)]
            for r in rows:
                part = r["splits"][split]
                cells = []
                for task, metric, _ in METRICS:
                    task_of = "tryoff" if task == "mask" else task
                    mark = "†" if task_of not in r["trained_for"] else ("‡" if r["region"] and task != "tryoff" else "")
                    cells.append(_cell(part[c][f"{task}/{metric}"], mark))
                lines.append(f"| {r['label']} | {part['tryoff_region']} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Time", "", "Wall-clock and CPU seconds of every call that finished (training, the reports), as "
              "each run's ablate.json records them; CPU time counts this process and its CPU worker processes.", "",
              "| variant | calls | wall s | CPU s |", "|---|---:|---:|---:|"]
    for name, t in result["time"].items():
        lines.append(f"| {name} | {t['calls']} | {t['wall_s']} | {t['cpu_s']} |")
    t = result["total_time"]
    lines += [f"| **total** | {t['calls']} | {t['wall_s']} | {t['cpu_s']} |", ""]
    return "\n".join(lines)
