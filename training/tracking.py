"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate, and loss-curve plots from ``log.csv``.

``report_to`` in the run config picks the trackers: ``none`` (the CPU preset's default), ``tensorboard``,
``wandb`` or ``all`` (both), as diffusers' training scripts take ``--report_to``. accelerate owns them
(``Accelerator(log_with=..., project_dir=<output>/logs)``); they log on the main process only. Every
``log_every`` steps each tracker gets the values of ``log.csv`` under ``stage<N>/<name>`` (loss, diffusion, mask,
vtoff_fraction, grad_norm, lr_<group>, seconds_per_step, samples_per_second), every ``sample_every`` steps the
sample grid as ``stage<N>/samples``.

**One step axis.** Stage 1's step ``s`` is logged at ``s``, stage 2's at ``stage1.max_steps + s``, so the two
stages follow each other on one axis and a resume can drop exactly the points after its checkpoint: the trackers
start at the first stage the process trains, and TensorBoard's writer gets ``purge_step`` = the resumed step + 1
(TensorBoard then hides the points a killed run wrote after its last checkpoint, as ``log.csv`` drops those rows);
W&B resumes the same run id (a hash of the output folder) and ignores steps it already has.

The tracker packages are optional extras (``pip install -e ".[tensorboard]"`` / ``".[wandb]"``); asking for one
that is not installed is a :class:`~twgtm.errors.ConfigError` naming the extra, before anything is trained
(:func:`check_report_to`).

:func:`plot_losses` draws each stage's curves from ``log.csv`` (matplotlib, in the ``train`` extra) without any
tracker: the main job puts ``loss_curves.png`` in its report folder, and ``python -m training plot RUN_DIR``
draws it for any run.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from twgtm.errors import ConfigError

logger = logging.getLogger(__name__)

REPORT_TO = ("none", "tensorboard", "wandb", "all")
# tracker name -> (module it needs, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
LOG_DIR = "logs"  # under the run's output folder: tensorboard --logdir <output>/logs


def trackers(report_to: str) -> list[str]:
    """The accelerate tracker names of a ``report_to`` value."""
    if report_to not in REPORT_TO:
        raise ConfigError(f"report_to: expected one of {list(REPORT_TO)}, got {report_to!r}")
    return list(TRACKERS) if report_to == "all" else [] if report_to == "none" else [report_to]


def check_report_to(report_to: str) -> list[str]:
    """The tracker names of ``report_to``, after checking that their packages are installed."""
    names = trackers(report_to)
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {report_to!r} needs the package {module!r}, which is not installed; "
                              f"install it with: pip install -e \".[{extra}]\" (or pip install {module})")
    return names


def step_offset(run, stage: int) -> int:
    """Where a stage's steps start on the trackers' one step axis."""
    return int(run.stage1.max_steps) if stage == 2 else 0


def run_id(run) -> str:
    """A stable id for the run (its output folder): a resumed run continues the same W&B run."""
    return hashlib.sha1(str(run.output_path.resolve()).encode()).hexdigest()[:16]


def flat_config(run) -> dict:
    """The run's resolved config as flat ``section.key`` hyperparameters (what trackers can show)."""
    import dataclasses

    out = {}

    def walk(prefix: str, value):
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(f"{prefix}{f.name}.", getattr(value, f.name))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)

    walk("", run)
    return out


class StageTracker:
    """The trackers of one stage: starts accelerate's trackers (once per accelerator), logs rows and grids."""

    def __init__(self, run, stage: int, accelerator, resume_step: int):
        self.accelerator, self.stage, self.offset = accelerator, stage, step_offset(run, stage)
        self.enabled = bool(trackers(run.report_to))
        if not self.enabled or getattr(accelerator, "_twgtm_trackers_started", False):
            return
        start = self.offset + resume_step + 1  # the first step this process logs
        accelerator.init_trackers(run.name, config=flat_config(run), init_kwargs={
            "tensorboard": {"purge_step": start},
            "wandb": {"id": run_id(run), "resume": "allow", "dir": str(run.output_path)}})
        accelerator._twgtm_trackers_started = True
        logger.info("trackers %s: logging from step %d (tensorboard --logdir %s)", trackers(run.report_to), start,
                    run.output_path / LOG_DIR)

    def log(self, step: int, row: dict) -> None:
        """A ``log.csv`` row (strings), as numbers under ``stage<N>/``; empty values are left out."""
        if not self.enabled:
            return
        values = {f"stage{self.stage}/{k}": float(v) for k, v in row.items() if k != "step" and v not in ("", None)}
        self.accelerator.log(values, step=self.offset + step)

    def log_image(self, step: int, path: Path) -> None:
        """The sample grid PNG at ``path``."""
        if not self.enabled or not self.accelerator.is_main_process:
            return
        from PIL import Image

        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
        tag = f"stage{self.stage}/samples"
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: image[None]}, step=self.offset + step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({tag: [image]}, step=self.offset + step)


def end_trackers(accelerator) -> None:
    """Flush and close the trackers (``accelerator.end_training``) if this accelerator started any."""
    if getattr(accelerator, "_twgtm_trackers_started", False):
        accelerator.end_training()
        accelerator._twgtm_trackers_started = False


# ---------------------------------------------------------------------------------------------- curves
CURVES = ("loss", "diffusion", "mask")


def read_log(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``log.csv`` as ``{column: [(step, value), ...]}`` for the loss columns that have values."""
    series: dict[str, list[tuple[int, float]]] = {c: [] for c in CURVES}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for c in CURVES:
                if row.get(c) not in (None, ""):
                    series[c].append((int(row["step"]), float(row[c])))
    return {c: v for c, v in series.items() if v}


def plot_losses(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """One PNG with a panel per stage (``stage1``, ``stage2`` under ``run_dir``): loss, diffusion and mask loss per
    step from each stage's ``log.csv`` (log scale when every value is above 0). Written to ``out`` (default ``run_dir/loss_curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    logs = [(s, run_dir / f"stage{s}" / "log.csv") for s in (1, 2)]
    logs = [(s, p) for s, p in logs if p.is_file()]
    if not logs:
        raise FileNotFoundError(f"plot: expected {run_dir}/stage1/log.csv or {run_dir}/stage2/log.csv, found neither")
    fig, axes = plt.subplots(1, len(logs), figsize=(6 * len(logs), 4), squeeze=False)
    for ax, (stage, path) in zip(axes[0], logs):
        series = read_log(path)
        for name, points in series.items():
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, linewidth=1.2 if name == "loss" else 0.9)
        ax.set_title(f"stage {stage} ({path.parent.name}/log.csv)")
        ax.set_xlabel("step")
        log_scale = all(v > 0 for pts in series.values() for _, v in pts)  # a zero (warm-up, stage 2's mask) cannot
        if log_scale:
            ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)" if log_scale else "loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "loss_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
