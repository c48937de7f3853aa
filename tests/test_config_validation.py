"""TWGTMConfig.validate / from_dict check the type and range of every field (configs come from files)."""
import json

import pytest

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError


def _data(**changes):
    data = json.loads(TWGTMConfig.tiny().to_json())
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    return data


@pytest.mark.parametrize("path, value, expected", [
    ("height", "abc", "an integer >= 1"), ("height", 0, "an integer >= 1"), ("height", -64, "an integer >= 1"),
    ("height", 64.0, "an integer"), ("height", True, "an integer"), ("width", None, "an integer"),
    ("vae_scale_factor", 0, "an integer >= 1"), ("latent_channels", "4", "an integer >= 1"),
    ("scaling_factor", 0, "a finite number > 0"), ("scaling_factor", "0.18", "a finite number"),
    ("qformer", 5, "a JSON object"), ("qformer", [], "a JSON object"), ("unet", [], "a mapping"),
    ("vae", "sd", "a mapping"), ("clip_vision", 1, "a mapping"), ("scheduler", None, "a mapping"),
    ("stage", "abc", "one of 1, 2"), ("stage", 3, "one of 1, 2"), ("concat_dim", "-1", "-1 (width) or -2 (height)"),
    ("qformer__num_heads", "12", "an integer >= 1"), ("qformer__num_queries", 0, "an integer >= 1"),
    ("taskformer__num_units", -1, "an integer >= 1"), ("taskformer__mask_threshold", 1.5, "< 1.0"),
    ("taskformer__pixel_decoder", 3, "one of ('fpn', 'linear')"), ("decoder__width", 2.5, "an integer"),
    ("swin__model_name", "", "a non-empty string"), ("swin__out_indices", [0, 1], "a list of 3 values"),
    ("swin__out_indices", [0, 1, "2"], "an integer >= 0"), ("swin__kwargs", [], "a mapping"),
    ("unet__block_out_channels", [32, 32], "a list of at least 3 values"),
    ("unet__cross_attention_dim", "32", "an integer >= 1"), ("clip_vision__projection_dim", None, "an integer"),
    ("clip_text__hidden_size", 0, "an integer >= 1"), ("text_max_length", 1, "an integer >= 2"),
    ("scheduler__num_train_timesteps", "1000", "an integer >= 1"), ("scheduler__prediction_type", "flow", "one of"),
    ("categories", 5, "a list of at least 1 values"), ("categories", [], "a list of at least 1 values"),
    ("categories", ["upper", 1, "dress"], "names among"), ("categories", ["upper", "upper", "dress"], "distinct"),
    ("prompts", ["upper garment"], "a mapping"), ("prompts__upper", 7, "a non-empty string"),
    ("loss__mask_weight", -1, ">= 0.0"), ("loss__loss_region", None, "one of ('full', 'target')"),
    ("cfg_dropout", 1.5, "<= 1.0"), ("num_inference_steps", 0, "an integer >= 1"),
    ("num_inference_steps", 5000, "<= 999"), ("guidance_scale", 0.5, ">= 1.0"), ("eta", float("nan"), "finite"),
])
def test_every_field_is_type_and_range_checked(path, value, expected):
    field = path.replace("__", ".")
    with pytest.raises(ConfigError) as info:
        TWGTMConfig.from_dict(_data(**{path: value}))
    msg = str(info.value)
    assert msg.startswith(field.split(".")[0]) and field.split(".")[-1] in msg and expected in msg, msg
    if not isinstance(value, (dict, list)) and value == value:
        assert repr(value) in msg, msg  # what was received


def test_missing_entries_the_library_reads():
    data = _data()
    del data["unet"]["cross_attention_dim"]
    with pytest.raises(ConfigError, match="unet: expected a 'cross_attention_dim' entry"):
        TWGTMConfig.from_dict(data)
    data = _data()
    del data["scheduler"]["num_train_timesteps"]
    with pytest.raises(ConfigError, match="scheduler: expected a 'num_train_timesteps' entry"):
        TWGTMConfig.from_dict(data)


def test_nested_unknown_fields_and_non_object_config():
    with pytest.raises(ConfigError, match=r"config.qformer: unknown fields \['nope'\]"):
        TWGTMConfig.from_dict(_data(qformer__nope=1))
    with pytest.raises(ConfigError, match="config: expected a JSON object, got list"):
        TWGTMConfig.from_json("[1, 2]")


def test_normalisation_keeps_round_trips_equal():
    for preset in (TWGTMConfig.tiny, TWGTMConfig.full):
        cfg = preset()
        assert TWGTMConfig.from_json(cfg.to_json()) == cfg.validate()
    cfg = TWGTMConfig.tiny(scaling_factor=1, categories=["upper", "lower", "dress"]).validate()
    assert cfg.scaling_factor == 1.0 and isinstance(cfg.scaling_factor, float) and cfg.categories == ("upper", "lower", "dress")
