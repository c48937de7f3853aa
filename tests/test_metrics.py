"""Tests for training/metrics.py: known values, invariants, offline backbones and the report writer."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from training import metrics as M
from twgtm.errors import InputError, MissingFileError


@pytest.fixture(autouse=True)
def isolated_torch_home(tmp_path, monkeypatch):
    """No real cache is visible: $TORCH_HOME points at an empty folder, and cached networks are dropped."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    M.clear_cache()
    yield home
    M.clear_cache()


def smooth_images(n=2, h=64, w=48, seed=0):
    """Blurred noise: natural-ish images with structure at several scales, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h // 4, w // 4, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)
    return (x + 0.05 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def noisy(x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


class TinyFeature(nn.Module):
    """Random conv + energy pooling: (N, 3, H, W) -> (N, 8), stands in for Inception."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return 10 * self.conv(x).abs().mean(dim=(2, 3))


# SSIM family


def test_ssim_identity_and_constant_images_hand_value():
    x = smooth_images()
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert M.ssim(x, x, y_channel=True) == pytest.approx(1.0, abs=1e-6)
    a, b = torch.full((1, 3, 32, 32), 0.5), torch.full((1, 3, 32, 32), 0.25)
    c1 = 0.01**2  # zero variance: only the luminance term remains
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert M.ssim(a, b) == pytest.approx(expected, abs=1e-4)


def test_ssim_matches_formula():
    """Gaussian 11x11 / sigma 1.5 SSIM on reflect-padded images (torchmetrics' border rule), in float64."""
    x, y = smooth_images(seed=0), noisy(smooth_images(seed=0), 0.1)
    coords = torch.arange(11, dtype=torch.float64) - 5
    g1 = torch.exp(-coords**2 / (2 * 1.5**2))
    g1 = g1 / g1.sum()
    kernel = (g1[:, None] * g1[None, :]).expand(3, 1, 11, 11)

    def blur(t):
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode="reflect"), kernel, groups=3)

    x64, y64 = x.double(), y.double()
    mx, my = blur(x64), blur(y64)
    vx, vy, cxy = blur(x64 * x64) - mx**2, blur(y64 * y64) - my**2, blur(x64 * y64) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx.clamp_min(0) + vy.clamp_min(0) + c2))
    assert M.ssim(x, y) == pytest.approx(ssim_map.mean().item(), abs=1e-4)


def test_ms_ssim_small_images_do_not_crash():
    for h, w in [(64, 48), (10, 10), (7, 5)]:
        x = smooth_images(h=max(h, 8), w=max(w, 8))[..., :h, :w].contiguous()
        assert M.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-5)
        assert M.ms_ssim(x, noisy(x, 0.2)) < 0.99
    assert M._ms_ssim_setting(1024, 768) == M._ms_ssim_setting(176, 176) == (M._MS_SSIM_BETAS, 11)
    betas, kernel = M._ms_ssim_setting(64, 48)
    assert (len(betas), kernel) == (3, 11) and sum(betas) == pytest.approx(1.0)


# CW-SSIM


def test_cw_ssim_identity_and_symmetry():
    x, y = smooth_images(seed=0), smooth_images(seed=3)
    assert M.cw_ssim(x, x) == pytest.approx(1.0, abs=1e-4)
    assert M.cw_ssim(x, x, y_channel=False) == pytest.approx(1.0, abs=1e-4)
    assert M.cw_ssim(x, y) == pytest.approx(M.cw_ssim(y, x), abs=1e-10)
    assert M.cw_ssim(x, y) < 0.95
    flat = torch.full((1, 3, 32, 32), 0.3)  # all bands zero: counted as identical, never NaN
    assert M.cw_ssim(flat, flat) == pytest.approx(1.0)


