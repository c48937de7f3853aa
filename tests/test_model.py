"""Components: Extended Attention, stages, trainable sets and the training objective (ARCHITECTURE.md section 4: 5, 10, 11)."""
import copy
import re

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from conftest import make_tiny_model
from training.losses import dice_loss, mask_loss
from training.objective import TrainingObjective, spec_parameter_groups
from twgtm.attention import SpatialGate, attn1_names, level_from_name, model_output, precompute_srm_kv
from twgtm.config import TWGTMConfig
from twgtm.latents import task_gate


def batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    pm = torch.zeros(b, 1, 64, 48)
    pm[:, :, 16:48, 8:40] = 1
    gm = torch.zeros(b, 1, 64, 48)
    gm[:, :, 8:56, 6:42] = 1
    return dict(person=torch.rand(b, 3, 64, 48, generator=g) * 2 - 1, garment=torch.rand(b, 3, 64, 48, generator=g) * 2 - 1,
                person_mask=pm, garment_mask=gm, category_idx=torch.arange(b) % 3)


def unet_args(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 9, 8, 12, generator=g)
    t = torch.tensor([500] * b)
    f_sam = torch.randn(b, 5, 32, generator=g)
    f_srm = {lvl: torch.randn(b, h * w, c, generator=g) for lvl, ((h, w), c) in
             enumerate(zip(model.config.level_sizes(), model.config.level_channels()))}
    return x, t, f_sam, f_srm


def test_levels_come_from_block_names():
    m = make_tiny_model(0, randomize_zll=False)
    names = attn1_names(m.unet)
    assert len(names) == 10
    assert level_from_name("down_blocks.2.attentions.0.transformer_blocks.0.attn1.processor") == 2
    assert level_from_name("up_blocks.1.attentions.2.transformer_blocks.0.attn1.processor") == 2
    assert level_from_name("up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor") == 0
    assert level_from_name("mid_block.attentions.0.transformer_blocks.0.attn1.processor") == 2
    # the tiny config repeats C=32 at levels 0 and 1: the processor level follows the name, not the width
    procs = m.extended_attention_processors()
    assert {p.level for n, p in procs.items() if n.startswith("down_blocks.1")} == {1}
    assert {p.level for n, p in procs.items() if n.startswith("down_blocks.0")} == {0}


def test_stage2_starts_bit_identical_to_stage1():
    s1 = make_tiny_model(0, stage=1)
    s2 = copy.deepcopy(s1)
    s2.enable_stage2()
    assert s1.stage == 1 and s2.stage == 2 and s1.reference_encoder.decoder is None
    assert s2.reference_encoder.decoder is not None and s2.config.stage == 2
    x, t, f_sam, f_srm = unet_args(s1)
    with torch.no_grad():
        a = model_output(s1.unet, x, t, f_sam)
        b = model_output(s2.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.ones(2))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(a, b)


def test_gate_zero_equals_plain_sdpa():
    m = make_tiny_model(0)  # ZLL randomised: the branch is active when the gate is on
    x, t, f_sam, f_srm = unet_args(m)
    plain = copy.deepcopy(m)
    plain.unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        ref = plain.unet(x, t, encoder_hidden_states=f_sam).sample
        off = model_output(m.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.zeros(2))
        on = model_output(m.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.ones(2))
    assert torch.allclose(off, ref, atol=1e-6)
    assert (on - ref).abs().max() > 1e-4


def test_precomputed_kv_and_conditional_rows_match_naive_path():
    m = make_tiny_model(0)
    x, t, f_sam, f_srm = unet_args(m, b=4)
    cond_srm = {k: v[2:] for k, v in f_srm.items()}
    with torch.no_grad():
        naive = model_output(m.unet, x, t, f_sam, f_srm={k: torch.cat([v[2:], v[2:]]) for k, v in f_srm.items()},
                             srm_gate=torch.tensor([0.0, 0.0, 1.0, 1.0]))
        fast = model_output(m.unet, x, t, f_sam, srm_kv=precompute_srm_kv(m.unet, cond_srm), srm_gate=1.0,
                            srm_rows=slice(2, 4))
    assert torch.allclose(naive, fast, atol=1e-5)


