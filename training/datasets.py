"""Readers for VITON-HD and DressCode in their published on-disk layouts.

Layouts and mask recipes follow ``shared/design/DATA_AND_METRICS.md`` section 1.

Every item is a dict (the default ``torch.utils.data`` collate batches it):

===================  ==========================================================================
key                  value
===================  ==========================================================================
``person``           (3, H, W) float32 in [-1, 1], the person photo
``garment``          (3, H, W) float32 in [-1, 1], the in-shop garment named by the pair
``person_mask``      (1, H, W) float32 in {0, 1}; 1 = region the model repaints on the person
``garment_mask``     (1, H, W) float32 in {0, 1}; flat-garment foreground
``garment_target``   (3, H, W) float32 in [-1, 1]; the person wearing ``garment``. Only for
                     unpaired items whose ground truth exists (the synthetic set's
                     ``{split}/unpaired-gt/``); absent otherwise
``category``         ``"upper"``, ``"lower"`` or ``"dress"`` (:data:`twgtm.config.CATEGORIES`)
``category_idx``     int, the index of ``category`` in :data:`twgtm.config.CATEGORIES`
``person_id``        file stem of the person image, e.g. ``"000006_00"`` / ``"013563_0"``
``garment_id``       file stem of the garment image
===================  ==========================================================================

Images are resized to ``size = (H, W)`` with PIL bilinear (antialiased when shrinking); masks
with nearest. When the aspect ratio differs, the resized picture is centred and padded with
white (images) or 0 (masks).

Where the person mask comes from, first match wins:

* VITON-HD: ``agnostic-mask/<id>_mask.png`` (white = repaint); else the gray (128, 128, 128)
  pixels of ``agnostic-v3.2/<id>.jpg``; else ``image-parse-v3/<id>.png`` (LIP labels): the
  garment labels of the category plus the arms (upper/dress; a stand-in for LaDI-VTON's
  keypoint arm band) or the legs (lower/dress), dilated by a square of radius ``10 * H / 512``
  (LaDI-VTON's 5x5 kernel, 5 iterations, at 512 px height), minus the fixed labels (head,
  hair, and the garments and limbs of the other body half).
* DressCode: ``<cat>/agnostic_masks/<id>_0.png``; else ``<cat>/label_maps/<id>_4.png``
  (SCHP-ATR labels) by category with the same dilation (radius ``15 * H / 512`` for dresses,
  after IDM-VTON's larger dresses kernel).

The garment mask is VITON-HD ``cloth-mask/`` binarised at >= 128, DressCode ``masks/``
(LaDI-VTON's), or else the non-white pixels of the garment image (any channel < 240) with a
morphological close and hole filling.

VITON-HD items have category ``"upper"`` unless ``{split}/categories.txt`` (lines
``<id> <category>``, written by :mod:`training.synthetic`) names the garment's category.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from torch.utils.data import Dataset

from twgtm.config import CATEGORIES, canonical_category
from twgtm.errors import ConfigError, TWGTMError

from .config import DATASET_KINDS

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError", "DatasetFileError", "VitonHDDataset", "DressCodeDataset", "DATASET_KINDS", "open_dataset",
    "detect_layout", "garment_mask_from_white_background", "mask_from_labels", "mask_from_agnostic", "DRESSCODE_DIRS",
]


class DatasetError(TWGTMError, ValueError):
    """A dataset root, pairs file, argument or file content is invalid."""


class DatasetFileError(DatasetError, FileNotFoundError):
    """A file the dataset needs is missing; the message names its path."""


# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------

DRESSCODE_DIRS: dict[str, str] = {"upper": "upper_body", "lower": "lower_body", "dress": "dresses"}

# LIP 20-class labels (VITON-HD image-parse-v3). 10 is the neck in VITON-HD's parse.
_LIP_REGION: dict[str, tuple[int, ...]] = {
    "upper": (5, 6, 7, 14, 15),                        # upper clothes, dress, coat + arms
    "lower": (9, 12, 16, 17),                          # pants, skirt + legs
    "dress": (5, 6, 7, 9, 12, 14, 15, 16, 17),         # everything worn + arms and legs
}
_LIP_FIXED: dict[str, tuple[int, ...]] = {
    "upper": (1, 2, 4, 13, 9, 12, 16, 17, 18, 19),     # hat, hair, sunglasses, face, lower half
    "lower": (1, 2, 4, 13, 5, 7, 14, 15, 18, 19),      # head, upper clothes, coat, arms, shoes
    "dress": (1, 2, 4, 13, 18, 19),                    # head and shoes
}
# SCHP-ATR 18-class labels (DressCode label_maps).
_ATR_REGION: dict[str, tuple[int, ...]] = {
    "upper": (4, 14, 15),                              # upper clothes + arms
    "lower": (5, 6, 12, 13),                           # skirt, pants + legs
    "dress": (4, 5, 6, 7, 12, 13, 14, 15),             # dress, any top/bottom, arms, legs
}
_ATR_FIXED: dict[str, tuple[int, ...]] = {
    "upper": (1, 2, 3, 11, 5, 6, 9, 10, 12, 13, 16),   # hat, hair, glasses, head, lower half, bag
    "lower": (1, 2, 3, 11, 4, 9, 10, 14, 15, 16),      # head, upper clothes, shoes, arms, bag
    "dress": (1, 2, 3, 11, 9, 10, 16),                 # head, shoes, bag
}
# Dilation radius in pixels at 512 px image height (scaled with the native height).
_DILATION_AT_512: dict[str, int] = {"upper": 10, "lower": 10, "dress": 15}

_AGNOSTIC_GRAY = 128
_AGNOSTIC_TOL = 12        # JPEG noise around the agnostic gray
_WHITE_THRESHOLD = 240    # a garment pixel has some channel below this


# --------------------------------------------------------------------------------------------
# file and image helpers
# --------------------------------------------------------------------------------------------

def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise DatasetError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def _check_size(size: Any) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size))
    if not ok:
        raise DatasetError(f"size: expected a (height, width) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetFileError(f"missing dataset file: expected {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(f"unreadable image file {path}: {err}") from err


def _read_rgb(path: Path) -> Image.Image:
    im = _open(path)
    return im if im.mode == "RGB" else im.convert("RGB")


def _read_binary(path: Path) -> np.ndarray:
    """A black/white mask image (any mode) as a bool array, white (>= 128) = True."""
    return np.asarray(_open(path).convert("L")) >= 128


def _read_labels(path: Path) -> np.ndarray:
    """A label map as an int array of class indices (palette indices for mode "P")."""
    im = _open(path)
    if im.mode in ("P", "L", "I", "I;16"):
        return np.asarray(im).astype(np.int64)
    if im.mode in ("RGB", "RGBA", "LA"):
        return np.asarray(im)[..., 0].astype(np.int64)  # labels saved as gray RGB
    raise DatasetError(f"label map {path}: expected a palette or gray image, got mode {im.mode!r}")


def _find(directory: Path, stem: str, exts: Sequence[str]) -> Path:
    """``directory/stem.ext`` for the first existing ext, else the first candidate (for errors)."""
    candidates = [directory / f"{stem}{ext}" for ext in exts]
    for cand in candidates:
        if cand.is_file():
            return cand
    return candidates[0]


def _fit(img: Image.Image, size: tuple[int, int], resample: int, fill: Any) -> Image.Image:
    """Resize ``img`` to fit ``size`` = (H, W) keeping its aspect, centre it, pad with ``fill``."""
    H, W = size
    w, h = img.size
    if (h, w) == (H, W):
        return img
    scale = min(H / h, W / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = img.resize((nw, nh), resample)
    if (nh, nw) == (H, W):
        return resized
    canvas = Image.new(img.mode, (W, H), fill)
    canvas.paste(resized, ((W - nw) // 2, (H - nh) // 2))
    return canvas


def _image_tensor(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    img = _fit(img, size, Image.Resampling.BILINEAR, (255, 255, 255))
    arr = np.asarray(img, dtype=np.float32)                     # (H, W, 3) in [0, 255]
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0  # (3, H, W) in [-1, 1]


def _mask_tensor(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    img = _fit(img, size, Image.Resampling.NEAREST, 0)
    arr = (np.asarray(img) >= 128).astype(np.float32)          # (H, W) in {0, 1}
    return torch.from_numpy(arr)[None]                          # (1, H, W)


# --------------------------------------------------------------------------------------------
# mask recipes (public where the trainer or tests may reuse them)
# --------------------------------------------------------------------------------------------

def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    return ndimage.maximum_filter(mask, size=2 * radius + 1, mode="constant", cval=0)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    return ndimage.minimum_filter(mask, size=2 * radius + 1, mode="nearest")


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological close (dilate, then erode) with a zero border, so it never grows the mask at the edges."""
    if radius <= 0:
        return mask
    padded = np.pad(mask, radius + 1)
    closed = _erode(_dilate(padded, radius), radius)
    return closed[radius + 1:-radius - 1, radius + 1:-radius - 1]


