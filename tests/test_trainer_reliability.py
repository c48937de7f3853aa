"""Trainer reliability: bit-exact resume after SIGKILL between checkpoints (1 and 2 processes), no silent
overwrite of a run (``--resume none``), one run per output folder (lock), and one-line CLI errors."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
LOSS_COLUMNS = ("step", "loss", "diffusion", "mask", "vtoff_fraction", "grad_norm")

# stage 1 only, 8 steps, checkpoints at 4 and 8: a kill after step 5 is logged lands between two checkpoints
RESUME_SETS = ["threads=1", "stage0.enabled=false", "stage1.max_steps=8", "stage1.checkpoint_every=4",
               "stage1.keep_checkpoints=10", "stage1.log_every=1", "stage1.ema_decay=0.9"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _train_cmd(out: Path, sets, *args: str) -> list[str]:
    return [sys.executable, "-m", "training", "--log-level", "WARNING", "train", "--config", str(TINY),
            "--stage", "1", "--output-dir", str(out), *args] + [a for s in sets for a in ("--set", s)]


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _logged_steps(path: Path) -> list[int]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]


def _loss_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: r[k] for k in LOSS_COLUMNS} for r in csv.DictReader(f)]


def _complete_checkpoints(stage_dir: Path) -> list[int]:
    root = stage_dir / "checkpoints"
    return sorted(int(d.name.split("-")[1]) for d in root.glob("step-*") if (d / "trainer_state.json").is_file())


def _kill_between_checkpoints(out: Path, sets, after_step: int) -> None:
    """Start the run and SIGKILL it (the launching process; its workers die with it) as soon as ``after_step``
    is logged, i.e. after the step-4 checkpoint and before the step-8 one."""
    proc = subprocess.Popen(_train_cmd(out, sets, "--resume", "auto"), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "stage1" / "log.csv"
    deadline = time.time() + 240
    try:
        while after_step not in _logged_steps(log):
            if proc.poll() is not None:
                pytest.fail(f"training exited before step {after_step}: {proc.stderr.read().decode()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"training logged no step {after_step} within 240 s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: ~2 min on 2 busy cores
def test_resume_after_sigkill_between_checkpoints_is_bit_identical(tmp_path, processes):
    sets = RESUME_SETS + [f"processes={processes}"]
    if processes == 1:
        sets += ["data.num_workers=1", "data.hflip=true"]  # a loader worker process and flipped items too
    ref = _run(_train_cmd(tmp_path / "ref", sets, "--resume", "none"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    for attempt in range(3):  # the kill is timed on the log; on a stalled machine the run may get past step 8
        _kill_between_checkpoints(out, sets, after_step=5)
        if not (out / "stage1" / "model.safetensors").exists() and _complete_checkpoints(out / "stage1") == [4]:
            break
        subprocess.run(["rm", "-rf", str(out)], check=True)
    else:
        pytest.fail("could not kill the run between its step-4 and step-8 checkpoints")
    assert max(_logged_steps(out / "stage1" / "log.csv")) > 4  # it was killed after step 4, mid-run

    res = _run(_train_cmd(out, sets, "--resume", "auto"))
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(tmp_path / "ref" / "stage1" / "model.safetensors"))
    b = load_file(str(out / "stage1" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 100
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:5]}"
    assert _loss_rows(tmp_path / "ref" / "stage1" / "log.csv") == _loss_rows(out / "stage1" / "log.csv")
    # the optimiser state too (the final checkpoint of both runs)
    oa = torch.load(tmp_path / "ref/stage1/checkpoints/step-000008/optimizer.bin", weights_only=True)
    ob = torch.load(out / "stage1/checkpoints/step-000008/optimizer.bin", weights_only=True)
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])


def test_step_draws_do_not_depend_on_the_global_rng_state(tmp_path, monkeypatch):
    """Stochastic depth / dropout inside a step draw from the step's seeded state: consuming the global RNG
    before the loop (as anything between a checkpoint's restore and the first step may) changes nothing."""
    import random

    from training import trainer
    from training.config import load_run_config
    from training.data import prepare_data

    real = trainer.build_train_dataset  # called after the model is built (and after a resume's load_state)
    models = []
    for draws in (0, 3):
        def perturbed(run, cfg, draws=draws):
            torch.rand(draws)
            random.random()
            return real(run, cfg)

        monkeypatch.setattr(trainer, "build_train_dataset", perturbed)
        run = load_run_config(TINY, [f"output_dir={tmp_path}/r{draws}", f"data.synthetic.root={tmp_path}/data",
                                     "threads=1", "stage0.enabled=false", "stage1.max_steps=2",
                                     # the Swin (SRM) runs every step, and drops paths often: draws that matter
                                     "stage1.vtoff_prob=1.0", "model.overrides.swin.kwargs.drop_path_rate=0.8"])
        acc = trainer.make_accelerator(run, cpu=True)
        prepare_data(run, acc)
        trainer.train_stage(run, 1, acc, resume=None)
        models.append(load_file(str(trainer.stage_model_path(run, 1))))
    swin = [k for k in models[0] if k.startswith("srm.swin.")]
    assert swin and all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_seeded_rng_seeds_and_restores_every_global_generator():
    import random

    import numpy as np

    from training.trainer import seeded_rng

    torch.manual_seed(1)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with seeded_rng(42):
        a = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5)
    with seeded_rng(42):
        b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    torch.manual_seed(1)
    with seeded_rng(7):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before[0])  # the outside stream is untouched


