"""The model as components (UNet, VAE, reference encoder): the pipeline on them, the baseline, the prepare
hook that memory managers use, offload, the one source of truth for the stage, the file keys."""
import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_model
from twgtm.components import TWGTMComponents, is_trained_key
from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError, WeightsError
from twgtm.offload import ModelOffload
from twgtm.pipeline import TWGTMPipeline
from twgtm.weights import load_twgtm, read_config, read_metadata, save_twgtm


class Recorder:
    """A ``prepare`` hook that records what the pipeline asks for, and when (step callbacks are marked)."""

    def __init__(self):
        self.calls = []

    def __call__(self, *names):
        self.calls.append(names)

    def step(self, i, total, latents):
        self.calls.append(("step", i))


def test_prepare_names_each_phase_before_it_runs(images):
    person, garment, mask = images
    c = make_tiny_model(0)
    rec = Recorder()
    pipe = TWGTMPipeline.from_components(c, prepare=rec)
    pipe.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0, callback=rec.step)
    assert rec.calls == [("reference_encoder",), ("unet", "vae"), ("step", 1), ("step", 2)]
    rec.calls.clear()
    pipe.predict_garment_mask(person, "dress")
    assert rec.calls == [("reference_encoder",)], "the garment mask needs the reference encoder alone"
    rec.calls.clear()
    pipe.try_off(person, "upper", num_inference_steps=1, generator=0)
    assert rec.calls == [("reference_encoder",), ("unet", "vae")], "try-off encodes its reference once"


def test_baseline_is_the_same_pipeline_without_a_reference_encoder(images):
    """CatVTON class: no reference encoder, a zero cross-attention context, no Extended-Attention work."""
    person, garment, mask = images
    c = make_tiny_model(0)  # ZLL randomised: Extended Attention would change the output if it ran
    rec = Recorder()
    base = TWGTMPipeline(c.unet, c.vae, None, c.config, prepare=rec)
    out = base.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images
    assert rec.calls == [("unet", "vae")]
    # the same result as the full model with F_SAM zeroed and the Extended Attention branch off
    stage1 = copy.deepcopy(c)
    from twgtm.attention import set_plain_processors

    set_plain_processors(stage1.unet)
    full = TWGTMPipeline.from_components(stage1)
    full.reference_features = lambda ref, idx, with_srm=None: base.baseline_features(ref.shape[0])
    assert torch.equal(full.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images, out)
    with_ref = TWGTMPipeline.from_components(c).try_on(person, garment, mask, "upper", num_inference_steps=2,
                                                       generator=0).images
    assert (with_ref - out).abs().max() > 1e-4, "the reference encoder matters in the full model"
    with pytest.raises(ConfigError, match="reference encoder"):
        base.try_off(person, "upper", num_inference_steps=1)
    with pytest.raises(ConfigError, match="reference encoder"):
        base.predict_garment_mask(person, "upper")


def test_model_offload_moves_only_what_a_phase_needs(images, monkeypatch):
    """ModelOffload is the prepare hook for plain PyTorch use: the named components to the device, the rest
    off it; outputs are unchanged."""
    person, garment, mask = images
    c = make_tiny_model(0)
    moves = []
    for name, module in c.modules().items():
        real = module.to

        def spy(*args, _name=name, _real=real, _module=module, **kw):
            device = str(kw.get("device", args[0] if args else None))
            moves.append((_name, device))
            return _module if device == "meta" else _real(*args, **kw)  # "meta" is only recorded

        monkeypatch.setattr(module, "to", spy)
    plain = TWGTMPipeline.from_components(c).try_on(person, garment, mask, "upper", num_inference_steps=2,
                                                    generator=0).images
    pipe = TWGTMPipeline.from_components(c)
    pipe.enable_model_cpu_offload("cpu", offload_device="meta")  # a second device that only records
    assert isinstance(pipe.prepare, ModelOffload)
    moves.clear()
    pipe.prepare("reference_encoder")
    assert ("reference_encoder", "cpu") in moves and ("unet", "meta") in moves and ("vae", "meta") in moves
    moves.clear()
    pipe.prepare("unet", "vae")
    assert ("reference_encoder", "meta") in moves and ("unet", "cpu") in moves and ("vae", "cpu") in moves
    pipe.prepare = ModelOffload(pipe.components(), "cpu", "cpu")
    again = pipe.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images
    assert torch.equal(plain, again)


