"""Weights: save/load round trips (identical outputs) and clear errors."""
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from conftest import make_tiny_model
from twgtm.errors import MissingFileError, WeightsError
from twgtm.pipeline import TWGTMPipeline
from twgtm.weights import BaseSources, load_twgtm, read_config, read_metadata, save_twgtm


def _inputs():
    g = torch.Generator().manual_seed(5)
    person = torch.rand(1, 3, 64, 48, generator=g)
    mask = torch.zeros(1, 1, 64, 48)
    mask[..., 10:50, 8:40] = 1
    return person, torch.rand(1, 3, 64, 48, generator=g), mask


def _outputs(model):
    p = TWGTMPipeline.from_components(model)
    person, garment, mask = _inputs()
    on = p.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images
    off = p.try_off(person, "dress", num_inference_steps=2, generator=0)
    return on, off.images, off.garment_mask


def test_bundle_round_trip_identical(tmp_path):
    m = make_tiny_model(0)
    path = save_twgtm(m, tmp_path / "tiny.safetensors", include_base=True)
    meta = read_metadata(path)
    assert meta["format"] == "twgtm" and meta["includes_base"] == "1" and "stage" not in meta  # the config says
    assert read_config(path) == m.config
    loaded = load_twgtm(path)
    for a, b in zip(_outputs(m), _outputs(loaded)):
        assert torch.equal(a, b)


def test_trained_parts_with_base_directories(tmp_path):
    m = make_tiny_model(0)
    path = save_twgtm(m, tmp_path / "trained.safetensors")
    keys = set(load_file(str(path)))
    assert not any(k.startswith(("vae.", "sam.clip_vision.")) for k in keys)
    assert any(".processor.zll." in k for k in keys) and "sam.prompts.embeds" in keys
    assert not any(k.startswith("unet.conv_in") for k in keys)
    # the base components as their public releases hold them: a plain diffusers UNet (no TWGTM processors)
    unet = UNet2DConditionModel(**m.config.unet)
    unet.load_state_dict({k: v for k, v in m.unet.state_dict().items() if ".processor." not in k}, strict=True)
    unet.save_pretrained(tmp_path / "sd15" / "unet")
    m.vae.save_pretrained(tmp_path / "sd15" / "vae")
    m.reference_encoder.sam.clip_vision.save_pretrained(tmp_path / "clip")
    with pytest.raises(MissingFileError, match="clip_vision"):
        load_twgtm(path)
    base = BaseSources(unet=str(tmp_path / "sd15"), vae=str(tmp_path / "sd15"), clip_vision=str(tmp_path / "clip"))
    loaded = load_twgtm(path, base=base)
    for a, b in zip(_outputs(m), _outputs(loaded)):
        assert torch.allclose(a, b, atol=1e-5)
    # a single-file CLIP image encoder works too
    save_file({k: v.contiguous() for k, v in m.reference_encoder.sam.clip_vision.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    base.clip_vision = str(tmp_path / "clip.safetensors")
    assert torch.allclose(_outputs(load_twgtm(path, base=base))[1], _outputs(m)[1], atol=1e-5)


def test_errors(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_twgtm(tmp_path / "absent.safetensors")
    sd_like = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(sd_like))
    with pytest.raises(WeightsError, match="not a TWGTM checkpoint.*Stable Diffusion"):
        load_twgtm(sd_like)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"x")
    with pytest.raises(WeightsError, match="pickled"):
        load_twgtm(pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="not a readable"):
        load_twgtm(garbage)

    m = make_tiny_model(0)
    path = save_twgtm(m, tmp_path / "ok.safetensors", include_base=True)
    state, meta = load_file(str(path)), read_metadata(path)

    bad_cfg = json.loads(meta["config"])
    bad_cfg["concat_dim"] = 3
    save_file(state, str(tmp_path / "cfg.safetensors"), metadata={**meta, "config": json.dumps(bad_cfg)})
    with pytest.raises(WeightsError, match="wrong config.*concat_dim"):
        load_twgtm(tmp_path / "cfg.safetensors")

    missing = {k: v for k, v in state.items() if "qformer" not in k}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="missing keys"):
        load_twgtm(tmp_path / "missing.safetensors")

    extra = dict(state, **{"sam.unknown.weight": torch.zeros(1)})
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="unexpected keys"):
        load_twgtm(tmp_path / "extra.safetensors")

    key = next(k for k in state if k.endswith("zll.weight"))
    shaped = dict(state, **{key: torch.zeros(3, 3)})
    save_file(shaped, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_twgtm(tmp_path / "shape.safetensors")

    with pytest.raises(WeightsError, match=r"\.safetensors"):
        save_twgtm(m, tmp_path / "model.bin")


def test_single_file_vae(tmp_path):
    from twgtm.weights import load_vae

    m = make_tiny_model(0)
    state = {k: v.contiguous() for k, v in m.vae.state_dict().items()}
    save_file(state, str(tmp_path / "vae.safetensors"))
    vae = load_vae(str(tmp_path / "vae.safetensors"), m.config)
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in state.items())
    save_file({k: v for k, v in state.items() if "decoder.conv_out" not in k}, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match="does not fit the configured vae: 2 missing keys"):
        load_vae(str(tmp_path / "short.safetensors"), m.config)


