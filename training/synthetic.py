"""Deterministic synthetic try-on / try-off data, written in the VITON-HD layout.

Procedural people (head, hair, neck, torso, two-segment arms, legs, shoes; skin tone, hair style,
pose and background vary) wear procedural garments: tops (t-shirt, tank, long sleeve), bottoms
(trousers, shorts, skirt; category ``lower``) and dresses, coloured with stripes, checks, dots,
printed shapes and short text (PIL's default font). Each garment is drawn once in a canonical
flat-lay frame; the flat garment on white is that drawing, and the worn garment is the same
drawing mapped piece by piece (torso, sleeves, trouser legs follow their bones) with a smooth
sine warp and shading. Arms, hands and long hair are drawn over the garment, so the garment is
partly occluded.

Layout written under ``root`` (VITON-HD names; ``<id>`` = ``000000_00``, ``000001_00``, ...)::

    train_pairs.txt               "<id>.jpg <id>.jpg"  (paired: c = im)
    test_pairs.txt                "<id>.jpg <id2>.jpg" (unpaired: c != im, same category)
    {train,test}/image/<id>.jpg              person
    {train,test}/cloth/<id>.jpg              the person's garment, flat on white
    {train,test}/cloth-mask/<id>.jpg         its foreground (JPEG like VITON-HD; binarise >= 128)
    {train,test}/agnostic-mask/<id>_mask.png white where the model repaints (as StableVITON/CatVTON)
    {train,test}/agnostic-v3.2/<id>.jpg      the person with that region painted gray 128
    {train,test}/image-parse-v3/<id>.png     LIP labels (palette PNG), as VITON-HD
    extras (not in VITON-HD):
    {train,test}/categories.txt              "<id> <category>" per line (upper / lower / dress)
    test/unpaired-gt/<person>__<cloth>.jpg   the person of <person> wearing the garment <cloth>,
                                             one per line of test_pairs.txt (the unpaired ground truth)
    synthetic.json                           the generator arguments and counts

Files already in ``root`` with these names are overwritten; other files are left alone.
Image files are real JPEGs (quality 95, 4:4:4 chroma) under ``.jpg`` names; PNG files are
masks and label maps. Both encoders are deterministic, so the same arguments give identical
bytes with the same Pillow build (the tests check this).

The repaint mask of a person is generous and category-wide, as real agnostic masks are: the
union of the largest garment of that category on this body pose (for upper: the longest top
and long sleeves; lower: a wide skirt and full trousers; dress: a long wide dress with short
sleeves), the person's own garment, the arms (upper, dress) and the legs (lower, dress),
dilated by ``0.03 * height``; minus what is drawn over the garment and kept (face, front hair;
for lower also the top and the arms). So a same-category garment swap only changes pixels
inside the mask, and ``unpaired-gt`` can be reached by an inpainting model.

A category with a single test item is paired with itself in ``test_pairs.txt`` (its
``unpaired-gt`` then equals its image); ``generate`` reports how many such lines it wrote.

CLI::

    python -m training.synthetic --out DIR [--n-train 64] [--n-test 16] [--height 128]
        [--width 96] [--seed 0] [--categories upper lower dress]
"""
from __future__ import annotations

import argparse
import colorsys
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from twgtm.config import canonical_category
from twgtm.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["generate", "SyntheticRenderer", "LIP_LABELS", "main"]

# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

LIP_LABELS: dict[str, int] = {
    "background": 0, "hair": 2, "upper": 5, "dress": 6, "pants": 9, "neck": 10, "skirt": 12,
    "face": 13, "left_arm": 14, "right_arm": 15, "left_leg": 16, "right_leg": 17,
    "left_shoe": 18, "right_shoe": 19,
}
_TORSO_SKIN = 20   # internal: exposed torso skin, written as 10 (neck/skin) in image-parse-v3
_HAIR_BACK = 21    # internal: hair behind the body, written as 2
_TO_LIP = np.arange(256, dtype=np.uint8)
_TO_LIP[_TORSO_SKIN], _TO_LIP[_HAIR_BACK] = 10, 2

_L = LIP_LABELS
_ARM = {+1: _L["left_arm"], -1: _L["right_arm"]}    # image right = the person's left
_LEG = {+1: _L["left_leg"], -1: _L["right_leg"]}
_SHOE = {+1: _L["left_shoe"], -1: _L["right_shoe"]}
_REGION = {  # labels whose pixels the repaint mask covers (besides the category envelope)
    "upper": (_L["upper"], _L["left_arm"], _L["right_arm"], _TORSO_SKIN),
    "lower": (_L["pants"], _L["skirt"], _L["left_leg"], _L["right_leg"]),
    "dress": (_L["dress"], _L["left_arm"], _L["right_arm"], _L["left_leg"], _L["right_leg"], _TORSO_SKIN),
}
_FIXED = {   # labels drawn over the garment layer, kept out of the repaint mask
    "upper": (_L["hair"], _L["face"]),
    "lower": (_L["hair"], _L["face"], _L["upper"], _L["left_arm"], _L["right_arm"]),
    "dress": (_L["hair"], _L["face"]),
}
_KINDS = {"upper": ("tshirt", "tank", "longsleeve"), "lower": ("trousers", "shorts", "skirt"),
          "dress": ("dress",)}

# --------------------------------------------------------------------------------------------
# canonical body (units of image height; x from the body centre, y down from the top)
# --------------------------------------------------------------------------------------------

