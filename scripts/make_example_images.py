"""Draw the small example inputs of the ComfyUI workflows (workflows/example_inputs/).

The pictures are simple flat drawings made here (no dataset image is used): two people wearing tops and
one flat garment on white, plus the upper-body masks (white = region to dress) of both people.

    python scripts/make_example_images.py [--out workflows/example_inputs]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SKIN = (224, 182, 150)
HAIR = (60, 42, 30)
TROUSERS = (46, 52, 80)
SHOES = (30, 30, 30)


def _scale(points, s: float, dx: float = 0.0, dy: float = 0.0):
    return [(x * s + dx, y * s + dy) for x, y in points]


# A top in a 192 x 256 frame (front view): body, two sleeves, neckline.
TOP_BODY = [(66, 78), (126, 78), (132, 168), (60, 168)]
TOP_SLEEVE_L = [(66, 78), (44, 92), (36, 124), (56, 130), (64, 104)]
TOP_SLEEVE_R = [(126, 78), (148, 92), (156, 124), (136, 130), (128, 104)]


def draw_person(size: tuple[int, int], top_color, stripe_color=None, *, shift: float = 0.0):
    """A standing person in a 3:4 frame wearing a top in ``top_color``; returns (image, upper-body mask)."""
    w, h = size
    s = w / 192.0
    img = Image.new("RGB", size, (236, 236, 240))
    d = ImageDraw.Draw(img)
    for y in range(h):  # soft floor gradient
        c = int(236 - 30 * max(0.0, (y / h) - 0.75) * 4)
        d.line([(0, y), (w, y)], fill=(c, c, c + 4))
    dx = shift * s
    # legs, shoes, arms, head
    d.rectangle(_box((70, 166, 94, 236), s, dx), fill=TROUSERS)
    d.rectangle(_box((98, 166, 122, 236), s, dx), fill=TROUSERS)
    d.rectangle(_box((66, 164, 126, 184), s, dx), fill=TROUSERS)
    d.ellipse(_box((64, 230, 96, 244), s, dx), fill=SHOES)
    d.ellipse(_box((96, 230, 128, 244), s, dx), fill=SHOES)
    d.polygon(_scale([(40, 124), (54, 128), (52, 162), (40, 160)], s, dx), fill=SKIN)
    d.polygon(_scale([(152, 124), (138, 128), (140, 162), (152, 160)], s, dx), fill=SKIN)
    d.rectangle(_box((88, 62, 104, 80), s, dx), fill=SKIN)
    d.ellipse(_box((74, 22, 118, 70), s, dx), fill=SKIN)
    d.chord(_box((72, 18, 120, 56), s, dx), 180, 360, fill=HAIR)
    # the top
    for part in (TOP_BODY, TOP_SLEEVE_L, TOP_SLEEVE_R):
        d.polygon(_scale(part, s, dx), fill=top_color)
    if stripe_color is not None:
        for y in range(88, 166, 14):
            d.rectangle(_box((62, y, 130, y + 5), s, dx), fill=stripe_color)
    d.pieslice(_box((86, 70, 106, 88), s, dx), 0, 180, fill=SKIN)  # neckline

    mask = Image.new("L", size, 0)
    m = ImageDraw.Draw(mask)
    for part in (TOP_BODY, TOP_SLEEVE_L, TOP_SLEEVE_R):
        m.polygon(_scale(part, s, dx), fill=255)
    m.polygon(_scale([(36, 120), (58, 126), (56, 166), (36, 164)], s, dx), fill=255)  # arms: sleeves may be longer
    m.polygon(_scale([(156, 120), (134, 126), (136, 166), (156, 164)], s, dx), fill=255)
    mask = mask.filter(ImageFilter.MaxFilter(max(3, int(9 * s) | 1)))  # dilate: the agnostic region is generous
    mask = mask.point(lambda v: 255 if v >= 128 else 0)
    return img.filter(ImageFilter.SMOOTH), mask


def _box(b, s: float, dx: float):
    x0, y0, x1, y1 = b
    return (x0 * s + dx, y0 * s, x1 * s + dx, y1 * s)


def draw_garment(size: tuple[int, int], color, print_color):
    """A flat short-sleeve top on white (catalogue style), centred in a 3:4 frame."""
    w, _ = size
    s = w / 192.0
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    body = [(56, 70), (136, 70), (140, 206), (52, 206)]
    sleeve_l = [(56, 70), (24, 90), (14, 128), (42, 136), (56, 108)]
    sleeve_r = [(136, 70), (168, 90), (178, 128), (150, 136), (136, 108)]
    for part in (body, sleeve_l, sleeve_r):
        d.polygon(_scale(part, s), fill=color)
    d.pieslice(_box((80, 58, 112, 84), s, 0), 0, 180, fill=(255, 255, 255))  # neckline
    d.ellipse(_box((82, 110, 110, 138), s, 0), fill=print_color)              # chest print
    return img.filter(ImageFilter.SMOOTH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "workflows" / "example_inputs"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    person_a, mask_a = draw_person((192, 256), (196, 40, 46), (250, 250, 250))
    person_b, mask_b = draw_person((216, 288), (40, 84, 170), shift=6.0)
    garment = draw_garment((192, 256), (46, 150, 88), (250, 214, 64))
    for name, im in [("person_a.png", person_a), ("person_a_mask.png", mask_a), ("person_b.png", person_b),
                     ("person_b_mask.png", mask_b), ("garment.png", garment)]:
        im.save(out / name, optimize=True)


if __name__ == "__main__":
    main()