def _scaled_radius(at_512: int, height: int) -> int:
    return max(1, round(at_512 * height / 512))


def garment_mask_from_white_background(rgb: np.ndarray) -> np.ndarray:
    """Flat-garment foreground of a catalog photo on white: (H, W, 3) uint8 -> (H, W) bool.

    Pixels with some channel below 240 are garment; a morphological close (radius H/128) joins
    thin gaps and hole filling restores white prints inside the garment.
    """
    fg = np.any(rgb < _WHITE_THRESHOLD, axis=-1)
    r = _scaled_radius(4, rgb.shape[0])
    return ndimage.binary_fill_holes(_close(fg, r) | fg)


def mask_from_labels(labels: np.ndarray, category: str, scheme: str) -> np.ndarray:
    """Repaint mask from a parse map: dilate(region labels) minus the fixed labels.

    ``scheme`` is ``"lip"`` (VITON-HD ``image-parse-v3``) or ``"atr"`` (DressCode ``label_maps``).
    """
    region_t, fixed_t = (_LIP_REGION, _LIP_FIXED) if scheme == "lip" else (_ATR_REGION, _ATR_FIXED)
    region = np.isin(labels, region_t[category])
    radius = _scaled_radius(_DILATION_AT_512[category], labels.shape[0])
    return _dilate(region, radius) & ~np.isin(labels, fixed_t[category])


