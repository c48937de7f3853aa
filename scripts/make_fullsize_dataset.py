"""A few VITON-HD and DressCode items in their real on-disk layouts, as 1024x768 JPEGs (issue 12, items 3 and 5).

    nice -n 19 python scripts/make_fullsize_dataset.py DIR [--height 1024 --width 768] [--n 2]

Writes ``DIR/zalando-hd-resized`` (VITON-HD as distributed: ``{split}/image``, ``cloth``, ``cloth-mask``,
``agnostic-v3.2`` with the gray agnostic region, ``image-parse-v3`` LIP label PNGs, ``train_pairs.txt`` /
``test_pairs.txt``) and ``DIR/DressCode`` (``<category>/images/<id>_0.jpg`` person and ``<id>_1.jpg`` garment,
``label_maps/<id>_4.png`` SCHP-ATR labels, ``train_pairs.txt``, ``test_pairs_{paired,unpaired}.txt``). The
pictures are textured (seeded noise over body-shaped regions), so the JPEGs weigh and decode like photos
(~150-300 kB at 1024x768), which is what the loader throughput of docs/TRAINING.md is measured on.
Nothing here is read by the model library; the readers are ``training.datasets``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# label values: LIP (VITON-HD image-parse-v3) and SCHP-ATR (DressCode label_maps); see training/datasets.py
LIP = {"face": 13, "hair": 2, "upper": 5, "pants": 9, "left_arm": 14, "right_arm": 15}
ATR = {"head": 11, "upper": 4, "pants": 6, "dress": 7, "legs": 12}
DRESSCODE_CATEGORIES = ("upper_body", "lower_body", "dresses")


def _box(h: int, w: int, top: float, bottom: float, left: float, right: float) -> tuple[slice, slice]:
    return slice(int(top * h), int(bottom * h)), slice(int(left * w), int(right * w))


def _texture(rng: np.random.Generator, h: int, w: int, colour) -> np.ndarray:
    """A colour with low-frequency shading and pixel noise: compresses and decodes like a photo."""
    coarse = rng.normal(0, 18, (h // 32 + 1, w // 32 + 1, 1))
    shade = np.kron(coarse, np.ones((32, 32, 1)))[:h, :w]
    noise = rng.normal(0, 10, (h, w, 3))
    return np.clip(np.asarray(colour, np.float32) + shade + noise, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="P" if palette else None) if palette else Image.fromarray(arr)
    if palette:
        img.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    if path.suffix == ".jpg":
        img.save(path, quality=95)
    else:
        img.save(path)


def _person_and_labels(rng, h, w, colour, scheme: str, category: str):
    """A person photo on a light background and its label map (LIP or ATR values)."""
    img = _texture(rng, h, w, (228, 226, 222))
    lab = np.zeros((h, w), np.uint8)
    L = LIP if scheme == "lip" else ATR
    head = _box(h, w, 0.05, 0.2, 0.4, 0.6)
    upper = _box(h, w, 0.22, 0.58, 0.25, 0.75)
    lower = _box(h, w, 0.58, 0.92, 0.3, 0.7)
    img[head] = _texture(rng, h, w, (200, 160, 140))[head]
    lab[head] = L["face"] if scheme == "lip" else L["head"]
    if scheme == "lip":
        for side, box in (("left_arm", _box(h, w, 0.24, 0.55, 0.15, 0.25)),
                          ("right_arm", _box(h, w, 0.24, 0.55, 0.75, 0.85))):
            img[box] = _texture(rng, h, w, (200, 160, 140))[box]
            lab[box] = L[side]
    garment = {"upper_body": upper, "lower_body": lower, "dresses": _box(h, w, 0.22, 0.85, 0.25, 0.75)}[category]
    other = lower if category == "upper_body" else upper
    if category != "dresses":
        img[other] = _texture(rng, h, w, (40, 40, 90))[other]
        lab[other] = L["pants"] if category == "upper_body" else L["upper"]
    img[garment] = _texture(rng, h, w, colour)[garment]
    lab[garment] = {"upper_body": L["upper"], "lower_body": L["pants"],
                    "dresses": L.get("dress", L["upper"])}[category]
    if scheme == "atr" and category != "dresses":
        legs = _box(h, w, 0.92, 0.98, 0.3, 0.7)
        lab[legs] = L["legs"]
    return img, lab, garment


def _cloth(rng, h, w, colour):
    """The flat garment on white, and its mask."""
    img = np.full((h, w, 3), 255, np.uint8)
    box = _box(h, w, 0.12, 0.88, 0.16, 0.84)
    img[box] = _texture(rng, h, w, colour)[box]
    mask = np.zeros((h, w), np.uint8)
    mask[box] = 255
    return img, mask


def _colours(n: int, rng) -> list[tuple[int, int, int]]:
    return [tuple(int(c) for c in rng.integers(30, 220, 3)) for _ in range(n)]


def write_vitonhd(root: str | Path, n: int = 2, height: int = 1024, width: int = 768, seed: int = 0) -> Path:
    """``n`` items per split in VITON-HD's layout (``zalando-hd-resized``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        d = root / split
        stems = [f"{i + 1:06d}_00" for i in range(n)]
        for stem, colour in zip(stems, _colours(n, rng)):
            person, labels, garment_box = _person_and_labels(rng, height, width, colour, "lip", "upper_body")
            cloth, cloth_mask = _cloth(rng, height, width, colour)
            agnostic = person.copy()
            rows, cols = garment_box
            agnostic[max(rows.start - 8, 0):rows.stop + 8, max(cols.start - 8, 0):cols.stop + 8] = 128
            _save(person, d / "image" / f"{stem}.jpg")
            _save(cloth, d / "cloth" / f"{stem}.jpg")
            _save(cloth_mask, d / "cloth-mask" / f"{stem}.jpg")
            _save(agnostic, d / "agnostic-v3.2" / f"{stem}.jpg")
            _save(labels, d / "image-parse-v3" / f"{stem}.png", palette=True)
        pairs = zip(stems, stems) if split == "train" else zip(stems, stems[1:] + stems[:1])
        (root / f"{split}_pairs.txt").write_text("".join(f"{a}.jpg {b}.jpg\n" for a, b in pairs))
    return root


