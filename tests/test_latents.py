"""Latent-space invariants (ARCHITECTURE.md section 4: 1 mirror, 2 mask channel, 3 guidance, 4 channel order, 9 crop)."""
import pytest
import torch

from training.objective import sample_square_region
from twgtm.latents import (build_condition, concat_halves, dilate, erode, largest_component, mask_to_box,
                           split_halves, target_half, unconditional, unet_input, white_canvas)


def stub_encode(x):
    """Deterministic 'VAE': 8x average pooling to 4 channels (linear, so masked pixels stay 0)."""
    pooled = torch.nn.functional.avg_pool2d(x, 8)  # (B, 3, H/8, W/8)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)  # (B, 4, h, w)


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1   # person
    c = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1   # garment
    m = torch.zeros(2, 1, 64, 48)
    m[:, :, 16:48, 8:40] = 1                             # person agnostic mask M
    mc = torch.zeros(2, 1, 64, 48)
    mc[:, :, 8:56, 4:44] = 1                             # flat garment mask M_c
    return x, c, m, mc


@pytest.mark.parametrize("concat_dim", [-1, -2])
def test_mirror(data, concat_dim):
    """VTOFF tensors are the VTON tensors with the halves swapped when the masks are swapped the same way."""
    x, c, m, _ = data
    on = build_condition(x, c, m, stub_encode, concat_dim=concat_dim, with_z0=True)
    off = build_condition(c, x, m, stub_encode, concat_dim=concat_dim, with_z0=True)
    size = on.z0.shape[concat_dim] // 2
    assert torch.equal(torch.roll(on.z0, size, concat_dim), off.z0)
    a, b = split_halves(on.guidance, concat_dim)
    a2, b2 = split_halves(off.guidance, concat_dim)
    assert torch.equal(b, stub_encode(c)) and torch.equal(b2, stub_encode(x))
    assert torch.equal(on.mask, off.mask)


def test_mask_channel_cases(data):
    x, c, m, mc = data
    h, w = 8, 6
    for region, name in [(m, "vton"), (mc, "vtoff stage 1"), (torch.ones_like(m), "mask-free"), (mask_to_box(mc), "bbox")]:
        cond = build_condition(c, x, region, stub_encode)
        assert cond.mask.shape == (2, 1, h, 2 * w), name
        assert set(cond.mask.unique().tolist()) <= {0.0, 1.0}, name
        assert torch.equal(cond.mask[..., w:], torch.zeros(2, 1, h, w)), f"{name}: reference half must be 0"
        assert torch.equal(cond.mask[..., :w], torch.nn.functional.interpolate(region, size=(h, w), mode="nearest"))
    free = build_condition(white_canvas(c), x, torch.ones_like(m), stub_encode)
    assert torch.equal(free.mask[..., :w], torch.ones(2, 1, h, w))
    # mask-free inference: the guidance target half is E(zeros)
    assert torch.equal(free.guidance[..., :w], stub_encode(torch.zeros_like(c)))


def test_guidance_masked_pixels_are_zero(data):
    x, c, m, _ = data
    seen = []

    def spy(t):
        seen.append(t.clone())
        return stub_encode(t)

    cond = build_condition(x, c, m, spy)
    masked = [t for t in seen if torch.equal(t * m, torch.zeros_like(t))]
    assert masked, "the masked target is encoded with exactly-zero pixels in the region"
    assert torch.equal(masked[0] * (1 - m), x * (1 - m))
    assert torch.equal(cond.guidance[..., 6:], stub_encode(c)), "reference half is unmodified"
    unc = unconditional(cond, -1)
    assert torch.equal(unc.guidance[..., 6:], torch.zeros_like(unc.guidance[..., 6:]))
    assert torch.equal(unc.guidance[..., :6], cond.guidance[..., :6])
    assert torch.equal(unc.mask, cond.mask)


