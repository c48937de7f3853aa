"""The trainer: 2-step runs of every stage, exact resume after SIGKILL, export round trip, config, sampler."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from twgtm.errors import ConfigError, MissingFileError, WeightsError
from twgtm.weights import load_twgtm, read_config, read_metadata

from training.config import load_run_config
from training.data import prepare_data
from training.trainer import (ResumableBatchSampler, build_stage_model, configure_torch, find_checkpoint,
                              load_catvton_attention, make_accelerator, stage_model_path, train_stage)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
LOSS_COLUMNS = ("step", "loss", "diffusion", "mask", "vtoff_fraction", "grad_norm")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_run(out: Path, *extra: str):
    return load_run_config(TINY, [f"output_dir={out}", "threads=1", *extra])


def _log_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: r[k] for k in LOSS_COLUMNS} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------- config
def test_run_config_yaml_overrides_and_errors(tmp_path):
    run = load_run_config(TINY, ["stage1.max_steps=7", "stage2.batch_size=3", f"output_dir={tmp_path}/x"])
    assert run.stage1.max_steps == 7 and run.stage2.batch_size == 3
    assert run.resolve("${output_dir}/data") == f"{tmp_path}/x/data"
    assert run.model.build().height == 64
    with pytest.raises(ConfigError, match="unknown keys"):
        load_run_config(TINY, ["stage1.max_stepz=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_run_config(TINY, ["stage1.max_steps=abc"])
    with pytest.raises(ConfigError, match="include_base"):
        load_run_config(TINY, ["export.include_base=false"])
    assert load_run_config(TINY, ["data.synthetic.categories=[upper, dress]"]).data.synthetic.categories == \
        ["upper", "dress"]
    for name in ("synthetic_cpu.yaml", "paper_vitonhd_dresscode.yaml"):
        data = __import__("yaml").safe_load((REPO / "configs" / name).read_text())
        assert isinstance(data, dict) and data["model"]["preset"] in ("tiny", "full")


def test_paper_config_names_missing_weights(tmp_path):
    run = load_run_config(REPO / "configs" / "paper_vitonhd_dresscode.yaml", [f"output_dir={tmp_path}"])
    assert run.model.build().height == 1024 and run.mixed_precision == "bf16" and run.frozen_dtype == "bf16"
    assert run.weights.unet and run.weights.clip_vision and run.weights.swin
    with pytest.raises(MissingFileError, match="expected"):
        build_stage_model(load_run_config(REPO / "configs" / "paper_vitonhd_dresscode.yaml", [
            f"output_dir={tmp_path}", f"weights.unet={tmp_path}/nope", f"weights.vae={tmp_path}/nope",
            f"weights.clip_vision={tmp_path}/nope", f"weights.text_encoder={tmp_path}/nope"]), 1)


# ---------------------------------------------------------------------------------------------- sampler
def test_resumable_sampler_continues_and_partitions():
    full = ResumableBatchSampler(10, 3, seed=5)
    stream = [full.batch(m) for m in range(8)]
    later = iter(ResumableBatchSampler(10, 3, seed=5, start=5))
    assert [next(later) for _ in range(3)] == stream[5:8]
    flat = [i for b in stream for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs are permutations
    assert flat[:10] != flat[10:20]
    r0, r1 = (ResumableBatchSampler(8, 2, seed=5, rank=r, world=2) for r in (0, 1))
    both = [i for m in range(2) for i in r0.batch(m) + r1.batch(m)]
    assert sorted(both) == list(range(8))  # the two ranks split each global batch: one epoch, no repeats
    assert both == [i for m in range(4) for i in ResumableBatchSampler(8, 2, seed=5).batch(m)]


def test_sampler_merges_the_warmup_micro_batches_into_bigger_batches():
    """``stage1.mask_warmup_batch_size``: before ``merge_until`` every batch is ``merge`` consecutive micro-batches;
    the stream of positions is the same, so a run resumed at any step reads what an uninterrupted one would."""
    base = ResumableBatchSampler(10, 3, seed=5)
    merged = iter(ResumableBatchSampler(10, 3, seed=5, merge=2, merge_until=4))
    assert [next(merged) for _ in range(4)] == [base.batch(0) + base.batch(1), base.batch(2) + base.batch(3),
                                                base.batch(4), base.batch(5)]
    resumed = iter(ResumableBatchSampler(10, 3, seed=5, start=2, merge=2, merge_until=4))
    assert [next(resumed) for _ in range(2)] == [base.batch(2) + base.batch(3), base.batch(4)]


# ---------------------------------------------------------------------------------------------- all stages
def test_two_steps_of_every_stage_and_export_round_trip(tmp_path):
    from training.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--config", str(TINY), "--output-dir", str(out), "--set", "threads=1", "--cpu"])
    assert rc == 0
    assert (out / "stage0" / "vae.safetensors").is_file()
    for stage in (1, 2):
        rows = _log_rows(out / f"stage{stage}" / "log.csv")
        assert [r["step"] for r in rows] == ["1", "2"]
        assert all(float(r["loss"]) == float(r["loss"]) and float(r["loss"]) > 0 for r in rows)
        assert find_checkpoint(tiny_run(out), stage, "auto").name == "step-000002"
        assert read_config(stage_model_path(tiny_run(out), stage)).stage == stage
        assert "stage" not in read_metadata(stage_model_path(tiny_run(out), stage)), "one source: the config"
    s1 = load_file(str(out / "stage1" / "model.safetensors"))
    s2 = load_file(str(out / "stage2" / "model.safetensors"))
    assert any(k.startswith("decoder.") for k in s2) and not any(k.startswith("decoder.") for k in s1)
    assert any(".processor." in k for k in s2) and not any(".processor." in k for k in s1)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("unet.")), "stage 2 trained the UNet"

    # stage 2 starts from stage 1's weights: every stage-1 tensor is carried over unchanged
    run = tiny_run(out)
    model2 = build_stage_model(run, 2)
    start2 = model2.state_dict()

    # a checkpoint holds the trained tensors, not the frozen base (at full size 5.5 of the 7 GB fp32 model): the
    # CLIP image encoder and the VAE are absent, the Decoder and the Extended Attention are there
    ckpt = load_file(str(out / "stage2" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert not any(".clip_vision." in k or k.startswith(("vae.", "components.vae.")) for k in ckpt), sorted(ckpt)[:5]
    assert any(".decoder." in k for k in ckpt) and any(".processor." in k for k in ckpt)
    assert all(torch.equal(start2[k], v) for k, v in s1.items())
    zll = [v for k, v in start2.items() if k.endswith("zll.weight")]
    assert zll and all(bool((z == 0).all()) for z in zll)

    # export round trip: the exported file is self-contained and reproduces the trained model
    exported = out / "twgtm_tiny.safetensors"
    meta = read_metadata(exported)
    assert meta["includes_base"] == "1" and read_config(exported).stage == 2
    model = load_twgtm(exported)
    assert model.stage == 2
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in s2.items())
    from twgtm.pipeline import TWGTMPipeline

    person = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    outs = [TWGTMPipeline.from_components(m).try_off(person, "upper", num_inference_steps=2, generator=3).images
            for m in (model, load_twgtm(exported))]
    assert outs[0].shape == (1, 3, 64, 48) and torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------- exact resume
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    extra = ["stage0.enabled=false", "stage1.max_steps=4", "stage1.checkpoint_every=1", "stage1.keep_checkpoints=10",
             "stage1.ema_decay=0.9"]  # the saved model is the EMA: its state must resume exactly too
    run_a = tiny_run(tmp_path / "a", *extra)
    configure_torch(run_a)
    acc = make_accelerator(run_a, cpu=True)
    prepare_data(run_a, acc)
    train_stage(run_a, 1, acc, resume=None)

    # the same run in a subprocess, killed with SIGKILL once the step-2 checkpoint is complete
    out_b = tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "training", "--log-level", "WARNING", "train", "--config", str(TINY), "--stage", "1",
           "--output-dir", str(out_b), "--cpu", "--resume", "none", "--set", "threads=1"] + \
          [a for e in extra for a in ("--set", e)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out_b / "stage1" / "checkpoints" / "step-000002" / "trainer_state.json"
    deadline = time.time() + 120
    while not marker.is_file():
        if proc.poll() is not None:
            pytest.fail(f"training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("training subprocess wrote no step-2 checkpoint within 120 s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    run_b = tiny_run(out_b, *extra)
    assert not stage_model_path(run_b, 1).exists(), "the subprocess must have been interrupted"
    resumed_from = find_checkpoint(run_b, 1, "auto")
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < 4

    res = train_stage(run_b, 1, acc, resume="auto")
    assert res.steps == 4
    a, b = load_file(str(stage_model_path(run_a, 1))), load_file(str(stage_model_path(run_b, 1)))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _log_rows(run_a.output_path / "stage1" / "log.csv") == _log_rows(run_b.output_path / "stage1" / "log.csv")
    # optimiser state and LR schedule too: the final checkpoints hold identical optimiser tensors
    oa = torch.load(run_a.output_path / "stage1/checkpoints/step-000004/optimizer.bin", weights_only=True)
    ob = torch.load(run_b.output_path / "stage1/checkpoints/step-000004/optimizer.bin", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert all(torch.equal(oa["state"][i][k], ob["state"][i][k]) for i in oa["state"] for k in oa["state"][i])


# ---------------------------------------------------------------------------------------------- mask warm-up
def test_stage1_mask_warmup_trains_the_reference_encoder_alone_then_everything(tmp_path):
    """``stage1.mask_warmup_steps``: the first steps are mask-loss-only try-off steps (the UNet is not run and
    stays as built), then joint training starts with the learning-rate warm-up run again."""
    from training.trainer import _lr_lambda

    run = tiny_run(tmp_path / "run", "stage0.enabled=false", "stage1.max_steps=3", "stage1.mask_warmup_steps=2",
                   "stage1.checkpoint_every=1", "stage1.keep_checkpoints=5", "stage1.vtoff_prob=0.0")
    configure_torch(run)
    acc = make_accelerator(run, cpu=True)
    prepare_data(run, acc)
    built = build_stage_model(run, 1).state_dict()
    train_stage(run, 1, acc, resume=None)
    rows = _log_rows(run.output_path / "stage1" / "log.csv")
    # vtoff_prob 0: without the warm-up no step would have a try-off sample or a mask loss
    assert [(float(r["diffusion"]), float(r["vtoff_fraction"])) for r in rows[:2]] == [(0.0, 1.0), (0.0, 1.0)]
    assert all(float(r["mask"]) > 0 for r in rows[:2])
    assert float(rows[2]["diffusion"]) > 0 and float(rows[2]["vtoff_fraction"]) == 0.0

    def weights(step):
        return load_file(str(run.output_path / "stage1" / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))

    w1, w2, w3 = weights(1), weights(2), weights(3)
    unet = [k for k in w1 if k.startswith("unet.") and not k.startswith("unet.conv_in")]
    ref = [k for k in w1 if k.startswith("reference_encoder.srm.")]
    assert unet and ref
    assert all(torch.equal(w1[k], built[k]) for k in unet), "the UNet is as built after a warm-up step"
    assert all(torch.equal(w1[k], w2[k]) for k in unet), "the warm-up must not touch the UNet"
    assert any(not torch.equal(w1[k], w2[k]) for k in ref), "the warm-up trains the TaskFormer"
    assert any(not torch.equal(w2[k], w3[k]) for k in unet), "joint training starts after the warm-up"
    lam = _lr_lambda(4, restart=2)
    assert [lam(k) for k in range(6)] == [0.25, 0.5, 0.25, 0.5, 0.75, 1.0]

    # a bigger warm-up batch (``stage1.mask_warmup_batch_size``): each warm-up step reads two micro-batches, the
    # joint steps one; a run stopped inside the warm-up and resumed ends bit-identical to an uninterrupted one
    big = ["stage0.enabled=false", "stage1.max_steps=3", "stage1.mask_warmup_steps=2", "stage1.checkpoint_every=1",
           "stage1.keep_checkpoints=5", f"stage1.mask_warmup_batch_size={2 * run.stage1.batch_size}"]
    run_a, run_b = tiny_run(tmp_path / "big_a", *big), tiny_run(tmp_path / "big_b", *big)
    for r in (run_a, run_b):
        prepare_data(r, acc)
    train_stage(run_a, 1, acc, resume=None)
    states = [json.loads((run_a.output_path / "stage1" / "checkpoints" / f"step-{k:06d}" / "trainer_state.json")
                        .read_text())["micro_batches"] for k in (1, 2, 3)]
    assert states == [2, 4, 5]
    w2_big = load_file(str(run_a.output_path / "stage1" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert any(not torch.equal(w2[k], w2_big[k]) for k in ref), "the bigger warm-up batch changes the warm-up"
    train_stage(run_b, 1, make_accelerator(run_b, cpu=True), resume=None, stop_after=1)
    train_stage(run_b, 1, make_accelerator(run_b, cpu=True), resume="auto")  # fresh: one model per accelerator
    a, b = load_file(str(stage_model_path(run_a, 1))), load_file(str(stage_model_path(run_b, 1)))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match=r"stage1.mask_warmup_batch_size: expected null or a multiple"):
        tiny_run(tmp_path / "x", f"stage1.mask_warmup_batch_size={run.stage1.batch_size + 1}")
    with pytest.raises(ConfigError, match=r"stage2.mask_warmup_batch_size: expected null"):
        tiny_run(tmp_path / "x", f"stage2.mask_warmup_batch_size={run.stage1.batch_size}")
    with pytest.raises(ConfigError, match="stage2.mask_warmup_steps"):
        tiny_run(tmp_path / "x", "stage2.mask_warmup_steps=1")
    with pytest.raises(ConfigError, match="fewer than stage1.max_steps"):
        tiny_run(tmp_path / "x", "stage1.mask_warmup_steps=2")


def test_cosine_lr_decay_warms_up_then_falls_to_the_floor_at_the_last_step(tmp_path):
    """``stage*.lr_decay: cosine`` (the toy preset): linear warm-up, then a cosine that reaches ``lr_min_ratio`` of
    the peak on the stage's last step; with a stage-1 mask warm-up it starts over where the diffusion loss joins.
    Checked on the schedule and on the learning rates the trainer logs."""
    from training.trainer import _lr_lambda

    lam = _lr_lambda(2, total=10, decay="cosine", min_ratio=0.1)
    f = [lam(k) for k in range(10)]
    assert f[:2] == [0.5, 1.0] and f[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[1:], f[2:])), f
    lam = _lr_lambda(2, restart=3, total=10, decay="cosine", min_ratio=0.0)
    f = [lam(k) for k in range(10)]
    assert f[:5] == [0.5, 1.0, 1.0, 0.5, 1.0] and f[-1] == pytest.approx(0.0, abs=1e-12)
    assert _lr_lambda(2, total=10)(9) == 1.0  # constant stays constant

    run = tiny_run(tmp_path / "run", "stage0.enabled=false", "stage1.max_steps=6", "stage1.warmup_steps=1",
                   "stage1.log_every=1", "stage1.lr_decay=cosine", "stage1.lr_min_ratio=0.25", "stage1.lr_new=1e-3")
    configure_torch(run)
    acc = make_accelerator(run, cpu=True)
    prepare_data(run, acc)
    train_stage(run, 1, acc, resume=None)
    with (run.output_path / "stage1" / "log.csv").open(newline="") as f:
        lrs = [float(r["lr_qformer"]) for r in csv.DictReader(f)]
    # the logged rate is the one for the next step: the schedule's factor at steps 1..6
    assert lrs == pytest.approx([1e-3 * lam_k for lam_k in
                                 [_lr_lambda(1, total=6, decay="cosine", min_ratio=0.25)(k) for k in range(1, 7)]], rel=1e-5)
    assert lrs[-2] == pytest.approx(0.25e-3)
    with pytest.raises(ConfigError, match="stage1.lr_decay"):
        tiny_run(tmp_path / "x", "stage1.lr_decay=linear")
    with pytest.raises(ConfigError, match="stage2.lr_min_ratio"):
        tiny_run(tmp_path / "x", "stage2.lr_min_ratio=1.5")


def test_stage2_frozen_groups_keep_stage1s_garment_mask_path_and_train_the_rest(tmp_path):
    """``stage2.frozen_groups`` (the toy preset freezes the garment-mask path in stage 2, docs/DESIGN.md choice 19):
    the named groups leave stage 2 bit-identical to stage 1, so the predicted garment mask does not drift, while
    the UNet, the Decoder and Extended Attention train. Bad names and a mask loss that would train nothing are
    refused when the config is read."""
    run = tiny_run(tmp_path / "run", "stage0.enabled=false", "stage1.max_steps=1", "stage2.max_steps=2",
                   "stage2.frozen_groups=[qformer,swin,srm]", "model.overrides.loss.stage2_mask_weight=0",
                   "stage2.lr_new=1e-2", "stage2.lr_unet=1e-2")
    configure_torch(run)
    acc = make_accelerator(run, cpu=True)
    prepare_data(run, acc)
    s1 = train_stage(run, 1, acc, resume=None).model_path
    s2 = train_stage(run, 2, acc, resume=None).model_path
    w1, w2 = load_file(str(s1)), load_file(str(s2))
    path = [k for k in w1 if k.startswith(("sam.qformer.", "srm."))]
    assert path and any(k.startswith("srm.swin.") for k in path)
    assert all(torch.equal(w1[k], w2[k]) for k in path), "a frozen group changed in stage 2"
    assert any(not torch.equal(w1[k], w2[k]) for k in w1 if k.startswith("unet.") and "attn" in k)
    assert any(k.startswith("decoder.") for k in w2) and not any(k.startswith("decoder.") for k in w1)
    with (run.output_path / "stage2" / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and not any(c in rows[0] for c in ("lr_qformer", "lr_swin", "lr_srm")), list(rows[0])
    assert all(float(r["mask"]) == 0.0 for r in rows)

    with pytest.raises(ConfigError, match=r"stage2.frozen_groups: expected names .*unknown \['qformr'\]"):
        tiny_run(tmp_path / "x", "stage2.frozen_groups=[qformr]")
    with pytest.raises(ConfigError, match="stage1.frozen_groups"):
        tiny_run(tmp_path / "x", "stage1.frozen_groups=[swin]")
    with pytest.raises(ConfigError, match="stage2_mask_weight 0, got 1.0"):
        tiny_run(tmp_path / "x", "stage2.frozen_groups=[qformer,swin,srm]",
                 "model.overrides.loss.stage2_mask_weight=1")


# ---------------------------------------------------------------------------------------------- CatVTON warm start
def test_frozen_dtype_bf16_stores_only_the_untrained_weights_in_bf16_and_trains(tmp_path):
    """``frozen_dtype: bf16`` (the paper preset; diffusers' scripts do it for their frozen VAE and text encoder):
    every parameter no optimiser group holds is bf16, every trained one stays fp32 for AdamW; both stages then
    train under bf16 autocast, sample grids included, and stage 2 starts from stage 1's weights."""
    from training.trainer import cast_frozen, parameter_groups

    sets = ["stage0.enabled=false", "mixed_precision=bf16", "frozen_dtype=bf16", "stage1.lr_unet_base=null",
            "stage2.lr_unet_base=null", "stage1.sample_every=2", "stage2.sample_every=2", "stage1.sample_steps=2",
            "stage2.sample_steps=2"]
    run = tiny_run(tmp_path / "run", *sets)
    model = build_stage_model(run, 1)
    groups = parameter_groups(model, run.stage1)
    fp32_bytes = sum(p.numel() * 4 for m in model.modules().values() for p in m.parameters())
    n = cast_frozen(model, groups, "bf16")
    trained = {id(p) for g in groups for p in g["params"]}
    params = [p for m in model.modules().values() for p in m.parameters()]
    assert n > 0.3 * sum(p.numel() for p in params)  # CLIP, VAE and the UNet base are the bulk of the tiny model
    assert all(p.dtype == (torch.float32 if id(p) in trained else torch.bfloat16) for p in params)
    assert fp32_bytes - sum(p.numel() * p.element_size() for p in params) == n * 2
    assert cast_frozen(model, groups, None) == 0

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: earlier tests made it fp32
    try:
        acc = make_accelerator(run, cpu=True)
        prepare_data(run, acc)
        for stage in (1, 2):
            train_stage(run, stage, acc, resume=None)
            rows = _log_rows(run.output_path / f"stage{stage}" / "log.csv")
            assert [r["step"] for r in rows] == ["1", "2"] and all(math.isfinite(float(r["loss"])) for r in rows)
            assert (run.output_path / f"stage{stage}" / "samples" / "step-000002.png").is_file()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ConfigError, match="frozen_dtype.*mixed_precision 'bf16'.*got mixed_precision 'no'"):
        tiny_run(tmp_path / "bad", "frozen_dtype=bf16")