def test_zll_learns_and_decoder_grad_zero_at_step0():
    m = make_tiny_model(0, stage=1)
    m.enable_stage2()
    objective = TrainingObjective(m, DDPMScheduler.from_config(m.config.scheduler)).train()
    groups = spec_parameter_groups(m)
    opt = torch.optim.AdamW(groups)
    out = objective.compute_loss(batch(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in m.reference_encoder.decoder.parameters())
    zll = [p.zll.weight for p in m.extended_attention_processors().values()]
    assert any(torch.count_nonzero(w.grad) > 0 for w in zll)
    opt.step()
    assert any(torch.count_nonzero(w) > 0 for w in zll)


def test_trainable_sets_per_stage():
    m = make_tiny_model(0, stage=1)
    names1 = {g["name"] for g in spec_parameter_groups(m)}
    assert names1 == {"unet_transformer", "qformer", "swin", "srm"}

    def named_parameters():
        for name, module in m.modules().items():
            prefix = "" if name == "reference_encoder" else name + "."
            for n, p in module.named_parameters():
                yield prefix + n, p

    trainable = {n for n, p in named_parameters() if p.requires_grad}
    assert not any(n.startswith(("vae.", "sam.clip_vision.")) for n in trainable)
    assert not any(n.startswith("unet.conv_in") or ".resnets." in n or "time_embedding" in n or "conv_out" in n
                   for n in trainable)
    assert not any(".processor." in n or n.startswith("decoder.") for n in trainable)
    m.enable_stage2()
    groups = {g["name"]: g for g in spec_parameter_groups(m)}
    trainable2 = {n for n, p in named_parameters() if p.requires_grad}
    added = trainable2 - trainable
    assert added and all(n.startswith("decoder.") or ".processor." in n for n in added)
    assert {n for n in added if ".processor." in n} == {n for n, _ in m.unet.named_parameters(prefix="unet") if ".processor." in n}
    assert groups["extended_attention"]["lr"] == 1e-4 and groups["unet_transformer"]["lr"] == 1e-5


def test_losses():
    logits = torch.randn(3, 1, 16, 12)
    y = (torch.rand(3, 1, 16, 12) > 0.5).float()
    d = dice_loss(logits, y)
    assert d.shape == (3,) and bool(((d >= 0) & (d <= 1)).all())
    perfect = (y * 40 - 20)
    assert mask_loss([perfect, perfect], y, torch.ones(3, dtype=torch.bool)) < 1e-6 + 1e-3
    assert mask_loss([logits], y, torch.zeros(3, dtype=torch.bool)) == 0


def test_compute_loss_stage_rules():
    sched = DDPMScheduler.from_config(TWGTMConfig.tiny().scheduler)
    s1 = make_tiny_model(0, stage=1)
    out = TrainingObjective(s1, sched, vtoff_prob=1.0).compute_loss(batch(8), generator=torch.Generator().manual_seed(1))
    assert out["mask"] > 0 and torch.allclose(out["loss"], out["diffusion"] + out["mask"])
    out = TrainingObjective(s1, sched, vtoff_prob=0.0).compute_loss(batch(8), generator=torch.Generator().manual_seed(1))
    assert out["mask"] == 0, "L_mask = 0 for an all-VTON batch"
    s2 = TrainingObjective(make_tiny_model(0, stage=2), sched)
    out = s2.compute_loss(batch(8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["loss"], out["diffusion"]), "stage-2 loss is the diffusion MSE"
    again = s2.compute_loss(batch(8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out["loss"], again["loss"]), "same generator, same loss"


def test_prediction_types_train_on_consistent_targets(monkeypatch):
    """epsilon / v_prediction / sample: with the same draws, z_t = sqrt(a) x0 + sqrt(1-a) eps and
    v = sqrt(a) eps - sqrt(1-a) x0 hold between the three captured targets."""
    import training.objective as objective_mod

    captured = {}
    real_loss = objective_mod.diffusion_loss
    real_output = objective_mod.model_output

    def spy_loss(pred, target, **kw):
        captured["target"] = target.detach().clone()
        return real_loss(pred, target, **kw)

    def spy_output(unet, x, t, *a, **kw):
        captured["z_t"], captured["t"] = x[:, :4].detach().clone(), t.detach().clone()
        return real_output(unet, x, t, *a, **kw)

    monkeypatch.setattr(objective_mod, "diffusion_loss", spy_loss)
    monkeypatch.setattr(objective_mod, "model_output", spy_output)
    m = make_tiny_model(0, stage=1)
    targets = {}
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = DDPMScheduler.from_config(dict(TWGTMConfig.tiny().scheduler, prediction_type=kind))
        TrainingObjective(m, sched).compute_loss(batch(4), generator=torch.Generator().manual_seed(3))
        targets[kind] = captured["target"]
    a = sched.alphas_cumprod[captured["t"]].view(-1, 1, 1, 1)
    eps, v, x0 = targets["epsilon"], targets["v_prediction"], targets["sample"]
    assert torch.allclose(captured["z_t"], a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-4)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-4)
    with pytest.raises(Exception, match="prediction_type"):
        TWGTMConfig.tiny(scheduler=dict(TWGTMConfig.tiny().scheduler, prediction_type="flow")).validate()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler", "ddpm"])
@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_prediction_types_run_with_every_scheduler(scheduler, kind, monkeypatch):
    """Every scheduler reads the config's prediction_type (the one it is made with), and each name is its own."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    import twgtm.pipeline as pipeline_mod

    m = make_tiny_model(0)
    m.config.scheduler = dict(m.config.scheduler, prediction_type=kind)
    made = []
    real = pipeline_mod.make_scheduler
    monkeypatch.setattr(pipeline_mod, "make_scheduler", lambda *a: made.append(real(*a)) or made[-1])
    g = torch.Generator().manual_seed(0)
    person, garment = torch.rand(1, 3, 64, 48, generator=g), torch.rand(1, 3, 64, 48, generator=g)
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 16:48, 8:40] = 1
    out = pipeline_mod.TWGTMPipeline.from_components(m).try_on(person, garment, mask, "upper", num_inference_steps=3,
                                                               generator=0, scheduler=scheduler).images
    assert torch.isfinite(out).all() and out.shape == (1, 3, 64, 48)
    want = {"ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
            "ddpm": DDPMScheduler}[scheduler]
    assert [type(s) for s in made] == [want]
    assert made[0].config.prediction_type == kind and made[0].config.timestep_spacing == "trailing"


def test_model_runs_in_bf16():
    m = make_tiny_model(0).to(dtype=torch.bfloat16)
    x, t, f_sam, f_srm = unet_args(m)
    with torch.no_grad():
        out = model_output(m.unet, x.bfloat16(), t, f_sam.bfloat16(),
                           f_srm={k: v.bfloat16() for k, v in f_srm.items()}, srm_gate=1.0)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --- the task gate of Extended Attention (issue: the model learns what the paper says, item 2) ---------------

def _gate(b, value=0.0, h=8, w=6):
    """A task gate over the joined (h, 2w) latent of the tiny model: ``value`` on the generated half."""
    return SpatialGate(task_gate(torch.full((b, 1, h, w), float(value)), (h, w), -1))


def test_zero_task_gate_gives_exactly_the_stage1_output():
    m = make_tiny_model(0)  # ZLL randomised: the branch would change the output
    x, t, f_sam, f_srm = unet_args(m)
    with torch.no_grad():
        plain = model_output(m.unet, x, t, f_sam)  # no SRM kwargs: the plain (stage-1) path
        zero = model_output(m.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.ones(2), srm_mask=_gate(2, 0.0))
        one = model_output(m.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.ones(2), srm_mask=_gate(2, 1.0))
        ungated = model_output(m.unet, x, t, f_sam, f_srm=f_srm, srm_gate=torch.ones(2))
    assert torch.equal(zero, plain)
    assert (one - plain).abs().max() > 1e-4
    # a gate of ones on the generated half is not "no gate": the reference half gets no SRM term
    assert not torch.equal(one, ungated)


def test_task_gate_follows_its_mask_token_by_token():
    m = make_tiny_model(0)
    name = attn1_names(m.unet)[0]  # down_blocks.0: level 0, tokens on the full (8, 12) latent grid
    attn = dict(m.unet.named_modules())[name[: -len(".processor")]]
    proc = m.unet.attn_processors[name]
    g = torch.Generator().manual_seed(0)
    c = attn.to_q.in_features
    hidden = torch.randn(2, 8 * 12, c, generator=g)
    srm = {0: torch.randn(2, 8 * 6, c, generator=g)}
    region = torch.zeros(2, 1, 8, 6)
    region[0, :, 2:5, 1:4] = 1.0
    region[1, :, 5:8, 0:2] = 1.0
    with torch.no_grad():
        off = proc(attn, hidden, srm=None)
        gated = proc(attn, hidden, srm=srm, srm_gate=1.0, srm_mask=SpatialGate(task_gate(region, (8, 6), -1)))
    changed = (gated - off).abs().amax(-1) > 0  # (2, 96) tokens the SRM term reached
    expected = torch.cat([region, torch.zeros_like(region)], dim=-1).flatten(1) > 0
    assert torch.equal(changed, expected)


def test_spatial_gate_resizes_to_every_level_and_refuses_unknown_grids():
    gate = SpatialGate(task_gate(torch.ones(1, 1, 8, 6), (8, 6), -1))
    assert gate.grid(96) == (8, 12) and gate.grid(24) == (4, 6) and gate.grid(6) == (2, 3) and gate.grid(2) == (1, 2)
    tok = gate.tokens(24, torch.float32)
    assert tok.shape == (1, 24, 1) and torch.equal(tok.view(4, 6)[:, :3], torch.ones(4, 3))
    assert torch.equal(tok.view(4, 6)[:, 3:], torch.zeros(4, 3))
    with pytest.raises(ValueError, match="no token grid of 7 tokens"):
        gate.tokens(7, torch.float32)


def _named_trainable(m):
    for name, module in m.modules().items():
        prefix = "" if name == "reference_encoder" else name + "."
        for n, p in module.named_parameters():
            if p.requires_grad:
                yield prefix + n, p


#: trainable parameters (name regexes) that get no gradient from a batch, and why (everything else must get one)
_LAST_TEXT_FFN = r"^sam\.qformer\.layers\.1\.ffn_text\."  # the tiny Q-Former has 2 layers
_WHY_TEXT_FFN = ("the last Q-Former layer's text FFN: its output is discarded (F_QF is the query tokens), "
                 "as in InstructBLIP; kept so the layers stay alike")
NO_GRADIENT = {
    1: {r"^srm\.heads\.task_embed\.": "TFQ_j (j >= 1) only feeds the Decoder, which exists from stage 2 on",
        _LAST_TEXT_FFN: _WHY_TEXT_FFN},
    "2_start": {r"^decoder\.": "ZLL = 0 at the start of stage 2: nothing passes to the Decoder until ZLL moves",
                r"\.to_k_srm\.": "ZLL = 0 at the start of stage 2 (K' receives gradient once ZLL is non-zero)",
                r"\.to_v_srm\.": "ZLL = 0 at the start of stage 2 (V' receives gradient once ZLL is non-zero)",
                r"^srm\.heads\.task_embed\.": "TFQ_j (j >= 1) feeds only the Decoder, behind ZLL = 0 at the start",
                _LAST_TEXT_FFN: _WHY_TEXT_FFN},
    2: {_LAST_TEXT_FFN: _WHY_TEXT_FFN},
}


@pytest.mark.parametrize("stage", [1, "2_start", 2])
def test_every_trainable_parameter_learns_on_a_batch_of_both_tasks(stage):
    if stage == 1:
        m = make_tiny_model(0, stage=1)
    elif stage == "2_start":
        m = make_tiny_model(0, stage=1)
        m.enable_stage2()
    else:
        m = make_tiny_model(0, stage=2)  # ZLL away from 0, as after some stage-2 steps
    cfg = copy.deepcopy(m.config)
    m.config.loss.stage2_mask_weight = 1.0
    objective = TrainingObjective(m, DDPMScheduler.from_config(cfg.scheduler), vtoff_prob=0.5).train()
    spec_parameter_groups(m)
    seen = {}
    for gen_seed in range(20):  # a seed whose batch holds both tasks and no CFG drop
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(gen_seed)
        vt = torch.rand(6, generator=g) < 0.5
        drop = torch.rand(6, generator=g) < m.config.cfg_dropout
        if vt.any() and (~vt).any() and not drop.any():
            break
    out = objective.compute_loss(batch(6), generator=torch.Generator().manual_seed(gen_seed))
    assert 0 < float(out["vtoff_fraction"]) < 1
    out["loss"].backward()
    allowed = NO_GRADIENT[stage]
    missing = []
    for name, p in _named_trainable(m):
        ok = p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.abs().sum() > 0)
        excused = any(re.search(key, name) for key in allowed)
        seen[name] = ok
        if not ok and not excused:
            missing.append(name)
    assert not missing, f"no finite non-zero gradient: {missing[:10]} ({len(missing)})"
    # the excused ones really get none (else the list would be stale)
    for key in allowed:
        assert any(re.search(key, n) for n in seen) and not any(ok for n, ok in seen.items() if re.search(key, n)), key
    # the TaskFormer's mask heads (M^1, M^2) learn in every stage
    assert seen["srm.heads.m1_proj.weight"] and seen["srm.heads.mask_embed.layers.0.weight"]