def mask_from_agnostic(rgb: np.ndarray) -> np.ndarray:
    """VITON-HD ``agnostic-v3.2`` image -> the gray (128, 128, 128) region as a bool mask."""
    gray = np.all(np.abs(rgb.astype(np.int16) - _AGNOSTIC_GRAY) <= _AGNOSTIC_TOL, axis=-1)
    opened = _dilate(_erode(gray, 1), 1)          # drop isolated gray pixels of the photo
    return _close(opened, 1)                      # close JPEG pinholes


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetError(f"unreadable pairs file {path}: {err}") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DatasetError(f"pairs file {path} line {lineno}: expected 'person_image garment_image', "
                               f"got {line.strip()!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _stem(name: str) -> str:
    return Path(name).stem


def _normalise_categories(categories: Sequence[str] | None) -> tuple[str, ...] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        categories = (categories,)
    try:
        return tuple(dict.fromkeys(canonical_category(c) for c in categories))
    except ValueError as err:
        raise DatasetError(f"categories: {err}") from err


def _item_dict(person: Image.Image, garment: Image.Image, person_mask: np.ndarray,
               garment_mask: np.ndarray, category: str, person_id: str, garment_id: str,
               size: tuple[int, int], target: Image.Image | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "person": _image_tensor(person, size),
        "garment": _image_tensor(garment, size),
        "person_mask": _mask_tensor(person_mask, size),
        "garment_mask": _mask_tensor(garment_mask, size),
    }
    if target is not None:
        item["garment_target"] = _image_tensor(target, size)
    item.update(category=category, category_idx=CATEGORIES.index(category),
                person_id=person_id, garment_id=garment_id)
    return item


# --------------------------------------------------------------------------------------------
# VITON-HD
# --------------------------------------------------------------------------------------------

class VitonHDDataset(Dataset):
    """VITON-HD (``zalando-hd-resized``) and the synthetic set of :mod:`training.synthetic`.

    Args:
        root: folder holding ``train_pairs.txt``, ``test_pairs.txt``, ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.
        pairs: ``"paired"`` (garment = the person's own, ``c_name = im_name``) or ``"unpaired"``
            (the garment named in the pairs file; train pairs are paired anyway).
        size: output ``(H, W)``.
        categories: keep only items whose garment is in these categories (default: all).
    """

    kind = "vitonhd"
    _PAIRS_FILES = {"train": ("train_pairs.txt",),
                    "test": ("test_pairs.txt", "test_pairs_unpaired.txt", "test_pairs_paired.txt")}
    _MASK_DIRS = ("agnostic-mask", "agnostic-v3.2", "image-parse-v3")

    def __init__(self, root: str | Path, split: str = "train", pairs: str = "paired",
                 size: Sequence[int] = (512, 384), categories: Sequence[str] | None = None) -> None:
        _check_choice("split", split, ("train", "test"))
        _check_choice("pairs", pairs, ("paired", "unpaired"))
        self.root, self.split, self.pairs = Path(root), split, pairs
        self.size = _check_size(size)
        self.split_dir = self.root / split

        # 1. check the layout
        pairs_file = next((self.root / n for n in self._PAIRS_FILES[split] if (self.root / n).is_file()), None)
        missing = [str(p) for p in (self.split_dir / "image", self.split_dir / "cloth") if not p.is_dir()]
        if pairs_file is None:
            missing.insert(0, str(self.root / self._PAIRS_FILES[split][0]))
        if missing:
            raise DatasetError(
                f"root {self.root}: not a VITON-HD layout for split {split!r}; expected "
                f"{' or '.join(self._PAIRS_FILES[split])} and {split}/image/, {split}/cloth/ "
                f"(plus {split}/cloth-mask/ and one of {', '.join(d + '/' for d in self._MASK_DIRS)}); "
                f"missing: {', '.join(missing)}")
        if not any((self.split_dir / d).is_dir() for d in self._MASK_DIRS):
            raise DatasetError(
                f"root {self.root}: no person-mask source for split {split!r}; expected one of "
                f"{', '.join(str(self.split_dir / d) + '/' for d in self._MASK_DIRS)}")
        self.pairs_file = pairs_file

        # 2. categories (synthetic extra; real VITON-HD is upper-body only)
        self.category_of = self._read_categories(self.split_dir / "categories.txt")
        wanted = _normalise_categories(categories)

        # 3. items
        self.items: list[tuple[str, str, str]] = []   # (person file, garment file, category)
        for im_name, c_name in _read_pairs(pairs_file):
            if pairs == "paired":
                c_name = im_name
            category = self.category_of.get(_stem(c_name), "upper")
            if wanted is None or category in wanted:
                self.items.append((im_name, c_name, category))
        gt_dir = self.split_dir / "unpaired-gt"
        self.has_target = pairs == "unpaired" and gt_dir.is_dir()

    @staticmethod
    def _read_categories(path: Path) -> dict[str, str]:
        if not path.is_file():
            return {}
        out: dict[str, str] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetError(f"categories file {path} line {lineno}: expected '<id> <category>', "
                                   f"got {line.strip()!r}")
            try:
                out[_stem(parts[0])] = canonical_category(parts[1])
            except ValueError as err:
                raise DatasetError(f"categories file {path} line {lineno}: {err}") from err
        return out

    def __len__(self) -> int:
        return len(self.items)

    def _person_mask(self, stem: str, category: str) -> np.ndarray:
        d = self.split_dir
        tried = [d / "agnostic-mask" / f"{stem}_mask.png", d / "agnostic-v3.2" / f"{stem}.jpg",
                 d / "image-parse-v3" / f"{stem}.png"]
        if tried[0].is_file():
            return _read_binary(tried[0])
        agnostic = _find(d / "agnostic-v3.2", stem, (".jpg", ".png"))
        if agnostic.is_file():
            return mask_from_agnostic(np.asarray(_read_rgb(agnostic)))
        if tried[2].is_file():
            return mask_from_labels(_read_labels(tried[2]), category, "lip")
        raise DatasetFileError(f"missing person mask for {stem}: expected one of {', '.join(map(str, tried))}")

    def _garment_mask(self, stem: str, garment: Image.Image) -> np.ndarray:
        path = _find(self.split_dir / "cloth-mask", stem, (".jpg", ".png"))
        if path.is_file():
            return _read_binary(path)
        if (self.split_dir / "cloth-mask").is_dir():
            raise DatasetFileError(f"missing dataset file: expected {path}")
        return garment_mask_from_white_background(np.asarray(garment))

    def __getitem__(self, index: int) -> dict[str, Any]:
        im_name, c_name, category = self.items[index]
        p_stem, c_stem = _stem(im_name), _stem(c_name)
        person = _read_rgb(self.split_dir / "image" / im_name)
        garment = _read_rgb(self.split_dir / "cloth" / c_name)
        target = None
        if self.has_target:
            target = _read_rgb(_find(self.split_dir / "unpaired-gt", f"{p_stem}__{c_stem}", (".jpg", ".png")))
        return _item_dict(person, garment, self._person_mask(p_stem, category),
                          self._garment_mask(c_stem, garment), category, p_stem, c_stem, self.size, target)


# --------------------------------------------------------------------------------------------
# DressCode
# --------------------------------------------------------------------------------------------

class DressCodeDataset(Dataset):
    """DressCode: ``<cat>/images``, ``<cat>/label_maps`` and the pairs files of each category.

    Args:
        root: the ``DressCode`` folder holding ``upper_body/``, ``lower_body/``, ``dresses/``.
        split: ``"train"`` (``train_pairs.txt``) or ``"test"``.
        pairs: ``"paired"`` (``test_pairs_paired.txt``) or ``"unpaired"`` (``test_pairs_unpaired.txt``);
            training pairs are always read from ``train_pairs.txt``.
        categories: category folders or canonical names to read. ``None`` reads every category
            folder present (at least one must be); named categories must all be present.
        size: output ``(H, W)``.
    """

    kind = "dresscode"

    def __init__(self, root: str | Path, split: str = "train", pairs: str = "paired",
                 categories: Sequence[str] | None = None, size: Sequence[int] = (512, 384)) -> None:
        _check_choice("split", split, ("train", "test"))
        _check_choice("pairs", pairs, ("paired", "unpaired"))
        self.root, self.split, self.pairs = Path(root), split, pairs
        self.size = _check_size(size)
        wanted = _normalise_categories(categories)
        pairs_name = "train_pairs.txt" if split == "train" else f"test_pairs_{pairs}.txt"

        def usable(cat: str) -> bool:
            d = self.root / DRESSCODE_DIRS[cat]
            return (d / "images").is_dir() and (d / pairs_name).is_file()

        names = wanted if wanted is not None else tuple(c for c in CATEGORIES if usable(c))
        expected = (f"<cat>/images/ and <cat>/{pairs_name} (plus <cat>/agnostic_masks/ or <cat>/label_maps/) "
                    f"for <cat> in {', '.join(DRESSCODE_DIRS[c] for c in (wanted or CATEGORIES))}")
        missing = [c for c in names if not usable(c)]
        if not names or missing:
            raise DatasetError(f"root {self.root}: not a DressCode layout for split {split!r}, pairs {pairs!r}; "
                               f"expected {expected}; missing: "
                               f"{', '.join(DRESSCODE_DIRS[c] for c in (missing or (wanted or CATEGORIES)))}")
        for cat in names:
            d = self.root / DRESSCODE_DIRS[cat]
            if not ((d / "agnostic_masks").is_dir() or (d / "label_maps").is_dir()):
                raise DatasetError(f"root {self.root}: no person-mask source for {DRESSCODE_DIRS[cat]}; expected "
                                   f"{d / 'agnostic_masks'}/ or {d / 'label_maps'}/")
        self.categories = names
        self.items: list[tuple[str, str, str]] = []   # (person file, garment file, category)
        for cat in names:
            for im_name, c_name in _read_pairs(self.root / DRESSCODE_DIRS[cat] / pairs_name):
                self.items.append((im_name, c_name, cat))

    def __len__(self) -> int:
        return len(self.items)

    def _person_mask(self, cat_dir: Path, stem: str, category: str) -> np.ndarray:
        agnostic = cat_dir / "agnostic_masks" / f"{stem}.png"
        label_map = cat_dir / "label_maps" / f"{stem.rsplit('_', 1)[0]}_4.png"
        if agnostic.is_file():
            return _read_binary(agnostic)
        if label_map.is_file():
            return mask_from_labels(_read_labels(label_map), category, "atr")
        raise DatasetFileError(f"missing person mask for {stem}: expected {agnostic} or {label_map}")

    def _garment_mask(self, cat_dir: Path, stem: str, garment: Image.Image) -> np.ndarray:
        path = cat_dir / "masks" / f"{stem}.png"
        if path.is_file():
            return _read_binary(path)
        return garment_mask_from_white_background(np.asarray(garment))

    def __getitem__(self, index: int) -> dict[str, Any]:
        im_name, c_name, category = self.items[index]
        cat_dir = self.root / DRESSCODE_DIRS[category]
        p_stem, c_stem = _stem(im_name), _stem(c_name)
        person = _read_rgb(cat_dir / "images" / im_name)
        garment = _read_rgb(cat_dir / "images" / c_name)
        return _item_dict(person, garment, self._person_mask(cat_dir, p_stem, category),
                          self._garment_mask(cat_dir, c_stem, garment), category, p_stem, c_stem,
                          self.size, None)


# --------------------------------------------------------------------------------------------
# layout detection
# --------------------------------------------------------------------------------------------

def detect_layout(root: str | Path) -> str:
    """``"vitonhd"`` or ``"dresscode"`` from the folders under ``root``; DatasetError if neither."""
    root = Path(root)
    is_viton = any((root / s / "image").is_dir() for s in ("train", "test"))
    is_dc = any((root / d / "images").is_dir() for d in DRESSCODE_DIRS.values())
    if is_viton and not is_dc:
        return "vitonhd"
    if is_dc and not is_viton:
        return "dresscode"
    what = "both" if is_viton else "neither"
    raise DatasetError(
        f"root {root}: found {what} of the known layouts; expected VITON-HD ({root}/train/image/ or "
        f"{root}/test/image/ with train_pairs.txt / test_pairs.txt) or DressCode ({root}/<cat>/images/ for "
        f"<cat> in {', '.join(DRESSCODE_DIRS.values())})")


_READERS: dict[str, type] = {cls.kind: cls for cls in (VitonHDDataset, DressCodeDataset)}  # keys: DATASET_KINDS


def open_dataset(root: str | Path, kind: str = "auto", **kwargs: Any) -> VitonHDDataset | DressCodeDataset:
    """Open ``root`` with the reader of ``kind`` (one of :data:`DATASET_KINDS`; ``"auto"`` detects it from the
    folders); kwargs go to the reader. The one dispatch from a dataset kind to its reader."""
    if kind != "auto" and kind not in _READERS:
        raise ConfigError(f"kind: expected one of {('auto',) + DATASET_KINDS}, got {kind!r}")
    if kind == "auto":
        kind = detect_layout(root)
    logger.debug("opening %s as %s", root, kind)
    return _READERS[kind](root, **kwargs)