_SHOULDER = (0.125, 0.235)       # shoulder joint (x mirrored per side)
_HIP = (0.06, 0.555)             # hip joint
_L_UP, _L_FORE, _L_LEG = 0.165, 0.155, 0.37
_CANON_ARM = math.radians(30.0)  # flat-lay sleeve angle from straight down
_CANON_LEG = math.radians(3.0)
_SS = 2                          # supersampling factor of the renderer


def _dir(phi: float, side: int) -> np.ndarray:
    """Unit vector of a limb at outward angle ``phi`` from straight down, on ``side`` (-1 left, +1 right)."""
    return np.array([side * math.sin(phi), math.cos(phi)])


def _perp(phi: float, side: int) -> np.ndarray:
    return np.array([math.cos(phi), -side * math.sin(phi)])


def _band(joint: np.ndarray, phi: float, side: int, t0: float, t1: float, w0: float, w1: float) -> np.ndarray:
    """Quad along a limb from ``t0`` to ``t1`` with half-widths ``w0`` -> ``w1``: (4, 2)."""
    d, p = _dir(phi, side), _perp(phi, side)
    return np.stack([joint + t0 * d + w0 * p, joint + t1 * d + w1 * p,
                     joint + t1 * d - w1 * p, joint + t0 * d - w0 * p])


def _strip(joint: np.ndarray, phi: float, side: int, ts: Sequence[float], ws: Sequence[float]) -> np.ndarray:
    """Polygon along a limb through the stations ``ts`` with half-widths ``ws``: (2 len(ts), 2)."""
    d, p = _dir(phi, side), _perp(phi, side)
    one = [joint + t * d + w * p for t, w in zip(ts, ws)]
    other = [joint + t * d - w * p for t, w in zip(ts, ws)]
    return np.stack(one + other[::-1])


def _capsule(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, n: int = 8) -> np.ndarray:
    """Tapered capsule polygon around the segment p0 -> p1: (2n + 2, 2)."""
    a = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    t1 = np.linspace(a - math.pi / 2, a + math.pi / 2, n + 1)
    t0 = np.linspace(a + math.pi / 2, a + 3 * math.pi / 2, n + 1)
    return np.concatenate([p1 + r1 * np.stack([np.cos(t1), np.sin(t1)], 1),
                           p0 + r0 * np.stack([np.cos(t0), np.sin(t0)], 1)])