def test_cw_ssim_decreases_with_noise():
    x = smooth_images(h=96, w=64)
    scores = [M.cw_ssim(x, noisy(x, s)) for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_cw_ssim_tolerates_small_translation_better_than_ssim():
    x = smooth_images(h=96, w=64)
    shifted = torch.roll(x, shifts=1, dims=-1)
    cw_drop = 1 - M.cw_ssim(x, shifted)
    ssim_drop = 1 - M.ssim(x, shifted)
    assert 0 < cw_drop < ssim_drop / 2, (cw_drop, ssim_drop)


def test_cw_ssim_small_images_reduce_levels(caplog):
    x = smooth_images(h=64, w=48)
    with caplog.at_level("WARNING"):
        assert M.cw_ssim(x, noisy(x, 0.1)) < 1.0
    assert "3 pyramid level" in caplog.text
    with pytest.raises(InputError, match="7x7"):
        M.cw_ssim(torch.rand(1, 3, 6, 6), torch.rand(1, 3, 6, 6))


def test_steerable_pyramid_matches_pyrtools_reference():
    """Coarsest-level coefficients of pyrtools 1.1.1 SteerablePyramidFreq(height=2, order=3, is_complex=True)."""
    i, j = torch.meshgrid(torch.arange(32.0), torch.arange(24.0), indexing="ij")
    img = (torch.sin(i * 0.7) * torch.cos(j * 0.45) + 0.5 * torch.sin(0.3 * i + 0.9 * j)
           + ((i // 4 + j // 4) % 2)).double()
    bands = M._coarsest_bands(img[None], levels=2, orientations=4)[0]  # (4, 16, 12)
    reference = {
        0: [0.889504 - 1.160579j, -1.523136 - 0.097203j, 0.309626 - 1.523616j],
        1: [1.530492 - 2.209683j, -1.384628 - 1.942157j, 0.592588 - 2.328953j],
        2: [0.371424 + 0.094237j, 0.473465 - 1.180377j, -0.392569 + 0.057817j],
        3: [-0.225663 + 0.780007j, 1.604767 + 0.308708j, -2.236696 + 0.972841j],
    }
    for band, values in reference.items():
        got = [complex(bands[band, y, x]) for y, x in ((3, 2), (8, 6), (12, 9))]
        assert got == pytest.approx(values, abs=1e-4), band


def test_steerable_band_sizes_follow_buildscfpyr():
    img = torch.rand(2, 64, 48, dtype=torch.float64)
    bands = M._coarsest_bands(img, levels=3, orientations=8)
    assert bands.shape == (2, 8, 16, 12) and bands.is_complex()
    assert M._band_sizes(1024, 4) == [1024, 512, 256, 128] and M._band_sizes(33, 3) == [33, 17, 9]


# input validation and mask IoU


def test_inputs_are_validated_and_uint8_is_accepted():
    x = smooth_images()
    with pytest.raises(InputError, match="pred"):
        M.ssim(x * 2 - 1, x)
    with pytest.raises(InputError, match="same shape"):
        M.ssim(x, x[:, :, :32])
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        M.ssim(x[:, :1], x[:, :1])
    x8 = (x * 255).round().to(torch.uint8)
    y8 = (noisy(x, 0.1) * 255).round().to(torch.uint8)
    assert M.ssim(x8, y8) == pytest.approx(M.ssim(x8.float() / 255, y8.float() / 255), abs=1e-6)


def test_mask_iou_hand_examples():
    pred = torch.zeros(2, 1, 4, 4)
    gt = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :4] = 0.9  # 4 pixels
    gt[0, 0, 0, 2:4] = 1.0  # 6 pixels, 2 shared with pred
    gt[0, 0, 1, :4] = 1.0
    pred[0, 0, 3, 3] = 0.4  # below the threshold: not in the mask
    # image 0: IoU = 2 / 8; image 1: both empty -> 1
    assert M.mask_iou(pred, gt) == pytest.approx((2 / 8 + 1.0) / 2)
    assert M.mask_iou(pred, gt, threshold=0.3) == pytest.approx((2 / 9 + 1.0) / 2)
    with pytest.raises(InputError, match="pred_mask"):
        M.mask_iou(pred[:, 0], gt[:, 0])


# backbone metrics: missing files


def test_lpips_and_dists_name_the_missing_file(tmp_path, isolated_torch_home):
    x = smooth_images()
    with pytest.raises(M.MetricUnavailable) as err:
        M.lpips(x, x, net="alex", weights_dir=tmp_path)
    message = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path) in message
    assert str(isolated_torch_home / "hub" / "checkpoints") in message
    assert isinstance(err.value, MissingFileError)
    with pytest.raises(M.MetricUnavailable, match="squeezenet1_1-b8a52dc0.pth"):
        M.lpips(x, x, net="squeeze")
    with pytest.raises(M.MetricUnavailable, match="vgg16-397923af.pth"):
        M.dists(x, x)
    with pytest.raises(M.MetricUnavailable, match=M.INCEPTION_FILE):
        M.fid(x, x)
    with pytest.raises(M.MetricUnavailable, match="clip_dir"):
        M.clip_fid(x, x, None)
    with pytest.raises(M.MetricUnavailable, match="config.json"):
        M.dino_score(x, x, tmp_path / "absent")


# backbone metrics: offline with random weights


def test_lpips_runs_offline_from_local_torchvision_file(tmp_path, isolated_torch_home):
    x = smooth_images()
    y = noisy(x, 0.2)
    values = []
    for seed, folder in ((0, tmp_path / "a"), (1, isolated_torch_home / "hub" / "checkpoints")):
        torch.manual_seed(seed)
        folder.mkdir(parents=True)
        torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), folder / M.BACKBONE_FILES["squeeze"])
        weights_dir = folder if seed == 0 else None  # seed 1 is found through $TORCH_HOME/hub/checkpoints
        assert M.lpips(x, x, net="squeeze", weights_dir=weights_dir) == pytest.approx(0.0, abs=1e-6)
        values.append(M.lpips(x, y, net="squeeze", weights_dir=weights_dir))
        M.clear_cache()
    assert values[0] > 0 and values[1] > 0
    assert values[0] != pytest.approx(values[1], rel=1e-3)  # the trunk really comes from the file