def test_channel_order(data):
    x, c, m, _ = data
    cond = build_condition(x, c, m, stub_encode)
    z_t = torch.randn(2, 4, 8, 12)
    inp = unet_input(z_t, cond)
    assert inp.shape == (2, 9, 8, 12)
    assert torch.equal(inp[:, :4], z_t)
    assert torch.equal(inp[:, 4:5], cond.mask)
    assert torch.equal(inp[:, 5:9], cond.guidance)


@pytest.mark.parametrize("concat_dim", [-1, -2])
def test_output_crop(concat_dim):
    a, b = torch.randn(1, 4, 8, 6), torch.randn(1, 4, 8, 6)
    assert torch.equal(target_half(concat_halves(a, b, concat_dim), concat_dim), a)


def test_morphology_and_boxes():
    m = torch.zeros(1, 1, 20, 20)
    m[..., 5:10, 5:10] = 1
    assert dilate(m, 3).sum() == 49 and erode(m, 3).sum() == 9
    box = mask_to_box(m, margin=0.2)
    assert box.sum() == 49  # 5x5 grown by 1 on each side
    assert torch.equal(mask_to_box(torch.zeros(1, 1, 4, 4)), torch.zeros(1, 1, 4, 4))
    two = m.clone()
    two[..., 15:17, 15:17] = 1
    assert torch.equal(largest_component(two), m)


def test_square_region_sampler():
    mc = torch.zeros(16, 1, 64, 48)
    mc[:, :, 10:50, 8:40] = 1
    mc[:, :, 10:20, 8:12] = 0
    g = torch.Generator().manual_seed(0)
    r = sample_square_region(mc, g, p_box=0.5, p_full=0.1)  # kernels scaled from 1024 px to 64
    assert r.shape == mc.shape and set(r.unique().tolist()) <= {0.0, 1.0}
    assert bool((r >= mc).all()), "R always contains M_c"
    full = r.flatten(1).amin(1) == 1
    assert 0 < int(full.sum()) < 16  # some full canvases, not all
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_square_region(mc, g1), sample_square_region(mc, g2))


def test_mask_to_latent_never_loses_a_non_empty_mask():
    """Nearest sampling misses regions smaller than a cell; the resize then keeps every covered cell instead."""
    from twgtm.latents import mask_to_latent

    for y, x in [(0, 0), (3, 5), (31, 20), (63, 47), (17, 9)]:
        m = torch.zeros(1, 1, 64, 48)
        m[..., y, x] = 1
        lat = mask_to_latent(m, (8, 6))
        assert lat.sum() == 1 and lat[0, 0, y // 8, x // 8] == 1, (y, x)
    thin = torch.zeros(2, 1, 64, 48)
    thin[0, :, 31, :] = 1  # one row between the rows nearest sampling reads
    thin[1, :, :, 13] = 1
    lat = mask_to_latent(thin, (8, 6))
    assert torch.equal(lat[0, 0, 3], torch.ones(6)) and lat[0].sum() == 6
    assert torch.equal(lat[1, 0, :, 1], torch.ones(8)) and lat[1].sum() == 8
    assert mask_to_latent(torch.zeros(1, 1, 64, 48), (8, 6)).sum() == 0, "an empty mask stays empty"


def test_mask_resize_is_nearest_when_nothing_is_lost():
    from twgtm.images import resize_mask
    from twgtm.latents import mask_to_latent

    g = torch.Generator().manual_seed(0)
    m = (torch.rand(3, 1, 64, 48, generator=g) > 0.7).float()
    m[2] = 0
    m[2, :, 10:40, 8:30] = 1
    near = torch.nn.functional.interpolate(m, size=(8, 6), mode="nearest")
    assert torch.equal(mask_to_latent(m, (8, 6)), near), "ordinary masks are unchanged"
    up = resize_mask(m, (128, 96))
    assert torch.equal(up, torch.nn.functional.interpolate(m, size=(128, 96), mode="nearest"))
    assert resize_mask(m.bool(), (8, 6)).dtype == torch.bool
    assert torch.equal(resize_mask(m * 0.6, (64, 48)), m), "binarised at 0.5"
