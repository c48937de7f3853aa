"""The public pipeline's option and input checks, non-finite results, and masks that would vanish on the canvas."""
import pytest
import torch

import twgtm.latents as latents_mod
from conftest import make_tiny_model
from twgtm.errors import InputError, NumericalError, TWGTMError
import twgtm.pipeline as pipeline_mod
from twgtm.pipeline import TWGTMPipeline


@pytest.fixture(scope="module")
def pipe():
    return TWGTMPipeline.from_components(make_tiny_model(0))


@pytest.fixture()
def no_model_work(pipe):
    """Any reference encoding or UNet call fails the test: options must be checked before model work."""
    def fail(*a, **k):
        raise AssertionError("model work before the options were checked")

    hooks = [pipe.reference_encoder.sam.register_forward_pre_hook(fail), pipe.unet.register_forward_pre_hook(fail)]
    yield
    for h in hooks:
        h.remove()


def run(pipe, method, images, **kw):
    person, garment, mask = images
    args = dict(num_inference_steps=1, generator=0)
    if method == "try_on":
        args.update(person=person, garment=garment, mask=mask, category="upper")
    elif method == "try_off":
        args.update(person=person, category="upper")
    else:
        args = dict(person=person, category="upper")
    args.update(kw)
    return getattr(pipe, method)(**args)


# ------------------------------------------------------------------ options: type and range (issue item 1, 2, 3)
@pytest.mark.parametrize("eta", [1.5, 1.0001, -0.5, float("nan"), float("inf"), "abc", True])
@pytest.mark.parametrize("method", ["try_on", "try_off"])
def test_eta_must_be_in_0_1(pipe, images, no_model_work, method, eta):
    with pytest.raises(InputError, match=r"eta: expected a float in \[0, 1\].*got"):
        run(pipe, method, images, eta=eta)


@pytest.mark.parametrize("size", [(0, 10), (-5, 10), (64,), 64, (64.5, 48), (64, 48, 3), "64x48", (True, 48),
                                  (10 ** 6, 48), torch.tensor([64, 48])])
@pytest.mark.parametrize("method", ["try_on", "try_off", "predict_garment_mask"])
def test_output_size_checked_first_in_every_method(pipe, images, no_model_work, method, size):
    with pytest.raises(InputError, match=r"output_size: expected None or \(height, width\).*got"):
        run(pipe, method, images, output_size=size)


@pytest.mark.parametrize("method", ["try_on", "try_off", "predict_garment_mask"])
def test_output_size_accepts_lists_and_sizes(pipe, images, method):
    for size in ([40, 30], torch.Size([40, 30])):
        out = run(pipe, method, images, output_size=size)
        out = out if isinstance(out, torch.Tensor) else out.images
        assert out.shape[-2:] == (40, 30)


@pytest.mark.parametrize("kwargs, match", [
    (dict(category=None), r"category: expected a category name.*got None \(NoneType\)"),
    (dict(category=3), r"category: expected a category name.*got 3 \(int\)"),
    (dict(category=["upper", 3]), r"category: expected a category name.*got \['upper', 3\]"),
    (dict(guidance_scale="abc"), r"guidance_scale: expected a float in \[1, 100\].*got 'abc' \(str\)"),
    (dict(guidance_scale=[2.5]), r"guidance_scale: expected a float.*got \[2.5\]"),
    (dict(guidance_scale=float("nan")), r"guidance_scale: expected a float in \[1, 100\].*got nan"),
    (dict(strength=None), r"strength: expected a float in \(0, 1\].*got None"),
    (dict(strength="0.5"), r"strength: expected a float in \(0, 1\].*got '0.5'"),
    (dict(strength=1e-3, num_inference_steps=3), r"strength: expected at least num_inference_steps / 999"),
    (dict(num_inference_steps=2.0), r"num_inference_steps: expected an int in \[1, 999\], got 2.0"),
    (dict(scheduler=None), r"scheduler: expected one of .*got None"),
    (dict(paste_back="yes"), r"paste_back: expected True or False, got 'yes'"),
    (dict(callback=3), r"callback: expected None or a callable.*got int"),
    (dict(generator=2 ** 70), r"generator: expected an int seed in"),
    (dict(generator=[torch.Generator()]), r"generator: expected a list of 2 torch.Generator.*got 1"),
    (dict(generator=1.5), r"generator: expected an int seed.*got float"),
])
@pytest.mark.parametrize("method", ["try_on", "try_off"])
def test_bad_options_are_typed_errors(pipe, images, no_model_work, method, kwargs, match):
    with pytest.raises(InputError, match=match):
        run(pipe, method, images, **kwargs)


