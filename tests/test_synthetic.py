"""The synthetic VITON-HD-layout generator: determinism, layout, masks, unpaired ground truth."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from training.datasets import VitonHDDataset, open_dataset
from training.synthetic import LIP_LABELS, SyntheticRenderer, generate, generate_part, write_summary
from twgtm.errors import ConfigError

N_TRAIN, N_TEST, H, W = 9, 6, 128, 96
GARMENT_LABELS = {"upper": (LIP_LABELS["upper"],), "lower": (LIP_LABELS["pants"], LIP_LABELS["skirt"]),
                  "dress": (LIP_LABELS["dress"],)}
SUBDIRS = ("image", "cloth", "cloth-mask", "agnostic-mask", "agnostic-v3.2", "image-parse-v3")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(root, n_train=N_TRAIN, n_test=N_TEST, height=H, width=W, seed=0)
    return root, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(Path(n).stem for n in line.split()) for line in path.read_text().splitlines() if line.strip()]


def _categories(root: Path, split: str) -> dict[str, str]:
    return dict(line.split() for line in (root / split / "categories.txt").read_text().splitlines())


def test_same_seed_same_bytes_other_seed_differs(synth, tmp_path):
    root, _ = synth
    again = tmp_path / "again"
    generate(again, n_train=N_TRAIN, n_test=N_TEST, height=H, width=W, seed=0)
    reference, repeat = _files(root), _files(again)
    assert reference.keys() == repeat.keys()
    assert all(reference[k] == repeat[k] for k in reference)
    other = tmp_path / "other"
    generate(other, n_train=N_TRAIN, n_test=N_TEST, height=H, width=W, seed=1)
    changed = _files(other)
    images = [k for k in reference if k.startswith(("train/image/", "test/cloth/"))]
    assert images and all(reference[k] != changed[k] for k in images)


def test_parts_written_by_several_processes_are_the_same_bytes(synth, tmp_path):
    """The main job's processes each write a share of the items (``generate_part``), in any order; with the
    summary written last, the folder is byte-identical to one ``generate`` (and no part writes the summary)."""
    root, summary = synth
    parts = tmp_path / "parts"
    made = [generate_part(parts, k, 3, n_train=N_TRAIN, n_test=N_TEST, height=H, width=W, seed=0) for k in (2, 0, 1)]
    assert not (parts / "synthetic.json").exists()
    assert all({**m, "root": summary["root"]} == summary for m in made)  # the same summary but its root
    write_summary(parts, made[0])
    reference, joined = _files(root), _files(parts)
    assert reference.keys() == joined.keys() and all(reference[k] == joined[k] for k in reference)
    assert summary["files"] == len(reference)
    only = tmp_path / "only"
    generate_part(only, 1, 2, n_train=N_TRAIN, n_test=N_TEST, height=H, width=W, seed=0)
    assert sorted(p.name for p in (only / "train" / "image").iterdir()) == [f"{i:06d}_00.jpg" for i in range(1, N_TRAIN, 2)]
    assert not (only / "train_pairs.txt").exists()  # the split lists are part 0's


@pytest.mark.parametrize("part, parts", [(2, 2), (-1, 2), (0, 0), (True, 2), (0, 1.0)])
def test_bad_parts(tmp_path, part, parts):
    with pytest.raises(ConfigError, match="part"):
        generate_part(tmp_path / "bad", part, parts, n_train=1, n_test=1, height=64, width=48)


def test_counts_layout_and_pairs(synth):
    root, summary = synth
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for sub in SUBDIRS:
            assert len(list((root / split / sub).iterdir())) == n, (split, sub)
        cats = _categories(root, split)
        assert len(cats) == n and sorted(set(cats.values())) == ["dress", "lower", "upper"]
        assert summary["counts"][split] == {c: n // 3 for c in ("upper", "lower", "dress")}
        for stem in cats:
            assert (root / split / "image" / f"{stem}.jpg").is_file()
            assert (root / split / "agnostic-mask" / f"{stem}_mask.png").is_file()
            with Image.open(root / split / "image" / f"{stem}.jpg") as im:
                assert im.format == "JPEG" and im.size == (W, H)
    train = _pairs(root / "train_pairs.txt")
    assert len(train) == N_TRAIN and all(a == b for a, b in train)
    test, cats = _pairs(root / "test_pairs.txt"), _categories(root, "test")
    assert len(test) == N_TEST and summary["self_pairs"] == 0
    assert all(a != b and cats[a] == cats[b] for a, b in test)
    assert sorted(b for _, b in test) == sorted(cats)          # every test garment is used once
    assert set(_categories(root, "train")).isdisjoint(cats)    # ids are unique across splits


def test_masks_binary_nonempty_and_consistent(synth):
    root, _ = synth
    for split in ("train", "test"):
        for stem, cat in _categories(root, split).items():
            person_mask = np.asarray(Image.open(root / split / "agnostic-mask" / f"{stem}_mask.png"))
            assert set(np.unique(person_mask).tolist()) == {0, 255}
            person_mask = person_mask > 0
            # the person mask covers the garment on the body
            parse = np.asarray(Image.open(root / split / "image-parse-v3" / f"{stem}.png"))
            on_body = np.isin(parse, GARMENT_LABELS[cat])
            assert on_body.sum() > 0.02 * H * W and person_mask[on_body].all()
            face = ndimage.binary_erosion(parse == LIP_LABELS["face"])   # the rim may share pixels with the neck
            assert face.any() and not person_mask[face].any()
            # the garment mask is non-empty, inside the canvas, and everything outside it is white
            raw = np.asarray(Image.open(root / split / "cloth-mask" / f"{stem}.jpg").convert("L"))
            assert np.mean((raw > 60) & (raw < 195)) < 0.01          # a JPEG of a binary mask
            garment_mask = raw >= 128
            assert 0.1 * H * W < garment_mask.sum() < 0.9 * H * W
            assert not (garment_mask[0].any() or garment_mask[-1].any() or garment_mask[:, 0].any()
                        or garment_mask[:, -1].any())
            cloth = np.asarray(Image.open(root / split / "cloth" / f"{stem}.jpg")).astype(int)
            outside = ~ndimage.binary_dilation(garment_mask, iterations=2)   # JPEG ringing stays within 2 px
            assert cloth[outside].min() >= 230 and np.mean(cloth[outside].min(axis=-1) >= 245) > 0.98
            assert np.mean(cloth[garment_mask].min(axis=-1) < 235) > 0.9
            # the agnostic image is the person with the mask painted gray
            agnostic = np.asarray(Image.open(root / split / "agnostic-v3.2" / f"{stem}.jpg")).astype(int)
            assert np.abs(agnostic[person_mask] - 128).mean() < 4


def test_unpaired_ground_truth_for_every_test_pair(synth):
    root, _ = synth
    test = _pairs(root / "test_pairs.txt")
    gt = root / "test" / "unpaired-gt"
    assert sorted(p.name for p in gt.iterdir()) == sorted(f"{a}__{b}.jpg" for a, b in test)
    for a, b in test:
        person = np.asarray(Image.open(root / "test" / "image" / f"{a}.jpg")).astype(int)
        target = np.asarray(Image.open(gt / f"{a}__{b}.jpg")).astype(int)
        mask = np.asarray(Image.open(root / "test" / "agnostic-mask" / f"{a}_mask.png")) > 0
        changed = np.abs(person - target).max(axis=-1) > 40
        assert changed.any() and not changed[~mask].any()       # the swap stays inside the repaint mask


def test_swap_changes_pixels_only_inside_the_person_mask():
    renderer = SyntheticRenderer(H, W, seed=5)
    for cat in ("upper", "lower", "dress"):
        for i in range(4):
            person = renderer.person("test", i, cat)
            own, other = renderer.garment("test", i, cat), renderer.garment("test", i + 50, cat)
            rgb_a, lab_a = renderer.render(person, own)
            rgb_b, lab_b = renderer.render(person, other)
            mask = renderer.person_mask(person, lab_a)
            img_a, _ = renderer.downsample(rgb_a, lab_a)
            img_b, _ = renderer.downsample(rgb_b, lab_b)
            changed = np.any(np.asarray(img_a) != np.asarray(img_b), axis=-1)
            assert changed.sum() > 50 and not changed[~mask].any(), (cat, i)


def test_read_back_by_vitonhd_reader(synth):
    root, _ = synth
    unpaired = open_dataset(root, split="test", pairs="unpaired", size=(H, W))
    assert isinstance(unpaired, VitonHDDataset) and len(unpaired) == N_TEST
    cats = _categories(root, "test")
    batch = next(iter(torch.utils.data.DataLoader(unpaired, batch_size=N_TEST)))
    assert batch["garment_target"].shape == (N_TEST, 3, H, W)
    assert batch["category"] == [cats[p] for p in batch["person_id"]]
    assert all(p != g for p, g in zip(batch["person_id"], batch["garment_id"]))
    for key in ("person_mask", "garment_mask"):
        assert set(batch[key].unique().tolist()) == {0.0, 1.0}
    assert "garment_target" not in VitonHDDataset(root, split="test", pairs="paired", size=(H, W))[0]
    train = VitonHDDataset(root, split="train", size=(64, 48), categories=["dress"])
    assert len(train) == N_TRAIN // 3 and train[0]["person"].shape == (3, 64, 48)


def test_preview_grid(synth):
    """Writes /tmp/synthetic_preview.png: person, cloth, cloth-mask, agnostic, unpaired GT and its cloth."""
    root, _ = synth
    rows = []
    for a, b in _pairs(root / "test_pairs.txt"):
        t = root / "test"
        tiles = [t / "image" / f"{a}.jpg", t / "cloth" / f"{a}.jpg", t / "cloth-mask" / f"{a}.jpg",
                 t / "agnostic-v3.2" / f"{a}.jpg", t / "unpaired-gt" / f"{a}__{b}.jpg", t / "cloth" / f"{b}.jpg"]
        rows.append([Image.open(p).convert("RGB") for p in tiles])
    grid = Image.new("RGB", (W * len(rows[0]), H * len(rows)), (0, 0, 0))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            grid.paste(tile, (c * W, r * H))
    grid.save("/tmp/synthetic_preview.png")
    assert Image.open("/tmp/synthetic_preview.png").size == (6 * W, N_TEST * H)


def test_cli_writes_the_layout(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "training.synthetic", "--out", str(out), "--n-train", "3", "--n-test", "3",
           "--height", "64", "--width", "48", "--seed", "2", "--categories", "upper", "dresses"]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True, timeout=120)
    assert len(list((out / "train" / "image").iterdir())) == 3
    assert set(_categories(out, "test").values()) <= {"upper", "dress"}
    with Image.open(out / "test" / "image" / "000003_00.jpg") as im:
        assert im.size == (48, 64)


def test_single_item_category_is_paired_with_itself(tmp_path):
    summary = generate(tmp_path / "s", n_train=0, n_test=1, height=64, width=48, categories=("lower",))
    assert summary["self_pairs"] == 1 and _pairs(tmp_path / "s" / "test_pairs.txt") == [("000000_00", "000000_00")]
    assert (tmp_path / "s" / "test" / "unpaired-gt" / "000000_00__000000_00.jpg").is_file()
    assert (tmp_path / "s" / "train_pairs.txt").read_text() == ""


@pytest.mark.parametrize("kwargs, match", [({"n_train": -1}, "n_train"), ({"height": 8}, "height"),
                                           ({"categories": ("shoes",)}, "category"),
                                           ({"categories": ()}, "categories")])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(tmp_path / "bad", **kwargs)


def test_patterns_survive_the_toy_vaes_4x4_latent_cells():
    """Stripes, checks and dots are coarse enough for the synthetic preset's 4x VAE at 64x48: averaged over 4x4
    blocks (one latent cell) inside the flat garment, most of the pattern's colour variance is kept. With the
    earlier periods (0.03-0.07) the median kept share was 0.24: the patterns were gone before the UNet saw them."""

    r = SyntheticRenderer(64, 48, 0)
    kept = []
    for i in range(60):
        flat, m = r.flat(r.garment("train", i, ("upper", "lower", "dress")[i % 3]))
        x, m = np.asarray(flat, dtype=np.float64), np.asarray(m, bool)
        inside = m.reshape(16, 4, 12, 4).all(axis=(1, 3))
        blocks = x.reshape(16, 4, 12, 4, 3).transpose(0, 2, 1, 3, 4)[inside]   # (n, 4, 4, 3) cells in the garment
        total = blocks.reshape(-1, 3).var(0).sum()
        if inside.sum() >= 8 and total >= 100:                                  # a patterned garment
            kept.append(blocks.mean((1, 2)).var(0).sum() / total)
    assert len(kept) >= 30
    assert np.median(kept) > 0.5
