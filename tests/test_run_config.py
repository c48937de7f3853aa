"""The run configuration (training/config.py, on OmegaConf): presets, ``--set`` overrides, ``${...}`` interpolation,
one-line typed errors and the effective-config dump."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError
from twgtm.schedulers import SCHEDULER_NAMES

from training.config import EvalConfig, RunConfig, SyntheticSpec, dump_run_config, load_run_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny.yaml"


# ---------------------------------------------------------------------------------------------- presets
def test_synthetic_preset_values():
    run = load_run_config(CONFIGS / "synthetic_cpu.yaml")
    assert (run.name, run.output_dir, run.threads, run.processes, run.mixed_precision) == \
        ("synthetic", "runs/synthetic", 1, 2, "no")
    assert run.data.synthetic == SyntheticSpec(root="runs/synthetic/data", n_train=4096, n_test=32, height=64,
                                               width=48, seed=0, n_val=64, val_root="runs/synthetic/data_val")
    s1, s2 = run.stage1, run.stage2
    assert (s1.max_steps, s1.mask_warmup_steps, s1.mask_warmup_batch_size, s1.batch_size, s1.lr_unet, s1.lr_new,
            s1.lr_unet_base, s1.ema_decay, s1.vtoff_prob) == (2500, 1400, 16, 8, 1.5e-3, 7.5e-4, 1.5e-3, 0.995, 0.3)
    assert s2.mask_warmup_batch_size is None
    assert [(s.lr_decay, s.lr_min_ratio) for s in (s1, s2)] == [("cosine", 0.05)] * 2
    assert s2.mask_warmup_steps == 0
    assert (s1.frozen_groups, s2.frozen_groups) == ([], ["qformer", "swin", "srm"])
    assert (run.stage0.init, run.stage0.upsampling) == ("lowpass", "bilinear")
    assert (s2.max_steps, s2.sample_every, s2.betas, s2.weight_decay) == (600, 600, (0.9, 0.999), 0.01)
    assert isinstance(s1.lr_unet, float) and isinstance(run.stage0.lr, float) and run.stage0.lr == 3e-5
    assert (run.eval.guidance_scale, run.eval.eta, run.eval.tryoff_region) == (1.0, 1.0, "pred_mask")
    assert run.export.filename == "runs/synthetic/export/twgtm_synthetic_tiny.safetensors"
    cfg = run.model.build()
    tiny = TWGTMConfig.tiny()
    assert (cfg.height, cfg.width, cfg.vae_scale_factor, cfg.vae["block_out_channels"]) == (64, 48, 4, (16, 32, 32))
    assert cfg.scheduler == dict(tiny.scheduler, prediction_type="sample") and cfg.unet == tiny.unet
    assert cfg.loss == dataclasses.replace(tiny.loss, stage2_mask_weight=0.0)
    assert cfg.swin.kwargs == dict(tiny.swin.kwargs, drop_path_rate=0.0)  # no stochastic depth in the toy Swin


def test_paper_preset_values_and_config_dir():
    run = load_run_config(CONFIGS / "paper_vitonhd_dresscode.yaml")
    root = str(CONFIGS.resolve())
    assert run.config_dir == root and run.output_dir == "runs/paper"
    assert run.weights.unet == f"{root}/../weights/stable-diffusion-inpainting"
    assert run.weights.catvton_attention is None and run.data.synthetic is None
    assert [(d.kind, d.root, d.categories) for d in run.data.datasets] == [
        ("vitonhd", f"{root}/../data/zalando-hd-resized", None),
        ("dresscode", f"{root}/../data/DressCode", ["upper_body", "lower_body", "dresses"])]
    assert run.eval.weights_dir == f"{root}/../weights/metrics"
    assert run.export.filename == "runs/paper/twgtm_paper.safetensors"
    assert run.model.build() == TWGTMConfig.full()
    assert (run.stage1.max_steps, run.stage2.max_steps, run.stage1.lr_new) == (16000, 32000, 1e-4)


# ---------------------------------------------------------------------------------------------- overrides
def test_set_overrides_interpolation_and_yaml_values(tmp_path):
    run = load_run_config(TINY, [f"output_dir={tmp_path}/${{name}}", "name=exp", "stage1.lr_unet=3e-3",
                                 "stage1.betas=[0.8, 0.95]", "stage1.ema_decay=null", "data.hflip=true",
                                 "model.overrides.scheduler.prediction_type=v_prediction"])
    assert run.output_dir == f"{tmp_path}/exp" and run.output_path == tmp_path / "exp"
    assert run.data.synthetic.root == f"{tmp_path}/exp/data"          # the schema default ${output_dir}/data
    assert run.export.filename == f"{tmp_path}/exp/twgtm_exp.safetensors"
    assert run.stage1.lr_unet == 0.003 and run.stage1.betas == (0.8, 0.95) and run.stage1.ema_decay is None
    assert run.data.hflip is True and run.model.build().scheduler["prediction_type"] == "v_prediction"
    assert run.resolve("~/x") == str(Path.home() / "x")
    assert run.resolve("${output_dir}/data") == f"{tmp_path}/exp/data"
    assert RunConfig().output_path == Path("runs/run")               # built in code: resolved on use

    # an entry of a list by its index (the paper preset's dataset roots from the command line)
    paper = load_run_config(CONFIGS / "paper_vitonhd_dresscode.yaml",
                            [f"data.datasets.0.root={tmp_path}/v", f"data.datasets.1.root={tmp_path}/d"])
    assert [(d.kind, d.root, d.categories) for d in paper.data.datasets] == [
        ("vitonhd", f"{tmp_path}/v", None), ("dresscode", f"{tmp_path}/d", ["upper_body", "lower_body", "dresses"])]

    # a section the file does not have is created with its defaults
    paper = load_run_config(CONFIGS / "paper_vitonhd_dresscode.yaml", ["data.synthetic.n_train=4"])
    assert paper.data.synthetic == SyntheticSpec(root="runs/paper/data", n_train=4, val_root="runs/paper/data_val")


def test_empty_sections_and_stage2_defaults(tmp_path):
    text = "name: e\nweights:\n  random_base: true\ndata:\n  synthetic:\n    n_train: 4\nstage0:\neval:\n" \
           "stage2:\n  batch_size: 3\n"
    (tmp_path / "run.yaml").write_text(text)
    run = load_run_config(tmp_path / "run.yaml")                     # "stage0:" with nothing under it: defaults
    assert run.stage0 == RunConfig().stage0 and run.eval == EvalConfig()
    assert run.data.synthetic == SyntheticSpec(root="runs/e/data", n_train=4, val_root="runs/e/data_val")
    # stage 2 defaults to 32k steps (the paper) whether or not the file has a stage2 section
    assert run.stage2.batch_size == 3 and run.stage2.max_steps == 32000 == RunConfig().stage2.max_steps
    assert run.stage1.max_steps == 16000


def test_dump_is_the_effective_config_and_loads_back(tmp_path):
    run = load_run_config(CONFIGS / "paper_vitonhd_dresscode.yaml", [f"output_dir={tmp_path}/run"])
    path = dump_run_config(run, tmp_path / "run" / "config.yaml")
    text = path.read_text()
    assert "${" not in text and f"{CONFIGS.resolve()}/../weights/sd-vae-ft-mse" in text
    again = load_run_config(path)
    assert again.to_dict() == run.to_dict()


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("override, message", [
    ("stage1.max_stepz=3", "stage1: unknown keys ['max_stepz']; expected a subset of ['max_steps', "),
    ("nope=1", "config: unknown keys ['nope']"),
    ("stage1.max_steps=abc", "stage1.max_steps: expected an integer, got 'abc'"),
    ("stage1.max_steps=7.5", "stage1.max_steps: expected an integer, got 7.5"),
    ("threads=true", "threads: expected an integer or null, got True"),
    ("name=[1]", "name: expected a string, got [1]"),
    ("stage1=5", "stage1: expected a mapping of StageConfig fields, got 5"),
    ("data.synthetic=5", "data.synthetic: expected a mapping of SyntheticSpec fields or null, got 5"),
    ("stage1.betas=[0.9, a]", "stage1.betas: expected a list of 2 values (a number each), got [0.9, 'a']"),
    ("data.synthetic.categories=upper", "data.synthetic.categories: expected a list (a string each), got 'upper'"),
    ("data.datasets=[{kind: vitonhd, root: r, kidn: 1}]", "data.datasets[0]: unknown keys ['kidn']"),
    ("data.datasets=[{kind: vitonhd, root: [1]}]", "data.datasets[0].root: expected a string, got [1]"),
    ("data.datasets.0.root=r", "data.datasets: expected an index of an existing entry (none: the list is empty"),
    ("data.datasets.x=r", "data.datasets: expected list indices"),
    ("model.overrides=5", "model.overrides: expected a mapping, got 5"),
    ("weights.unet=${nope}/x", "weights.unet: expected ${...} to name keys of the run"),
    ("seed=${name}", "seed: expected ${...} to name keys of the run"),
    ("eval.scheduler=plms", f"eval.scheduler: expected one of {SCHEDULER_NAMES}, got 'plms'"),
    ("eval.tryoff_region=box", "eval.tryoff_region: expected one of ('full', 'gt_box', "),
    ("model.preset=huge", "model.preset: expected 'tiny' or 'full', got 'huge'"),
    ("stage1.max_steps", "--set: expected 'dotted.key=value', got 'stage1.max_steps'"),
    ("=3", "--set: expected 'dotted.key=value', got '=3'"),
    ("x=[1,", "--set: expected YAML values"),
])
def test_bad_values_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as exc:
        load_run_config(TINY, [override])
    text = str(exc.value)
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("content, message", [
    ("- a\n- b\n", "expected a mapping at the top level, got a list"),
    ("name: a\nname: b\n", "expected valid YAML, got a parse error: while constructing a mapping"),
    ("stage1: [1,\n", "expected valid YAML"),
])
def test_bad_yaml_files(tmp_path, content, message):
    (tmp_path / "bad.yaml").write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_run_config(tmp_path / "bad.yaml")
    assert message in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
    with pytest.raises(ConfigError, match="expected a YAML file"):
        load_run_config(tmp_path / "missing.yaml")


def test_validation_set_settings_are_checked():
    """``data.synthetic.n_val`` / ``val_seed``: the validation set must not repeat the training seed, counts are
    non-negative ints, and a folder generated with other settings is refused, not reused."""
    from training.data import _synthetic_sets

    run = load_run_config(CONFIGS / "synthetic_cpu.yaml", ["output_dir=/tmp/x"])
    (_, _, train), (key, root, val) = _synthetic_sets(run)
    assert (key, str(root), val["seed"], val["n_train"], val["n_test"]) == \
        ("data.synthetic.val_root", "/tmp/x/data_val", 1, 0, 64)
    assert {k: v for k, v in val.items() if k not in ("seed", "n_train", "n_test")} == \
        {k: v for k, v in train.items() if k not in ("seed", "n_train", "n_test")}
    assert len(_synthetic_sets(load_run_config(CONFIGS / "synthetic_cpu.yaml", ["data.synthetic.n_val=0"]))) == 1
    with pytest.raises(ConfigError, match="data.synthetic.val_seed: expected a seed other than"):
        load_run_config(CONFIGS / "synthetic_cpu.yaml", ["data.synthetic.val_seed=0"])
    with pytest.raises(ConfigError, match="data.synthetic.n_val"):
        load_run_config(CONFIGS / "synthetic_cpu.yaml", ["data.synthetic.n_val=-1"])