def test_catvton_attention_layout_loads_into_every_attn1(tmp_path):
    from diffusers import UNet2DConditionModel

    from twgtm.config import TWGTMConfig

    cfg = TWGTMConfig.tiny()
    torch.manual_seed(1)
    src = UNet2DConditionModel(**cfg.unet)
    # CatVTON: ModuleList of every module whose name contains "attn1", saved by accelerate (first name of a
    # shared tensor kept)
    attn = nn.ModuleList([m for n, m in src.named_modules() if "attn1" in n])
    seen, state = set(), {}
    for k, v in attn.state_dict().items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            state[k] = v.clone()
    assert "0.to_q.weight" in state and not any(k.split(".")[1] == "weight" for k in state if k.startswith("1."))
    folder = tmp_path / "attention"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))

    torch.manual_seed(2)
    dst = UNet2DConditionModel(**cfg.unet)
    n = load_catvton_attention(dst, str(folder))
    src_attn = {k: v for k, v in src.state_dict().items() if ".attn1.to_" in k}
    dst_sd = dst.state_dict()
    assert n == len([1 for name, _ in dst.named_modules() if name.endswith("attn1")]) > 0
    assert all(torch.equal(dst_sd[k], v) for k, v in src_attn.items())
    assert not torch.equal(dst_sd["conv_in.weight"], src.state_dict()["conv_in.weight"])  # only attn1 is loaded

    with pytest.raises(MissingFileError, match="mix-48k-1024/attention"):
        load_catvton_attention(dst, str(tmp_path / "missing"))
    save_file({k: v for k, v in state.items() if not k.startswith("0.")}, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match="attn1 blocks"):
        load_catvton_attention(dst, str(tmp_path / "short.safetensors"))