# --------------------------------------------------------------------------- bad TWGTM files: typed errors
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One bundled and one trained-parts-only tiny TWGTM file, with their tensors and metadata."""
    m = make_tiny_model(0)
    d = tmp_path_factory.mktemp("twgtm")
    bundle, trained = save_twgtm(m, d / "bundle.safetensors", include_base=True), save_twgtm(m, d / "trained.safetensors")
    return {"bundle": (bundle, load_file(str(bundle)), read_metadata(bundle)),
            "trained": (trained, load_file(str(trained)), read_metadata(trained))}


def _rewrite(saved, tmp_path, name, *, kind="bundle", config=None, meta=None, tensors=None):
    _, state, metadata = saved[kind]
    metadata = dict(metadata)
    if config is not None:
        cfg = json.loads(metadata["config"])
        cfg.update(config)
        metadata["config"] = json.dumps(cfg)
    metadata.update(meta or {})
    path = tmp_path / name
    save_file({**state, **(tensors or {})}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("field, value, expected", [
    ("height", "abc", "integer"), ("height", 0, "integer >= 1"), ("height", -64, "integer >= 1"),
    ("width", 48.5, "integer"), ("qformer", 5, "JSON object"), ("unet", [], "mapping"),
    ("stage", "abc", "one of 1, 2"), ("categories", 5, "list"), ("scaling_factor", -1, "> 0"),
])
def test_wrong_config_values_in_a_file_are_weights_errors(saved, tmp_path, field, value, expected):
    path = _rewrite(saved, tmp_path, "badcfg.safetensors", config={field: value})
    for call in (load_twgtm, read_config):
        with pytest.raises(WeightsError) as info:
            call(path)
        msg = str(info.value)
        assert "badcfg.safetensors" in msg and f"{field}: expected" in msg and expected in msg
        assert repr(value) in msg  # what was received


@pytest.mark.parametrize("key, value", [("stage", "abc"), ("stage", "3"), ("includes_base", "yes")])
def test_wrong_metadata_values_are_weights_errors(saved, tmp_path, key, value):
    path = _rewrite(saved, tmp_path, "badmeta.safetensors", meta={key: value})
    with pytest.raises(WeightsError, match=rf"'badmeta.safetensors' metadata '{key}': expected one of .*got '{value}'"):
        load_twgtm(path)


def test_config_that_does_not_build_a_model_is_a_weights_error(saved, tmp_path):
    cfg = json.loads(saved["bundle"][2]["config"])
    swin = dict(cfg["swin"], model_name="no_such_swin")
    path = _rewrite(saved, tmp_path, "nobuild.safetensors", config={"swin": swin})
    with pytest.raises(WeightsError, match="'nobuild.safetensors': its config does not build a model.*no_such_swin"):
        load_twgtm(path)
    unet = dict(cfg["unet"], down_block_types=["CrossAttnDownBlock2D"])  # 1 block type for 4 channel widths
    path = _rewrite(saved, tmp_path, "nobuild2.safetensors", config={"unet": unet})
    with pytest.raises(WeightsError, match="'nobuild2.safetensors': its config does not build a model"):
        load_twgtm(path)


@pytest.mark.parametrize("kind", ["bundle", "trained"])
def test_non_float_tensors_where_weights_are_expected(saved, tmp_path, kind):
    state = saved[kind][1]
    key = next(k for k in state if k.endswith("zll.weight"))
    path = _rewrite(saved, tmp_path, "int.safetensors", kind=kind, tensors={key: state[key].to(torch.int64)})
    base = None
    if kind == "trained":  # the base components are checked first: give the right ones
        from weights_fixtures import clip_vision, plain_unet, plain_vae, tiny_cfg
        cfg = tiny_cfg()
        plain_unet(cfg).save_pretrained(tmp_path / "sd" / "unet")
        plain_vae(cfg).save_pretrained(tmp_path / "sd" / "vae")
        clip_vision(cfg).save_pretrained(tmp_path / "clip")
        base = BaseSources(unet=str(tmp_path / "sd"), vae=str(tmp_path / "sd"), clip_vision=str(tmp_path / "clip"))
    with pytest.raises(WeightsError, match=rf"'int.safetensors'.*1 tensors of the wrong dtype \(first: {key}: file torch.int64"):
        load_twgtm(path, base=base)
    # integer buffers must keep their exact dtype (a float prompt mask would be truncated silently)
    path = _rewrite(saved, tmp_path, "mask.safetensors", tensors={"sam.prompts.mask": state["sam.prompts.mask"].float()})
    with pytest.raises(WeightsError, match="sam.prompts.mask: file torch.float32 vs model torch.int64"):
        load_twgtm(path)


def test_truncated_twgtm_file(saved, tmp_path):
    data = saved["bundle"][0].read_bytes()
    for name, blob in (("trunc.safetensors", data[: len(data) // 2]), ("header.safetensors", data[:40])):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(WeightsError, match=rf"'.*{name}' is not a readable"):
            load_twgtm(tmp_path / name)


def test_describe_a_wrong_file_is_typed(saved, tmp_path):
    from twgtm.weights import describe

    assert describe(saved["bundle"][0]) == {"stage": 2, "includes_base": True, "height": 64, "width": 48}
    meta = dict(saved["bundle"][2], config="[1, 2]")
    save_file(saved["bundle"][1], str(tmp_path / "list.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="'list.safetensors' carries a wrong config.*config: expected a JSON object"):
        describe(tmp_path / "list.safetensors")
