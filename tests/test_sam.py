"""Tests for the Semantic Abstraction Module (twgtm/sam.py; ARCHITECTURE.md 1.2, invariant 8)."""
from __future__ import annotations

import pytest
import torch

from twgtm.config import TWGTMConfig
from twgtm.errors import InputError, WeightsError
from twgtm.sam import (CLIP_MEAN, CLIP_STD, PromptBank, QFormer, SemanticAbstractionModule, build_clip_text,
                       build_clip_vision, fallback_tokenize, pad_to_square)


def _cfg() -> TWGTMConfig:
    return TWGTMConfig.tiny().validate()


def _built_sam(seed: int = 0) -> SemanticAbstractionModule:
    cfg = _cfg()
    torch.manual_seed(seed)
    sam = SemanticAbstractionModule(cfg)
    sam.prompts.build(build_clip_text(cfg))
    return sam


def _image(b: int = 2, h: int = 64, w: int = 48, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_output_shapes():
    sam = _built_sam()
    cfg = _cfg()
    out = sam(_image(), torch.tensor([0, 2]))
    n, d = cfg.qformer.num_queries, cfg.qformer.hidden_size
    assert out.f_sam.shape == (2, 1 + n, d)
    assert out.f_qf.shape == (2, n, d)
    assert out.f_clip_g.shape == (2, 1, d)
    assert torch.equal(out.f_sam[:, 1:], out.f_qf)
    assert torch.equal(out.f_sam[:, :1], out.f_clip_g)
    tokens = sam.encode_image(_image())
    assert tokens.shape == (2, (32 // 8) ** 2 + 1, cfg.clip_vision["projection_dim"])  # 17 CLIP tokens


def test_f_sam_token0_equals_clip_image_embeds():
    sam = _built_sam()
    image = _image()
    out = sam(image, torch.tensor([1, 1]))
    image_embeds = sam.clip_vision(pixel_values=sam.preprocess(image)).image_embeds  # (B, D)
    assert torch.allclose(out.f_sam[:, 0], image_embeds, atol=1e-5)


def test_single_category_broadcasts_and_bad_category_raises():
    sam = _built_sam()
    image = _image()
    a = sam(image, torch.tensor([2])).f_sam
    b = sam(image, torch.tensor([2, 2])).f_sam
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(InputError, match="category_idx"):
        sam(image, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="category_idx"):
        sam(image, torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="image"):
        sam(image[:, :1], torch.tensor([0, 0]))


def test_pad_to_square_white_bars_left_right():
    image = _image(b=1, h=64, w=48)
    padded = pad_to_square(image)
    assert padded.shape == (1, 3, 64, 64)
    assert torch.equal(padded[..., 8:56], image)                 # content centred, untouched
    assert (padded[..., :8] == 1).all() and (padded[..., 56:] == 1).all()  # white bars left/right
    wide = pad_to_square(_image(b=1, h=40, w=64))
    assert wide.shape == (1, 3, 64, 64)
    assert (wide[..., :12, :] == 1).all() and (wide[..., 52:, :] == 1).all()  # top/bottom bars


def test_preprocess_pads_white_keeps_aspect_and_resizes():
    sam = _built_sam()
    black = -torch.ones(1, 3, 64, 48)
    px = sam.preprocess(black)
    assert px.shape == (1, 3, 32, 32)  # CLIP image_size of the tiny config
    mean = torch.tensor(CLIP_MEAN).view(3, 1)
    std = torch.tensor(CLIP_STD).view(3, 1)
    white = ((1 - mean) / std).expand(3, 32)   # per-channel, per-row value of white
    black_v = ((0 - mean) / std).expand(3, 32)
    # 64x48 -> 64x64 with 8-pixel white bars at left/right -> 32x32 with 4-pixel bars; nothing is cropped
    for col in (0, 1, 2, 29, 30, 31):
        assert torch.allclose(px[0, :, :, col], white, atol=1e-4), col
    for col in range(6, 26):
        assert torch.allclose(px[0, :, :, col], black_v, atol=1e-4), col  # full height black: no top/bottom bars


def test_clip_frozen_and_eval_after_train():
    sam = _built_sam()
    sam.train()
    assert sam.training and sam.qformer.training
    assert not sam.clip_vision.training
    assert all(not m.training for m in sam.clip_vision.modules())
    assert all(not p.requires_grad for p in sam.clip_vision.parameters())
    assert all(p.requires_grad for p in sam.qformer.parameters())
    assert not any(name.startswith("prompts.") for name, _ in sam.named_parameters())  # prompts are buffers


def test_gradients_reach_qformer_not_clip():
    sam = _built_sam().train()
    out = sam(_image(), torch.tensor([0, 1]))
    out.f_sam.square().sum().backward()
    grads = {n: p.grad for n, p in sam.qformer.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert grads["query_tokens"].abs().sum() > 0
    assert grads["text_proj.weight"].abs().sum() > 0
    assert all(p.grad is None for p in sam.clip_vision.parameters())
    assert not out.f_clip_g.requires_grad


def test_prompt_bank_unbuilt_raises():
    bank = PromptBank(_cfg())
    assert not bank.is_built
    with pytest.raises(WeightsError, match="PromptBank"):
        bank(torch.tensor([0]))


def test_prompt_bank_fallback_build_distinct_and_deterministic():
    cfg = _cfg()
    torch.manual_seed(0)
    encoder = build_clip_text(cfg)
    bank1, bank2 = PromptBank(cfg), PromptBank(cfg)
    bank1.build(encoder)
    bank2.build(encoder)
    assert bank1.is_built
    assert torch.equal(bank1.embeds, bank2.embeds) and torch.equal(bank1.mask, bank2.mask)
    embeds, mask = bank1(torch.tensor([0, 1, 2]))
    assert embeds.shape == (3, cfg.text_max_length, cfg.clip_text["hidden_size"])
    # "upper garment", "lower garment": bos + 2 words + eos; "dress": bos + 1 word + eos
    assert mask.sum(1).tolist() == [4, 4, 3]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        real = slice(0, 3)  # every prompt has at least 3 real tokens
        assert not torch.allclose(embeds[i, real], embeds[j, real], atol=1e-4), (i, j)
    # the fallback tokenizer: bos, crc32-derived word ids, eos, pad
    ids, m = fallback_tokenize(["Upper garment"], max_length=6, vocab_size=1000, bos_token_id=998,
                               eos_token_id=999, pad_token_id=0)
    assert ids[0, 0] == 998 and ids[0, 3] == 999 and ids[0, 4:].tolist() == [0, 0]
    assert m[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert (ids[0, 1:3] < 997).all() and ids[0, 1] != ids[0, 2]


def test_prompt_bank_state_dict_round_trip():
    cfg = _cfg()
    torch.manual_seed(0)
    bank = PromptBank(cfg)
    bank.build(build_clip_text(cfg))
    fresh = PromptBank(cfg)
    assert not fresh.is_built
    fresh.load_state_dict(bank.state_dict())
    assert fresh.is_built
    idx = torch.tensor([2, 0, 1, 1])
    for a, b in zip(bank(idx), fresh(idx)):
        assert torch.equal(a, b)
    assert set(bank.state_dict()) == {"embeds", "mask", "built"}


def test_text_padding_mask_matters():
    cfg = _cfg()
    torch.manual_seed(0)
    qf = QFormer(cfg.qformer).eval()
    g = torch.Generator().manual_seed(3)
    image_tokens = torch.randn(2, 17, cfg.qformer.vision_dim, generator=g)
    text = torch.randn(2, 10, cfg.qformer.text_dim, generator=g)
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0, :4] = 1
    mask[1, :7] = 1
    out = qf(image_tokens, text, mask)
    assert out.shape == (2, cfg.qformer.num_queries, cfg.qformer.hidden_size)
    changed = text.clone()
    changed[mask == 0] = torch.randn(int((mask == 0).sum()), cfg.qformer.text_dim, generator=g) * 5
    assert torch.allclose(qf(image_tokens, changed, mask), out, atol=1e-5)  # padded positions are ignored
    # ...while a change at a real position, or dropping the mask, does change the output
    real = text.clone()
    real[0, 1] += 1.0
    assert not torch.allclose(qf(image_tokens, real, mask)[0], out[0], atol=1e-4)
    assert not torch.allclose(qf(image_tokens, changed, None), out, atol=1e-4)


def test_bf16_forward_runs():
    sam = _built_sam().to(torch.bfloat16)
    out = sam(_image().to(torch.bfloat16), torch.tensor([0, 2]))
    assert out.f_sam.dtype == torch.bfloat16
    assert out.f_sam.shape == (2, 1 + 4, 32)
    assert torch.isfinite(out.f_sam.float()).all()
    sam32 = _built_sam()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = sam32(_image(), torch.tensor([0, 2]))
    assert torch.isfinite(out_ac.f_sam.float()).all()


def test_full_config_parameter_counts_on_meta():
    cfg = TWGTMConfig.full()
    with torch.device("meta"):
        sam = SemanticAbstractionModule(cfg)
        text = build_clip_text(cfg)
    n_qf = sum(p.numel() for p in sam.qformer.parameters())
    n_clip = sum(p.numel() for p in sam.clip_vision.parameters())
    assert n_qf == 57_321_216  # 4 layers x 14,175,744 + queries 24,576 + text_proj 590,592 + 2 LN 3,072
    assert 303e6 < n_clip < 305e6
    assert 122e6 < sum(p.numel() for p in text.parameters()) < 124e6
    assert sam.prompts.embeds.shape == (3, 77, 768)
    assert sam.clip_vision.config._attn_implementation == "sdpa"
    assert isinstance(build_clip_vision(_cfg()).config.image_size, int)


def test_prompt_bank_build_with_tokenizer_uses_its_ids_and_mask():
    cfg = _cfg()
    calls = {}

    def tokenizer(texts, **kwargs):  # stands in for a CLIPTokenizer (no vocabulary files offline)
        calls.update(kwargs, texts=texts)
        ids, mask = fallback_tokenize(texts, max_length=kwargs["max_length"], vocab_size=1000, bos_token_id=998,
                                      eos_token_id=999, pad_token_id=999)
        return {"input_ids": ids, "attention_mask": mask}

    torch.manual_seed(0)
    encoder = build_clip_text(cfg)
    with_tok, fallback = PromptBank(cfg), PromptBank(cfg)
    with_tok.build(encoder, tokenizer)
    fallback.build(encoder)
    assert calls["texts"] == ["upper garment", "lower garment", "dress"]
    assert calls["padding"] == "max_length" and calls["max_length"] == cfg.text_max_length
    assert torch.equal(with_tok.embeds, fallback.embeds) and torch.equal(with_tok.mask, fallback.mask)
