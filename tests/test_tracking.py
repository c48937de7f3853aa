"""Trackers through accelerate (training/tracking.py): TensorBoard events read back with TensorBoard's own reader,
a resumed run without duplicate points, W&B offline, the missing-package error, and the loss-curve plot."""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
import torch

from twgtm.errors import ConfigError

from training import tracking
from training.cli import main
from training.config import load_run_config
from training.data import prepare_data
from training.tracking import end_trackers
from training.trainer import configure_torch, make_accelerator, train_stage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = run.output_path / tracking.LOG_DIR / run.name
    assert logdir.is_dir(), f"no TensorBoard log folder at {logdir}"
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})  # 0: keep every point
    acc.Reload()
    return acc


def test_report_to_takes_known_values_and_names_the_extra_of_a_missing_package(monkeypatch):
    assert tracking.trackers("none") == [] and tracking.trackers("all") == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="report_to: expected one of"):
        load_run_config(TINY, ["report_to=mlflow"])
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[wandb\]"'):
        tracking.check_report_to("all")
    assert tracking.check_report_to("tensorboard") == ["tensorboard"]


def test_a_missing_tracker_package_stops_the_command_before_anything_is_trained(tmp_path, monkeypatch, caplog):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name))
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        rc = main(["train", "--config", str(TINY), "--output-dir", str(out), "--set", "report_to=wandb", "--cpu"])
    assert rc == 2
    assert any('pip install -e ".[wandb]"' in r.getMessage() for r in caplog.records), caplog.text
    assert not out.exists() or not any(out.iterdir())  # no data, no stage folder, no lock left behind


def test_tensorboard_has_the_logged_values_and_grids_and_a_resume_adds_no_duplicate_point(tmp_path):
    """Stage 1 (4 steps, checkpoints at 2 and 4, grids at 2 and 4) then stage 2 (2 steps). The run is then cut back
    to its step-2 checkpoint, as if killed after logging steps 3 and 4, and resumed by a new accelerator: TensorBoard's
    own reader finds every log.csv value once, at steps 1-4 (stage 1) and 5-6 (stage 2), and the grids at 2 and 4."""
    run = load_run_config(TINY, [f"output_dir={tmp_path / 'run'}", "threads=1", "report_to=tensorboard",
                                 "stage0.enabled=false", "stage1.max_steps=4", "stage1.checkpoint_every=2",
                                 "stage1.keep_checkpoints=10", "stage1.sample_every=2", "stage1.sample_steps=1"])
    configure_torch(run)
    acc = make_accelerator(run, cpu=True)
    prepare_data(run, acc)
    train_stage(run, 1, acc, resume=None)
    end_trackers(acc)
    first = _csv(run.output_path / "stage1" / "log.csv")
    # the state of a process killed after it logged step 4 but before its step-4 checkpoint was complete
    (run.output_path / "stage1" / "model.safetensors").unlink()
    shutil.rmtree(run.output_path / "stage1" / "checkpoints" / "step-000004")

    acc2 = make_accelerator(run, cpu=True)  # a new process: it starts the trackers again
    train_stage(run, 1, acc2, resume="auto")
    train_stage(run, 2, acc2, resume=None)
    end_trackers(acc2)

    events = _events(run)
    rows = {1: _csv(run.output_path / "stage1" / "log.csv"), 2: _csv(run.output_path / "stage2" / "log.csv")}
    assert [r["loss"] for r in rows[1]] == [r["loss"] for r in first]  # the resume is exact (log.csv's own check)
    for stage, offset in ((1, 0), (2, 4)):
        for name in ("loss", "diffusion", "mask", "vtoff_fraction", "grad_norm", "samples_per_second"):
            points = events.Scalars(f"stage{stage}/{name}")
            assert [p.step for p in points] == [offset + int(r["step"]) for r in rows[stage]], (stage, name)
            for p, r in zip(points, rows[stage]):
                assert p.value == pytest.approx(float(r[name]), rel=1e-6, abs=1e-6), (stage, name, p.step)
        lr_tags = [t for t in events.Tags()["scalars"] if t.startswith(f"stage{stage}/lr_")]
        assert sorted(lr_tags) == sorted(f"stage{stage}/{k}" for k in rows[stage][0] if k.startswith("lr_"))
    grids = events.Images("stage1/samples")
    assert [g.step for g in grids] == [2, 4]
    assert grids[0].width > 0 and grids[0].height > 0
    assert "stage2/samples" not in events.Tags()["images"]  # stage 2 of the tiny preset draws no grid


def test_wandb_offline_gets_the_config_the_rows_and_the_grids(tmp_path, monkeypatch):
    """W&B in offline mode (no network): the run under <output>/wandb has the output folder's id and the resolved
    config, and every log.csv row and sample grid went through wandb's ``Run.log`` at its step (recorded on the way
    through; the offline .wandb file's format is wandb's own)."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def recording_log(self, data, step=None, *args, **kwargs):
        logged.append((step, dict(data)))
        return real_log(self, data, step, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", recording_log)
    run = load_run_config(TINY, [f"output_dir={tmp_path / 'run'}", "threads=1", "report_to=wandb",
                                 "stage0.enabled=false", "stage1.max_steps=2", "stage1.sample_every=2",
                                 "stage1.sample_steps=1"])
    configure_torch(run)
    acc = make_accelerator(run, cpu=True)
    prepare_data(run, acc)
    train_stage(run, 1, acc, resume=None)
    tracker = acc.get_tracker("wandb", unwrap=True)
    assert tracker.id == tracking.run_id(run) and tracker.config["stage1.max_steps"] == 2
    end_trackers(acc)
    rows = _csv(run.output_path / "stage1" / "log.csv")
    scalars = [(step, data) for step, data in logged if "stage1/loss" in data]
    assert [step for step, _ in scalars] == [int(r["step"]) for r in rows]
    assert [d["stage1/loss"] for _, d in scalars] == [pytest.approx(float(r["loss"])) for r in rows]
    images = [(step, data["stage1/samples"]) for step, data in logged if "stage1/samples" in data]
    assert [step for step, _ in images] == [2] and isinstance(images[0][1][0], wandb.Image)
    runs = list((run.output_path / "wandb").glob(f"offline-run-*-{tracking.run_id(run)}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((run.output_path / "wandb").iterdir())


def _write_log(path: Path, rows: list[tuple[int, float, float, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "diffusion", "mask", "lr_unet"])
        w.writerows(rows)


def test_plot_draws_a_panel_per_stage_from_log_csv(tmp_path):
    from PIL import Image

    run_dir = tmp_path / "run"
    assert main(["plot", str(run_dir)]) == 2  # no log.csv: an error, no file
    _write_log(run_dir / "stage1" / "log.csv", [(s, 1.0 / s, 0.5 / s, 0.5 / s, 1e-4) for s in range(1, 30)])
    assert main(["plot", str(run_dir)]) == 0
    with Image.open(run_dir / "loss_curves.png") as im:
        one = im.size
    _write_log(run_dir / "stage2" / "log.csv", [(s, 0.2, 0.2, 0.0, 1e-4) for s in range(1, 10)])
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "both.png")]) == 0
    with Image.open(tmp_path / "both.png") as im:
        both = im.size
    assert both[1] == one[1] and both[0] == 2 * one[0]  # a panel per stage, side by side
    assert tracking.read_log(run_dir / "stage2" / "log.csv")["mask"][0] == (1, 0.0)