def test_stage_has_one_source_of_truth(tmp_path):
    s1 = make_tiny_model(0, stage=1)
    assert s1.stage == 1 and s1.reference_encoder.decoder is None and not s1.extended_attention_processors()
    s2 = copy.deepcopy(s1)
    s2.enable_stage2()
    assert s2.config.stage == 2 and s2.reference_encoder.decoder is not None and s2.extended_attention_processors()
    path = save_twgtm(s2, tmp_path / "m.safetensors", include_base=True)
    assert read_config(path).stage == 2 and "stage" not in read_metadata(path)
    assert load_twgtm(path).stage == 2
    # a file whose metadata disagrees with its config is refused instead of guessed
    tensors = load_file(str(path))
    meta = dict(read_metadata(path), stage="1")
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="stage"):
        load_twgtm(tmp_path / "bad.safetensors")


def test_file_keys_keep_the_format():
    """The components' state dict uses the TWGTM file keys (format 1): unet.*, vae.*, sam.*, srm.*, decoder.*."""
    c = make_tiny_model(0)
    keys = set(c.state_dict())
    heads = {k.split(".", 1)[0] for k in keys}
    assert heads == {"unet", "vae", "sam", "srm", "decoder"}
    trained = set(c.trained_state_dict())
    assert trained == {k for k in keys if is_trained_key(k)}
    assert not any(k.startswith(("vae.", "sam.clip_vision.")) for k in trained)
    assert any(".processor.zll." in k for k in trained) and any(k.startswith("sam.prompts.") for k in trained)
    other = make_tiny_model(1)
    other.load_state_dict(c.state_dict())
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in c.state_dict().items())


def test_enable_stage2_needs_a_reference_encoder():
    cfg = TWGTMConfig.tiny(stage=1)
    base = TWGTMComponents.build(cfg, reference_encoder=False)
    assert base.reference_encoder is None and set(base.modules()) == {"unet", "vae"}
    with pytest.raises(ConfigError, match="baseline"):
        base.enable_stage2()


QUIET_RUN = """
import logging, sys, warnings
import torch
from twgtm.pipeline import TWGTMPipeline
from twgtm.weights import load_twgtm
warnings.simplefilter("always")  # every warning, also those Python shows once or hides by default
logging.basicConfig(level=logging.WARNING)
for dtype in (torch.float32, torch.bfloat16):
    pipe = TWGTMPipeline.from_components(load_twgtm(sys.argv[1], dtype=dtype))
    person, garment = torch.rand(1, 3, 70, 50), torch.rand(1, 3, 64, 48)
    mask = torch.zeros(1, 1, 70, 50)
    mask[..., 20:50, 10:40] = 1
    pipe.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0)
    pipe.try_off(person, "dress", num_inference_steps=2, generator=0)
    pipe.predict_garment_mask(person, "lower")
print("ok")
"""


def test_a_load_and_a_try_on_print_no_warnings(tmp_path):
    """A fresh process loads a TWGTM file (fp32 and bf16), runs try-on, try-off and the garment mask: nothing on
    stderr, no warning of any kind (diffusers' false "should be kept in float32: []" on a cast included)."""
    import subprocess
    import sys

    path = tmp_path / "tiny.safetensors"
    save_twgtm(make_tiny_model(0), path, include_base=True)
    proc = subprocess.run([sys.executable, "-c", QUIET_RUN, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok" and proc.stderr == "", proc.stderr[-3000:]


def test_move_keeps_diffusers_warning_where_it_is_true(caplog):
    """components.move skips diffusers' ``to`` only for models that keep no module in float32: for one that does,
    diffusers' own ``to`` runs and warns, as it should."""
    from diffusers.utils import logging as diffusers_logging

    from twgtm.components import move

    vae = make_tiny_model(0).vae
    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            move(vae, dtype=torch.bfloat16)
            assert not [r for r in caplog.records if "kept in float32" in r.getMessage()]
            vae._keep_in_fp32_modules = ["quant_conv"]
            move(vae, dtype=torch.float32)
            assert [r for r in caplog.records if "kept in float32: ['quant_conv']" in r.getMessage()]
    finally:
        diffusers_logging.disable_propagation()
    assert vae.dtype == torch.float32