def test_lpips_rejects_a_file_with_wrong_keys(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / M.BACKBONE_FILES["alex"])
    with pytest.raises(M.WeightsError, match="alexnet-owt-7be5be79.pth"):
        M.lpips(smooth_images(), smooth_images(), net="alex", weights_dir=tmp_path)


def test_dists_runs_offline_from_local_vgg_features(tmp_path):
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16-397923af.pth")
    x = smooth_images(h=48, w=32)
    assert M.dists(x, x, tmp_path, size=None) == pytest.approx(0.0, abs=1e-5)
    assert M.dists(x, noisy(x, 0.3), tmp_path, size=(40, 32)) > 0.01


def test_fid_and_kid_with_injected_feature():
    x = smooth_images(n=12, seed=0)
    other = torch.rand(12, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    feature = TinyFeature()
    same, different = M.fid(x, x, feature=feature), M.fid(x, other, feature=feature)
    assert abs(same) < 1e-6 and different > 0.1
    assert M.fid(x[:6], x, feature=feature) < different  # unpaired sets of different size are fine
    kid_same = M.kid(x, x, feature=feature, subset_size=1000, subsets=10)
    kid_diff = M.kid(x, other, feature=feature, subset_size=6, subsets=10)
    assert kid_diff > 10 * abs(kid_same)  # reported x1000; unbiased, so KID(x, x) may dip below 0
    assert kid_diff == M.kid(x, other, feature=feature, subset_size=6, subsets=10)  # seeded subsets
    with pytest.raises(InputError, match="at least 2"):
        M.fid(x[:1], x, feature=feature)


def _tiny_hf_dirs(tmp_path):
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(small, vocab_size=50, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    dino = ViTModel(ViTConfig(**small, image_size=32, patch_size=8), add_pooling_layer=False)
    dino.save_pretrained(tmp_path / "dino")
    return tmp_path / "clip", tmp_path / "dino"


def test_clip_fid_and_dino_from_local_transformers_dirs(tmp_path):
    clip_dir, dino_dir = _tiny_hf_dirs(tmp_path)
    x = smooth_images(n=12, seed=0)
    other = torch.rand(12, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    assert abs(M.clip_fid(x, x, clip_dir)) < 1e-3 < M.clip_fid(x, other, clip_dir)
    assert M.dino_score(x, x, dino_dir) == pytest.approx(1.0, abs=1e-5)
    assert M.dino_score(x, other, dino_dir) < 1.0 - 1e-4


# protocol driver and report


def test_compute_metrics_runs_weight_free_metrics_and_reports_skips(tmp_path):
    x = smooth_images(n=4)
    y = noisy(x, 0.1)
    res = M.compute_metrics(y, x, M.VTOFF, fid_feature=TinyFeature(), kid_subset_size=4, weights_dir=tmp_path)
    assert list(res) == list(M.VTOFF)
    for name in ("ssim", "ms_ssim", "cw_ssim", "fid", "kid"):
        assert isinstance(res[name], float) and math.isfinite(res[name]), name
    assert res["ssim"] == pytest.approx(M.ssim(y, x))
    assert set(res.skipped) == {"lpips", "dists", "clip_fid"}
    assert all(res[name] is None for name in res.skipped)
    assert "alexnet-owt-7be5be79.pth" in res.skipped["lpips"]
    assert "vgg16-397923af.pth" in res.skipped["dists"]
    assert "clip_dir" in res.skipped["clip_fid"]

    unpaired = M.compute_metrics(y[:1], x[:1], M.VTON_UNPAIRED + ("mask_iou",))
    assert unpaired.skipped.keys() == {"fid", "kid", "dino", "mask_iou"}
    assert "at least 2" in unpaired.skipped["fid"]
    with pytest.raises(InputError, match="psnr"):
        M.compute_metrics(y, x, ["ssim", "psnr"])


def test_write_report_json_and_markdown(tmp_path):
    twgtm = M.MetricResults({"ssim": 0.87654, "lpips": None, "fid": 9.876}, {"lpips": "weights file missing"})
    rows = {"TWGTM": twgtm, "baseline": {"ssim": 0.8, "lpips": 0.1234, "fid": float("nan"), "time_s": 3.5}}
    paths = M.write_report(rows, tmp_path / "out", "VTOFF VITON-HD")
    assert paths.json.name == "vtoff_viton_hd.json" and paths.markdown.suffix == ".md"
    data = json.loads(paths.json.read_text())
    assert data["rows"]["TWGTM"] == {"ssim": 0.87654, "lpips": None, "fid": 9.876}
    assert data["rows"]["baseline"]["fid"] is None and "not finite" in data["skipped"]["baseline"]["fid"]
    assert data["skipped"]["TWGTM"] == {"lpips": "weights file missing"}
    assert data["columns"] == ["ssim", "lpips", "fid", "time_s"]
    assert data["higher_is_better"] == {"ssim": True, "lpips": False, "fid": False}
    md = paths.markdown.read_text()
    assert "| Method | SSIM ↑ | LPIPS ↓ | FID ↓ | time_s |" in md
    assert "| TWGTM | 0.8765 | — | 9.88 | — |" in md
    assert "| baseline | 0.8000 | 0.1234 | — | 3.5000 |" in md
    assert "TWGTM / lpips: weights file missing" in md

    single = M.write_report({"ssim": 0.5}, tmp_path, "one")
    assert json.loads(single.json.read_text())["rows"] == {"one": {"ssim": 0.5}}


# pattern transfer

def _striped(n=1, h=64, w=48, period=10, shift=0, vertical=False):
    """Two-colour stripes (dark red / light yellow) filling the canvas."""
    idx = torch.arange(w if vertical else h)
    on = (((idx + shift) % period) < period // 2).float()
    on = on.view(1, 1, 1, w) if vertical else on.view(1, 1, h, 1)
    dark, light = torch.tensor([0.5, 0.1, 0.1]).view(1, 3, 1, 1), torch.tensor([0.95, 0.9, 0.5]).view(1, 3, 1, 1)
    return (on * dark + (1 - on) * light).expand(n, 3, h, w).contiguous()


def _box(n=1, h=64, w=48, top=10, left=8, bottom=54, right=40):
    m = torch.zeros(n, 1, h, w)
    m[:, :, top:bottom, left:right] = 1
    return m


def test_pattern_scores_tell_a_kept_pattern_from_a_lost_one():
    gt, region = _striped(), _box()
    same = M.pattern_scores(gt, gt, region)
    assert same["corr"].item() == pytest.approx(1.0, abs=1e-5) and same["energy"].item() == pytest.approx(1.0)
    assert same["gt_rms"].item() > 0.1
    # the garment's mean colour everywhere: no pattern left
    flat = gt.mean((2, 3), keepdim=True).expand_as(gt).contiguous()
    lost = M.pattern_scores(flat, gt, region)
    assert lost["energy"].item() < 1e-6 and lost["corr"].item() == 0.0
    # the same stripes half a period off: anti-correlated; rotated by 90 degrees: unrelated
    assert M.pattern_scores(_striped(shift=5), gt, region)["corr"].item() < -0.9
    assert abs(M.pattern_scores(_striped(vertical=True), gt, region)["corr"].item()) < 0.1
    # noise of the same strength as the stripes keeps the energy but not the correlation
    g = torch.Generator().manual_seed(0)
    noisy = (flat + 0.25 * (torch.rand(1, 1, 64, 48, generator=g) - 0.5)).clamp(0, 1)
    noise = M.pattern_scores(noisy, gt, region)
    assert noise["energy"].item() > 0.3 and abs(noise["corr"].item()) < 0.15


def test_pattern_scores_ignore_the_regions_outline_and_outside():
    """A flat garment on white: the silhouette edge is not a pattern (erosion), pixels outside do not count."""
    region = _box(n=2)
    gt = torch.ones(2, 3, 64, 48)
    gt[:] = torch.where(region.bool(), torch.tensor([0.2, 0.5, 0.2]).view(1, 3, 1, 1), gt)
    pred = gt.clone()
    pred[:, :, :5] = torch.rand(2, 3, 5, 48)  # outside the region: anything
    s = M.pattern_scores(pred, gt, region)
    assert (s["gt_rms"] < 1e-6).all()
    # an anti-aliased outline (one pixel of mixed colour) is not a pattern either, once eroded by that pixel
    soft = gt.clone()
    soft[:, :, 10, 8:40] = 0.6
    assert (M.pattern_scores(soft, soft, region)["gt_rms"] < 1e-6).all()
    assert (M.pattern_scores(soft, soft, region, erode=0)["gt_rms"] > 0.01).all()


def test_pattern_scores_errors_name_the_argument():
    gt, region = _striped(), _box()
    with pytest.raises(InputError, match="`region`.*received \\(1, 3, 64, 48\\)"):
        M.pattern_scores(gt, gt, gt)
    with pytest.raises(InputError, match="`sigma`.*received 0"):
        M.pattern_scores(gt, gt, region, sigma=0)
    with pytest.raises(InputError, match="`erode`.*received -1"):
        M.pattern_scores(gt, gt, region, erode=-1)
    with pytest.raises(InputError, match="`gt` must have shape"):
        M.pattern_scores(gt, gt[:, :1], region)
