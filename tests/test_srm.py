"""Spatial Refinement Module + Decoder (ARCHITECTURE.md 1.3; invariants 6, 7, 8)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError, InputError
from twgtm.srm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LinearPixelDecoder,
    MaskedAttention,
    SpatialRefinementModule,
    SRMDecoder,
    attention_mask_from_logits,
    sine_position_embedding,
)

B = 2


def _tiny(**taskformer):
    cfg = TWGTMConfig.tiny()
    if taskformer:
        cfg = dataclasses.replace(cfg, taskformer=dataclasses.replace(cfg.taskformer, **taskformer))
    return cfg


def _build(cfg=None, seed=0):
    cfg = cfg or _tiny()
    torch.manual_seed(seed)
    # eval(): timm Swin builds with stochastic depth (drop_path_rate 0.1), active in train mode
    return cfg, SpatialRefinementModule(cfg).eval(), SRMDecoder(cfg).eval()


def _inputs(cfg, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(B, 3, cfg.height, cfg.width, generator=g) * 2 - 1
    f_qf = torch.randn(B, cfg.qformer.num_queries, cfg.qformer.hidden_size, generator=g)
    return image.to(dtype), f_qf.to(dtype)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_shapes_tiny():
    cfg, srm, dec = _build()
    out = srm(*_inputs(cfg))
    h1, h2, h3 = out.features
    assert h1.shape == (B, 16, 16, 12) and h2.shape == (B, 32, 8, 6) and h3.shape == (B, 64, 4, 3)
    assert out.tfq.shape == (B, 4, 16, 12)
    units = cfg.taskformer.num_units
    assert len(out.tfq0_logits) == units and len(out.m1) == units + 1 and len(out.m2_logits) == units + 1
    assert all(t.shape == (B, 1, 16, 12) for t in out.tfq0_logits)
    assert all(t.shape == (B, 4, 4) for t in out.m1)  # (B, K, N)
    assert all(t.shape == (B, 4, 16, 12) for t in out.m2_logits)
    feats = dec(out.tfq)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {0: (B, 48, 32), 1: (B, 12, 32), 2: (B, 4, 64)}


def test_value_ranges():
    cfg, srm, _ = _build()
    with torch.no_grad():
        out = srm(*_inputs(cfg))
    for m1 in out.m1:
        assert m1.min() >= 0 and m1.max() <= 1
    for logits in out.m2_logits:
        m2 = logits.sigmoid()
        assert m2.min() >= 0 and m2.max() <= 1
    tfq0 = out.tfq[:, :1]
    assert tfq0.min() >= 0 and tfq0.max() <= 1
    assert torch.equal(tfq0, out.tfq0_logits[-1].sigmoid())
    assert (out.tfq[:, 1:] < 0).any() and (out.tfq[:, 1:] > 1).any()  # TFQ_j unbounded


def test_preprocess_imagenet():
    cfg, srm, _ = _build()
    image = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    got = srm.preprocess(image)[0, :, 0, 0]
    want = torch.tensor([(v - m) / s for v, m, s in zip((0.0, 0.5, 1.0), IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(got, want)


def test_attention_mask_from_logits_properties():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, 3, 8, 6, generator=g, requires_grad=True)
    heads = 4
    mask = attention_mask_from_logits(logits, (4, 3), heads, 0.5, mode="hard")
    assert mask.dtype == torch.bool and not mask.requires_grad
    assert mask.shape == (B * heads, 3, 12)
    assert not mask.all(dim=-1).any()  # no fully-masked row
    per_head = mask.view(B, heads, 3, 12)
    assert torch.equal(per_head, per_head[:, :1].expand_as(per_head))  # identical per head, sample-major
    resized = F.interpolate(logits.detach(), size=(4, 3), mode="bilinear", align_corners=False)
    expected = resized.flatten(2).sigmoid() < 0.5
    expected = expected & ~expected.all(-1, keepdim=True)
    assert torch.equal(per_head[:, 0], expected)
    # everything below threshold -> every row fully masked -> reset to all False
    forced = attention_mask_from_logits(torch.full((B, 3, 8, 6), -10.0), (4, 3), heads, 0.5, mode="hard")
    assert forced.shape == (B * heads, 3, 12) and not forced.any()


def test_soft_attention_mask_is_log_probability_and_differentiable():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, 3, 8, 6, generator=g, requires_grad=True)
    bias = attention_mask_from_logits(logits, (4, 3), 2, mode="soft")
    assert bias.dtype == torch.float32 and bias.shape == (B * 2, 3, 12) and bool((bias <= 0).all())
    resized = F.interpolate(logits, size=(4, 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(bias.view(B, 2, 3, 12)[:, 1], resized.flatten(2).sigmoid().log())
    bias.sum().backward()  # the masks learn: gradient reaches the logits
    assert logits.grad is not None and bool(logits.grad.abs().gt(0).all())
    with pytest.raises(ConfigError, match="mask_mode"):
        attention_mask_from_logits(logits, None, 2, mode="fuzzy")


def test_soft_bias_weights_attention_by_mask_probability():
    """softmax(q.k + log M) == M * exp(q.k) / sum: a key with M -> 0 gets no weight, M = 1 keys keep theirs."""
    torch.manual_seed(0)
    attn = MaskedAttention(8, 1).eval()
    q, kv = torch.randn(1, 2, 8), torch.randn(1, 3, 8)
    logits = torch.tensor([[[30.0, 30.0, -30.0], [30.0, -30.0, 30.0]]])  # (B=1, K=2, T=3)
    soft = attn(q, kv, kv, attention_mask_from_logits(logits, None, 1, mode="soft"))
    hard = attn(q, kv, kv, attention_mask_from_logits(logits, None, 1, mode="hard"))
    torch.testing.assert_close(soft, hard, atol=1e-5, rtol=0)


def test_attention_mask_threshold_and_token_logits():
    # (B=1, K=2, T=3) token logits, no resize (M^1 path)
    logits = torch.tensor([[[2.0, -2.0, 0.1], [-3.0, -3.0, -3.0]]])
    mask = attention_mask_from_logits(logits, None, 2, 0.5, mode="hard")
    row0 = torch.tensor([False, True, False])
    expected = torch.stack([row0, torch.zeros(3, dtype=torch.bool)])  # row 1 fully masked -> reset
    assert torch.equal(mask, expected[None].expand(2, 2, 3))
    strict = attention_mask_from_logits(logits, None, 1, 0.6, mode="hard")  # sigmoid(0.1) = 0.525 < 0.6 -> masked
    assert torch.equal(strict[0, 0], torch.tensor([False, True, True]))


def test_masked_attention_matches_multihead_attention():
    torch.manual_seed(0)
    dim, heads, lq, lk = 16, 4, 5, 7
    ours = MaskedAttention(dim, heads)
    ref = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.to_q.weight, ours.to_k.weight, ours.to_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.to_q.bias, ours.to_k.bias, ours.to_v.bias]))
        ref.out_proj.weight.copy_(ours.to_out.weight)
        ref.out_proj.bias.copy_(ours.to_out.bias)
    q, k, v = torch.randn(B, lq, dim), torch.randn(B, lk, dim), torch.randn(B, lk, dim)
    mask = torch.rand(B * heads, lq, lk) < 0.5
    mask[:, :, 0] = False  # keep every row attendable
    got = ours(q, k, v, mask)
    want, _ = ref(q, k, v, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sine_position_embedding_matches_mask2former():
    h, w, dim = 5, 3, 16
    # literal transcription of Mask2Former PositionEmbeddingSine(dim // 2, normalize=True).forward
    num_feats, eps, scale = dim // 2, 1e-6, 2 * math.pi
    not_mask = torch.ones(1, h, w)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    ref = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).flatten(2)[0].T  # (h*w, dim)
    torch.testing.assert_close(sine_position_embedding(h, w, dim), ref)
    assert sine_position_embedding(h, w, dim, device="meta").shape == (h * w, dim)


def test_masks_change_only_between_units():
    cfg, srm, _ = _build()
    seen = []  # (unit, block, mask)
    for u, unit in enumerate(srm.taskformer.units):
        for b, block in enumerate(unit):
            block.register_forward_pre_hook(lambda mod, args, u=u, b=b: seen.append((u, b, args[4])))
    with torch.no_grad():
        out = srm(*_inputs(cfg))
    heads, thr = cfg.taskformer.num_heads, cfg.taskformer.mask_threshold
    assert cfg.taskformer.mask_mode == "soft"  # the default: log M as an additive bias
    assert [(u, b) for u, b, _ in seen] == [(u, b) for u in range(cfg.taskformer.num_units) for b in range(3)]
    for u, b, mask in seen:
        if b == 0:  # from M^1 of the previous unit
            expected = out.m1[u].log().repeat_interleave(heads, 0)
        else:  # from M^2 of the previous unit, at the size of S2 (1/8) or S3 (1/16)
            size = out.features[b].shape[-2:]
            expected = attention_mask_from_logits(out.m2_logits[u], size, heads, thr, mode="soft")
        torch.testing.assert_close(mask, expected, atol=1e-5, rtol=1e-5, msg=str((u, b)))
    # the mask really changes between units (the logits do)
    assert not torch.equal(out.m2_logits[0], out.m2_logits[1])


def test_linear_pixel_decoder_runs():
    cfg, srm, dec = _build(_tiny(pixel_decoder="linear"))
    assert isinstance(srm.pixel_decoder, LinearPixelDecoder)
    out = srm(*_inputs(cfg))
    assert out.tfq.shape == (B, 4, 16, 12)
    assert dec(out.tfq)[2].shape == (B, 4, 64)
    assert _count(srm.pixel_decoder) == (16 * 32 + 32) + (32 * 32 + 32) + (64 * 32 + 32)


def test_gradients_flow_from_tfq0_logits():
    cfg, srm, _ = _build()
    out = srm(*_inputs(cfg))
    out.tfq0_logits[-1].sum().backward()
    for name, p in srm.taskformer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for part in (srm.swin, srm.pixel_decoder, srm.heads.task0_embed, srm.heads.decoder_norm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # soft masks: the M^1 / M^2 heads learn from TFQ_0's loss (through the next unit's attention)
    for part in (srm.heads.mask_embed, srm.heads.m1_proj):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in srm.heads.task_embed.parameters())  # TFQ_j is not in this loss


def test_hard_masks_give_the_mask_heads_no_gradient():
    """Why the default is soft: with Mask2Former's detached masks and no loss on M^1/M^2, they never learn."""
    cfg, srm, _ = _build(_tiny(mask_mode="hard"))
    out = srm(*_inputs(cfg))
    out.tfq0_logits[-1].sum().backward()
    for part in (srm.heads.mask_embed, srm.heads.m1_proj):
        assert all(p.grad is None for p in part.parameters())