# ---------------------------------------------------------------------------------------------- stage 0
def test_lowpass_init_makes_the_vae_a_colour_exact_low_pass_autoencoder():
    import torch.nn.functional as F
    from diffusers import AutoencoderKL

    from training.stage0_vae import identity_init_vae

    run = load_run_config(REPO / "configs" / "synthetic_cpu.yaml")
    cfg = run.model.build()
    vae = AutoencoderKL(**cfg.vae)
    assert identity_init_vae(vae)
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(3, 3, 16, 12, generator=g) * 1.6 - 0.8, scale_factor=4)  # (3, 3, 64, 48)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        y = vae.decode(post.mode()).sample
    assert post.mean.shape == (3, 4, 16, 12)
    assert (post.mean[:, :3] - F.avg_pool2d(x, 4)).abs().max() < 0.01   # latent channels 0-2: the colours
    assert (y - x).abs().max() < 0.02                                     # constant 4x4 blocks come back
    assert float(post.std.max()) < 0.01
    small = AutoencoderKL(**dict(cfg.vae, norm_num_groups=8))             # 2-4 channels per group: refused
    before = {k: v.clone() for k, v in small.state_dict().items()}
    assert not identity_init_vae(small)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())


# ---------------------------------------------------------------------------------------------- FSDP
def test_components_state_maps_the_objective_keys_to_the_twgtm_file_keys(tmp_path):
    """Under FSDP the stage's weights are written from the gathered state of the objective: its keys map to the
    TWGTM file's (what save_twgtm writes for the components)."""
    from diffusers import DDPMScheduler

    from training.objective import TrainingObjective
    from training.trainer import _components_state, build_stage1_model, model_config

    run = tiny_run(tmp_path, "stage0.enabled=false")
    model = build_stage1_model(run, model_config(run, 1))
    objective = TrainingObjective(model, DDPMScheduler.from_config(model.config.scheduler))
    for include_base in (False, True):
        got, want = _components_state(objective.state_dict(), include_base), model.state_dict(include_base=include_base)
        assert got.keys() == want.keys() and all(got[k] is want[k] or torch.equal(got[k], want[k]) for k in want)


