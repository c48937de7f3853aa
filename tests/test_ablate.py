"""The paper's Table-4 ablations: the model switches (``use_srm``, ``use_qformer``, ``srm_fusion``), their typed
errors, and ``python -m training ablate`` end to end on a 2-step tiny run of every variant (training/ablate.py,
docs/ABLATIONS.md)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from twgtm.attention import (ConcatAttnProcessor, ExtendedAttnProcessor, SpatialGate, TWGTMAttnProcessor,
                             model_output, precompute_srm_kv)
from twgtm.components import TWGTMComponents
from twgtm.config import QFormerConfig, TWGTMConfig
from twgtm.errors import ConfigError
from twgtm.pipeline import TWGTMPipeline
from twgtm.weights import load_twgtm, save_twgtm

from training.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _build(seed: int = 0, **switches) -> TWGTMComponents:
    torch.manual_seed(seed)
    return TWGTMComponents.build(TWGTMConfig.tiny(**switches), random_prompts=True).eval()


def _unet_inputs(model: TWGTMComponents, b: int = 2):
    cfg = model.config
    h, w = cfg.latent_size
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 9, h, 2 * w, generator=g)
    ref = torch.rand(b, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    return x, ref, torch.tensor([0, 1])


# ---------------------------------------------------------------------------------------------- the switches
def test_defaults_are_the_paper_model_and_switches_serialise():
    cfg = TWGTMConfig.tiny()
    assert (cfg.use_srm, cfg.use_qformer, cfg.srm_fusion) == (True, True, "extended_attention")
    assert cfg.semantic_token_count == cfg.qformer.num_queries
    for switches in (dict(use_srm=False), dict(use_qformer=False), dict(srm_fusion="concat")):
        again = TWGTMConfig.from_json(TWGTMConfig.tiny(**switches).to_json())
        assert {k: getattr(again, k) for k in switches} == switches
    old = json.loads(cfg.to_json())  # a file written before the switches existed loads as the paper model
    for key in ("use_srm", "use_qformer", "srm_fusion"):
        del old[key]
    assert TWGTMConfig.from_dict(old) == cfg


@pytest.mark.parametrize("switches, message", [
    (dict(use_srm="no"), "use_srm: expected true or false, got str 'no'"),
    (dict(use_qformer=0), "use_qformer: expected true or false, got int 0"),
    (dict(srm_fusion="add"), "srm_fusion: expected one of ('extended_attention', 'concat'), got str 'add'"),
    (dict(use_srm=False, srm_fusion="concat"), "srm_fusion: expected 'extended_attention' (the default) when "
                                               "use_srm is false"),
])
def test_bad_switches_are_config_errors_naming_the_field(switches, message):
    with pytest.raises(ConfigError) as exc:
        TWGTMConfig.tiny(**switches).validate()
    assert message in str(exc.value), str(exc.value)


def test_variant1_has_no_srm_and_its_unet_no_extended_attention_term(tmp_path):
    model = _build(use_srm=False)  # stage 2
    ref = model.reference_encoder
    assert ref.srm is None and ref.decoder is None and not ref.has_srm
    keys = model.state_dict().keys()
    assert not [k for k in keys if k.startswith(("srm.", "decoder.")) or ".processor." in k]
    assert all(type(p) is TWGTMAttnProcessor for p in model.unet.attn_processors.values())
    stage1 = _build(use_srm=False, stage=1)
    stage1.enable_stage2()  # stage 2 adds nothing without an SRM
    assert stage1.stage == 2 and stage1.reference_encoder.decoder is None
    assert all(type(p) is TWGTMAttnProcessor for p in stage1.unet.attn_processors.values())
    feats = ref(*_unet_inputs(model)[1:])
    assert feats.srm is None and feats.f_srm is None
    # saved and loaded back: the same structure (the switch is in the file's config)
    path = save_twgtm(model, tmp_path / "v1.safetensors", include_base=True)
    again = load_twgtm(path)
    assert again.config.use_srm is False and again.reference_encoder.srm is None
    assert set(again.state_dict()) == set(keys)


def test_variant1_pipeline_has_no_predicted_mask_and_says_so():
    pipe = TWGTMPipeline.from_components(_build(use_srm=False))
    person = torch.rand(1, 3, 64, 48)
    out = pipe.try_off(person, "upper", num_inference_steps=1, guidance_scale=1.0, generator=0)
    assert out.images.shape == (1, 3, 64, 48) and out.garment_mask is None
    for kwargs in (dict(predicted_box=True), dict(predicted_mask=True)):
        with pytest.raises(ConfigError, match=f"{next(iter(kwargs))}: expected a model with a Spatial Refinement "
                                              "Module .* use_srm=false"):
            pipe.try_off(person, "upper", num_inference_steps=1, **kwargs)
    with pytest.raises(ConfigError, match="predict_garment_mask: expected a model with a Spatial Refinement Module"):
        pipe.predict_garment_mask(person, "upper")
    with pytest.raises(ConfigError, match="with_srm: expected a model with a Spatial Refinement Module"):
        pipe.reference_encoder(person * 2 - 1, torch.tensor([0]), with_srm=True)


def test_variant8_has_no_qformer_and_the_category_still_enters():
    model = _build(use_qformer=False)
    sam, cfg = model.reference_encoder.sam, model.config
    assert sam.qformer is None and sam.vision_proj is None and sam.text_proj is None  # tiny: widths match
    assert not [k for k in model.state_dict() if k.startswith("sam.qformer.")]
    _, ref, _ = _unet_inputs(model)
    tokens = (cfg.clip_vision["image_size"] // cfg.clip_vision["patch_size"]) ** 2 + 1 + cfg.text_max_length
    assert cfg.semantic_token_count == tokens
    upper = model.reference_encoder(ref, torch.tensor([0, 0]), with_srm=True)
    dress = model.reference_encoder(ref, torch.tensor([2, 2]), with_srm=True)
    assert upper.sam.f_sam.shape == (2, tokens, cfg.cross_attention_dim)
    assert upper.srm.tfq0_logits[-1].shape == (2, 1, 16, 12)
    # the category's prompt tokens are part of F_SAM, and so they change the SRM's mask too
    assert not torch.equal(upper.sam.f_sam, dress.sam.f_sam)
    assert not torch.equal(upper.srm.tfq0_logits[-1], dress.srm.tfq0_logits[-1])
    torch.testing.assert_close(upper.sam.f_sam[:, :tokens - cfg.text_max_length],
                               sam.encode_image(ref))  # the CLIP tokens, as they are

    # widths that differ from the UNet's: a linear map per kind of token, trained in the Q-Former's place
    from training.objective import spec_parameter_groups

    narrow = TWGTMConfig.tiny(use_qformer=False, qformer=QFormerConfig(
        hidden_size=32, num_heads=4, num_layers=2, ffn_dim=64, num_queries=4, text_dim=32, vision_dim=16),
        clip_vision=dict(TWGTMConfig.tiny().clip_vision, projection_dim=16))
    torch.manual_seed(0)
    m2 = TWGTMComponents.build(narrow, random_prompts=True)
    assert m2.reference_encoder.sam.vision_proj.in_features == 16 and m2.reference_encoder.sam.text_proj is None
    assert m2.reference_encoder(ref, torch.tensor([0, 1])).sam.f_sam.shape[-1] == 32
    groups = {g["name"]: g["params"] for g in spec_parameter_groups(m2)}
    assert "qformer" not in groups and len(groups["sam_projection"]) == 2


def test_variant6_joins_srm_tokens_to_self_attention_instead_of_the_cross_term():
    model = _build(srm_fusion="concat")
    procs = {n: p for n, p in model.unet.attn_processors.items() if n.endswith(".attn1.processor")}
    assert procs and all(type(p) is ConcatAttnProcessor for p in procs.values())
    assert not [k for k in model.state_dict() if ".processor." in k]  # no K'/V'/ZLL weights
    assert not model.extended_attention_processors()
    x, ref, cat = _unet_inputs(model)
    feats = model.reference_encoder(ref, cat)
    f_sam, t = feats.sam.f_sam, torch.tensor([500])
    with torch.no_grad():
        plain = model_output(model.unet, x, t, f_sam)
        joined = model_output(model.unet, x, t, f_sam, f_srm=feats.f_srm)
        gated_off = model_output(model.unet, x, t, f_sam, f_srm=feats.f_srm, srm_gate=0.0)
        per_row = model_output(model.unet, x, t, f_sam, f_srm=feats.f_srm, srm_gate=torch.tensor([0.0, 1.0]))
        zero_mask = SpatialGate(torch.zeros(2, 1, *x.shape[-2:]))
        masked_off = model_output(model.unet, x, t, f_sam, f_srm=feats.f_srm, srm_mask=zero_mask)
        kv = precompute_srm_kv(model.unet, feats.f_srm)
        from_kv = model_output(model.unet, x, t, f_sam, srm_kv=kv)
        # CFG layout: the SRM rows are the second half only; the first half is plain self-attention
        both = model_output(model.unet, torch.cat([x, x]), t, torch.cat([f_sam, f_sam]), srm_kv=kv,
                            srm_rows=slice(2, 4))
    assert (joined - plain).abs().max() > 1e-4          # F_SRM enters (no zero-initialised ZLL here)
    torch.testing.assert_close(gated_off, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(per_row[:1], plain[:1], rtol=1e-5, atol=1e-5)  # training's CFG drop, row by row
    torch.testing.assert_close(per_row[1:], joined[1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked_off, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_kv, joined, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[:2], plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[2:], joined, rtol=1e-5, atol=1e-5)

    # one attn1 on its own: the same as self-attention over [tokens; F_SRM], keeping the tokens' outputs
    name = next(iter(procs))
    attn = dict(model.unet.named_modules())[name[: -len(".processor")]]
    level = procs[name].level
    h = torch.randn(2, feats.f_srm[level].shape[1] + 5, attn.to_q.in_features)
    with torch.no_grad():
        ours = procs[name](attn, h, srm={level: feats.f_srm[level]})
        ref_out = TWGTMAttnProcessor()(attn, torch.cat([h, feats.f_srm[level]], 1))[:, :h.shape[1]]
    torch.testing.assert_close(ours, ref_out, rtol=1e-5, atol=1e-5)


def test_default_stage2_keeps_the_eq13_cross_term():
    model = _build()
    procs = [p for n, p in model.unet.attn_processors.items() if n.endswith(".attn1.processor")]
    assert procs and all(isinstance(p, ExtendedAttnProcessor) for p in procs)


def test_run_config_refuses_what_a_model_without_srm_cannot_do():
    base = ["model.overrides.use_srm=false"]
    with pytest.raises(ConfigError, match=r"stage1.mask_warmup_steps: expected 0 with model.overrides.use_srm false"):
        load_run_config(TINY, base + ["stage1.max_steps=3", "stage1.mask_warmup_steps=1"])
    with pytest.raises(ConfigError, match=r"eval.tryoff_region: expected one of \['full', 'gt_box', 'gt_mask'\] "
                                          r"with model.overrides.use_srm false"):
        load_run_config(TINY, base + ["eval.tryoff_region=pred_box"])
    with pytest.raises(ConfigError, match="srm_fusion: expected one of"):
        load_run_config(TINY, ["model.overrides.srm_fusion=sum"])


# ---------------------------------------------------------------------------------------------- the command
SMOKE_SETS = ["threads=1", "stage0.enabled=false", "data.synthetic.n_train=4", "data.synthetic.n_test=2",
              "data.synthetic.n_val=2", "eval.num_inference_steps=1", "eval.batch_size=2",
              "stage1.mask_warmup_steps=1", "eval.tryoff_region=pred_mask"]
ALL = ["twgtm", "v1", "v3", "v4", "v5", "v6", "v8"]
TRAINED = [v for v in ALL if v != "v3"]


def _argv(out: Path, *extra: str, variants=ALL) -> list[str]:
    return ["--log-level", "WARNING", "ablate", "--config", str(TINY), "--output-dir", str(out), "--seeds", "2",
            "--max-steps", "2", "--variants", *variants, *extra] + [a for s in SMOKE_SETS for a in ("--set", s)]


def _stage_logs(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.glob("*/seed*/stage*/log.csv"))}


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """Every variant, 2 seeds, 2 steps per stage, through the real command (in this process)."""
    from training.cli import main

    out = tmp_path_factory.mktemp("ablate") / "runs"
    n = torch.get_num_threads()
    assert main(_argv(out)) == 0
    torch.set_num_threads(n)
    return out


def test_every_variant_and_seed_has_its_run_on_the_same_data(ablation):
    out = ablation
    for v in ALL:
        for k in (0, 1):
            assert json.loads((out / v / f"seed{k}" / "ablate.json").read_text())["done"] is True
    assert len(list(out.glob("*/seed*/data"))) == 0 and (out / "data" / "synthetic.json").is_file()
    for v in TRAINED:
        for k in (0, 1):
            run = load_run_config(out / v / f"seed{k}" / "config.yaml")
            assert run.seed == k and run.data.synthetic.seed == 0            # training seed seed + k, data fixed
            assert run.data.synthetic.root == str(out / "data")             # the one shared set
            assert (run.stage1.max_steps, run.stage2.max_steps) == ((1, 2) if v in ("v1", "v4") else (2, 2))
            assert run.stage1.mask_warmup_steps == (0 if v in ("v1", "v4") else 1)
            assert run.stage1.vtoff_prob == {"v4": 0.0, "v5": 1.0}.get(v, 0.5)
            report = json.loads((out / v / f"seed{k}" / "report" / "report.json").read_text())
            assert report["settings"]["tryoff_region"] == ("full" if v == "v1" else "pred_mask")
            assert (out / v / f"seed{k}" / "report_val" / "report.json").is_file()
    # the exported models have the variants' structure
    def exported(v):
        return load_twgtm(next((out / v / "seed0").glob("*.safetensors")))

    v1, v6, v8 = exported("v1"), exported("v6"), exported("v8")
    assert v1.reference_encoder.srm is None and not [p for p in v1.unet.attn_processors.values()
                                                     if not isinstance(p, TWGTMAttnProcessor)]
    assert any(isinstance(p, ConcatAttnProcessor) for p in v6.unet.attn_processors.values())
    assert v8.reference_encoder.sam.qformer is None
    v1_report = json.loads((out / "v1" / "seed0" / "report" / "report.json").read_text())
    assert v1_report["results"]["mask"]["model"] == {"mask_iou": None}
    assert not [f for f in v1_report["failed"] if f.startswith("mask")]
    for region in ("pred_box", "gt_box", "full"):
        for name in (f"report_{region}", f"report_val_{region}"):
            rep = json.loads((out / "v3" / "seed1" / name / "report.json").read_text())
            assert rep["settings"]["tryoff_region"] == region


def test_aggregation_is_the_mean_and_spread_of_the_reports(ablation):
    out = ablation
    result = json.loads((out / "ablations.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["twgtm", "v1", "v3 (pred_box)", "v3 (gt_box)", "v3 (full)", "v4", "v5", "v6", "v8"]
    for label, folder, split in (("v6", "report", "test"), ("twgtm", "report_val", "validation"),
                                 ("v3 (gt_box)", "report_val_gt_box", "validation")):
        variant = label.split()[0]
        reports = [json.loads((out / variant / f"seed{k}" / folder / "report.json").read_text()) for k in (0, 1)]
        for cat in ("all", "upper"):
            for task, metric in (("tryoff", "l1"), ("tryoff", "ssim"), ("mask", "mask_iou"),
                                 ("tryon", "changed_l1"), ("tryon", "changed_ssim")):
                values = [(r["results"] if cat == "all" else r["per_category"][cat]["results"])[task]["model"][metric]
                          for r in reports]
                cell = rows[label]["splits"][split][cat][f"{task}/{metric}"]
                assert cell["values"] == values
                assert cell["mean"] == pytest.approx(statistics.fmean(values))
                assert (cell["min"], cell["max"]) == (min(values), max(values))
                assert cell["std"] == pytest.approx(statistics.stdev(values))
    assert rows["v1"]["splits"]["test"]["all"]["mask/mask_iou"]["mean"] is None  # not available, not invented
    md = (out / "ablations.md").read_text()
    assert "| v1 | full |" in md and "n/a" in md and "## validation split, lower" in md
    times = result["time"]
    assert set(times) == set(ALL) and all(t["calls"] == 2 and t["cpu_s"] > 0 for t in times.values())
    assert result["total_time"]["cpu_s"] == pytest.approx(sum(t["cpu_s"] for t in times.values()), abs=0.2)


def test_a_second_call_trains_nothing_and_an_unfinished_run_is_resumed(ablation, caplog):
    from training.cli import main

    out = ablation
    logs = _stage_logs(out)
    records = {p: p.read_text() for p in out.glob("*/seed*/ablate.json")}
    assert main(_argv(out)) == 0
    assert _stage_logs(out) == logs                                      # no training step anywhere
    assert {p: p.read_text() for p in out.glob("*/seed*/ablate.json")} == records

    # a run that stopped after training, before its reports: resumed, not trained again
    run = out / "v6" / "seed1"
    (run / "ablate.json").unlink()
    report = run / "report" / "report.json"
    report.unlink()
    with caplog.at_level("INFO", logger="training"):
        assert main(_argv(out)) == 0
    assert report.is_file() and _stage_logs(out) == logs
    assert "stage 1: " in caplog.text and "exists, skipping" in caplog.text
    assert len(json.loads((run / "ablate.json").read_text())["calls"]) == 1


def test_bad_arguments_are_typed_errors_naming_the_argument(tmp_path, capsys, caplog):
    from training.ablate import run_ablation
    from training.cli import main

    assert main(_argv(tmp_path, variants=["twgtm", "v7"])) == 2
    assert "--variants: expected names among ['twgtm', 'v1', 'v3', 'v4', 'v5', 'v6', 'v8'], got 'v7'" in caplog.text
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--seeds", "0"])
    assert exc.value.code == 2 and "argument --seeds: expected an integer >= 1, got 0" in capsys.readouterr().err
    for kwargs, message in ((dict(variants=["v1"], seeds=0), "--seeds: expected an integer >= 1, got 0"),
                            (dict(variants=["v1", "v1"], seeds=1), "--variants: expected distinct names"),
                            (dict(variants=[], seeds=1), "--variants: expected one or more names"),
                            (dict(variants=["v1"], seeds=1, max_steps=0), "--max-steps: expected an integer >= 1")):
        with pytest.raises(ConfigError, match=message):
            run_ablation(output_dir=tmp_path, config=str(TINY), main_job=main, report=None, **kwargs)
    assert not list(tmp_path.glob("*/seed*"))  # nothing started
