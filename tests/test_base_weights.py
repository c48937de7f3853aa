"""Base components (UNet, VAE, CLIP image/text encoders, Swin) from every supported file layout.

Every load path is exercised with random-weight fixtures in the real formats (``weights_fixtures``): a good file
loads bit-exactly, a file with wrong keys is a WeightsError naming them, a corrupt file is a WeightsError naming
the file, and no source reaches the network unless it is written ``hf://org/name``.
"""
from __future__ import annotations

import pickle
import socket
import time
import traceback

import pytest
import torch
from safetensors.torch import save_file

import weights_fixtures as fx
from twgtm.errors import MissingFileError, WeightsError
from twgtm.weights import (BaseSources, load_clip_vision, load_swin_weights, load_text_encoder, load_twgtm, load_unet,
                           load_vae)


@pytest.fixture(scope="module")
def cfg():
    return fx.tiny_cfg()


@pytest.fixture(scope="module")
def parts(cfg):
    """Seeded plain base components (the 'public release' the fixtures are written from)."""
    return {"unet": fx.plain_unet(cfg), "vae": fx.plain_vae(cfg), "clip_vision": fx.clip_vision(cfg),
            "clip_text": fx.clip_text(cfg)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture()
def no_network(monkeypatch, tmp_path):
    """Every connection attempt is recorded and refused.

    huggingface_hub fetches a registry on its first request and caches it for the process (and on disk for
    a day): both caches are emptied, so a request is caught whichever test comes first.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", None, raising=False)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "no-registry.json"), raising=False)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# --------------------------------------------------------------------------- UNet
def test_unet_every_layout_loads_exactly(cfg, parts, tmp_path, no_network):
    unet = parts["unet"]
    root = fx.diffusers_root(cfg, tmp_path / "sd15", unet=unet, vae=parts["vae"], text=parts["clip_text"])
    files = [fx.sd_checkpoint(cfg, tmp_path / "sd15.safetensors", unet=unet, vae=parts["vae"]),
             fx.sd_checkpoint(cfg, tmp_path / "sd15.ckpt", unet=unet, vae=parts["vae"]),
             fx.save_tensors(fx.state(unet), tmp_path / "unet_diffusers.safetensors")]
    for source in [root, root / "unet", *files]:
        _same_weights(load_unet(str(source), cfg), unet)
    assert not no_network


def test_unet_wrong_keys(cfg, parts, tmp_path):
    good = fx.state(parts["unet"])
    # diffusers folder: a missing and an unexpected key
    bad = {k: v for k, v in good.items() if k != "conv_in.bias"} | {"foo.weight": torch.zeros(1)}
    parts["unet"].save_pretrained(tmp_path / "folder" / "unet")
    save_file(bad, str(tmp_path / "folder" / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsError, match=r"unet: .*folder/unet' does not fit UNet2DConditionModel strictly: "
                                           r"1 missing keys \(first: conv_in.bias\); 1 unexpected keys \(first: foo.weight\)"):
        load_unet(str(tmp_path / "folder"), cfg)
    # diffusers-format single file
    save_file(bad, str(tmp_path / "bad_unet.safetensors"))
    with pytest.raises(WeightsError, match=r"'bad_unet.safetensors' does not fit the configured unet: 1 missing keys "
                                           r"\(first: conv_in.bias\); 1 unexpected keys \(first: foo.weight\)"):
        load_unet(str(tmp_path / "bad_unet.safetensors"), cfg)
    # SD checkpoint: an extra key under model.diffusion_model. and a missing one
    ldm = fx.unet_to_ldm(parts["unet"])
    ldm.pop("model.diffusion_model.out.2.bias")
    ldm["model.diffusion_model.extra_block.weight"] = torch.zeros(2)
    save_file(ldm, str(tmp_path / "sd_bad.safetensors"))
    with pytest.raises(WeightsError, match=r"'sd_bad.safetensors' does not fit the configured unet: 1 missing keys "
                                           r"\(first: conv_out.bias\); 1 unexpected keys \(first: model.diffusion_model.extra_block.weight\)"):
        load_unet(str(tmp_path / "sd_bad.safetensors"), cfg)
    # an SD base model (4 input channels) instead of the inpainting one
    base_cfg = fx.tiny_cfg()
    base_cfg.unet = dict(base_cfg.unet, in_channels=4)
    fx.sd_checkpoint(cfg, tmp_path / "sd_base.safetensors", unet=fx.plain_unet(base_cfg))
    with pytest.raises(WeightsError, match=r"1 shape mismatches \(first: conv_in.weight: file \(32, 4, 3, 3\) vs model "
                                           r"\(32, 9, 3, 3\)\).*9 input channels"):
        load_unet(str(tmp_path / "sd_base.safetensors"), cfg)
    fx.plain_unet(base_cfg).save_pretrained(tmp_path / "base4" / "unet")
    with pytest.raises(WeightsError, match="in_channels=9 as the TWGTM config says, got 4"):
        load_unet(str(tmp_path / "base4"), cfg)
    # keys of something else entirely
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="neither 'model.diffusion_model.*"):
        load_unet(str(tmp_path / "other.safetensors"), cfg)


# --------------------------------------------------------------------------- VAE
def test_vae_every_layout_loads_exactly(cfg, parts, tmp_path, no_network):
    vae = parts["vae"]
    vae.save_pretrained(tmp_path / "sd15" / "vae")
    bare = fx.vae_to_ldm(vae, prefix="")
    bare["loss.logvar"] = torch.zeros(())  # LDM VAE releases may carry their training loss: skipped
    files = [fx.sd_checkpoint(cfg, tmp_path / "sd15.safetensors", unet=parts["unet"], vae=vae),
             fx.sd_checkpoint(cfg, tmp_path / "sd15.ckpt", unet=parts["unet"], vae=vae),
             fx.save_tensors(bare, tmp_path / "vae-ft-mse.safetensors"),
             fx.save_tensors(fx.state(vae), tmp_path / "vae_diffusers.safetensors")]
    for source in [tmp_path / "sd15", tmp_path / "sd15" / "vae", *files]:
        _same_weights(load_vae(str(source), cfg), vae)
    assert not no_network


def test_vae_wrong_keys(cfg, parts, tmp_path):
    good = fx.state(parts["vae"])
    bad = {k: v for k, v in good.items() if k != "quant_conv.bias"} | {"encoder.extra": torch.zeros(1)}
    parts["vae"].save_pretrained(tmp_path / "vae")
    save_file(bad, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsError, match=r"does not fit AutoencoderKL strictly: 1 missing keys \(first: quant_conv.bias\); "
                                           r"1 unexpected keys \(first: encoder.extra\)"):
        load_vae(str(tmp_path / "vae"), cfg)
    ldm = fx.vae_to_ldm(parts["vae"], prefix="")
    ldm.pop("decoder.conv_out.bias")
    ldm["decoder.extra.weight"] = torch.zeros(2)
    save_file(ldm, str(tmp_path / "bare_bad.safetensors"))
    with pytest.raises(WeightsError, match=r"'bare_bad.safetensors' does not fit the configured vae: 1 missing keys "
                                           r"\(first: decoder.conv_out.bias\); 1 unexpected keys \(first: first_stage_model.decoder.extra.weight\)"):
        load_vae(str(tmp_path / "bare_bad.safetensors"), cfg)
    save_file(fx.unet_to_ldm(parts["unet"]), str(tmp_path / "unet_only.safetensors"))
    with pytest.raises(WeightsError, match="without 'first_stage_model"):
        load_vae(str(tmp_path / "unet_only.safetensors"), cfg)


# --------------------------------------------------------------------------- CLIP image and text encoders
def test_clip_vision_every_layout_loads_exactly(cfg, parts, tmp_path, no_network):
    enc = parts["clip_vision"]
    enc.save_pretrained(tmp_path / "image_encoder")
    full = fx.full_clip_folder(cfg, tmp_path / "clip-full")
    save_file(fx.state(enc), str(tmp_path / "clip_vision.safetensors"))
    save_file(fx.state(full), str(tmp_path / "clip_full.safetensors"))
    for source in (tmp_path / "image_encoder", tmp_path / "clip_vision.safetensors"):
        _same_weights(load_clip_vision(str(source), cfg), enc)
    for source in (tmp_path / "clip-full", tmp_path / "clip_full.safetensors"):
        loaded = load_clip_vision(str(source), cfg).state_dict()
        for k, v in loaded.items():
            assert torch.equal(v, full.state_dict()[k]), k
    assert not no_network


def test_clip_vision_wrong_keys(cfg, parts, tmp_path):
    good = fx.state(parts["clip_vision"])
    bad = {k: v for k, v in good.items() if k != "visual_projection.weight"} | {"vision_model.extra": torch.zeros(1)}
    parts["clip_vision"].save_pretrained(tmp_path / "enc")
    save_file(bad, str(tmp_path / "enc" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"clip_vision: .* does not fit CLIPVisionModelWithProjection strictly: 1 missing keys "
                                           r"\(first: visual_projection.weight\); 1 unexpected keys \(first: vision_model.extra\)"):
        load_clip_vision(str(tmp_path / "enc"), cfg)
    save_file(bad, str(tmp_path / "enc.safetensors"))
    with pytest.raises(WeightsError, match=r"'enc.safetensors' does not fit the configured clip_vision: 1 missing keys"):
        load_clip_vision(str(tmp_path / "enc.safetensors"), cfg)


def test_text_encoder_layouts_and_wrong_keys(cfg, parts, tmp_path, no_network):
    text = parts["clip_text"]
    root = fx.diffusers_root(cfg, tmp_path / "sd15", unet=parts["unet"], vae=parts["vae"], text=text)
    encoder, tokenizer = load_text_encoder(str(root))
    _same_weights(encoder, text)
    assert tokenizer(["upper garment"])["input_ids"][0][0] == tokenizer.bos_token_id
    encoder, _ = load_text_encoder(str(root / "text_encoder"), str(root / "tokenizer"))
    _same_weights(encoder, text)
    assert not no_network
    with pytest.raises(MissingFileError, match="tokenizer: expected vocab.json and merges.txt"):
        load_text_encoder(str(root / "text_encoder"), str(root / "text_encoder"))
    bad = {k: v for k, v in fx.state(text).items() if "final_layer_norm.bias" not in k} | {"text_model.extra": torch.zeros(1)}
    save_file(bad, str(root / "text_encoder" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"text_encoder: .* does not fit CLIPTextModel strictly: 1 missing keys "
                                           r"\(first: (text_model.)?final_layer_norm.bias\); 1 unexpected keys"):
        load_text_encoder(str(root))


# --------------------------------------------------------------------------- Swin
def _swin_model(cfg):
    from twgtm.components import TWGTMComponents

    torch.manual_seed(0)
    return TWGTMComponents.build(cfg, random_prompts=True)


def test_swin_file_layouts_load_exactly(cfg, tmp_path):
    ref = fx.swin_reference(cfg)
    sd = fx.state(ref)
    sd["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(3, dtype=torch.long)  # a dropped buffer
    model = _swin_model(cfg)
    for path in (fx.save_tensors(sd, tmp_path / "swin.safetensors"), fx.save_tensors({"model": sd}, tmp_path / "swin.pth"),
                 fx.save_tensors(sd, tmp_path / "hf-swin" / "model.safetensors")):
        target = path.parent if path.parent.name == "hf-swin" else path
        with torch.no_grad():
            for p in model.reference_encoder.srm.swin.parameters():
                p.zero_()
        load_swin_weights(model, str(target))
        for k, v in model.reference_encoder.srm.swin.state_dict().items():
            assert torch.equal(v, sd[k if k.split(".")[0] == "patch_embed" else k.replace("_", ".", 1)]), k


def test_swin_wrong_files(cfg, parts, tmp_path):
    model = _swin_model(cfg)
    # the defect: a file with none of Swin's keys used to load with a timm warning, 19 of 49 tensors left random
    save_file(fx.state(parts["vae"]), str(tmp_path / "not_swin.safetensors"))
    with pytest.raises(WeightsError, match=r"swin: 'not_swin.safetensors' does not fit timm swin_tiny_patch4_window7_224 .*: "
                                           r"49 missing keys \(first: layers.0.blocks.0.attn.proj.bias.*; 180 unexpected keys"):
        load_swin_weights(model, str(tmp_path / "not_swin.safetensors"))
    sd = fx.state(fx.swin_reference(cfg))
    partial = {k: v for k, v in sd.items() if not k.startswith("layers.2.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match=r"missing keys \(first: layers.2."):
        load_swin_weights(model, str(tmp_path / "partial.safetensors"))
    wider = fx.state(fx.swin_reference(cfg, embed_dim=24))
    save_file(wider, str(tmp_path / "wider.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatches \(first: "):
        load_swin_weights(model, str(tmp_path / "wider.safetensors"))
    save_file(sd | {"layers.0.blocks.0.norm1.weight": sd["layers.0.blocks.0.norm1.weight"].long()},
              str(tmp_path / "int.safetensors"))
    with pytest.raises(WeightsError, match=r"wrong dtype \(first: layers.0.blocks.0.norm1.weight: file torch.int64"):
        load_swin_weights(model, str(tmp_path / "int.safetensors"))


# --------------------------------------------------------------------------- corrupt files and pickles
class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def _corrupt_files(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    torch.save({"a": torch.zeros(4)}, tmp_path / "zip.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes((tmp_path / "zip.ckpt").read_bytes()[:200])
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage" * 20)
    (tmp_path / "empty.bin").write_bytes(b"")
    torch.save({"a": _Code()}, tmp_path / "code.ckpt")
    with open(tmp_path / "code_raw.bin", "wb") as f:
        pickle.dump({"a": _Code()}, f)
    torch.save([torch.zeros(2)], tmp_path / "list.ckpt")
    return ["trunc.safetensors", "garbage.safetensors", "trunc.ckpt", "garbage.ckpt", "empty.bin", "code.ckpt",
            "code_raw.bin", "list.ckpt"]


@pytest.mark.parametrize("what", ["unet", "vae", "clip_vision", "swin"])
def test_corrupt_base_files_are_weights_errors(cfg, parts, tmp_path, what, capsys):
    good = fx.save_tensors(fx.state(parts["vae"]), tmp_path / "good.safetensors")
    names = _corrupt_files(tmp_path, good)
    loaders = {"unet": lambda p: load_unet(p, cfg), "vae": lambda p: load_vae(p, cfg),
               "clip_vision": lambda p: load_clip_vision(p, cfg), "swin": lambda p: load_swin_weights(_model[0], p)}
    _model = [_swin_model(cfg) if what == "swin" else None]
    for name in names:
        with pytest.raises(WeightsError) as info:
            loaders[what](str(tmp_path / name))
        msg = str(info.value)
        assert msg.startswith(f"{what}: ") and name in msg, msg
        rendered = "".join(traceback.format_exception(info.value))
        # torch's advice to retry with weights_only=False (or to allowlist globals) is never passed on
        for advice in ("weights_only=False", "`weights_only` set to `False`", "safe_globals", "allowlist"):
            assert advice not in rendered, rendered
        if name.startswith("code"):
            assert "could run code" in msg
    assert "this ran" not in capsys.readouterr().out


def test_pickles_are_always_read_weights_only(cfg, parts, tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fx.sd_checkpoint(cfg, tmp_path / "sd15.ckpt", unet=parts["unet"], vae=parts["vae"])
    load_unet(str(tmp_path / "sd15.ckpt"), cfg)
    load_vae(str(tmp_path / "sd15.ckpt"), cfg)
    torch.save(fx.state(parts["clip_vision"]), tmp_path / "clip.bin")
    load_clip_vision(str(tmp_path / "clip.bin"), cfg)
    assert calls == [True, True, True]


def test_non_float_weights_in_base_files(cfg, parts, tmp_path):
    sd = fx.state(parts["vae"])
    sd["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"].to(torch.int64)
    save_file(sd, str(tmp_path / "vae_int.safetensors"))
    with pytest.raises(WeightsError, match=r"'vae_int.safetensors' .*1 tensors of the wrong dtype \(first: "
                                           r"decoder.conv_out.weight: file torch.int64 vs model a float dtype\)"):
        load_vae(str(tmp_path / "vae_int.safetensors"), cfg)
    parts["vae"].save_pretrained(tmp_path / "vae")
    save_file(sd, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(WeightsError, match=r"vae: .*diffusion_pytorch_model.safetensors' holds 1 non-float tensors .*"
                                           r"decoder.conv_out.weight \(I64\)"):
        load_vae(str(tmp_path / "vae"), cfg)


def test_folder_without_weights_or_with_a_broken_config(cfg, parts, tmp_path):
    parts["vae"].save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"vae: expected the VAE weights \(\*.safetensors or \*.bin\) in"):
        load_vae(str(tmp_path / "vae"), cfg)
    parts["vae"].save_pretrained(tmp_path / "vae2")
    (tmp_path / "vae2" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="vae: could not load the VAE from"):
        load_vae(str(tmp_path / "vae2"), cfg)
    parts["vae"].save_pretrained(tmp_path / "vae3")
    (tmp_path / "vae3" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"decoder.conv_out.bias": _Code()}, tmp_path / "vae3" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="vae: could not load the VAE from") as info:
        load_vae(str(tmp_path / "vae3"), cfg)
    rendered = "".join(traceback.format_exception(info.value))
    assert "weights_only=False" not in rendered and "`weights_only` set to `False`" not in rendered, rendered
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"unet: expected '.*empty/config.json'"):
        load_unet(str(tmp_path / "empty"), cfg)


# --------------------------------------------------------------------------- nothing reaches the network
_MISTYPED = "models/sd15-inpainting"  # one slash, does not exist: it used to be taken for a hub id


def _loaders(cfg):
    return {"unet": lambda s: load_unet(s, cfg), "vae": lambda s: load_vae(s, cfg),
            "clip_vision": lambda s: load_clip_vision(s, cfg), "text_encoder": lambda s: load_text_encoder(s),
            "swin": lambda s: load_swin_weights(_swin_model(cfg), s)}


@pytest.mark.parametrize("what", ["unet", "vae", "clip_vision", "text_encoder", "swin"])
def test_a_missing_path_never_reaches_the_network(cfg, what, no_network, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load = _loaders(cfg)[what]
    model = _swin_model(cfg) if what == "swin" else None
    if model is not None:
        load = lambda s: load_swin_weights(model, s)  # noqa: E731
    start = time.perf_counter()
    with pytest.raises(MissingFileError) as info:
        load(_MISTYPED)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert msg.startswith(f"{what}: expected ") and repr(_MISTYPED) in msg and "hf://org/name" in msg, msg
    assert not no_network


def test_load_twgtm_with_a_mistyped_base_path(no_network, tmp_path):
    from conftest import make_tiny_model
    from twgtm.weights import save_twgtm

    path = save_twgtm(make_tiny_model(0), tmp_path / "trained.safetensors")
    start = time.perf_counter()
    with pytest.raises(MissingFileError, match=r"unet: expected .*'models/sd15-inpainting'.*hf://"):
        load_twgtm(path, base=BaseSources(unet=_MISTYPED, vae=_MISTYPED, clip_vision=_MISTYPED))
    assert time.perf_counter() - start < 1.0
    assert not no_network


@pytest.mark.parametrize("what", ["unet", "vae", "clip_vision", "text_encoder", "swin"])
def test_hub_ids_honour_hf_hub_offline(cfg, what, no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load = _loaders(cfg)[what]
    model = _swin_model(cfg) if what == "swin" else None
    if model is not None:
        load = lambda s: load_swin_weights(model, s)  # noqa: E731
    start = time.perf_counter()
    with pytest.raises(MissingFileError, match=rf"{what}: .*'hf://twgtm-tests/absent-model'.*HF_HUB_OFFLINE"):
        load("hf://twgtm-tests/absent-model")
    assert time.perf_counter() - start < 1.0
    assert not no_network


def test_hub_ids_are_passed_on_only_when_asked(cfg, parts, monkeypatch):
    """``hf://org/name`` reaches from_pretrained as a repo id (online unless HF_HUB_OFFLINE); a local folder
    always goes with local_files_only=True."""
    from diffusers import UNet2DConditionModel

    calls = []

    def fake(name, **kwargs):
        calls.append((name, kwargs.get("local_files_only"), kwargs.get("subfolder")))
        return parts["unet"], {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", fake)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_unet("hf://org/sd15-inpainting", cfg)
    load_unet("hf://org/sd15-inpainting/custom_unet", cfg)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_unet("hf://org/sd15-inpainting", cfg)
    assert calls == [("org/sd15-inpainting", False, "unet"), ("org/sd15-inpainting", False, "custom_unet"),
                     ("org/sd15-inpainting", True, "unet")]
    for bad in ("hf://", "hf://a/b/../c", "hf://-x/y"):
        with pytest.raises(WeightsError, match="expected a hub id written 'hf://org/name'"):
            load_unet(bad, cfg)


def test_local_folders_load_with_local_files_only(cfg, parts, tmp_path, monkeypatch):
    from transformers import CLIPTextModel, CLIPTokenizer

    root = fx.diffusers_root(cfg, tmp_path / "sd15", unet=parts["unet"], vae=parts["vae"], text=parts["clip_text"])
    seen = []
    for cls in (CLIPTextModel, CLIPTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, **kwargs):
            seen.append((klass.__name__, kwargs.get("local_files_only")))
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_text_encoder(str(root))
    assert seen == [("CLIPTextModel", True), ("CLIPTokenizer", True)]


def test_full_model_from_single_files(cfg, parts, tmp_path):
    """A trained-parts file on an SD1.5 single-file checkpoint and a CLIP file equals the model it came from."""
    from conftest import make_tiny_model
    from twgtm.weights import save_twgtm

    m = make_tiny_model(0)
    unet = fx.plain_unet(cfg)
    unet.load_state_dict({k: v for k, v in m.unet.state_dict().items() if ".processor." not in k})
    ckpt = fx.sd_checkpoint(cfg, tmp_path / "sd15-inpainting.safetensors", unet=unet, vae=m.vae)
    save_file(fx.state(m.reference_encoder.sam.clip_vision), str(tmp_path / "clip.safetensors"))
    path = save_twgtm(m, tmp_path / "trained.safetensors")
    loaded = load_twgtm(path, base=BaseSources(unet=str(ckpt), vae=str(ckpt), clip_vision=str(tmp_path / "clip.safetensors")))
    own = m.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, own[k]), k