def test_gradient_checkpointing_same_gradients():
    cfg, srm, _ = _build()
    image, f_qf = _inputs(cfg)

    def grads():
        srm.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # same stochastic-depth draws; checkpoint recomputation preserves the RNG state
        out = srm(image, f_qf)
        (out.tfq0_logits[0].square().mean() + out.tfq.square().mean()).backward()
        return {n: p.grad.clone() for n, p in srm.named_parameters() if p.grad is not None}

    srm.train()
    plain = grads()
    srm.enable_gradient_checkpointing()
    stages = [m for m in srm.swin.modules() if m is not srm.swin and hasattr(m, "grad_checkpointing")]
    assert stages and all(m.grad_checkpointing for m in stages)
    ckpt = grads()
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(dtype):
    cfg, srm, dec = _build()
    srm, dec = srm.to(dtype), dec.to(dtype)
    with torch.no_grad():
        out = srm(*_inputs(cfg, dtype=dtype))
        feats = dec(out.tfq)
    assert out.tfq.dtype == dtype and torch.isfinite(out.tfq).all()
    assert all(v.dtype == dtype and torch.isfinite(v).all() for v in feats.values())


def test_bf16_autocast_fp32_weights():
    cfg, srm, dec = _build()
    image, f_qf = _inputs(cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = srm(image, f_qf.to(torch.bfloat16))
        feats = dec(out.tfq)
    assert torch.isfinite(out.tfq).all() and all(torch.isfinite(v).all() for v in feats.values())
    assert feats[2].shape == (B, 4, 64)


def test_meta_build_then_materialise_matches():
    cfg, srm, _ = _build()
    with torch.device("meta"):
        lazy = SpatialRefinementModule(cfg)
    lazy.to_empty(device="cpu")
    lazy.load_state_dict(srm.state_dict())
    lazy.init_non_persistent_buffers()  # timm Swin's relative-position index is not in the state dict
    lazy.eval()
    image, f_qf = _inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(lazy(image, f_qf).tfq, srm(image, f_qf).tfq)


def test_input_and_config_errors():
    cfg, srm, dec = _build()
    image, f_qf = _inputs(cfg)
    with pytest.raises(InputError, match="image"):
        srm(image[:, :, :32], f_qf)
    with pytest.raises(InputError, match="f_qf"):
        srm(image, f_qf[:, :2])
    with pytest.raises(InputError, match="tfq"):
        dec(torch.zeros(B, 3, 16, 12))
    with pytest.raises(ConfigError, match="pixel_decoder"):
        SpatialRefinementModule(_tiny(pixel_decoder="deform"))


def test_full_config_on_meta_counts_and_shapes():
    cfg = TWGTMConfig.full()
    with torch.device("meta"):
        srm, dec = SpatialRefinementModule(cfg), SRMDecoder(cfg)
        out = srm(torch.zeros(1, 3, 1024, 768), torch.zeros(1, 32, 768))  # timm pads 256x192 to window 12
        feats = dec(out.tfq)
    counts = {
        "swin": (_count(srm.swin), 59.5e6),  # 59,548,984
        "pixel_decoder": (_count(srm.pixel_decoder), 2.0e6),  # 2,066,944
        "taskformer+heads": (_count(srm.taskformer) + _count(srm.heads), 15.5e6),  # 15,212,800
        "decoder": (_count(dec), 5.7e6),  # 5,727,424
    }
    for name, (got, spec) in counts.items():
        assert abs(got - spec) / spec < 0.15, (name, got, spec)
    assert [tuple(f.shape) for f in out.features] == [(1, 128, 256, 192), (1, 256, 128, 96), (1, 512, 64, 48)]
    assert out.tfq.shape == (1, 32, 256, 192) and out.m1[-1].shape == (1, 32, 32)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {0: (1, 12288, 320), 1: (1, 3072, 640), 2: (1, 768, 1280)}