# ---------------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv, needle", [
    (["train", "--max-steps", "-5"], "argument --max-steps: expected an integer >= 1, got -5"),
    (["train", "--max-steps", "0"], "argument --max-steps: expected an integer >= 1, got 0"),
    (["main", "--max-steps", "-1"], "argument --max-steps: expected an integer >= 1"),
    (["train", "--stop-after", "-2"], "argument --stop-after: expected an integer >= 1"),
    (["main", "--resume", "bogus"], "argument --resume: invalid choice"),
    (["evaluate", "--checkpoint", "missing.safetensors", "--data", "missing", "--eta", "2"],
     "argument --eta: expected a number in [0, 1]"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--eta", "-0.1"], "argument --eta"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--eta", "nan"], "argument --eta"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--steps", "0"], "argument --steps: expected an integer in"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--guidance-scale", "-3"], "argument --guidance-scale"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--batch-size", "0"], "argument --batch-size"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--max-items", "-1"], "argument --max-items"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--seed", "-1"], "argument --seed"),
    (["evaluate", "--checkpoint", "m", "--data", "d", "--size", "0", "48"], "argument --size"),
])
def test_bad_numeric_options_are_one_line_errors_before_anything_runs(tmp_path, capsys, argv, needle):
    from training.cli import main

    if argv[0] in ("train", "main"):
        argv = [argv[0], "--config", str(TINY), "--output-dir", str(tmp_path / "run"), *argv[1:]]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, needle", [
    ("stage1.max_steps=-5", "stage1.max_steps: expected an integer >= 1, got -5"),
    ("stage2.batch_size=0", "stage2.batch_size: expected an integer >= 1, got 0"),
    ("stage1.lr_new=-1e-4", "stage1.lr_new: expected a number >= 0"),
    ("stage1.lr_unet=.nan", "stage1.lr_unet: expected a number >= 0"),
    ("stage1.warmup_steps=-1", "stage1.warmup_steps"),
    ("stage1.vtoff_prob=1.5", "stage1.vtoff_prob: expected a number in [0, 1]"),
    ("stage1.ema_decay=1", "stage1.ema_decay: expected a number in [0, 1)"),
    ("stage1.betas=[0.9, 1.0]", "stage1.betas[1]"),
    ("stage0.max_steps=-1", "stage0.max_steps"),
    ("stage0.lr=-1", "stage0.lr"),
    ("threads=0", "threads: expected an integer >= 1"),
    ("seed=-1", "seed: expected an integer >= 0"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.synthetic.n_train=0", "data.synthetic.n_train"),
    ("eval.eta=2", "eval.eta: expected a number in [0, 1]"),
    ("eval.guidance_scale=0.5", "eval.guidance_scale"),
    ("eval.num_inference_steps=0", "eval.num_inference_steps"),
])
def test_config_numbers_out_of_range_are_config_errors(override, needle):
    from twgtm.errors import ConfigError

    from training.config import load_run_config

    with pytest.raises(ConfigError) as exc:
        load_run_config(TINY, [override])
    assert needle in str(exc.value)


