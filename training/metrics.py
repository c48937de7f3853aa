"""Image-quality metrics for `python -m training evaluate` (paper Tables 1-3).

Every metric takes image batches ``(N, 3, H, W)``: float in [0, 1] or uint8 in [0, 255], on CPU or CUDA.
Computation happens on the device of ``pred``. See /work/shared/design/DATA_AND_METRICS.md sections 2, 3 and 6.

| metric      | implementation                                                  | weights                          |
|-------------|-----------------------------------------------------------------|----------------------------------|
| ``ssim``    | torchmetrics, Gaussian 11x11 / sigma 1.5, data_range 1          | none                             |
| ``ms_ssim`` | torchmetrics; fewer scales / smaller kernel on small images     | none                             |
| ``cw_ssim`` | in-house complex steerable pyramid (Sampat et al. 2009)         | none                             |
| ``lpips``   | torchmetrics heads (bundled in the wheel) + torchvision trunk   | ``alexnet-owt-7be5be79.pth`` ... |
| ``dists``   | torchmetrics DISTS at 341x256                                   | ``vgg16-397923af.pth``           |
| ``fid/kid`` | torchmetrics statistics on an injectable feature extractor      | torch-fidelity Inception file    |
| ``clip_fid``| FID on CLIP ViT image embeddings (transformers, local dir)      | a CLIP model directory           |
| ``dino``    | mean cosine of DINO ViT CLS tokens (transformers, local dir)    | a DINO model directory           |

Nothing is ever downloaded. Backbone files are looked up in ``weights_dir`` and then in
``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``); a missing file raises `MetricUnavailable`, which
names the file and where to put it. `compute_metrics` turns that error into a "skipped" entry with the reason.

The protocol presets follow the paper: `VTON_PAIRED`, `VTON_UNPAIRED` (CatVTON / LaDI-VTON) and `VTOFF`
(TryOffDiff's column set). Differences from the reference tools are documented on each function.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Literal, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twgtm.errors import InputError, MissingFileError, WeightsError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# protocol presets (paper Tables 1-3)

VTON_PAIRED = ("ssim", "lpips")
VTON_UNPAIRED = ("fid", "kid", "dino")
VTOFF = ("ssim", "ms_ssim", "cw_ssim", "lpips", "fid", "clip_fid", "kid", "dists")

ALL_METRICS = ("ssim", "ms_ssim", "cw_ssim", "lpips", "dists", "fid", "kid", "clip_fid", "dino", "mask_iou")
HIGHER_IS_BETTER = {
    "ssim": True, "ms_ssim": True, "cw_ssim": True, "dino": True, "mask_iou": True,
    "lpips": False, "dists": False, "fid": False, "kid": False, "clip_fid": False,
}
DISPLAY_NAMES = {
    "ssim": "SSIM", "ms_ssim": "MS-SSIM", "cw_ssim": "CW-SSIM", "lpips": "LPIPS", "dists": "DISTS",
    "fid": "FID", "kid": "KID×10³", "clip_fid": "CLIP-FID", "dino": "DINO", "mask_iou": "mask IoU",
}
_PAIRED = ("ssim", "ms_ssim", "cw_ssim", "lpips", "dists", "dino")
_DISTRIBUTION = ("fid", "kid", "clip_fid")

# torchvision backbone files (the basename of the download.pytorch.org URL), keyed by LPIPS net name
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
    "vgg": "vgg16-397923af.pth",
}
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception
_URLS = {
    BACKBONE_FILES["alex"]: "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    BACKBONE_FILES["squeeze"]: "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
    BACKBONE_FILES["vgg"]: "https://download.pytorch.org/models/vgg16-397923af.pth",
    INCEPTION_FILE: "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE,
}

# MS-SSIM scale exponents of Wang et al. 2003 (finest scale first)
_MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MetricUnavailable(MissingFileError):
    """A metric cannot run because its backbone file, model directory or optional package is absent."""

    def __init__(self, metric: str, message: str) -> None:
        super().__init__(f"{metric}: {message}")
        self.metric = metric


# helpers


def _check_images(x: Tensor, name: str) -> Tensor:
    """Validate an image batch (N, 3, H, W), float in [0, 1] or uint8; returned unchanged (no copy)."""
    if not isinstance(x, Tensor):
        raise InputError(f"`{name}` must be a torch.Tensor of shape (N, 3, H, W); received {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"`{name}` must have shape (N, 3, H, W); received {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"`{name}` must hold at least one image; received an empty batch {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise InputError(f"`{name}` must be float in [0, 1] or uint8; received dtype {x.dtype}")
    lo, hi = (v.item() for v in torch.aminmax(x))
    if lo < -0.01 or hi > 1.01:  # decoders overshoot a little; a [-1, 1] or [0, 255] tensor is a caller bug
        raise InputError(f"`{name}` must be in [0, 1]; received values in [{lo:.3f}, {hi:.3f}]")
    return x


def _check_pair(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a paired (full-reference) batch: both valid and of the same shape."""
    pred, gt = _check_images(pred, "pred"), _check_images(gt, "gt")
    if pred.shape != gt.shape:
        raise InputError(f"`pred` and `gt` must have the same shape; "
                         f"received {tuple(pred.shape)} and {tuple(gt.shape)}")
    return pred, gt


def _prep(x: Tensor, device: torch.device) -> Tensor:
    """A validated chunk as float32 in [0, 1] on `device` (converted per chunk to bound memory)."""
    x = x.to(device)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float().clamp(0.0, 1.0)