@pytest.mark.parametrize("category", [None, 3])
def test_predict_garment_mask_category_type(pipe, images, no_model_work, category):
    with pytest.raises(InputError, match="category: expected a category name"):
        run(pipe, "predict_garment_mask", images, category=category)


@pytest.mark.parametrize("kwargs, match", [
    (dict(box_margin=float("nan")), r"box_margin: expected a float in \[0, 1\].*got nan"),
    (dict(box_margin=-0.1), r"box_margin: expected a float in \[0, 1\].*got -0.1"),
    (dict(box_margin=5), r"box_margin: expected a float in \[0, 1\].*got 5"),
    (dict(box_margin="0.1"), r"box_margin: expected a float.*got '0.1' \(str\)"),
    (dict(predicted_box="yes"), r"predicted_box: expected True or False"),
    (dict(predicted_mask=1), r"predicted_mask: expected True or False, got 1"),
])
def test_try_off_region_options(pipe, images, no_model_work, kwargs, match):
    with pytest.raises(InputError, match=match):
        run(pipe, "try_off", images, predicted_box=kwargs.pop("predicted_box", True), **kwargs)


def test_negative_box_margin_no_longer_means_whole_canvas(pipe, images):
    """A negative margin used to shrink the box to nothing, which silently became the whole canvas."""
    with pytest.raises(InputError, match="box_margin"):
        run(pipe, "try_off", images, predicted_box=True, box_margin=-0.6)
    out = run(pipe, "try_off", images, predicted_box=True, box_margin=0.0).images
    assert out.shape == (2, 3, 64, 48)


@pytest.mark.parametrize("name", ["person", "garment", "mask"])
def test_meta_tensors_are_input_errors(pipe, images, no_model_work, name):
    person, garment, mask = images
    kw = {name: {"person": person, "garment": garment, "mask": mask}[name].to("meta")}
    with pytest.raises(InputError, match=fr"{name}: expected a tensor with data .*got a tensor on the 'meta' device"):
        run(pipe, "try_on", images, **kw)
    if name != "garment":
        with pytest.raises(InputError, match=fr"{name}: expected a tensor with data"):
            run(pipe, "try_off", images, **kw)
    if name == "person":
        with pytest.raises(InputError, match="person: expected a tensor with data"):
            run(pipe, "predict_garment_mask", images, **kw)


def test_sparse_tensors_are_input_errors(pipe, images, no_model_work):
    person, _, mask = images
    with pytest.raises(InputError, match="mask: expected a dense"):
        run(pipe, "try_on", images, mask=mask.to_sparse())
    with pytest.raises(InputError, match="person: expected a dense"):
        run(pipe, "try_on", images, person=person.to_sparse())


# ------------------------------------------------------------------ non-finite results (issue item 1)
def test_non_finite_decode_raises_instead_of_returning_it(images, monkeypatch):
    pipe = TWGTMPipeline.from_components(make_tiny_model(0))
    real = pipeline_mod.vae_decode

    def nan_in_item_1(vae, z, cfg, **kw):
        out = real(vae, z, cfg, **kw)
        out[1] = float("nan")
        return out

    monkeypatch.setattr(pipeline_mod, "vae_decode", nan_in_item_1)
    for method in ("try_on", "try_off"):
        with pytest.raises(NumericalError, match=r"the decoded image: expected finite values, got NaN or inf for "
                                                 r"batch index \[1\]"):
            run(pipe, method, images, paste_back=True)
    assert issubclass(NumericalError, TWGTMError)