def test_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, caplog):
    from training.cli import main

    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        caplog.clear()
        rc = main(["train", "--config", str(TINY), "--output-dir", str(out), "--set", "threads=1", "--cpu"])
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert rc == 2 and len(errors) == 1 and "--output-dir: expected a folder" in errors[0], errors
        assert "\n" not in errors[0]
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_output_dir_is_a_one_line_error(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:  # root ignores permission bits unless it drops CAP_DAC_OVERRIDE
        import shutil

        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    res = _run(prefix + _train_cmd(out, ["threads=1", "stage0.enabled=false"], "--cpu"), timeout=240)
    out.chmod(0o755)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "is not writable" in errors[0] and str(out) in errors[0], res.stderr[-2000:]
    assert not any(out.iterdir())


# ---------------------------------------------------------------------------------------------- --resume none
def _plant_old_run(out: Path) -> dict[Path, bytes]:
    """Files of an earlier run (contents do not matter: the refusal must leave them untouched)."""
    files = {out / "stage1" / "model.safetensors": b"old model", out / "stage1" / "log.csv": b"step,loss\n9,1.0\n",
             out / "stage1" / "checkpoints" / "step-000099" / "trainer_state.json": b'{"step": 99}',
             out / "stage2" / "model.safetensors": b"old stage 2", out / "twgtm_tiny.safetensors": b"old export"}
    for p, data in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_resume_none_refuses_to_overwrite_a_run(tmp_path, caplog):
    from training.cli import main

    out = tmp_path / "run"
    files = _plant_old_run(out)
    rc = main(["train", "--config", str(TINY), "--stage", "1", "--output-dir", str(out), "--resume", "none",
               "--set", "threads=1", "--set", "stage0.enabled=false", "--cpu"])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert rc == 2 and len(errors) == 1, errors
    assert "--resume none" in errors[0] and str(out) in errors[0] and "--overwrite" in errors[0]
    assert "stage1/" in errors[0] and "stage2/" in errors[0] and "twgtm_tiny.safetensors" in errors[0]
    assert all(p.read_bytes() == data for p, data in files.items())  # nothing touched
    assert not (out / "config.yaml").exists()


def test_overwrite_removes_the_old_run_before_starting(tmp_path, caplog):
    from training.cli import main
    from training.config import load_run_config
    from training.trainer import find_checkpoint

    out = tmp_path / "run"
    files = _plant_old_run(out)
    sets = ["--set", "threads=1", "--set", "stage0.enabled=false"]
    rc = main(["train", "--config", str(TINY), "--stage", "1", "--output-dir", str(out), "--overwrite", *sets, "--cpu"])
    assert rc == 0
    removed = [r.getMessage() for r in caplog.records if "--overwrite: removing" in r.getMessage()]
    assert len(removed) == 1 and "stage1/" in removed[0] and "stage2/" in removed[0], removed
    assert not (out / "stage2").exists() and not (out / "twgtm_tiny.safetensors").exists()  # built on the old run
    assert not (out / "stage1" / "checkpoints" / "step-000099").exists()
    assert sorted(d.name for d in (out / "stage1" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert _logged_steps(out / "stage1" / "log.csv") == [1, 2]
    assert (out / "stage1" / "model.safetensors").read_bytes() != files[out / "stage1" / "model.safetensors"]
    # a later run resumes from this run, not from the old one
    run = load_run_config(TINY, [f"output_dir={out}", "stage0.enabled=false"])
    assert find_checkpoint(run, 1, "auto").name == "step-000002"


# ---------------------------------------------------------------------------------------------- one run per folder
def test_second_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    from training.rundir import LOCK_NAME

    out = tmp_path / "run"
    sets = ["threads=1", "stage0.enabled=false", "stage1.log_every=1", "stage1.checkpoint_every=1000"]
    # the first run is long (it is killed at the end), so it is surely running while the second one starts
    first = subprocess.Popen(_train_cmd(out, sets + ["stage1.max_steps=100000"], "--cpu"), cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / LOCK_NAME
    try:
        deadline = time.time() + 240
        while not _logged_steps(out / "stage1" / "log.csv"):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() < deadline, "the first run logged no step within 240 s"
            time.sleep(0.05)
        assert lock.read_text().startswith(f"PID {first.pid},")
        second = _run(_train_cmd(out, sets + ["stage1.max_steps=2"], "--cpu"), timeout=240)
        assert first.poll() is None, "the first run must still be running"
        steps_then = _logged_steps(out / "stage1" / "log.csv")
    finally:
        first.kill()
        first.wait()
        first.stderr.close()
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [line for line in second.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(out) in errors[0] and f"PID {first.pid}" in errors[0], second.stderr[-3000:]
    assert "is in use by another run" in errors[0]
    assert steps_then == list(range(1, len(steps_then) + 1))  # the first run's log alone: one row per step
    assert not (out / "stage1" / "model.safetensors").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from twgtm.errors import ConfigError

    from training.rundir import LOCK_NAME, RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"PID {dead.pid}, started 2026-01-01 00:00:00: python -m training train")
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"PID {os.getpid()},")
        holder = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                 "from training.rundir import RunLock; RunLock(Path(sys.argv[1])).acquire()",
                                 str(tmp_path)], cwd=REPO, env=_env(), capture_output=True, text=True)
        assert holder.returncode != 0 and f"PID {os.getpid()}" in holder.stderr and str(tmp_path) in holder.stderr
    with pytest.raises(ConfigError, match="is in use by another run"):
        with RunLock(tmp_path):
            RunLock(tmp_path).acquire()  # a second lock on the same folder, even from the same process


def test_synthetic_data_generated_with_other_parameters_is_not_reused(tmp_path):
    from twgtm.errors import ConfigError

    from training.config import load_run_config
    from training.data import prepare_data
    from training.trainer import make_accelerator

    sets = [f"output_dir={tmp_path}", "threads=1"]
    acc = make_accelerator(load_run_config(TINY, sets), cpu=True)
    prepare_data(load_run_config(TINY, sets), acc)
    prepare_data(load_run_config(TINY, sets), acc)  # the same set: reused
    with pytest.raises(ConfigError, match=r"data.synthetic: .*'n_train': 8.*'n_train': 4"):
        prepare_data(load_run_config(TINY, sets + ["data.synthetic.n_train=4"]), acc)


def test_lock_left_to_the_workers_of_a_killed_run_is_waited_for(tmp_path, monkeypatch):
    """After SIGKILL, the run's DataLoader workers still hold the inherited lock for a few seconds: a resume that
    starts at once waits for them (the recorded owner is dead) instead of failing with 'in use'."""
    import time as time_mod

    from training import rundir
    from training.rundir import LOCK_NAME, RunLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(f"PID {dead.pid}, started 2026-01-01 00:00:00: python -m training train")
    # an orphan that holds the lock (as an inherited fd) for 2 s, like a dying DataLoader worker
    orphan = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(2)", str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert orphan.stdout.readline().strip() == "held"
    t0 = time_mod.monotonic()
    with RunLock(tmp_path):
        waited = time_mod.monotonic() - t0
        assert lock.read_text().startswith(f"PID {os.getpid()},")
    orphan.wait()
    assert 1.0 < waited < rundir.ORPHAN_WAIT_S
    # a live recorded owner is never waited for: the error comes at once
    monkeypatch.setattr(rundir, "ORPHAN_WAIT_S", 60.0)
    with RunLock(tmp_path):
        t0 = time_mod.monotonic()
        with pytest.raises(Exception, match="is in use by another run"):
            RunLock(tmp_path).acquire()
        assert time_mod.monotonic() - t0 < 5


@pytest.mark.slow  # ~1 min: two processes, three stages of 1 step, two reports
def test_main_job_on_two_processes_reports_on_the_test_split_and_on_a_validation_set(tmp_path):
    """``python -m training main`` end to end with ``data.synthetic.n_val``: the validation set is generated with
    another seed (no training person in it), and it gets its own report (report_val/; the second process writes
    it while the first writes report/); the job's log names both verdicts."""
    import json

    out, empty = tmp_path / "run", tmp_path / "no_weights"
    empty.mkdir()
    sets = ["threads=1", "processes=2", "stage0.max_steps=1", "data.synthetic.n_val=3", "eval.num_inference_steps=1",
            f"eval.weights_dir={empty}"]
    cmd = [sys.executable, "-m", "training", "main", "--config", str(TINY), "--output-dir", str(out),
           "--max-steps", "1"] + [a for s in sets for a in ("--set", s)]
    res = subprocess.run(cmd, cwd=REPO, env=dict(_env(), TORCH_HOME=str(tmp_path / "torch_home")),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    made = json.loads((out / "data_val" / "synthetic.json").read_text())
    assert (made["n_train"], made["n_test"], made["seed"]) == (0, 3, 1)  # data.synthetic.seed + 1
    test = json.loads((out / "report" / "report.json").read_text())
    val = json.loads((out / "report_val" / "report.json").read_text())
    assert test["items"] == 4 and test["held_out"] == "test split of the run's data"
    assert val["items"] == 3 and val["held_out"] == f"test split of {out / 'data_val'}"
    assert (out / "report_val" / "grid.png").is_file()
    # the stages' loss curves (from their log.csv) in the test report, shown by report.md
    assert test["loss_curves"] == "loss_curves.png" and (out / "report" / "loss_curves.png").is_file()
    assert "![loss curves](loss_curves.png)" in (out / "report" / "report.md").read_text()
    assert f"validation report: {out / 'report_val' / 'report.md'} (passed={val['passed']})" in res.stderr
    timings = json.loads((out / "timings.json").read_text())
    assert timings["report_wait_s"] >= timings["report_s"] > 0


@pytest.mark.parametrize("rank", [0, 1])
def test_no_process_leaves_training_before_the_export_exists(tmp_path, monkeypatch, rank):
    """The second process reads the exported file right after training (the validation report), so ``_train``
    holds every process at a barrier until the main process has written the export. Without it a 2-process
    main job with short stages failed: "expected a .safetensors file at .../export/..." (found by the ablation
    smoke on 2 processes)."""
    import training.trainer as trainer_mod
    from training import cli
    from training.config import load_run_config

    events: list[str] = []

    class FakeAccelerator:
        process_index, num_processes = rank, 2
        is_main_process = rank == 0

        def wait_for_everyone(self):
            events.append("barrier")

    monkeypatch.setattr(trainer_mod, "train_stage", lambda run, stage, acc, **kw: events.append(f"stage{stage}"))
    monkeypatch.setattr(trainer_mod, "export_model", lambda run: events.append("export"))
    monkeypatch.setattr("training.data.prepare_data", lambda run, acc: None)
    run = load_run_config(TINY, [f"output_dir={tmp_path / 'run'}"])
    cli._train(run, [1, 2], "auto", None, FakeAccelerator())
    expected = ["stage1", "stage2", "export", "barrier"] if rank == 0 else ["stage1", "stage2", "barrier"]
    assert events == expected