def _ellipse(c: Sequence[float], rx: float, ry: float, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([c[0] + rx * np.cos(t), c[1] + ry * np.sin(t)], 1)


def _mirror(half: Sequence[tuple[float, float]]) -> np.ndarray:
    """Polygon from its left half (x <= 0, top to bottom): left side down, right side up."""
    left = np.array(half, dtype=np.float64)
    right = left[::-1] * np.array([-1.0, 1.0])
    return np.concatenate([left, right])


def _joints(side: int, arm: float = _CANON_ARM, leg: float = _CANON_LEG) -> dict[str, np.ndarray]:
    sh = np.array([side * _SHOULDER[0], _SHOULDER[1]])
    el = sh + _L_UP * _dir(arm, side)
    wr = el + _L_FORE * _dir(arm, side)
    hip = np.array([side * _HIP[0], _HIP[1]])
    return {"shoulder": sh, "elbow": el, "wrist": wr, "hip": hip, "ankle": hip + _L_LEG * _dir(leg, side)}


_TORSO_POLY = _mirror([(-0.05, 0.2), (-0.13, 0.215), (-0.14, 0.245), (-0.125, 0.31), (-0.10, 0.46),
                       (-0.115, 0.555), (-0.10, 0.60)])
# The largest garment of each category, per bone (the repaint-mask envelope).
_ENV_TOP = [(-0.06, 0.19), (-0.165, 0.2), (-0.17, 0.25), (-0.155, 0.32), (-0.135, 0.45)]
_ENVELOPES: dict[str, list[tuple[str, Any]]] = {
    "upper": [("torso", _mirror(_ENV_TOP + [(-0.15, 0.60)])),
              ("uarm", (-0.03, _L_UP + 0.02, 0.045, 0.045)), ("farm", (-0.03, _L_FORE + 0.005, 0.04, 0.04))],
    "lower": [("torso", _mirror([(-0.12, 0.44), (-0.135, 0.555), (-0.22, 0.82)])),
              ("leg", (-0.04, _L_LEG + 0.01, 0.072, 0.06))],
    "dress": [("torso", _mirror(_ENV_TOP + [(-0.23, 0.87)])),
              ("uarm", (-0.03, 0.67 * _L_UP, 0.045, 0.045))],
}

# --------------------------------------------------------------------------------------------
# colours
# --------------------------------------------------------------------------------------------

_SKIN = [(241, 194, 167), (224, 172, 138), (198, 134, 100), (161, 102, 73), (112, 72, 52),
         (245, 208, 185), (210, 160, 120)]
_HAIR = [(30, 24, 20), (60, 40, 25), (110, 70, 40), (170, 120, 60), (220, 190, 120), (90, 90, 90),
         (150, 40, 30)]
_TEXT_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: float = 10.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _dark(colour: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(colour * factor, 0, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):   # Pillow without FreeType: the bitmap default
        return ImageFont.load_default()


# --------------------------------------------------------------------------------------------
# rasterising
# --------------------------------------------------------------------------------------------

def _raster(poly: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Fill a pixel-space polygon: (bbox slices, bool mask of the bbox), or None if off-canvas."""
    H, W = shape
    x0, y0 = max(int(math.floor(poly[:, 0].min())) - 1, 0), max(int(math.floor(poly[:, 1].min())) - 1, 0)
    x1, y1 = min(int(math.ceil(poly[:, 0].max())) + 2, W), min(int(math.ceil(poly[:, 1].max())) + 2, H)
    if x1 <= x0 or y1 <= y0:
        return None
    im = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(im).polygon([(float(x) - x0, float(y) - y0) for x, y in poly], fill=1)
    return (slice(y0, y1), slice(x0, x1)), np.asarray(im, dtype=bool)


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:, :2].T + M[:, 2]


def _invert(M: np.ndarray) -> np.ndarray:
    A = np.linalg.inv(M[:, :2])
    return np.concatenate([A, -(A @ M[:, 2])[:, None]], axis=1)


# --------------------------------------------------------------------------------------------
# garments
# --------------------------------------------------------------------------------------------

@dataclass
class _Piece:
    bone: str          # "torso", "uarm", "farm" or "leg"
    side: int          # -1 / +1 for limb pieces, 0 for the torso
    poly: np.ndarray   # (N, 2) canonical units


@dataclass
class _Garment:
    category: str
    kind: str
    label: int
    pieces: list[_Piece]
    texture: np.ndarray        # (C, C, 3) uint8 canonical canvas
    alphas: list[np.ndarray]   # per piece (C, C) bool


def _pieces(rng: np.random.Generator, kind: str) -> list[_Piece]:
    u = rng.uniform
    pieces: list[_Piece] = []

    def top(style: str, hem_y: float, hem_w: float) -> list[tuple[float, float]]:
        waist = u(0.105, 0.118)
        if style == "tank":
            so, sw, nd = u(0.085, 0.1), u(0.025, 0.035), u(0.26, 0.29)
            si = so - sw
            return [(0.0, nd), (-0.5 * si, 0.5 * (0.205 + nd) + 0.012), (-si, 0.205), (-so, 0.205),
                    (-(so + 0.01), 0.25), (-0.125, u(0.29, 0.32)), (-waist, 0.45), (-hem_w, hem_y)]
        sh, nk, nd = u(0.135, 0.148), u(0.035, 0.05), u(0.235, 0.265)
        return [(0.0, nd), (-0.7 * nk, 0.2 + 0.6 * (nd - 0.2)), (-nk, 0.2), (-sh, 0.215),
                (-(sh + 0.008), 0.245), (-(sh - 0.01), 0.31), (-waist, 0.45), (-hem_w, hem_y)]

    def torso_poly(half: list[tuple[float, float]]) -> np.ndarray:
        left = np.array(half[1:], np.float64)   # half[0] is the neckline centre (0, depth)
        right = left[::-1] * np.array([-1.0, 1.0])
        return np.concatenate([np.array(half[:1]), left, right])

    def sleeves(length_up: float, full: bool) -> None:
        for side in (-1, 1):
            j = _joints(side)
            cap = _strip(j["shoulder"], _CANON_ARM, side, (-0.012, 0.025, length_up), (0.029, 0.038, 0.034))
            pieces.append(_Piece("uarm", side, cap))       # a rounded sleeve cap over the shoulder
            if full:
                pieces.append(_Piece("farm", side, _band(j["elbow"], _CANON_ARM, side, -0.012, _L_FORE - 0.012,
                                                         0.032, 0.027)))

    if kind in ("tshirt", "tank", "longsleeve"):
        pieces.append(_Piece("torso", 0, torso_poly(top("tank" if kind == "tank" else "tee",
                                                        u(0.50, 0.58), u(0.115, 0.135)))))
        if kind == "tshirt":
            sleeves(u(0.35, 0.6) * _L_UP, full=False)
        elif kind == "longsleeve":
            sleeves(_L_UP + 0.012, full=True)
    elif kind == "dress":
        style = "tank" if u() < 0.5 else "tee"
        half = top(style, 0.47, 0.12)[:-1] + [(-0.12, 0.47), (-u(0.14, 0.21), u(0.66, 0.84))]
        pieces.append(_Piece("torso", 0, torso_poly(half)))
        if style == "tee":
            sleeves(u(0.3, 0.6) * _L_UP, full=False)
    elif kind == "skirt":
        wy = u(0.45, 0.48)
        pieces.append(_Piece("torso", 0, _mirror([(-0.105, wy), (-0.12, 0.555), (-u(0.13, 0.2), u(0.64, 0.80))])))
    else:  # trousers, shorts
        wy = u(0.45, 0.48)
        pelvis = np.array([(-0.105, wy), (0.105, wy), (0.12, 0.555), (0.115, 0.61), (0.0, 0.625),
                           (-0.115, 0.61), (-0.12, 0.555)])
        pieces.append(_Piece("torso", 0, pelvis))
        frac = u(0.95, 1.0) if kind == "trousers" else u(0.28, 0.45)
        bottom = u(0.034, 0.05) if kind == "trousers" else 0.056
        for side in (-1, 1):
            pieces.append(_Piece("leg", side, _band(_joints(side)["hip"], _CANON_LEG, side, -0.03,
                                                    frac * _L_LEG, 0.062, bottom)))
    return pieces


#: stripe / check / dot period in canonical units (about the person's height). At the toy's 64x48 canvas and 4x
#: VAE, 0.12 is 7.7 px, two latent cells: patterns this coarse survive the VAE and can stay recognisable in the
#: model's output; the earlier 0.03-0.07 (2-4.5 px) was averaged to a flat colour before the UNet saw it.
PATTERN_PERIOD = (0.12, 0.20)


def _texture(rng: np.random.Generator, C: int, category: str, kind: str) -> np.ndarray:
    """Garment pattern on the canonical canvas: (C, C, 3) uint8."""
    u = rng.uniform
    base = _hsv(u(), u(0.35, 0.95), u(0.25, 0.85))
    second = _hsv(u(), u(0.0, 0.9), u(0.1, 0.95)) if u() < 0.7 else np.array([235.0, 230.0, 220.0])
    coords = (np.arange(C) + 0.5) / C
    uy, ux = np.meshgrid(coords, coords - 0.5, indexing="ij")   # (C, C) canonical units
    pattern = rng.choice(["solid", "hstripes", "vstripes", "dots", "checks", "diagonal"],
                         p=[0.25, 0.2, 0.1, 0.2, 0.1, 0.15])
    period, phase = u(*PATTERN_PERIOD), u(0, 1)
    if pattern == "hstripes":
        sel = ((uy / period + phase) % 1.0) < u(0.3, 0.6)
    elif pattern == "vstripes":
        sel = ((ux / period + phase) % 1.0) < u(0.3, 0.6)
    elif pattern == "diagonal":
        sel = (((ux + uy) / period + phase) % 1.0) < 0.5
    elif pattern == "checks":
        sel = ((np.floor(ux / period) + np.floor(uy / period)) % 2) == 0
    elif pattern == "dots":
        gy = uy / period
        gx = ux / period + 0.5 * (np.floor(gy) % 2)
        sel = (gx % 1.0 - 0.5) ** 2 + (gy % 1.0 - 0.5) ** 2 < u(0.06, 0.16)
    else:
        sel = np.zeros((C, C), bool)
    tex = np.where(sel[..., None], second, base).astype(np.float64)

    # a print and/or short text where it shows: the chest, a thigh or the skirt front
    centre = {"upper": (0.0, 0.33), "dress": (0.0, 0.33)}.get(category, (0.0, 0.62))
    if kind in ("trousers", "shorts"):
        centre = (0.065 * rng.choice([-1, 1]), 0.6)
    img = Image.fromarray(tex.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy = C / 2 + centre[0] * C, centre[1] * C
    ink = tuple(int(v) for v in (_hsv(u(), u(0.5, 1.0), u(0.1, 1.0)) if u() < 0.6
                                 else (255 - base if base.mean() < 128 else base * 0.25)))
    if u() < 0.4:
        r = u(0.02, 0.045) * C
        dx, dy = u(-0.03, 0.03) * C, u(-0.04, 0.0) * C
        shape = rng.choice(["circle", "square", "triangle", "star"])
        if shape == "circle":
            draw.ellipse([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=ink)
        elif shape == "square":
            draw.rectangle([cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r], fill=ink)
        else:
            n, inner = (3, 1.0) if shape == "triangle" else (5, 0.45)
            angles = np.linspace(-math.pi / 2, 1.5 * math.pi, 2 * n, endpoint=False)
            radii = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
            draw.polygon([(cx + dx + rr * math.cos(a), cy + dy + rr * math.sin(a)) for a, rr in zip(angles, radii)],
                         fill=ink)
    if u() < 0.5:
        text = "".join(rng.choice(list(_TEXT_CHARS), size=int(rng.integers(2, 5))))
        size = max(6, int(round((0.04 if kind in ("trousers", "shorts") else 0.05) * C)))
        text_ink = tuple(int(v) for v in (255 - base if base.mean() < 128 else base * 0.2))
        draw.text((cx, cy + 0.035 * C), text, fill=text_ink, font=_font(size), anchor="mm")
    return np.asarray(img)


def _make_garment(rng: np.random.Generator, category: str, C: int) -> _Garment:
    kind = str(rng.choice(_KINDS[category]))
    label = {"upper": _L["upper"], "dress": _L["dress"]}.get(category, _L["skirt"] if kind == "skirt" else _L["pants"])
    pieces = _pieces(rng, kind)
    K = np.array([[C, 0.0, C / 2], [0.0, C, 0.0]])     # canonical units -> canvas pixels
    alphas = []
    for piece in pieces:
        hit = _raster(_apply(K, piece.poly), (C, C))
        alpha = np.zeros((C, C), bool)
        if hit is not None:
            alpha[hit[0]] = hit[1]
        alphas.append(alpha)
    return _Garment(category, kind, label, pieces, _texture(rng, C, category, kind), alphas)


# --------------------------------------------------------------------------------------------
# people
# --------------------------------------------------------------------------------------------

@dataclass
class _Person:
    category: str
    bones: dict[str, np.ndarray]          # bone name (+ side) -> (2, 3) canonical -> pixel affine
    phi: dict[str, float]                 # limb angles
    arm_order: tuple[int, int]            # the crossing arm is drawn last
    skin: np.ndarray
    hair: np.ndarray
    hair_style: str
    hair_len: float
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    warp: tuple[float, ...]               # (ax, ay, lx, ly, px, py, fold_phase)
    other: _Garment | None                # the garment of the other body half (none for dresses)


# --------------------------------------------------------------------------------------------
# renderer
# --------------------------------------------------------------------------------------------

class SyntheticRenderer:
    """Renders the people and garments of one synthetic set; ``generate`` drives it.

    Args:
        height, width: output image size.
        seed: base seed; every person and garment has its own stream ``(seed, split, index, kind)``.
    """

    def __init__(self, height: int = 128, width: int = 96, seed: int = 0) -> None:
        self.H, self.W, self.seed = height, width, seed
        self.Hs, self.Ws = height * _SS, width * _SS
        self.C = self.Hs                     # canonical canvas side (square, holds flat-lay sleeves)

    # -- random streams -----------------------------------------------------------------------
    def _rng(self, split: str, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0 if split == "train" else 1, index, stream])

    def garment(self, split: str, index: int, category: str) -> _Garment:
        """The garment of item ``index`` (its ``cloth/`` image, worn in its ``image/``)."""
        return _make_garment(self._rng(split, index, 1), category, self.C)

    def person(self, split: str, index: int, category: str) -> _Person:
        """The person of item ``index``; ``category`` is the category of the garment it wears."""
        rng = self._rng(split, index, 0)
        u = rng.uniform
        s, kw = u(0.86, 0.96), u(0.9, 1.1)
        y0 = u(0.02 - s * 0.045, 0.975 - s * 0.95)
        cx = self.Ws / 2 + u(-0.03, 0.03) * self.Hs
        S = s * self.Hs
        torso = np.array([[S * kw, 0.0, cx], [0.0, S, y0 * self.Hs]])
        head = np.array([[S, 0.0, cx], [0.0, S, y0 * self.Hs]])
        bones: dict[str, np.ndarray] = {"torso": torso, "head": head}
        phi: dict[str, float] = {}
        modes = {}
        for side in (-1, 1):
            mode = str(rng.choice(["down", "out", "cross", "hip"], p=[0.45, 0.2, 0.2, 0.15]))
            if mode == "cross" and "cross" in modes.values():
                mode = "down"
            modes[side] = mode
            up = {"down": u(6, 18), "out": u(18, 28), "cross": u(2, 10), "hip": u(25, 35)}[mode]
            fore = {"down": up + u(-4, 8), "out": up + u(0, 10), "cross": u(-115, -75), "hip": u(-40, -20)}[mode]
            phi[f"uarm{side}"], phi[f"farm{side}"] = math.radians(up), math.radians(fore)
            phi[f"leg{side}"] = math.radians(u(1, 8))
            canon = _joints(side)
            for bone, joint_src, canon_phi in (("uarm", None, _CANON_ARM), ("farm", "uarm", _CANON_ARM),
                                               ("leg", None, _CANON_LEG)):
                joint_c = canon["shoulder" if bone == "uarm" else "elbow" if bone == "farm" else "hip"]
                parent = torso if joint_src is None else bones[f"{joint_src}{side}"]
                joint_b = _apply(parent, joint_c[None])[0]
                a_c = math.atan2(_dir(canon_phi, side)[1], _dir(canon_phi, side)[0])
                a_b = math.atan2(_dir(phi[f"{bone}{side}"], side)[1], _dir(phi[f"{bone}{side}"], side)[0])
                d = a_b - a_c
                lin = S * np.array([[math.cos(d), -math.sin(d)], [math.sin(d), math.cos(d)]])
                bones[f"{bone}{side}"] = np.concatenate([lin, (joint_b - lin @ joint_c)[:, None]], axis=1)
        arm_order = (1, -1) if modes[-1] == "cross" else (-1, 1)
        skin = _jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 8)
        hair = _jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 10)
        hair_style = str(rng.choice(["short", "long", "bun"], p=[0.45, 0.4, 0.15]))
        bg_h = u()
        bg_top = _hsv(bg_h, u(0.03, 0.25), u(0.8, 0.97))
        bg_bottom = _hsv(bg_h + u(-0.1, 0.1), u(0.03, 0.3), u(0.7, 0.92))
        warp = (u(0.004, 0.01), u(0.003, 0.008), u(0.12, 0.25), u(0.12, 0.25), u(0, 2 * math.pi),
                u(0, 2 * math.pi), u(0, 2 * math.pi))
        other_cat = {"upper": "lower", "lower": "upper"}.get(category)
        other = _make_garment(rng, other_cat, self.C) if other_cat else None
        return _Person(category, bones, phi, arm_order, skin, hair, hair_style, u(0.28, 0.40),
                       bg_top, bg_bottom, warp, other)

    # -- drawing --------------------------------------------------------------------------------
    def _bone(self, person: _Person, bone: str, side: int) -> np.ndarray:
        return person.bones[bone if bone in ("torso", "head") else f"{bone}{side}"]

    def _fill(self, rgb: np.ndarray, lab: np.ndarray, poly_px: np.ndarray, colour: np.ndarray, label: int) -> None:
        hit = _raster(poly_px, lab.shape)
        if hit is None:
            return
        sl, m = hit
        rgb[sl][m] = colour
        lab[sl][m] = label

    def _paint_piece(self, rgb: np.ndarray, lab: np.ndarray, person: _Person, garment: _Garment, k: int) -> None:
        """Sample piece ``k`` of ``garment`` from the canonical canvas onto the body (warped, shaded)."""
        piece, C = garment.pieces[k], self.C
        M = self._bone(person, piece.bone, piece.side)
        ax, ay, lx, ly, px, py, fold = person.warp
        poly = _apply(M, piece.poly)
        margin = (max(ax, ay) * self.Hs) + 2
        x0, y0 = max(int(poly[:, 0].min() - margin), 0), max(int(poly[:, 1].min() - margin), 0)
        x1, y1 = min(int(poly[:, 0].max() + margin) + 1, self.Ws), min(int(poly[:, 1].max() + margin) + 1, self.Hs)
        if x1 <= x0 or y1 <= y0:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
        Minv = _invert(M)
        ux = Minv[0, 0] * xs + Minv[0, 1] * ys + Minv[0, 2]          # (h, w) canonical units
        uy = Minv[1, 0] * xs + Minv[1, 1] * ys + Minv[1, 2]
        wx = ux + ax * np.sin(2 * math.pi * uy / ly + px)             # smooth sine warp
        wy = uy + ay * np.sin(2 * math.pi * ux / lx + py)
        qx = np.floor(C / 2 + wx * C).astype(np.int64)
        qy = np.floor(wy * C).astype(np.int64)
        inside = (qx >= 0) & (qx < C) & (qy >= 0) & (qy < C)
        qx, qy = np.clip(qx, 0, C - 1), np.clip(qy, 0, C - 1)
        sel = inside & garment.alphas[k][qy, qx]
        if piece.bone == "torso":
            n = ux / 0.15
        else:
            joint = _joints(piece.side)["shoulder" if piece.bone == "uarm" else
                                        "elbow" if piece.bone == "farm" else "hip"]
            phi0 = _CANON_LEG if piece.bone == "leg" else _CANON_ARM
            n = ((ux - joint[0]) * _perp(phi0, piece.side)[0] + (uy - joint[1]) * _perp(phi0, piece.side)[1]) / 0.045
        shade = np.clip(1.0 - 0.25 * n ** 2, 0.7, 1.0) * (1.0 + 0.05 * np.sin(2 * math.pi * (7 * uy + 2 * ux) + fold))
        colours = np.clip(garment.texture[qy, qx] * shade[..., None], 0, 255)   # (h, w, 3) float
        region = rgb[y0:y1, x0:x1]
        region[sel] = colours[sel]
        lab[y0:y1, x0:x1][sel] = garment.label

    def render(self, person: _Person, garment: _Garment) -> tuple[np.ndarray, np.ndarray]:
        """``person`` wearing ``garment`` (plus its other-half garment).

        Returns the supersampled RGB (Hs, Ws, 3) float and internal labels (Hs, Ws) uint8.
        """
        Hs, Ws = self.Hs, self.Ws
        t = np.linspace(0.0, 1.0, Hs)[:, None, None]
        rgb = np.broadcast_to(person.bg_top * (1 - t) + person.bg_bottom * t, (Hs, Ws, 3)).copy()  # (Hs, Ws, 3)
        lab = np.zeros((Hs, Ws), np.uint8)
        head, torso = person.bones["head"], person.bones["torso"]
        lower = garment if garment.category == "lower" else person.other if person.category == "upper" else None
        upper = garment if garment.category in ("upper", "dress") else person.other

        # 1. hair behind the body
        if person.hair_style == "long":
            back = _capsule(np.array([0.0, 0.1]), np.array([0.0, person.hair_len - 0.06]), 0.068, 0.08)
            self._fill(rgb, lab, _apply(head, back), _dark(person.hair, 0.85), _HAIR_BACK)
        # 2. legs and shoes
        for side in (-1, 1):
            j = _joints(side)
            M = person.bones[f"leg{side}"]
            self._fill(rgb, lab, _apply(M, _capsule(j["hip"], j["ankle"], 0.047, 0.026)), person.skin, _LEG[side])
            shoe = _ellipse(j["ankle"] + np.array([side * 0.012, 0.014]), 0.034, 0.02)
            self._fill(rgb, lab, _apply(M, shoe), np.array([45.0, 40, 40]), _SHOE[side])
        # 3. torso skin and neck
        self._fill(rgb, lab, _apply(torso, _TORSO_POLY), _dark(person.skin, 0.95), _TORSO_SKIN)
        neck = np.array([(-0.024, 0.15), (0.024, 0.15), (0.026, 0.245), (-0.026, 0.245)])
        self._fill(rgb, lab, _apply(head, neck), _dark(person.skin, 0.9), _L["neck"])
        # 4. lower garment, then the body of the top or dress
        if lower is not None:
            for k in range(len(lower.pieces)):
                self._paint_piece(rgb, lab, person, lower, k)
        if upper is not None:
            for k, piece in enumerate(upper.pieces):
                if piece.bone == "torso":
                    self._paint_piece(rgb, lab, person, upper, k)
        # 5. arms over the garment (a crossing forearm occludes it), each with its sleeves
        for side in person.arm_order:
            j = _joints(side)
            Mu, Mf = person.bones[f"uarm{side}"], person.bones[f"farm{side}"]
            top = j["shoulder"] + 0.02 * _dir(_CANON_ARM, side)     # keeps the round cap under the sleeve
            self._fill(rgb, lab, _apply(Mu, _capsule(top, j["elbow"], 0.027, 0.023)), person.skin, _ARM[side])
            self._fill(rgb, lab, _apply(Mf, _capsule(j["elbow"], j["wrist"], 0.023, 0.018)), person.skin, _ARM[side])
            hand = _ellipse(j["wrist"] + 0.018 * _dir(_CANON_ARM, side), 0.022, 0.026)
            self._fill(rgb, lab, _apply(Mf, hand), _dark(person.skin, 0.97), _ARM[side])
            if upper is not None:
                for k, piece in enumerate(upper.pieces):
                    if piece.side == side and piece.bone in ("uarm", "farm"):
                        self._paint_piece(rgb, lab, person, upper, k)
        # 6. face and front hair
        self._fill(rgb, lab, _apply(head, _ellipse((0.0, 0.115), 0.052, 0.068)), person.skin, _L["face"])
        for ex in (-0.02, 0.02):
            self._fill(rgb, lab, _apply(head, _ellipse((ex, 0.118), 0.007, 0.006, 8)), np.array([40.0, 30, 30]),
                       _L["face"])
        self._fill(rgb, lab, _apply(head, np.array([(-0.014, 0.152), (0.014, 0.152), (0.01, 0.157), (-0.01, 0.157)])),
                   np.array([150.0, 70, 70]), _L["face"])
        theta = np.linspace(math.pi - 0.35, 2 * math.pi + 0.35, 20)
        cap = np.concatenate([np.stack([0.059 * np.cos(theta), 0.1 + 0.066 * np.sin(theta)], 1),
                              np.array([(0.045, 0.09), (0.0, 0.085), (-0.045, 0.09)])])
        self._fill(rgb, lab, _apply(head, cap), person.hair, _L["hair"])
        if person.hair_style == "bun":
            self._fill(rgb, lab, _apply(head, _ellipse((0.0, 0.035), 0.03, 0.026)), person.hair, _L["hair"])
        elif person.hair_style == "long":
            for side in (-1, 1):
                strand = _capsule(np.array([side * 0.05, 0.11]), np.array([side * 0.085, person.hair_len - 0.03]),
                                  0.02, 0.018)
                self._fill(rgb, lab, _apply(head, strand), person.hair, _L["hair"])
        return rgb, lab

    # -- outputs ------------------------------------------------------------------------------
    def downsample(self, rgb: np.ndarray, lab: np.ndarray) -> tuple[Image.Image, np.ndarray]:
        """Supersampled render -> (RGB image at (H, W), LIP labels (H, W) uint8)."""
        img = Image.fromarray(np.round(rgb).astype(np.uint8)).resize((self.W, self.H), Image.Resampling.BOX)
        return img, _TO_LIP[lab[_SS // 2::_SS, _SS // 2::_SS]]

    def person_mask(self, person: _Person, lab: np.ndarray) -> np.ndarray:
        """The repaint mask (H, W) bool of ``person`` from its supersampled labels (module docstring)."""
        cat = person.category
        region = np.isin(lab, _REGION[cat])
        for bone, shape in _ENVELOPES[cat]:
            for side in ((0,) if bone == "torso" else (-1, 1)):
                if bone == "torso":
                    poly = shape
                else:
                    j = _joints(side)
                    joint = j["shoulder" if bone == "uarm" else "elbow" if bone == "farm" else "hip"]
                    poly = _band(joint, _CANON_LEG if bone == "leg" else _CANON_ARM, side, *shape)
                hit = _raster(_apply(self._bone(person, bone, side), poly), lab.shape)
                if hit is not None:
                    region[hit[0]] |= hit[1]
        blocks = (self.H, _SS, self.W, _SS)
        region_1x = region.reshape(blocks).any(axis=(1, 3))                   # (H, W)
        fixed_1x = np.isin(lab, _FIXED[cat]).reshape(blocks).all(axis=(1, 3))  # (H, W)
        r = max(1, round(0.03 * self.H))
        return ndimage.maximum_filter(region_1x, size=2 * r + 1, mode="constant", cval=0) & ~fixed_1x

    def flat(self, garment: _Garment) -> tuple[Image.Image, np.ndarray]:
        """The garment laid flat on a white (H, W) canvas, and its foreground (H, W) bool."""
        alpha = np.any(np.stack(garment.alphas), axis=0)                       # (C, C)
        ys, xs = np.nonzero(alpha)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.where(alpha[y0:y1, x0:x1, None], garment.texture[y0:y1, x0:x1], np.uint8(255))
        scale = min(0.86 * self.W / (x1 - x0), 0.86 * self.H / (y1 - y0))
        nw, nh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        ox, oy = (self.W - nw) // 2, (self.H - nh) // 2
        img = Image.new("RGB", (self.W, self.H), (255, 255, 255))
        img.paste(Image.fromarray(crop).resize((nw, nh), Image.Resampling.BOX), (ox, oy))
        a_img = Image.new("L", (self.W, self.H), 0)
        a_img.paste(Image.fromarray(alpha[y0:y1, x0:x1].astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.BOX),
                    (ox, oy))
        return img, np.asarray(a_img) >= 128


# --------------------------------------------------------------------------------------------
# writing the dataset
# --------------------------------------------------------------------------------------------

def _palette() -> list[int]:
    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, size=(256, 3))
    pal[0] = 0
    return pal.astype(np.uint8).ravel().tolist()


_PALETTE = _palette()


def _save_jpg(img: Image.Image, path: Path) -> None:
    img.save(path, format="JPEG", quality=95, subsampling=0)


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", optimize=False)


def _check_args(n_train: Any, n_test: Any, height: Any, width: Any, seed: Any,
                categories: Sequence[str]) -> tuple[str, ...]:
    for name, value, low in (("n_train", n_train, 0), ("n_test", n_test, 0), ("height", height, 32),
                             ("width", width, 24), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name}: expected an int >= {low}, got {value!r}")
    if isinstance(categories, str) or not categories:
        raise ConfigError(f"categories: expected a non-empty sequence of category names, got {categories!r}")
    return tuple(dict.fromkeys(canonical_category(c) for c in categories))


def generate(root: str | Path, *, n_train: int = 64, n_test: int = 16, height: int = 128, width: int = 96,
             seed: int = 0, categories: Sequence[str] = ("upper", "lower", "dress")) -> dict[str, Any]:
    """Write a synthetic VITON-HD-layout dataset under ``root`` (see the module docstring).

    Categories are spread evenly over the items of each split in a seeded order. Returns a
    summary dict: root, arguments, per-split category counts, the number of test pairs and of
    self pairs, and the number of files written.
    """
    summary = generate_part(root, 0, 1, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed,
                            categories=categories)
    write_summary(root, summary)
    return summary


def generate_part(root: str | Path, part: int, parts: int, *, n_train: int = 64, n_test: int = 16,
                  height: int = 128, width: int = 96, seed: int = 0,
                  categories: Sequence[str] = ("upper", "lower", "dress")) -> dict[str, Any]:
    """Write share ``part`` of ``parts`` of the dataset of :func:`generate` (items ``part, part + parts, ...`` of
    each split; part 0 also writes the split lists), without ``synthetic.json``.

    Every item is rendered from its own seeded stream, so the parts written by several processes together are
    byte-identical to one :func:`generate`; once all of them are done, :func:`write_summary` (once) marks the
    set complete. Returns the summary of the whole set.
    """
    cats = _check_args(n_train, n_test, height, width, seed, categories)
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise ConfigError(f"parts: expected an int >= 1, got {parts!r}")
    if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < parts:
        raise ConfigError(f"part: expected an int in [0, {parts - 1}], got {part!r}")
    root = Path(root)
    renderer = SyntheticRenderer(height, width, seed)
    summary: dict[str, Any] = {"root": str(root), "n_train": n_train, "n_test": n_test, "height": height,
                               "width": width, "seed": seed, "categories": list(cats), "counts": {}}
    for split, n, offset in (("train", n_train, 0), ("test", n_test, n_train)):
        d = root / split
        for sub in ("image", "cloth", "cloth-mask", "agnostic-mask", "agnostic-v3.2", "image-parse-v3") + \
                (("unpaired-gt",) if split == "test" else ()):
            (d / sub).mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng([seed, 0 if split == "train" else 1, 2]).permutation(n)
        item_cat = [cats[int(k) % len(cats)] for k in order]
        ids = [f"{offset + i:06d}_00" for i in range(n)]
        for i in range(part, n, parts):
            stem, cat = ids[i], item_cat[i]
            person, garment = renderer.person(split, i, cat), renderer.garment(split, i, cat)
            rgb_ss, lab_ss = renderer.render(person, garment)
            img, labels = renderer.downsample(rgb_ss, lab_ss)
            mask = renderer.person_mask(person, lab_ss)
            flat, flat_mask = renderer.flat(garment)
            _save_jpg(img, d / "image" / f"{stem}.jpg")
            _save_jpg(flat, d / "cloth" / f"{stem}.jpg")
            _save_jpg(Image.fromarray(flat_mask.astype(np.uint8) * 255), d / "cloth-mask" / f"{stem}.jpg")
            _save_png(Image.fromarray(mask.astype(np.uint8) * 255), d / "agnostic-mask" / f"{stem}_mask.png")
            agnostic = np.asarray(img).copy()
            agnostic[mask] = 128
            _save_jpg(Image.fromarray(agnostic), d / "agnostic-v3.2" / f"{stem}.jpg")
            parse = Image.fromarray(labels, mode="P")
            parse.putpalette(_PALETTE)
            _save_png(parse, d / "image-parse-v3" / f"{stem}.png")
        summary["counts"][split] = {c: item_cat.count(c) for c in cats}

        if split == "train":
            lines = [(s, s) for s in ids]
        else:  # unpaired ground truth: each person wearing the garment of another person of its category
            rng = np.random.default_rng([seed, 1, 3])
            partner: dict[int, int] = {}
            for c in cats:
                members = [i for i, ic in enumerate(item_cat) if ic == c]
                shuffled = [members[int(k)] for k in rng.permutation(len(members))]
                for a, b in zip(shuffled, shuffled[1:] + shuffled[:1]):
                    partner[a] = b
            lines = [(ids[i], ids[partner[i]]) for i in range(n)]
            for i in range(part, n, parts):
                j = partner[i]
                person, garment = renderer.person(split, i, item_cat[i]), renderer.garment(split, j, item_cat[j])
                gt, _ = renderer.downsample(*renderer.render(person, garment))
                _save_jpg(gt, d / "unpaired-gt" / f"{ids[i]}__{ids[j]}.jpg")
            summary["test_pairs"] = len(lines)
            summary["self_pairs"] = sum(a == b for a, b in lines)
        if part == 0:
            (d / "categories.txt").write_text("".join(f"{s} {c}\n" for s, c in zip(ids, item_cat)),
                                              encoding="utf-8")
            (root / f"{split}_pairs.txt").write_text("".join(f"{a}.jpg {b}.jpg\n" for a, b in lines),
                                                     encoding="utf-8")
    # per split: 6 files per item, categories.txt and the pair list; the test split's unpaired ground truth;
    # synthetic.json
    summary["files"] = 6 * (n_train + n_test) + 4 + n_test + 1
    return summary


def write_summary(root: str | Path, summary: dict[str, Any]) -> None:
    """Write ``synthetic.json``, which marks a set complete (after every part of :func:`generate_part`)."""
    root = Path(root)
    (root / "synthetic.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "root"}, indent=2,
                                                    sort_keys=True) + "\n", encoding="utf-8")
    logger.info("synthetic dataset: %d train + %d test items at %dx%d in %s", summary["n_train"], summary["n_test"],
                summary["height"], summary["width"], root)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point: ``python -m training.synthetic --out DIR ...``."""
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (VITON-HD layout)")
    parser.add_argument("--n-train", type=int, default=64, help="number of training items")
    parser.add_argument("--n-test", type=int, default=16, help="number of test items")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels")
    parser.add_argument("--width", type=int, default=96, help="image width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="base seed; the same seed writes identical files")
    parser.add_argument("--categories", nargs="+", default=["upper", "lower", "dress"],
                        help="garment categories to generate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = generate(args.out, n_train=args.n_train, n_test=args.n_test, height=args.height, width=args.width,
                       seed=args.seed, categories=args.categories)
    logger.info("%s", json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