def test_non_finite_garment_mask_raises(images):
    pipe = TWGTMPipeline.from_components(make_tiny_model(0))

    def nan_logits(module, args, out):
        out.tfq0_logits[-1] = out.tfq0_logits[-1] * float("nan")
        return out

    pipe.reference_encoder.srm.register_forward_hook(nan_logits)
    for method in ("predict_garment_mask", "try_off"):
        with pytest.raises(NumericalError, match="the predicted garment mask: expected finite values"):
            run(pipe, method, images)


# ------------------------------------------------------------------ masks that vanish on the canvas (issue item 4)
def _spy_latent_masks(pipe, monkeypatch):
    """The UNet's mask channel (target half) at every call."""
    seen = []
    real = pipeline_mod.model_output

    def spy(unet, x, t, *a, **k):
        seen.append(latents_mod.target_half(x[:, 4:5], pipe.config.concat_dim).detach().clone())
        return real(unet, x, t, *a, **k)

    monkeypatch.setattr(pipeline_mod, "model_output", spy)
    return seen


def _dressed(pipe, monkeypatch, person, mask):
    seen = _spy_latent_masks(pipe, monkeypatch)
    garment = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    out = pipe.try_on(person, garment, mask, "upper", num_inference_steps=2, generator=0).images
    assert seen and all(bool((m.flatten(1).amax(1) > 0).all()) for m in seen), \
        "the latent mask used for conditioning keeps at least one cell"
    keep = (mask == 0).expand_as(person) if mask.shape[-2:] == person.shape[-2:] else None
    if keep is not None:
        assert torch.equal(out[keep], person[keep]), "pixels outside the mask stay bit-identical"
    return out


def test_tiny_mask_on_a_large_person_is_dressed(pipe, images, monkeypatch):
    person = torch.rand(1, 3, 640, 480, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 640, 480)
    mask[..., 101:104, 201:204] = 1  # 3x3 pixels that nearest sampling to 64x48 misses entirely
    out = _dressed(pipe, monkeypatch, person, mask)
    assert (out - person)[mask.expand_as(person) == 1].abs().mean() > 1e-3, "the region is generated"


@pytest.mark.parametrize("shape", [(1, 300), (300, 1)])
def test_thin_person_keeps_its_mask(pipe, monkeypatch, shape):
    """A valid mask for a 1x300 (300x1) person, given at another size, is not reported empty or lost."""
    person = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(2))
    wide = shape[0] == 1
    mask = torch.zeros(1, 1, 10, 300) if wide else torch.zeros(1, 1, 300, 10)
    if wide:
        mask[..., 5, 100:200] = 1  # nearest to 1 row samples row 0: empty before the fix
    else:
        mask[..., 100:200, 5] = 1
    out = _dressed(pipe, monkeypatch, person, mask)
    assert out.shape == person.shape
    same_size = torch.zeros(1, 1, *shape)
    same_size[(..., 0, slice(100, 200)) if wide else (..., slice(100, 200), 0)] = 1
    _dressed(pipe, monkeypatch, person, same_size)  # one canvas row: lost at the latent size before the fix


def test_a_region_with_no_latent_cell_is_an_error_not_a_silent_reconstruction(pipe, monkeypatch):
    """If the latent mask ever came out empty, the call fails clearly instead of 'changing pixels, no garment'."""
    monkeypatch.setattr(latents_mod, "mask_to_latent",
                        lambda m, size: torch.nn.functional.interpolate(m.float(), size=size, mode="nearest"))
    person = torch.rand(1, 3, 640, 480, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 640, 480)
    mask[..., 300:309, 200:209] = 1
    with pytest.raises(InputError, match="mask: expected a region that covers at least one latent cell"):
        pipe.try_on(person, torch.rand(1, 3, 64, 48), mask, "upper", num_inference_steps=1, generator=0)
