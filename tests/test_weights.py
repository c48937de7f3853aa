"""Weights: save/load round trips (identical outputs) and clear errors."""
import json

import pytest
import torch
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
    p = TWGTMPipeline(model)
    person, garment, mask = _inputs()
    on = p.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images
    off = p.try_off(person, "dress", num_inference_steps=2, generator=0)
    return on, off.images, off.garment_mask


def test_bundle_round_trip_identical(tmp_path):
    m = make_tiny_model(0)
    path = save_twgtm(m, tmp_path / "tiny.safetensors", include_base=True)
    meta = read_metadata(path)
    assert meta["format"] == "twgtm" and meta["includes_base"] == "1" and meta["stage"] == "2"
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
    m.unet.save_pretrained(tmp_path / "sd15" / "unet")
    m.vae.save_pretrained(tmp_path / "sd15" / "vae")
    m.sam.clip_vision.save_pretrained(tmp_path / "clip")
    with pytest.raises(MissingFileError, match="clip_vision"):
        load_twgtm(path)
    base = BaseSources(unet=str(tmp_path / "sd15"), vae=str(tmp_path / "sd15"), clip_vision=str(tmp_path / "clip"))
    loaded = load_twgtm(path, base=base)
    for a, b in zip(_outputs(m), _outputs(loaded)):
        assert torch.allclose(a, b, atol=1e-5)
    # a single-file CLIP image encoder works too
    save_file({k: v.contiguous() for k, v in m.sam.clip_vision.state_dict().items()}, str(tmp_path / "clip.safetensors"))
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
    with pytest.raises(WeightsError, match="does not fit the configured VAE: missing"):
        load_vae(str(tmp_path / "short.safetensors"), m.config)