def _fsdp_worker(rank, world, port, out, result):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")
    torch.set_num_threads(1)
    run = tiny_run(Path(out), "stage0.enabled=false", "stage1.max_steps=2", "stage1.sample_every=0",
                   "stage1.ema_decay=null")
    try:
        acc = make_accelerator(run, cpu=True)
    except ConfigError as exc:
        Path(result).with_suffix(f".{rank}").write_text(f"refused: {exc}")
        return
    prepare_data(run, acc)
    train_stage(run, 1, acc, resume=None)
    Path(result).with_suffix(f".{rank}").write_text(f"trained: {acc.distributed_type.value}")


def test_fsdp2_on_two_cpu_processes_trains_or_is_refused_never_silently_ddp(tmp_path):
    """``accelerate launch`` with configs/accelerate/fsdp2.yaml, as two gloo CPU processes: accelerate 1.15 does not
    apply FSDP on CPU (it gives MULTI_CPU, i.e. DDP); the trainer refuses that with a one-line error naming the
    reason instead of silently running DDP. If a later accelerate shards on CPU, the stage must train under FSDP."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tmp_path / "result"
    mp.spawn(_fsdp_worker, args=(2, port, str(tmp_path / "run"), str(result)), nprocs=2, join=True)
    texts = [result.with_suffix(f".{r}").read_text() for r in (0, 1)]
    if texts[0].startswith("refused"):
        assert "accelerate" in texts[0] and "applies FSDP only on GPUs" in texts[0] and "MULTI_CPU" in texts[0], texts
        pytest.skip(f"FSDP2 training not testable on CPU: {texts[0]}")
    assert texts == ["trained: FSDP"] * 2
    assert stage_model_path(tiny_run(tmp_path / "run"), 1).is_file()


def test_every_parameter_group_the_trainer_makes_has_a_name_frozen_groups_accepts(tmp_path):
    """``training.config.PARAMETER_GROUPS`` is what ``stage*.frozen_groups`` may name: it must hold every group the
    trainer forms (empty ones included), for the paper's model and for the ablation variants (no Q-Former:
    ``sam_projection``)."""
    from training.config import PARAMETER_GROUPS
    from training.objective import spec_parameter_groups
    from training.trainer import build_stage1_model, model_config, parameter_groups

    for extra in ([], ["model.overrides.use_qformer=false"], ["model.overrides.use_srm=false",
                                                              "stage1.mask_warmup_steps=0"]):
        run = tiny_run(tmp_path / "r", "stage0.enabled=false", "stage2.lr_unet_base=1e-4", *extra)
        model = build_stage1_model(run, model_config(run, 1))
        model.enable_stage2()
        names = {g["name"] for g in spec_parameter_groups(model)} | {g["name"] for g in parameter_groups(model,
                                                                                                        run.stage2)}
        assert names <= set(PARAMETER_GROUPS), (extra, names - set(PARAMETER_GROUPS))
        assert ("sam_projection" in names) == bool(extra and "use_qformer" in extra[0]), names


def test_bilinear_lowpass_init_decodes_a_latent_cell_as_smooth_shading_not_a_block():
    """``stage0.upsampling: bilinear`` (the toy preset): the low-pass initial decoder interpolates between latent
    cells (2x bilinear per level) instead of copying each cell into a 4x4 block; white stays exactly white up to
    the border, and one bright cell fades out over its neighbours."""
    from diffusers import AutoencoderKL

    from training.stage0_vae import identity_init_vae

    cfg = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=[16, 32, 32],
               down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
               norm_num_groups=1, sample_size=64)
    decoded = {}
    for mode in ("nearest", "bilinear"):
        vae = AutoencoderKL(**cfg).eval()
        assert identity_init_vae(vae, upsampling=mode)
        z = torch.zeros(2, 4, 8, 6)
        z[0, :3] = 1.0                      # white everywhere
        z[1, :3, 4, 3] = 1.0                # one white cell on black... in [-1, 1]: on mid-gray 0
        with torch.no_grad():
            decoded[mode] = vae.decode(z).sample
    near, bil = decoded["nearest"], decoded["bilinear"]
    # the low-pass init is exact up to the GroupNorm approximation (about 1e-3), as the nearest one
    assert torch.allclose(bil[0], torch.ones_like(bil[0]), atol=3e-3), "white must stay white, border included"
    assert torch.allclose(bil[0], near[0], atol=1e-4)
    cell = (slice(16, 20), slice(12, 16))  # the 4x4 pixels of latent cell (4, 3)
    assert torch.allclose(near[1, :, cell[0], cell[1]], torch.ones(3, 4, 4), atol=0.03)
    assert near[1, :, 20, 14].abs().max() < 3e-3, "nearest: a hard block edge"
    row = bil[1, 0, 18, 12:22]           # from the cell's left edge into its right neighbours
    assert 0.3 < row[:4].max() < 0.7, "bilinear: the cell's colour is spread, not copied into a block"
    assert row[4] > 0.2 and row[5] > 0.1, "bilinear: it fades into the neighbouring cell"
    assert all(a >= b for a, b in zip(row[1:7].tolist(), row[2:8].tolist())), row


def test_latent_statistics_come_from_a_seeded_subset_close_to_the_whole_pool():
    """Stage 0 measures the latent shift and scale on at most ``STATS_IMAGES`` images of its pool (encoding all
    16,384 of the main job took 30 s): a seeded subset, the same on every call, whose statistics match the whole
    pool's."""
    from diffusers import AutoencoderKL

    from training.stage0_vae import _latent_stats, identity_init_vae

    cfg = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=[8, 8],
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
               norm_num_groups=1, sample_size=16)
    vae = AutoencoderKL(**cfg).eval()
    identity_init_vae(vae)
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(1024, 3, 1, 1, generator=g) * 2 - 1           # flat images of random colours
    pool = colours.expand(-1, -1, 16, 12) + 0.1 * torch.randn(1024, 3, 16, 12, generator=g)
    seen = []
    encode = vae.encode
    vae.encode = lambda x: (seen.append(len(x)), encode(x))[1]
    full_mean, full_std = _latent_stats(vae, pool, seed=0, max_images=1024)
    assert sum(seen) == 1024
    seen.clear()
    sub_mean, sub_std = _latent_stats(vae, pool, seed=0, max_images=256)
    assert sum(seen) == 256
    assert _latent_stats(vae, pool, seed=0, max_images=256) == (sub_mean, sub_std)
    assert max(abs(a - b) for a, b in zip(sub_mean, full_mean)) < 0.2 * full_std  # 3 standard errors
    assert abs(sub_std - full_std) < 0.1 * full_std
    assert abs(_latent_stats(vae, pool[:256], seed=0, max_images=256)[0][0] - sub_mean[0]) > 0  # really a subset
