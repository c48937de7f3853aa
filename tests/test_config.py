import dataclasses
import json

import pytest
import torch

from twgtm.config import TWGTMConfig, canonical_category
from twgtm.errors import ConfigError
from twgtm.components import TWGTMComponents


@pytest.mark.parametrize("preset", [TWGTMConfig.tiny, TWGTMConfig.full])
def test_json_round_trip(preset):
    cfg = preset()
    again = TWGTMConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(again.to_json()) == json.loads(cfg.to_json())


def test_every_field_has_a_reason():
    import inspect

    import twgtm.config as mod

    src = inspect.getsource(mod)
    for cls in (mod.TWGTMConfig, mod.QFormerConfig, mod.TaskFormerConfig, mod.DecoderConfig, mod.SwinConfig, mod.LossConfig):
        for f in dataclasses.fields(cls):
            lines = [ln for ln in src.splitlines() if ln.strip().startswith(f"{f.name}:")]
            assert lines and "#" in lines[0] or f.name in ("swin", "qformer", "taskformer", "decoder", "loss"), f.name


def test_bad_config_values_are_rejected():
    with pytest.raises(ConfigError, match="concat_dim"):
        TWGTMConfig.tiny(concat_dim=1).validate()
    with pytest.raises(ConfigError, match="multiples"):
        TWGTMConfig.tiny(height=65).validate()
    with pytest.raises(ConfigError, match="unknown fields"):
        TWGTMConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="JSON"):
        TWGTMConfig.from_json("{not json")
    with pytest.raises(ConfigError, match="shift_factor: expected a number or 4 numbers"):
        TWGTMConfig.tiny(shift_factor=[0.1, 0.2]).validate()
    with pytest.raises(ConfigError, match="shift_factor"):
        TWGTMConfig.tiny(shift_factor="0.1").validate()


def test_per_channel_shift_round_trips():
    cfg = TWGTMConfig.tiny(shift_factor=[0.5, 0.25, 1, 0.0]).validate()
    assert cfg.shift_factor == [0.5, 0.25, 1.0, 0.0]
    assert TWGTMConfig.from_json(cfg.to_json()) == cfg


def test_categories():
    assert canonical_category("upper_body") == "upper"
    assert canonical_category("Dresses") == "dress"
    with pytest.raises(ConfigError, match="category"):
        canonical_category("hat")


def test_tiny_is_small():
    torch.manual_seed(0)
    m = TWGTMComponents.build(TWGTMConfig.tiny(), random_prompts=True)
    n = sum(p.numel() for part in m.modules().values() for p in part.parameters())
    assert n < 5_000_000


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_full_config_parameter_counts_on_meta():
    """The full model instantiates on the meta device with the spec's parameter counts (within 10%)."""
    with torch.device("meta"):
        c = TWGTMComponents.build(TWGTMConfig.full())
    m, ref = c, c.reference_encoder
    unet_tf = sum(p.numel() for n, p in m.unet.named_parameters() if ".attentions." in n and ".processor." not in n)
    ea = sum(p.numel() for n, p in m.unet.named_parameters() if ".processor." in n)
    unet_base = sum(p.numel() for n, p in m.unet.named_parameters() if ".processor." not in n)
    swin = _count(ref.srm.swin)
    expected = {  # ARCHITECTURE.md section 3
        "unet": (unet_base, 859.5e6), "unet_transformer": (unet_tf, 267e6), "vae": (_count(m.vae), 83.7e6),
        "clip_vision": (_count(ref.sam.clip_vision), 304e6), "qformer": (_count(ref.sam.qformer), 58e6),
        "swin": (swin, 59.5e6), "srm_rest": (_count(ref.srm) - swin, 2e6 + 15.5e6),
        "decoder": (_count(ref.decoder), 5.7e6),
        "extended_attention": (ea, 37.2e6),
    }
    for name, (got, want) in expected.items():
        assert abs(got - want) / want < 0.10, f"{name}: {got / 1e6:.2f}M vs spec {want / 1e6:.1f}M"
    trained = unet_tf + ea + _count(ref.sam.qformer) + _count(ref.srm) + _count(ref.decoder)
    assert abs(trained - 445e6) / 445e6 < 0.10, trained