def _paired_chunks(pred: Tensor, gt: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(pred, gt) chunks as float32 [0, 1] on pred's device."""
    for s in _chunks(len(pred), batch_size):
        yield _prep(pred[s], pred.device), _prep(gt[s], pred.device)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise InputError(f"`batch_size` must be >= 1; received {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _to_uint8_grid(x: Tensor) -> Tensor:
    """Round [0, 1] images to the 8-bit grid, returned in [0, 255] as float64 (pyiqa preprocessing)."""
    return (x.double() * 255.0).round()


def _y_channel(x255: Tensor) -> Tensor:
    """Y of YIQ (== Rec.601 luma) of (N, 3, H, W) values in [0, 255], rounded like pyiqa -> (N, 1, H, W)."""
    weights = x255.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x255 * weights).sum(dim=1, keepdim=True).round()


def _resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp(0.0, 1.0)


def _resize_center_crop(x: Tensor, size: int) -> Tensor:
    """Resize the shorter side to `size` (bicubic) then center-crop size x size (CLIP / clean-fid style)."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = _resize(x, (new_h, new_w), mode="bicubic")
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[..., top:top + size, left:left + size]


def _log_reduced(metric: str, detail: str) -> None:
    logger.warning("%s: image too small for the standard setting; %s", metric, detail)


# SSIM / MS-SSIM (torchmetrics)


def _gaussian_sigma(kernel: int) -> float:
    """torchmetrics derives the Gaussian kernel size from sigma as int(3.5 * sigma + 0.5) * 2 + 1."""
    return 1.5 if kernel == 11 else (kernel - 1) / 2 / 3.5 + 1e-6


def _ms_ssim_setting(h: int, w: int) -> tuple[tuple[float, ...], int]:
    """Pick (betas, kernel) that torchmetrics accepts for an h x w image.

    Standard (any side >= 176): 5 scales, 11x11 Gaussian (sigma 1.5), Wang et al.'s exponents. Smaller
    images drop the coarsest scales first; only when even one scale does not fit an 11x11 kernel (side <= 10)
    does the kernel shrink. The exponents kept are renormalised to sum to 1 so scores stay comparable in
    range. 1024x768 and 512x384 keep the standard setting; 64x48 gets 3 scales, 11x11; 10x10 gets 2, 9x9.
    """
    side = min(h, w)
    for kernel in (11, 9, 7, 5, 3):
        for scales in range(5, 0, -1):
            div = max(1, scales - 1) ** 2  # torchmetrics' own size rule
            coarsest = side // 2 ** (scales - 1)
            if side >= 2 ** scales and side // div > kernel - 1 and coarsest > (kernel - 1) // 2:
                if scales == len(_MS_SSIM_BETAS):
                    return _MS_SSIM_BETAS, kernel
                betas = _MS_SSIM_BETAS[:scales]
                return tuple(b / sum(betas) for b in betas), kernel
    raise InputError(f"MS-SSIM needs images of at least 3x3 pixels; received {h}x{w}")


def _ssim_scores(pred: Tensor, gt: Tensor, y_channel: bool, batch_size: int,
                 score: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Per-image `score(pred_chunk, gt_chunk) -> (B,)` over the batch (N,), optionally on the 8-bit Y channel."""
    scores = []
    for p, g in _paired_chunks(pred, gt, batch_size):
        if y_channel:
            p, g = _y_channel(_to_uint8_grid(p)).float() / 255.0, _y_channel(_to_uint8_grid(g)).float() / 255.0
        scores.append(score(p, g))
    return torch.cat(scores)


@torch.no_grad()
def ssim(pred: Tensor, gt: Tensor, *, y_channel: bool = False, batch_size: int = 16) -> float:
    """Mean SSIM (torchmetrics, Gaussian 11x11, sigma 1.5, data_range 1) over the batch; higher is better.

    ``y_channel=True`` reproduces pyiqa's preprocessing used by TryOffDiff (8-bit rounding, Y of YIQ);
    the default is CatVTON / LaDI-VTON's RGB torchmetrics SSIM. Images under 11 pixels get a smaller kernel.
    """
    return ssim_scores(pred, gt, y_channel=y_channel, batch_size=batch_size).mean().item()


@torch.no_grad()
def ssim_scores(pred: Tensor, gt: Tensor, *, y_channel: bool = False, batch_size: int = 16) -> Tensor:
    """Per-image SSIM scores (N,) of `ssim`."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, gt = _check_pair(pred, gt)
    kernel = _ms_ssim_setting(*pred.shape[-2:])[1] if min(pred.shape[-2:]) <= 10 else 11
    return _ssim_scores(pred, gt, y_channel, batch_size, lambda p, g: structural_similarity_index_measure(
        p, g, data_range=1.0, sigma=_gaussian_sigma(kernel), kernel_size=kernel, reduction="none"))


@torch.no_grad()
def ms_ssim(pred: Tensor, gt: Tensor, *, y_channel: bool = False, batch_size: int = 16) -> float:
    """Mean MS-SSIM (torchmetrics, 5 scales, data_range 1) over the batch; higher is better.

    Images smaller than 176 pixels on a side cannot hold 5 scales; `_ms_ssim_setting` then drops coarse
    scales (and, below 11 pixels, shrinks the kernel) and logs a warning. ``y_channel`` as in `ssim`.
    """
    return ms_ssim_scores(pred, gt, y_channel=y_channel, batch_size=batch_size).mean().item()


@torch.no_grad()
def ms_ssim_scores(pred: Tensor, gt: Tensor, *, y_channel: bool = False, batch_size: int = 16) -> Tensor:
    """Per-image MS-SSIM scores (N,) of `ms_ssim`."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    pred, gt = _check_pair(pred, gt)
    betas, kernel = _ms_ssim_setting(*pred.shape[-2:])
    if len(betas) < 5 or kernel != 11:
        _log_reduced("ms_ssim", f"using {len(betas)} scale(s) and a {kernel}x{kernel} kernel for "
                                f"{pred.shape[-2]}x{pred.shape[-1]} images")
    return _ssim_scores(pred, gt, y_channel, batch_size, lambda p, g: multiscale_structural_similarity_index_measure(
        p, g, data_range=1.0, sigma=_gaussian_sigma(kernel), kernel_size=kernel, betas=betas, reduction="none"))


# CW-SSIM (in-house complex steerable pyramid)


def _pyramid_grid(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Polar frequency grid of matlabPyrTools' buildSCFpyr: log2 radius (0 at Nyquist) and angle, (H, W)."""
    y = (torch.arange(h, device=device, dtype=torch.float64) - h // 2) / (h / 2)
    x = (torch.arange(w, device=device, dtype=torch.float64) - w // 2) / (w / 2)
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # (H, W)
    angle = torch.atan2(yy, xx)
    rad = torch.sqrt(xx**2 + yy**2)
    rad[h // 2, w // 2] = rad[h // 2, w // 2 - 1]  # avoid log2(0) at DC, as buildSCFpyr
    return torch.log2(rad), angle


def _raised_cosine(log_rad: Tensor, position: float) -> tuple[Tensor, Tensor]:
    """High-pass / low-pass raised-cosine pair over log2 radius in [position - 0.5, position + 0.5]."""
    phase = ((math.pi / 2) * (log_rad - position) - math.pi / 4).clamp(-math.pi / 2, 0.0)
    return torch.cos(phase), -torch.sin(phase)  # (hi, lo) with hi**2 + lo**2 == 1


def _band_sizes(size: int, levels: int) -> list[int]:
    """Side of the bands at levels 1..levels (buildSCFpyr keeps ceil((d - 0.5) / 2) per level)."""
    sizes = [size]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def _coarsest_bands(img: Tensor, levels: int, orientations: int) -> Tensor:
    """Oriented complex bands of the coarsest level of a complex steerable pyramid.

    Follows buildSCFpyr (matlabPyrTools) / SCFpyr (pyrtools) in the frequency domain: a radial raised-cosine
    split per octave times a one-sided angular window cos^(K-1), so each band is analytic (complex).

    Args:
        img: (B, H, W) float64.
    Returns:
        (B, orientations, h, w) complex128, with h, w the band size at `levels`.
    """
    h, w = img.shape[-2:]
    log_rad, angle = _pyramid_grid(h, w, img.device)
    dft = torch.fft.fftshift(torch.fft.fft2(img), dim=(-2, -1))  # (B, H, W) complex, DC at the centre
    _, lo0 = _raised_cosine(log_rad, -0.5)
    lodft = dft * lo0

    for level in range(1, levels + 1):
        position = -0.5 - level
        if level == levels:
            break
        # subsample the low-pass: keep the central quarter of the spectrum
        dh, dw = lodft.shape[-2:]
        start_h = (dh // 2 + 1) - ((dh + 1) // 2 // 2 + 1)
        start_w = (dw // 2 + 1) - ((dw + 1) // 2 // 2 + 1)
        crop = (slice(start_h, start_h + (dh + 1) // 2), slice(start_w, start_w + (dw + 1) // 2))
        log_rad, angle = log_rad[crop], angle[crop]
        lodft = lodft[(..., *crop)]
        _, lo = _raised_cosine(log_rad, position)
        lodft = lodft * lo

    hi, _ = _raised_cosine(log_rad, position)
    order = orientations - 1
    const = (2 ** (2 * order)) * math.factorial(order) ** 2 / (orientations * math.factorial(2 * order))
    centers = torch.arange(orientations, device=img.device, dtype=torch.float64) * math.pi / orientations
    delta = torch.remainder(angle[None] - centers[:, None, None] + math.pi, 2 * math.pi) - math.pi  # (O, h, w)
    angle_mask = 2 * math.sqrt(const) * torch.cos(delta) ** order * (delta.abs() < math.pi / 2)
    band_dft = ((-1j) ** order) * lodft[:, None] * (angle_mask * hi)[None]  # (B, O, h, w)
    return torch.fft.ifft2(torch.fft.ifftshift(band_dft, dim=(-2, -1)))


def _gaussian_window(h: int, w: int, sigma: float, device: torch.device) -> Tensor:
    """MATLAB fspecial('gaussian', [h w], sigma), normalised to sum 1, (h, w) float64."""
    y = torch.arange(h, device=device, dtype=torch.float64) - (h - 1) / 2
    x = torch.arange(w, device=device, dtype=torch.float64) - (w - 1) / 2
    g = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    g = torch.where(g < torch.finfo(torch.float64).eps * g.max(), torch.zeros_like(g), g)
    return g / g.sum()


def _cw_ssim_gray(x: Tensor, y: Tensor, levels: int, orientations: int, window: int, K: float) -> Tensor:
    """CW-SSIM of single-channel images (B, H, W) float64 -> (B,)."""
    bx, by = _coarsest_bands(torch.cat([x, y]), levels, orientations).chunk(2)  # 2 x (B, O, h, w) complex
    b, o, h, w = bx.shape
    box = torch.ones(1, 1, window, window, device=x.device, dtype=torch.float64) / window**2

    def local_mean(t: Tensor) -> Tensor:  # (B, O, h, w) real -> (B, O, h', w'), 'valid' box filter
        return F.conv2d(t.reshape(b * o, 1, h, w), box).reshape(b, o, h - window + 1, w - window + 1)

    corr = bx * by.conj()
    corr_mean = torch.complex(local_mean(corr.real), local_mean(corr.imag))
    energy = local_mean(bx.abs() ** 2 + by.abs() ** 2)
    num, den = 2 * corr_mean.abs() + K, energy + K
    # a window where both bands are exactly zero holds no structure in either image: count it as identical
    cssim_map = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))
    weights = _gaussian_window(h - window + 1, w - window + 1, h / 4, x.device)  # as cwssim_index.m
    return (cssim_map * weights).sum(dim=(-2, -1)).mean(dim=1)  # (B,)


@torch.no_grad()
def cw_ssim(pred: Tensor, gt: Tensor, *, levels: int = 4, orientations: int = 8, window: int = 7,
            K: float = 0.0, y_channel: bool = True, batch_size: int = 16) -> float:
    """Mean Complex-Wavelet SSIM (Sampat et al. 2009) over the batch; higher is better, 1 for identical images.

    Settings follow TryOffDiff / pyiqa ``cw_ssim``: inputs rounded to the 8-bit grid and taken in [0, 255],
    Y channel of YIQ (``y_channel=False`` scores each RGB channel and averages them), a complex steerable
    pyramid with `levels` levels and `orientations` orientations, evaluated on the coarsest band only,
    window x window local sums, a Gaussian pooling window (sigma = band height / 4) and constant `K`.

    Small images: if the coarsest band would be smaller than `window` on a side, `levels` is reduced to the
    largest value whose band still fits (64x48 -> 3 levels; pyiqa refuses such sizes) and a warning is
    logged. Computed in float64 (not available on MPS). Deviation: where both
    bands are exactly zero over a window (flat image areas, 0/0 with K=0) the local index counts as 1.
    """
    return cw_ssim_scores(pred, gt, levels=levels, orientations=orientations, window=window, K=K,
                          y_channel=y_channel, batch_size=batch_size).mean().item()


@torch.no_grad()
def cw_ssim_scores(pred: Tensor, gt: Tensor, *, levels: int = 4, orientations: int = 8, window: int = 7,
                   K: float = 0.0, y_channel: bool = True, batch_size: int = 16) -> Tensor:
    """Per-image CW-SSIM scores (N,) of `cw_ssim`."""
    pred, gt = _check_pair(pred, gt)
    if levels < 1 or orientations < 1 or window < 1:
        raise InputError(f"cw_ssim needs levels, orientations, window >= 1; "
                         f"received {levels}, {orientations}, {window}")
    h, w = pred.shape[-2:]
    fitting = [lv for lv in range(1, levels + 1)
               if min(_band_sizes(h, lv)[-1], _band_sizes(w, lv)[-1]) >= window]
    if not fitting:
        raise InputError(f"cw_ssim needs images of at least {window}x{window} pixels (window={window}); "
                         f"received {h}x{w}")
    if fitting[-1] < levels:
        _log_reduced("cw_ssim", f"using {fitting[-1]} pyramid level(s) instead of {levels} for {h}x{w} images")
    levels = fitting[-1]

    scores = []
    for p, g in _paired_chunks(pred, gt, batch_size):
        x, y = _to_uint8_grid(p), _to_uint8_grid(g)  # (B, 3, H, W) in [0, 255]
        if y_channel:
            x, y = _y_channel(x), _y_channel(y)  # (B, 1, H, W)
        b, c = x.shape[:2]
        per_channel = _cw_ssim_gray(x.reshape(b * c, h, w), y.reshape(b * c, h, w), levels, orientations, window, K)
        scores.append(per_channel.reshape(b, c).mean(dim=1))  # (B,)
    return torch.cat(scores)


# mask IoU


@torch.no_grad()
def mask_iou(pred_mask: Tensor, gt_mask: Tensor, threshold: float = 0.5) -> float:
    """Mean IoU over the batch of masks (N, 1, H, W) binarised at ``>= threshold``; two empty masks give 1."""
    return mask_iou_scores(pred_mask, gt_mask, threshold).mean().item()


@torch.no_grad()
def mask_iou_scores(pred_mask: Tensor, gt_mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-mask IoU (N,) of `mask_iou`."""
    for name, m in (("pred_mask", pred_mask), ("gt_mask", gt_mask)):
        if not isinstance(m, Tensor) or m.ndim != 4 or m.shape[1] != 1:
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise InputError(f"`{name}` must be a tensor of shape (N, 1, H, W); received {shape}")
    if pred_mask.shape != gt_mask.shape:
        raise InputError(f"`pred_mask` and `gt_mask` must have the same shape; "
                         f"received {tuple(pred_mask.shape)} and {tuple(gt_mask.shape)}")
    p = pred_mask.float() >= threshold
    g = gt_mask.to(pred_mask.device).float() >= threshold
    inter = (p & g).flatten(1).sum(dim=1).float()
    union = (p | g).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


# pattern transfer

#: a high-pass RMS below this (a 40th of one 8-bit grey level) is a flat image, not a pattern
_FLAT_RMS = 1e-4


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, 1, H, W) with replicate padding (radius 3 sigma)."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-k ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


@torch.no_grad()
def pattern_scores(pred: Tensor, gt: Tensor, region: Tensor, *, sigma: float = 2.0,
                   erode: int = 1) -> dict[str, Tensor]:
    """How much of the ground truth's pattern (stripes, checks, dots, prints) an image keeps, per image.

    ``region`` (N, 1, H, W) is eroded by ``erode`` pixels. Both images' luminance is high-passed inside it
    (minus its local mean: a Gaussian blur of ``sigma`` pixels over the eroded region's pixels only), so that
    neither the region's outline (a silhouette edge, its anti-aliased pixels) nor what lies outside counts as
    pattern. Returns (N,) tensors:

    * ``corr``: the normalised correlation of the two high-passed images (1: the same pattern in the same
      place, about 0: an unrelated or no pattern, -1: shifted by half a period; 0 where either is flat, high-pass RMS below 1e-4);
    * ``energy``: the high-pass RMS of ``pred`` over that of ``gt`` (about 0 for a blurred colour patch; it
      counts noise as much as pattern, so read it with ``corr``; inf where ``gt`` is flat and ``pred`` not);
    * ``gt_rms``: the ground truth's high-pass RMS (how patterned the item is).
    """
    pred, gt = _check_pair(pred, gt)
    if not isinstance(region, Tensor) or region.ndim != 4 or region.shape[1] != 1 \
            or region.shape[0] != pred.shape[0] or region.shape[-2:] != pred.shape[-2:]:
        shape = tuple(region.shape) if isinstance(region, Tensor) else type(region).__name__
        raise InputError(f"`region` must be a tensor of shape {(pred.shape[0], 1, *pred.shape[-2:])}; "
                         f"received {shape}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"`sigma` must be a positive number of pixels; received {sigma!r}")
    if isinstance(erode, bool) or not isinstance(erode, int) or erode < 0:
        raise InputError(f"`erode` must be an int >= 0 (pixels); received {erode!r}")
    device = pred.device
    m = (region.to(device) > 0.5).double()
    if erode:
        m = 1 - F.max_pool2d(1 - m, 2 * erode + 1, stride=1, padding=erode)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64, device=device).view(1, 3, 1, 1)
    norm = _gaussian_blur(m, float(sigma))
    hp = []
    for x in (pred, gt):
        y = (_prep(x, device).double() * weights).sum(1, keepdim=True)
        # the local mean from the eroded region's pixels only: neither the outline nor the outside leaks in
        low = _gaussian_blur(y * m, float(sigma)) / norm.clamp_min(1e-12)
        hp.append((y - low) * m)
    n = m.flatten(1).sum(1).clamp_min(1)
    a, b = ((h.pow(2).flatten(1).sum(1) / n).sqrt() for h in hp)
    flat_a, flat_b = a < _FLAT_RMS, b < _FLAT_RMS
    a, b = torch.where(flat_a, 0.0, a), torch.where(flat_b, 0.0, b)
    ab = (hp[0] * hp[1]).flatten(1).sum(1) / n
    corr = torch.where(flat_a | flat_b, 0.0, ab / (a * b).clamp_min(1e-20))
    energy = torch.where(flat_b, torch.where(flat_a, 1.0, math.inf), a / b.clamp_min(1e-20))
    return {"corr": corr.float(), "energy": energy.float(), "gt_rms": b.float()}


# backbone files (never downloaded)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights_file(filename: str, weights_dir: Optional[PathLike] = None, *, metric: str = "metric") -> Path:
    """Return the first existing `filename` in `weights_dir` then ``$TORCH_HOME/hub/checkpoints``.

    Raises:
        MetricUnavailable: naming the file, the folders searched and where to get it.
    """
    folders = ([Path(weights_dir)] if weights_dir is not None else []) + [_hub_checkpoints()]
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename
    url = _URLS.get(filename)
    source = f" (from {url})" if url else ""
    raise MetricUnavailable(
        metric,
        f"weights file '{filename}' not found; looked in {', '.join(str(f) for f in folders)}. "
        f"Place '{filename}'{source} in one of those folders or pass weights_dir=<folder>. "
        "Nothing is downloaded automatically.")


@contextlib.contextmanager
def _no_download() -> Iterator[None]:
    """Make any torch.hub download attempt fail loudly instead of reaching the network."""
    original = torch.hub.download_url_to_file

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise MetricUnavailable("download", f"refusing to download {url}; place the file locally instead")

    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _patched(module: object, attribute: str, replacement: object) -> Iterator[None]:
    """Temporarily replace `module.attribute` (torchmetrics hard-codes its torchvision download calls)."""
    with _PATCH_LOCK:
        original = getattr(module, attribute)
        setattr(module, attribute, replacement)
        try:
            yield
        finally:
            setattr(module, attribute, original)


def _torchvision_features(net: str, path: Path) -> nn.Sequential:
    """The `.features` trunk of a torchvision classifier, loaded from a local state-dict file."""
    import torchvision

    if net == "alex":
        features = torchvision.models.alexnet(weights=None).features
    elif net == "squeeze":
        features = torchvision.models.squeezenet1_1(weights=None).features
    elif net == "vgg":
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    else:
        raise InputError(f"`net` must be one of {tuple(BACKBONE_FILES)}; received {net!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"'{path}' does not hold torchvision {net} weights (features.* keys): {err}") from err
    return features


_MODEL_CACHE: dict[tuple, nn.Module] = {}


def _cached(key: tuple, build: Callable[[], nn.Module], device: torch.device) -> nn.Module:
    """Build a metric network once per (kind, file, mtime) and keep it; moved to `device` on each use."""
    if key not in _MODEL_CACHE:
        with _no_download():
            _MODEL_CACHE[key] = build().eval().requires_grad_(False)
    return _MODEL_CACHE[key].to(device)


def clear_cache() -> None:
    """Drop every cached metric network (frees host / GPU memory)."""
    _MODEL_CACHE.clear()


def _file_key(kind: str, path: Path) -> tuple:
    return kind, str(path.resolve()), path.stat().st_mtime_ns


# LPIPS and DISTS (torchmetrics heads + local torchvision trunks)


def _lpips_model(net: str, weights_dir: Optional[PathLike], device: torch.device) -> nn.Module:
    if net not in BACKBONE_FILES:
        raise InputError(f"lpips `net` must be one of {tuple(BACKBONE_FILES)}; received {net!r}")
    path = find_weights_file(BACKBONE_FILES[net], weights_dir, metric=f"lpips ({net})")

    def build() -> nn.Module:
        from torchmetrics.functional.image import lpips as tm_lpips

        features = _torchvision_features(net, path)
        # the linear heads ship in the torchmetrics wheel; the trunk comes from our local file
        with _patched(tm_lpips, "_get_tv_model_features", lambda name, pretrained=False: features):
            return tm_lpips._NoTrainLpips(net=net, pretrained=True, pnet_rand=True)

    return _cached(_file_key(f"lpips-{net}", path), build, device)


@torch.no_grad()
def lpips(pred: Tensor, gt: Tensor, net: Literal["alex", "squeeze", "vgg"] = "alex",
          weights_dir: Optional[PathLike] = None, *, batch_size: int = 16) -> float:
    """Mean LPIPS v0.1 (torchmetrics) over the batch; lower is better.

    `net`: "alex" (LaDI-VTON, TryOffDiff), "squeeze" (CatVTON) or "vgg". Inputs in [0, 1] are mapped to
    [-1, 1] as in ``normalize=True``. The torchvision trunk is read from `weights_dir` or
    ``$TORCH_HOME/hub/checkpoints`` (`BACKBONE_FILES`); absent -> `MetricUnavailable`.
    """
    return lpips_scores(pred, gt, net, weights_dir, batch_size=batch_size).mean().item()


@torch.no_grad()
def lpips_scores(pred: Tensor, gt: Tensor, net: Literal["alex", "squeeze", "vgg"] = "alex",
                 weights_dir: Optional[PathLike] = None, *, batch_size: int = 16) -> Tensor:
    """Per-image LPIPS (N,) of `lpips`."""
    pred, gt = _check_pair(pred, gt)
    model = _lpips_model(net, weights_dir, pred.device)
    scores = [model(p, g, normalize=True).reshape(-1) for p, g in _paired_chunks(pred, gt, batch_size)]
    return torch.cat(scores)


def _dists_model(weights_dir: Optional[PathLike], device: torch.device) -> nn.Module:
    path = find_weights_file(BACKBONE_FILES["vgg"], weights_dir, metric="dists")

    def build() -> nn.Module:
        from torchmetrics.functional.image import dists as tm_dists

        features = _torchvision_features("vgg", path)
        # DISTSNetwork calls vgg16(weights=DEFAULT) itself; hand it our local trunk instead
        with _patched(tm_dists, "vgg16", lambda weights=None, **_: SimpleNamespace(features=features)):
            return tm_dists.DISTSNetwork(load_weights=True)

    return _cached(_file_key("dists", path), build, device)


@torch.no_grad()
def dists(pred: Tensor, gt: Tensor, weights_dir: Optional[PathLike] = None, *,
          size: Optional[tuple[int, int]] = (341, 256), batch_size: int = 16) -> float:
    """Mean DISTS (torchmetrics, alpha/beta from its wheel) over the batch; lower is better.

    Both images are resized to `size` = (H, W) = (341, 256) as in TryOffDiff (bilinear, antialiased;
    ``None`` keeps the input size). Needs ``vgg16-397923af.pth`` locally, else `MetricUnavailable`.
    """
    return dists_scores(pred, gt, weights_dir, size=size, batch_size=batch_size).mean().item()


@torch.no_grad()
def dists_scores(pred: Tensor, gt: Tensor, weights_dir: Optional[PathLike] = None, *,
                 size: Optional[tuple[int, int]] = (341, 256), batch_size: int = 16) -> Tensor:
    """Per-image DISTS (N,) of `dists`."""
    pred, gt = _check_pair(pred, gt)
    model = _dists_model(weights_dir, pred.device)
    scores = []
    for p, g in _paired_chunks(pred, gt, batch_size):
        if size is not None:
            p, g = _resize(p, size), _resize(g, size)
        scores.append(model(p, g).reshape(-1))
    return torch.cat(scores)


# FID / KID / CLIP-FID (torchmetrics statistics on features we extract)


class _InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception (2048-d pool features) on [0, 1] float input."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x * 255).byte())  # same uint8 conversion as FrechetInceptionDistance(normalize=True)


def _default_inception(weights_dir: Optional[PathLike], metric: str, device: torch.device) -> nn.Module:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise MetricUnavailable(
            metric, "the default Inception feature extractor needs the optional package torch-fidelity "
                    f"(pip install torch-fidelity) and the file '{INCEPTION_FILE}'; or pass feature=<nn.Module>")
    path = find_weights_file(INCEPTION_FILE, weights_dir, metric=metric)
    return _cached(_file_key("inception", path), lambda: _InceptionFeatures(path), device)


def _extract(feature: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """Run a feature extractor over an image batch in chunks -> (N, F) float64 on CPU.

    Runs on the device of the extractor's parameters (images' device if it has none)."""
    param = next(feature.parameters(), None)
    device = param.device if param is not None else images.device
    out = [feature(_prep(images[s], device)).reshape(len(images[s]), -1).double().cpu()
           for s in _chunks(len(images), batch_size)]
    return torch.cat(out)


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics computes the statistics of features we already have."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def _check_distribution_inputs(pred: Tensor, gt: Tensor, metric: str) -> tuple[Tensor, Tensor]:
    pred, gt = _check_images(pred, "pred"), _check_images(gt, "gt")
    if len(pred) < 2 or len(gt) < 2:
        raise InputError(f"{metric} needs at least 2 images per set; received {len(pred)} pred and {len(gt)} gt")
    return pred, gt


def _fid_from_features(f_pred: Tensor, f_gt: Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(f_pred.shape[1]), normalize=True)
    metric.update(f_gt, real=True)
    metric.update(f_pred, real=False)
    return metric.compute().item()


@torch.no_grad()
def fid(pred: Tensor, gt: Tensor, feature: Optional[nn.Module] = None, *,
        weights_dir: Optional[PathLike] = None, batch_size: int = 32) -> float:
    """Fréchet distance between feature statistics of `pred` (generated) and `gt` (real); lower is better.

    `pred` and `gt` may differ in count (unpaired protocol). `feature` maps (N, 3, H, W) float [0, 1] to
    (N, F); default: torch-fidelity's Inception (2048-d), which needs torch-fidelity and
    ``weights-inception-2015-12-05-6726825d.pth`` locally, else `MetricUnavailable`. Statistics are
    torchmetrics'. The paper used clean-fid (PIL bicubic resize); values are close but not identical.
    """
    pred, gt = _check_distribution_inputs(pred, gt, "fid")
    feature = feature if feature is not None else _default_inception(weights_dir, "fid", pred.device)
    return _fid_from_features(_extract(feature, pred, batch_size), _extract(feature, gt, batch_size))


@torch.no_grad()
def kid(pred: Tensor, gt: Tensor, feature: Optional[nn.Module] = None, *, subset_size: int = 1000,
        subsets: int = 100, weights_dir: Optional[PathLike] = None, batch_size: int = 32, seed: int = 0) -> float:
    """Kernel Inception Distance ×1000 (as the paper reports it); lower is better.

    Mean over `subsets` random subsets (seeded by `seed`) of `subset_size` images, clamped to the smaller set
    size (clean-fid uses at most 1,000). `feature` and the default Inception as in `fid`.
    """
    pred, gt = _check_distribution_inputs(pred, gt, "kid")
    feature = feature if feature is not None else _default_inception(weights_dir, "kid", pred.device)
    return _kid_from_features(_extract(feature, pred, batch_size), _extract(feature, gt, batch_size),
                              subset_size=subset_size, subsets=subsets, seed=seed)


def _kid_from_features(f_pred: Tensor, f_gt: Tensor, *, subset_size: int = 1000, subsets: int = 100,
                       seed: int = 0) -> float:
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(f_pred), len(f_gt))
    if size < subset_size:
        logger.info("kid: subset_size %d reduced to %d (number of images)", subset_size, size)
    with warnings.catch_warnings():  # "will save all extracted features": features are all we give it
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(f_pred.shape[1]), subsets=subsets,
                                         subset_size=size, normalize=True)
    metric.update(f_gt, real=True)
    metric.update(f_pred, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return mean.item() * 1000.0


def _read_preprocessor(model_dir: Path) -> dict:
    path = model_dir / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class _CLIPImageFeatures(nn.Module):
    """CLIP image embeddings (projected, unnormalised, like clean-fid's ``encode_image``) of [0, 1] images."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        import transformers

        config = json.loads((model_dir / "config.json").read_text())
        cls = (transformers.CLIPModel if config.get("model_type") == "clip"
               else transformers.CLIPVisionModelWithProjection)
        model = cls.from_pretrained(str(model_dir), local_files_only=True)
        self.vision_model, self.visual_projection = model.vision_model, model.visual_projection
        self.size = model.config.vision_config.image_size if hasattr(model.config, "vision_config") \
            else model.config.image_size
        pre = _read_preprocessor(model_dir)
        self.register_buffer("mean", torch.tensor(pre.get("image_mean", _CLIP_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.get("image_std", _CLIP_STD)).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = (_resize_center_crop(x.float(), self.size) - self.mean) / self.std  # (N, 3, S, S)
        pooled = self.vision_model(pixel_values=x).pooler_output  # (N, D)
        return self.visual_projection(pooled)  # (N, P)


class _DINOFeatures(nn.Module):
    """CLS token of the last layer of a DINO ViT (facebook/dino-vits16 layout) for [0, 1] images."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        import transformers

        self.model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.size = self.model.config.image_size
        pre = _read_preprocessor(model_dir)
        self.register_buffer("mean", torch.tensor(pre.get("image_mean", _IMAGENET_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.get("image_std", _IMAGENET_STD)).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = (_resize(x.float(), (self.size, self.size), mode="bicubic") - self.mean) / self.std  # (N, 3, S, S)
        return self.model(pixel_values=x).last_hidden_state[:, 0]  # (N, D)


_HF_MODELS = {"clip": "openai/clip-vit-base-patch32", "dino": "facebook/dino-vits16"}


def _hf_model(kind: str, model_dir: Optional[PathLike], metric: str, argument: str,
              build: Callable[[Path], nn.Module], device: torch.device) -> nn.Module:
    what = (f"a local transformers folder of {_HF_MODELS[kind]} holding config.json and model.safetensors "
            f"(or pytorch_model.bin), e.g. from `huggingface-cli download {_HF_MODELS[kind]} --local-dir <folder>` "
            f"on a machine with network")
    if model_dir is None:
        raise MetricUnavailable(metric, f"no model folder given; pass {argument}=<folder>, {what}")
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise MetricUnavailable(metric, f"'{path / 'config.json'}' not found; {argument} must be {what}")
    try:
        return _cached(_file_key(kind, path / "config.json"), lambda: build(path), device)
    except OSError as err:  # transformers: weights file missing in the directory
        raise MetricUnavailable(metric, f"cannot load a model from '{path}': {err}") from err


@torch.no_grad()
def clip_fid(pred: Tensor, gt: Tensor, clip_dir: Optional[PathLike], *, batch_size: int = 32) -> float:
    """FID on CLIP ViT image embeddings (clean-fid's ``clip_vit_b_32`` protocol); lower is better.

    `clip_dir`: local transformers directory of a CLIP model (e.g. openai/clip-vit-base-patch32, either the
    full CLIPModel or a CLIPVisionModelWithProjection). Images: bicubic shorter side to the model's input size,
    center crop, CLIP normalisation. Missing directory -> `MetricUnavailable`.
    """
    pred, gt = _check_distribution_inputs(pred, gt, "clip_fid")
    model = _hf_model("clip", clip_dir, "clip_fid", "clip_dir", _CLIPImageFeatures, pred.device)
    return _fid_from_features(_extract(model, pred, batch_size), _extract(model, gt, batch_size))


@torch.no_grad()
def dino_score(pred: Tensor, gt: Tensor, model_dir: Optional[PathLike], *, batch_size: int = 32) -> float:
    """Mean cosine similarity of DINO ViT CLS tokens of paired images; higher is better.

    `model_dir`: local transformers directory in the facebook/dino-vits16 layout (ViTModel). Images are
    resized (bicubic, not cropped, so the whole person counts) to the model's input size and ImageNet-
    normalised. The paper gives no reference code; this is the DreamBooth "DINO score". Missing directory ->
    `MetricUnavailable`.
    """
    return dino_scores(pred, gt, model_dir, batch_size=batch_size).mean().item()


@torch.no_grad()
def dino_scores(pred: Tensor, gt: Tensor, model_dir: Optional[PathLike], *, batch_size: int = 32) -> Tensor:
    """Per-pair DINO cosine (N,) of `dino_score`."""
    pred, gt = _check_pair(pred, gt)
    model = _hf_model("dino", model_dir, "dino", "model_dir", _DINOFeatures, pred.device)
    f_pred, f_gt = _extract(model, pred, batch_size), _extract(model, gt, batch_size)
    return F.cosine_similarity(f_pred, f_gt, dim=1)


# protocol driver


class MetricResults(dict):
    """``{metric: value or None}``; `skipped` maps each metric that did not run to the reason."""

    def __init__(self, values: Optional[Mapping[str, Optional[float]]] = None,
                 skipped: Optional[Mapping[str, str]] = None) -> None:
        super().__init__(values or {})
        self.skipped: dict[str, str] = dict(skipped or {})


def compute_metrics(
    pred: Tensor,
    gt: Tensor,
    names: Sequence[str],
    *,
    weights_dir: Optional[PathLike] = None,
    lpips_net: Literal["alex", "squeeze", "vgg"] = "alex",
    fid_feature: Optional[nn.Module] = None,
    kid_subset_size: int = 1000,
    clip_dir: Optional[PathLike] = None,
    dino_dir: Optional[PathLike] = None,
    y_channel: Optional[bool] = None,
    dists_size: Optional[tuple[int, int]] = (341, 256),
    pred_mask: Optional[Tensor] = None,
    gt_mask: Optional[Tensor] = None,
    batch_size: int = 16,
) -> MetricResults:
    """Compute the metrics in `names` (e.g. `VTOFF`); missing backbones are skipped with a reason.

    Weight-free metrics always run. A metric whose file, directory or package is absent gets value None and
    an entry in ``result.skipped``; so does a distribution metric given fewer than 2 images. Any other error
    propagates.

    Args:
        pred, gt: (N, 3, H, W) images; paired metrics need equal shapes, FID/KID/CLIP-FID do not.
        names: metric names from `ALL_METRICS`.
        weights_dir: folder with the torchvision / Inception files (also searched: $TORCH_HOME/hub/checkpoints).
        lpips_net: LPIPS trunk ("alex": LaDI-VTON, TryOffDiff; "squeeze": CatVTON).
        fid_feature: feature extractor for FID and KID instead of the Inception file.
        kid_subset_size: KID subset size (clamped to the number of images).
        clip_dir, dino_dir: local transformers directories for CLIP-FID and DINO.
        y_channel: SSIM-family colour handling; None keeps each metric's default (SSIM / MS-SSIM on RGB,
            CW-SSIM on Y), True matches TryOffDiff's pyiqa setting for all three.
        dists_size: DISTS resize (H, W).
        pred_mask, gt_mask: (N, 1, H, W) masks for "mask_iou".
        batch_size: chunk size for network metrics.
    """
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise InputError(f"unknown metric name(s) {unknown}; expected names from {ALL_METRICS}")
    ssim_y = {} if y_channel is None else {"y_channel": y_channel}

    runners: dict[str, Callable[[], float]] = {
        "ssim": lambda: ssim(pred, gt, **ssim_y, batch_size=batch_size),
        "ms_ssim": lambda: ms_ssim(pred, gt, **ssim_y, batch_size=batch_size),
        "cw_ssim": lambda: cw_ssim(pred, gt, **ssim_y, batch_size=batch_size),
        "lpips": lambda: lpips(pred, gt, lpips_net, weights_dir, batch_size=batch_size),
        "dists": lambda: dists(pred, gt, weights_dir, size=dists_size, batch_size=batch_size),
        "fid": lambda: fid(pred, gt, fid_feature, weights_dir=weights_dir, batch_size=batch_size),
        "kid": lambda: kid(pred, gt, fid_feature, subset_size=kid_subset_size, weights_dir=weights_dir,
                           batch_size=batch_size),
        "clip_fid": lambda: clip_fid(pred, gt, clip_dir, batch_size=batch_size),
        "dino": lambda: dino_score(pred, gt, dino_dir, batch_size=batch_size),
        "mask_iou": lambda: mask_iou(pred_mask, gt_mask),
    }
    results = MetricResults()
    for name in dict.fromkeys(names):  # keep order, drop duplicates
        if name == "mask_iou" and (pred_mask is None or gt_mask is None):
            results[name], results.skipped[name] = None, "mask_iou needs pred_mask and gt_mask"
            continue
        if name in _DISTRIBUTION and (len(pred) < 2 or len(gt) < 2):
            results[name] = None
            results.skipped[name] = f"{name} needs at least 2 images per set; received {len(pred)} and {len(gt)}"
            continue
        start = time.perf_counter()
        try:
            results[name] = runners[name]()
        except MetricUnavailable as err:
            results[name], results.skipped[name] = None, str(err)
            logger.warning("skipped %s: %s", name, err)
            continue
        logger.info("%s = %.6g (%.1f s)", name, results[name], time.perf_counter() - start)
    return results


# streaming: per-item scores and features, reduced per group of items


PER_IMAGE = ("ssim", "ms_ssim", "cw_ssim", "lpips", "dists", "dino", "mask_iou")
_FEATURE_KIND = {"fid": "inception", "kid": "inception", "clip_fid": "clip"}


class ItemScorer:
    """`compute_metrics` a batch at a time: per-image scores and per-image backbone features of each item.

    ``scorer(pred, gt, pred_mask=, gt_mask=)`` returns one record per item, ``{"scores": {metric: float},
    "features": {"inception"|"clip": {"pred": (F,), "gt": (F,)}}, "skipped": {metric: reason}}``; records of
    any batches, processes or earlier runs are reduced with :func:`reduce_items`, which gives what
    `compute_metrics` gives on all those items at once (means of the per-image scores; FID/KID/CLIP-FID from
    the stacked features, in item order). A backbone that is missing is tried once and then skipped.
    Arguments as `compute_metrics`.
    """

    def __init__(self, names: Sequence[str], *, weights_dir: Optional[PathLike] = None,
                 lpips_net: Literal["alex", "squeeze", "vgg"] = "alex", fid_feature: Optional[nn.Module] = None,
                 kid_subset_size: int = 1000, clip_dir: Optional[PathLike] = None,
                 dino_dir: Optional[PathLike] = None, y_channel: Optional[bool] = None,
                 dists_size: Optional[tuple[int, int]] = (341, 256), batch_size: int = 16) -> None:
        unknown = [n for n in names if n not in ALL_METRICS]
        if unknown:
            raise InputError(f"unknown metric name(s) {unknown}; expected names from {ALL_METRICS}")
        self.names = tuple(dict.fromkeys(names))
        self.kid_subset_size = kid_subset_size
        self.skipped: dict[str, str] = {}
        ssim_y = {} if y_channel is None else {"y_channel": y_channel}
        self._scores: dict[str, Callable[..., Tensor]] = {
            "ssim": lambda p, g: ssim_scores(p, g, **ssim_y, batch_size=batch_size),
            "ms_ssim": lambda p, g: ms_ssim_scores(p, g, **ssim_y, batch_size=batch_size),
            "cw_ssim": lambda p, g: cw_ssim_scores(p, g, **ssim_y, batch_size=batch_size),
            "lpips": lambda p, g: lpips_scores(p, g, lpips_net, weights_dir, batch_size=batch_size),
            "dists": lambda p, g: dists_scores(p, g, weights_dir, size=dists_size, batch_size=batch_size),
            "dino": lambda p, g: dino_scores(p, g, dino_dir, batch_size=batch_size),
        }
        self._extractors: dict[str, Callable[[torch.device], nn.Module]] = {
            "inception": lambda dev: fid_feature if fid_feature is not None else _default_inception(
                weights_dir, "fid", dev),
            "clip": lambda dev: _hf_model("clip", clip_dir, "clip_fid", "clip_dir", _CLIPImageFeatures, dev),
        }
        self._batch_size = batch_size

    def _skip(self, metrics: Sequence[str], reason: str) -> None:
        for m in metrics:
            if m not in self.skipped:
                self.skipped[m] = reason
                logger.warning("skipped %s: %s", m, reason)

    @torch.no_grad()
    def __call__(self, pred: Tensor, gt: Tensor, *, pred_mask: Optional[Tensor] = None,
                 gt_mask: Optional[Tensor] = None) -> list[dict]:
        n = len(pred)
        records: list[dict] = [{"scores": {}, "features": {}} for _ in range(n)]
        for name in self.names:
            if name in self.skipped or name in _DISTRIBUTION:
                continue
            if name == "mask_iou":
                if pred_mask is None or gt_mask is None:
                    self.skipped[name] = "mask_iou needs pred_mask and gt_mask"
                    continue
                values = mask_iou_scores(pred_mask, gt_mask)
            else:
                try:
                    values = self._scores[name](pred, gt)
                except MetricUnavailable as err:
                    self._skip([name], str(err))
                    continue
            for rec, v in zip(records, values.tolist()):
                rec["scores"][name] = float(v)
        for kind in dict.fromkeys(_FEATURE_KIND[m] for m in self.names if m in _DISTRIBUTION):
            users = [m for m in self.names if _FEATURE_KIND.get(m) == kind]
            if all(m in self.skipped for m in users):
                continue
            try:
                extractor = self._extractors[kind](pred.device)
                f_pred = _extract(extractor, _check_images(pred, "pred"), self._batch_size).float()
                f_gt = _extract(extractor, _check_images(gt, "gt"), self._batch_size).float()
            except MetricUnavailable as err:
                self._skip(users, str(err))
                continue
            for i, rec in enumerate(records):
                rec["features"][kind] = {"pred": f_pred[i].clone(), "gt": f_gt[i].clone()}
        for rec in records:
            rec["skipped"] = dict(self.skipped)
        return records

    def reduce(self, records: Sequence[Mapping]) -> "MetricResults":
        """The metrics of a group of items (their records, in item order)."""
        return reduce_items(records, self.names, kid_subset_size=self.kid_subset_size)


def reduce_items(records: Sequence[Mapping], names: Sequence[str], *, kid_subset_size: int = 1000) -> "MetricResults":
    """Metric values of a group of items from their per-item records (:class:`ItemScorer`): the mean of the
    per-image scores (any score name, so callers may add their own per-image metrics), FID/KID/CLIP-FID
    from the stacked features. A metric skipped for an item, or missing from some records, is None with the
    reason in ``.skipped``."""
    out = MetricResults()
    n = len(records)
    for name in dict.fromkeys(names):
        reason = next((r["skipped"][name] for r in records if name in r.get("skipped", {})), None)
        if reason is not None:
            out[name], out.skipped[name] = None, reason
            continue
        if name in _DISTRIBUTION:
            kind = _FEATURE_KIND[name]
            have = [r["features"][kind] for r in records if kind in r.get("features", {})]
            if n < 2:
                out[name] = None
                out.skipped[name] = f"{name} needs at least 2 images per set; received {n} and {n}"
                continue
            if len(have) < n:
                out[name] = None
                out.skipped[name] = (f"{name}: only {len(have)} of {n} items have features (records of an "
                                     f"earlier run without the backbone?); delete them to recompute")
                continue
            f_pred = torch.stack([h["pred"] for h in have]).double()
            f_gt = torch.stack([h["gt"] for h in have]).double()
            out[name] = (_kid_from_features(f_pred, f_gt, subset_size=kid_subset_size) if name == "kid"
                         else _fid_from_features(f_pred, f_gt))
            continue
        values = [r["scores"].get(name) for r in records]
        if n == 0 or any(v is None for v in values):
            out[name] = None
            out.skipped[name] = f"{name}: only {n - values.count(None)} of {n} items have a value"
            continue
        out[name] = math.fsum(values) / n
    return out


# report


class ReportPaths(NamedTuple):
    json: Path
    markdown: Path


_FORMATS = {"fid": "{:.2f}", "clip_fid": "{:.2f}", "kid": "{:.2f}"}


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower() or "metrics"


def _is_row(value: object) -> bool:
    return isinstance(value, Mapping)


def write_report(results: Mapping[str, object], out_dir: PathLike, title: str) -> ReportPaths:
    """Write ``<slug(title)>.json`` and ``<slug(title)>.md`` into `out_dir`; return their paths.

    `results` maps a row name (method or setting) to ``{metric: value or None}`` (e.g. a `MetricResults`,
    whose `skipped` reasons are reported too). A flat ``{metric: value}`` mapping is one row named `title`.
    The Markdown table has one column per metric with ↑ / ↓ for the better direction; skipped or
    non-finite values show as "—" and are listed with their reason below the table.
    """
    if results and not any(_is_row(v) for v in results.values()):
        results = {title: results}
    bad = [k for k, v in results.items() if not _is_row(v)]
    if bad:
        raise InputError(f"`results` must map row names to {{metric: value}} dicts; rows {bad} are not mappings")

    columns = [m for m in ALL_METRICS if any(m in row for row in results.values())]
    for row in results.values():
        columns += [m for m in row if m not in columns]

    rows: dict[str, dict[str, Optional[float]]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for row_name, row in results.items():
        reasons = dict(getattr(row, "skipped", {}))
        clean: dict[str, Optional[float]] = {}
        for metric, value in row.items():
            if value is not None and not math.isfinite(float(value)):
                reasons.setdefault(metric, f"value was not finite ({value})")
                value = None
            clean[metric] = None if value is None else float(value)
        rows[str(row_name)] = clean
        if reasons:
            skipped[str(row_name)] = reasons

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _slug(title)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    payload = {
        "title": title,
        "columns": columns,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in columns if m in HIGHER_IS_BETTER},
        "rows": rows,
        "skipped": skipped,
    }
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")

    def header(metric: str) -> str:
        arrow = {True: " ↑", False: " ↓"}.get(HIGHER_IS_BETTER.get(metric), "")  # type: ignore[arg-type]
        return DISPLAY_NAMES.get(metric, metric) + arrow

    def cell(value: Optional[float], metric: str) -> str:
        return "—" if value is None else _FORMATS.get(metric, "{:.4f}").format(value)

    lines = [f"# {title}", "", "| Method | " + " | ".join(header(m) for m in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row_name, row in rows.items():
        lines.append(f"| {row_name} | " + " | ".join(cell(row.get(m), m) for m in columns) + " |")
    if skipped:
        lines += ["", "Skipped metrics:", ""]
        lines += [f"- {row_name} / {metric}: {reason}"
                  for row_name, reasons in skipped.items() for metric, reason in reasons.items()]
    md_path.write_text("\n".join(lines) + "\n")
    return ReportPaths(json_path, md_path)