def write_dresscode(root: str | Path, n: int = 2, height: int = 1024, width: int = 768, seed: int = 1,
                    categories=DRESSCODE_CATEGORIES) -> Path:
    """``n`` items per category (shared by train and test, as the real pairs files index one ``images/``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for ci, cat in enumerate(categories):
        d = root / cat
        ids = [f"{(ci + 1) * 10000 + i + 1:06d}" for i in range(n)]
        for gid, colour in zip(ids, _colours(n, rng)):
            person, labels, _ = _person_and_labels(rng, height, width, colour, "atr", cat)
            cloth, _ = _cloth(rng, height, width, colour)
            _save(person, d / "images" / f"{gid}_0.jpg")
            _save(cloth, d / "images" / f"{gid}_1.jpg")
            _save(labels, d / "label_maps" / f"{gid}_4.png", palette=True)
        paired = "".join(f"{g}_0.jpg {g}_1.jpg\n" for g in ids)
        (d / "train_pairs.txt").write_text(paired)
        (d / "test_pairs_paired.txt").write_text(paired)
        (d / "test_pairs_unpaired.txt").write_text("".join(f"{a}_0.jpg {b}_1.jpg\n"
                                                           for a, b in zip(ids, ids[1:] + ids[:1])))
    return root


def write_both(root: str | Path, n: int = 2, height: int = 1024, width: int = 768) -> dict[str, Path]:
    root = Path(root)
    return {"vitonhd": write_vitonhd(root / "zalando-hd-resized", n, height, width),
            "dresscode": write_dresscode(root / "DressCode", n, height, width)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=2, help="items per VITON-HD split and per DressCode category")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=768)
    args = p.parse_args(argv)
    for kind, path in write_both(args.dir, args.n, args.height, args.width).items():
        print(f"{kind:10s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
