"""Streaming metrics: per-item records reduced per group equal the all-at-once metrics (1e-6; KID 2e-5 relative, see
below); per-item seeds make generated images independent of the batching."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from training import metrics as M
from training.sampling import run_model

from conftest import make_tiny_model


class _Feature(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return 10 * self.conv(x).abs().mean(dim=(2, 3))


def test_streamed_records_equal_the_metrics_of_all_items_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(10, 3, 64, 48, generator=g)
    pred = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    pm, gm = (torch.rand(10, 1, 64, 48, generator=g) for _ in range(2))
    names = list(M.VTOFF) + ["mask_iou"]
    common = dict(fid_feature=_Feature(), kid_subset_size=4, weights_dir=tmp_path, y_channel=True)
    reference = M.compute_metrics(pred, gt, names, pred_mask=pm, gt_mask=gm, **common)
    scorer = M.ItemScorer(names, **common)
    records = []
    for s in (slice(0, 3), slice(3, 4), slice(4, 10)):          # uneven batches
        records += scorer(pred[s], gt[s], pred_mask=pm[s], gt_mask=gm[s])
    streamed = scorer.reduce(records)
    assert list(streamed) == list(reference)
    for name, value in reference.items():
        if value is None:
            assert streamed[name] is None and name in streamed.skipped
        else:
            # KID (x1000): the records keep features in float32 (half the memory of the float64 the all-at-once
            # path uses), and KID's cubic kernel over subsets of 4 turns that rounding into a relative 4e-6 to 7e-6
            # on an AMD EPYC (the same code was within 1e-6 on other CPUs by luck of the rounding)
            tol = 2e-5 if name == "kid" else 1e-6
            assert streamed[name] == pytest.approx(value, abs=1e-6, rel=tol), name
    assert set(streamed.skipped) == set(reference.skipped) == {"lpips", "dists", "clip_fid"}
    part = scorer.reduce(records[:1])                          # a group of one: distribution metrics skipped
    assert part["fid"] is None and "at least 2" in part.skipped["fid"]
    assert part["ssim"] == pytest.approx(M.ssim(pred[:1], gt[:1], y_channel=True), abs=1e-6)


def test_per_item_seeds_make_outputs_independent_of_batching():
    model = make_tiny_model(0)
    g = torch.Generator().manual_seed(1)
    person, garment = torch.rand(3, 3, 64, 48, generator=g), torch.rand(3, 3, 64, 48, generator=g)
    mask = torch.zeros(3, 1, 64, 48)
    mask[:, :, 16:48, 12:36] = 1
    cats = ["upper", "lower", "dress"]
    kw = dict(steps=1, guidance_scale=1.0, seed=5, tasks=("tryon",))
    whole = run_model(model, person, garment, mask, cats, batch_size=3, **kw)["tryon"]
    last = run_model(model, person[2:], garment[2:], mask[2:], cats[2:], batch_size=1, indices=[2], **kw)["tryon"]
    assert torch.allclose(whole[2:], last, atol=1e-5)
