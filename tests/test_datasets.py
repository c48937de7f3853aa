"""Readers for VITON-HD and DressCode on tiny fixture trees built in their real layouts."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import DATASET_KINDS
from training.datasets import (DatasetError, DatasetFileError, DressCodeDataset, VitonHDDataset, detect_layout,
                               garment_mask_from_white_background, open_dataset)
from twgtm.config import CATEGORIES
from twgtm.errors import ConfigError

H, W = 32, 24
IDS = ["000001_00", "000002_00", "000003_00"]
GARMENT_ROWS, GARMENT_COLS = slice(8, 21), slice(6, 19)       # label 5 / the garment on the person
MASK_ROWS, MASK_COLS = slice(7, 22), slice(5, 20)             # the precomputed agnostic mask
CLOTH_ROWS, CLOTH_COLS = slice(6, 27), slice(4, 21)           # the flat garment on its canvas


def _person(colour):
    img = np.full((H, W, 3), 230, np.uint8)
    img[2:7, 9:15] = (200, 160, 140)        # face
    img[GARMENT_ROWS, GARMENT_COLS] = colour
    img[21:31, 7:18] = (40, 40, 90)          # pants
    return img


def _labels(garment_label, lower_label, face_label):
    lab = np.zeros((H, W), np.uint8)
    lab[2:7, 9:15] = face_label
    lab[GARMENT_ROWS, GARMENT_COLS] = garment_label
    lab[21:31, 7:18] = lower_label
    return lab


def _cloth(colour):
    img = np.full((H, W, 3), 255, np.uint8)
    img[CLOTH_ROWS, CLOTH_COLS] = colour
    img[12:14, 11:13] = 255                   # a white print inside the garment
    return img


def _save(arr, path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    if mode == "P":
        img.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)


def _rect_mask(rows, cols):
    m = np.zeros((H, W), bool)
    m[rows, cols] = True
    return m


def make_vitonhd(root: Path, mask_source="agnostic-mask", cloth_mask=True, categories=None):
    colours = [(200, 30, 30), (30, 160, 40), (30, 60, 200)]
    for split in ("train", "test"):
        d = root / split
        for stem, colour in zip(IDS, colours):
            _save(_person(colour), d / "image" / f"{stem}.jpg")
            _save(_cloth(colour), d / "cloth" / f"{stem}.jpg")
            if cloth_mask:
                _save(_rect_mask(CLOTH_ROWS, CLOTH_COLS).astype(np.uint8) * 255, d / "cloth-mask" / f"{stem}.jpg")
            if mask_source == "agnostic-mask":
                _save(_rect_mask(MASK_ROWS, MASK_COLS).astype(np.uint8) * 255, d / "agnostic-mask" / f"{stem}_mask.png")
            elif mask_source == "agnostic":
                agn = _person(colour)
                agn[MASK_ROWS, MASK_COLS] = 128
                _save(agn, d / "agnostic-v3.2" / f"{stem}.jpg")
            elif mask_source == "parse":
                _save(_labels(5, 9, 13), d / "image-parse-v3" / f"{stem}.png", mode="P")
        if categories:
            (d / "categories.txt").write_text("".join(f"{s} {c}\n" for s, c in zip(IDS, categories)))
    (root / "train_pairs.txt").write_text("".join(f"{s}.jpg {s}.jpg\n" for s in IDS))
    (root / "test_pairs.txt").write_text("".join(f"{a}.jpg {b}.jpg\n" for a, b in zip(IDS, IDS[1:] + IDS[:1])))
    return root


# --------------------------------------------------------------------------------------------
# VITON-HD
# --------------------------------------------------------------------------------------------

def test_vitonhd_items_shapes_ranges_and_paired_vs_unpaired(tmp_path):
    root = make_vitonhd(tmp_path)
    paired = VitonHDDataset(root, split="test", pairs="paired", size=(H, W))
    unpaired = VitonHDDataset(root, split="test", pairs="unpaired", size=(H, W))
    assert len(paired) == len(unpaired) == 3
    for i in range(3):
        a, b = paired[i], unpaired[i]
        for item in (a, b):
            assert item["person"].shape == item["garment"].shape == (3, H, W)
            assert item["person_mask"].shape == item["garment_mask"].shape == (1, H, W)
            for key in ("person", "garment"):
                assert item[key].dtype == torch.float32 and -1.0 <= item[key].min() and item[key].max() <= 1.0
            for key in ("person_mask", "garment_mask"):
                assert set(item[key].unique().tolist()) == {0.0, 1.0}
            assert item["category"] == "upper" and item["category_idx"] == CATEGORIES.index("upper")
            assert "garment_target" not in item
        assert a["person_id"] == a["garment_id"] == IDS[i]
        assert b["person_id"] == IDS[i] and b["garment_id"] == IDS[(i + 1) % 3]
        assert torch.equal(a["person"], b["person"])
        assert not torch.equal(a["garment"], b["garment"])
    # the precomputed agnostic mask and the cloth mask are read exactly
    assert torch.equal(paired[0]["person_mask"][0].bool(), torch.from_numpy(_rect_mask(MASK_ROWS, MASK_COLS)))
    assert torch.equal(paired[0]["garment_mask"][0].bool(), torch.from_numpy(_rect_mask(CLOTH_ROWS, CLOTH_COLS)))
    # train pairs are paired
    train = VitonHDDataset(root, split="train", pairs="unpaired", size=(H, W))
    assert [it["person_id"] == it["garment_id"] for it in train] == [True] * 3


def test_vitonhd_mask_from_agnostic_gray(tmp_path):
    root = make_vitonhd(tmp_path, mask_source="agnostic")
    mask = VitonHDDataset(root, split="test", size=(H, W))[1]["person_mask"][0].bool().numpy()
    expected = _rect_mask(MASK_ROWS, MASK_COLS)
    assert (mask == expected).mean() > 0.97
    assert mask[MASK_ROWS.start + 1:MASK_ROWS.stop - 1, MASK_COLS.start + 1:MASK_COLS.stop - 1].all()


def test_vitonhd_mask_from_parse_labels(tmp_path):
    root = make_vitonhd(tmp_path, mask_source="parse")
    mask = VitonHDDataset(root, split="train", size=(H, W))[0]["person_mask"][0].bool().numpy()
    # labels 5 dilated by max(1, round(10 * 32 / 512)) = 1 px, minus the face (13) and pants (9)
    expected = _rect_mask(slice(7, 22), slice(5, 20)) & ~_rect_mask(slice(21, 31), slice(7, 18))
    assert np.array_equal(mask, expected)


def _within_pixels(mask, expected, rim=2):
    grown = np.zeros_like(expected)
    ys, xs = np.nonzero(expected)
    grown[max(ys.min() - rim, 0):ys.max() + rim + 1, max(xs.min() - rim, 0):xs.max() + rim + 1] = True
    return bool(mask[expected].all() and not mask[~grown].any())


def test_vitonhd_garment_mask_without_cloth_mask_fills_white_print(tmp_path):
    root = make_vitonhd(tmp_path, cloth_mask=False)
    ds = VitonHDDataset(root, split="train", size=(H, W))
    for item in ds:   # the white print is a filled hole; JPEG chroma ringing of a 32x24 image adds a <= 2 px rim
        assert _within_pixels(item["garment_mask"][0].bool().numpy(), _rect_mask(CLOTH_ROWS, CLOTH_COLS))


def test_vitonhd_categories_file_and_filter(tmp_path):
    root = make_vitonhd(tmp_path, categories=["upper_body", "dress", "lower"])
    ds = VitonHDDataset(root, split="train", size=(H, W))
    assert [it["category"] for it in ds] == ["upper", "dress", "lower"]
    assert [it["category_idx"] for it in ds] == [0, 2, 1]
    only = VitonHDDataset(root, split="train", size=(H, W), categories=["dresses"])
    assert len(only) == 1 and only[0]["person_id"] == IDS[1]


def test_resize_keeps_aspect_with_white_and_zero_padding(tmp_path):
    root = make_vitonhd(tmp_path)
    item = VitonHDDataset(root, split="train", size=(32, 32))[0]
    assert item["person"].shape == (3, 32, 32) and item["person_mask"].shape == (1, 32, 32)
    pad = 4                                            # 24 px wide content centred in 32
    for key in ("person", "garment"):
        assert torch.all(item[key][:, :, :pad] == 1.0) and torch.all(item[key][:, :, -pad:] == 1.0)
    for key in ("person_mask", "garment_mask"):
        assert torch.all(item[key][:, :, :pad] == 0) and torch.all(item[key][:, :, -pad:] == 0)
    small = VitonHDDataset(root, split="train", size=(16, 12))[0]
    assert small["person"].shape == (3, 16, 12)
    assert set(small["person_mask"].unique().tolist()) == {0.0, 1.0}


def test_vitonhd_default_collate(tmp_path):
    root = make_vitonhd(tmp_path)
    batch = next(iter(torch.utils.data.DataLoader(VitonHDDataset(root, "test", "unpaired", size=(H, W)),
                                                  batch_size=3)))
    assert batch["person"].shape == (3, 3, H, W) and batch["category_idx"].tolist() == [0, 0, 0]
    assert batch["garment_id"] == [IDS[1], IDS[2], IDS[0]]


def test_missing_file_error_names_the_file(tmp_path):
    root = make_vitonhd(tmp_path)
    missing = root / "test" / "cloth" / f"{IDS[1]}.jpg"
    missing.unlink()
    ds = VitonHDDataset(root, split="test", pairs="unpaired", size=(H, W))
    with pytest.raises(DatasetFileError, match=str(missing)) as info:
        ds[0]
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DatasetError)
    (root / "test" / "agnostic-mask" / f"{IDS[2]}_mask.png").unlink()
    with pytest.raises(DatasetFileError, match=f"{IDS[2]}_mask.png"):
        ds[2]


def test_unreadable_file_error_names_the_file(tmp_path):
    root = make_vitonhd(tmp_path)
    bad = root / "train" / "image" / f"{IDS[0]}.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=str(bad)):
        VitonHDDataset(root, split="train", size=(H, W))[0]


def test_wrong_layout_errors_say_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match=r"train_pairs\.txt.*train/image/"):
        VitonHDDataset(tmp_path, split="train")
    with pytest.raises(DatasetError, match=r"VITON-HD.*DressCode"):
        open_dataset(tmp_path)
    root = make_vitonhd(tmp_path / "v")
    (root / "test_pairs.txt").write_text("only_one_column.jpg\n")
    with pytest.raises(DatasetError, match=r"test_pairs\.txt line 1"):
        VitonHDDataset(root, split="test")
    for f in (root / "test" / "agnostic-mask").iterdir():
        f.unlink()
    (root / "test" / "agnostic-mask").rmdir()
    with pytest.raises(DatasetError, match=r"agnostic-mask/.*image-parse-v3/"):
        VitonHDDataset(root, split="test")


def test_bad_arguments(tmp_path):
    root = make_vitonhd(tmp_path)
    with pytest.raises(DatasetError, match="split"):
        VitonHDDataset(root, split="val")
    with pytest.raises(DatasetError, match="pairs"):
        VitonHDDataset(root, pairs="both")
    with pytest.raises(DatasetError, match="size"):
        VitonHDDataset(root, size=(0, 24))
    with pytest.raises(DatasetError, match="categories"):
        VitonHDDataset(root, categories=["shoes"])
    with pytest.raises(ConfigError, match=r"kind: expected one of \('auto', 'vitonhd', 'dresscode'\), got 'deepfashion'"):
        open_dataset(root, kind="deepfashion")


# --------------------------------------------------------------------------------------------
# DressCode
# --------------------------------------------------------------------------------------------

DC_IDS = {"upper_body": ["013563", "013564"], "lower_body": ["020001", "020002"], "dresses": ["030001", "030002"]}
# SCHP-ATR labels of the garment on the body, per category folder
DC_GARMENT_LABEL = {"upper_body": 4, "lower_body": 6, "dresses": 7}


def _dc_labels(cat):
    lab = np.zeros((H, W), np.uint8)
    lab[2:7, 9:15] = 11                       # head
    lab[7:20, 5:19] = 4                       # upper clothes
    lab[20:28, 7:17] = 6                      # pants
    lab[28:31, 7:17] = 12                     # legs below the pants
    if cat == "dresses":
        lab[7:28, 5:19] = 7
    return lab


def make_dresscode(root: Path, cats=("upper_body", "lower_body", "dresses"), agnostic=False, masks=False):
    colours = [(200, 30, 30), (30, 60, 200)]
    for cat in cats:
        d = root / cat
        for gid, colour in zip(DC_IDS[cat], colours):
            person = np.full((H, W, 3), 235, np.uint8)
            person[_dc_labels(cat) > 0] = colour
            _save(person, d / "images" / f"{gid}_0.jpg")
            _save(_cloth(colour), d / "images" / f"{gid}_1.jpg")
            _save(_dc_labels(cat), d / "label_maps" / f"{gid}_4.png", mode="P")
            if agnostic:
                agnostic_mask = _rect_mask(slice(1, 9), slice(1, 9)).astype(np.uint8) * 255
                _save(agnostic_mask, d / "agnostic_masks" / f"{gid}_0.png")
            if masks:
                _save(_rect_mask(slice(0, 5), slice(0, 5)).astype(np.uint8) * 255, d / "masks" / f"{gid}_1.png")
        a, b = DC_IDS[cat]
        (d / "train_pairs.txt").write_text(f"{a}_0.jpg {a}_1.jpg\n{b}_0.jpg {b}_1.jpg\n")
        (d / "test_pairs_paired.txt").write_text(f"{a}_0.jpg {a}_1.jpg\n{b}_0.jpg {b}_1.jpg\n")
        (d / "test_pairs_unpaired.txt").write_text(f"{a}_0.jpg {b}_1.jpg\n{b}_0.jpg {a}_1.jpg\n")
    return root


def test_dresscode_items_categories_and_pairs(tmp_path):
    root = make_dresscode(tmp_path)
    assert detect_layout(root) == "dresscode"
    ds = open_dataset(root, split="test", pairs="unpaired", size=(H, W))
    assert isinstance(ds, DressCodeDataset) and len(ds) == 6
    assert [it["category"] for it in ds] == ["upper", "upper", "lower", "lower", "dress", "dress"]
    assert [it["category_idx"] for it in ds] == [0, 0, 1, 1, 2, 2]
    first = ds[0]
    assert first["person_id"] == "013563_0" and first["garment_id"] == "013564_1"
    assert first["person"].shape == first["garment"].shape == (3, H, W)
    assert -1.0 <= first["person"].min() and first["person"].max() <= 1.0
    paired = DressCodeDataset(root, split="test", pairs="paired", size=(H, W))
    assert all(it["person_id"][:-2] == it["garment_id"][:-2] for it in paired)
    only = DressCodeDataset(root, split="train", categories=["lower", "dresses"], size=(H, W))
    assert [it["category"] for it in only] == ["lower", "lower", "dress", "dress"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["person_mask"].shape == (6, 1, H, W) and batch["category_idx"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("cat", ["upper_body", "lower_body", "dresses"])
def test_dresscode_person_mask_from_label_maps(tmp_path, cat):
    root = make_dresscode(tmp_path, cats=(cat,))
    mask = DressCodeDataset(root, split="train", size=(H, W))[0]["person_mask"][0].bool().numpy()
    lab = _dc_labels(cat)
    garment = lab == DC_GARMENT_LABEL[cat]
    assert mask[garment].all()                               # covers the garment on the body
    assert not mask[lab == 11].any()                         # never the head
    if cat == "upper_body":
        assert not mask[(lab == 6) | (lab == 12)].any()      # keeps the lower half
    if cat == "lower_body":
        assert not mask[lab == 4].any() and mask[lab == 12].all()   # keeps the top, repaints the legs
    assert mask.sum() > garment.sum()                        # dilated beyond the garment


def test_dresscode_precomputed_masks_take_precedence(tmp_path):
    root = make_dresscode(tmp_path, cats=("upper_body",), agnostic=True, masks=True)
    item = DressCodeDataset(root, split="train", size=(H, W))[0]
    assert np.array_equal(item["person_mask"][0].bool().numpy(), _rect_mask(slice(1, 9), slice(1, 9)))
    assert np.array_equal(item["garment_mask"][0].bool().numpy(), _rect_mask(slice(0, 5), slice(0, 5)))
    derived = DressCodeDataset(make_dresscode(tmp_path / "b", cats=("upper_body",)), split="train", size=(H, W))
    assert _within_pixels(derived[0]["garment_mask"][0].bool().numpy(), _rect_mask(CLOTH_ROWS, CLOTH_COLS))


def test_dresscode_layout_errors(tmp_path):
    root = make_dresscode(tmp_path, cats=("upper_body",))
    with pytest.raises(DatasetError, match=r"lower_body"):
        DressCodeDataset(root, split="train", categories=["lower"])
    with pytest.raises(DatasetError, match=r"images/.*test_pairs_paired\.txt"):
        DressCodeDataset(tmp_path / "empty", split="test")
    (root / "upper_body" / "images" / "013564_1.jpg").unlink()
    ds = DressCodeDataset(root, split="train", size=(H, W))
    with pytest.raises(DatasetFileError, match="013564_1.jpg"):
        ds[1]
    (root / "upper_body" / "label_maps" / "013563_4.png").unlink()
    with pytest.raises(DatasetFileError, match=r"agnostic_masks.*013563_0\.png.*013563_4\.png"):
        ds[0]


def test_detect_layout_both_or_neither(tmp_path):
    make_vitonhd(tmp_path)
    make_dresscode(tmp_path, cats=("dresses",))
    with pytest.raises(DatasetError, match="both"):
        detect_layout(tmp_path)
    assert isinstance(open_dataset(tmp_path, kind="vitonhd", size=(H, W)), VitonHDDataset)


# --------------------------------------------------------------------------------------------
# the one dispatch from a dataset kind to its reader (open_dataset), used by the run's data building
# --------------------------------------------------------------------------------------------

def test_every_config_kind_has_a_reader():
    assert tuple(open_dataset.__globals__["_READERS"]) == DATASET_KINDS
    assert (VitonHDDataset.kind, DressCodeDataset.kind) == DATASET_KINDS


def test_run_datasets_open_through_the_one_dispatch(tmp_path):
    from training.config import load_run_config
    from training.data import build_eval_dataset, build_train_dataset
    from twgtm.config import TWGTMConfig

    viton, dc = make_vitonhd(tmp_path / "v"), make_dresscode(tmp_path / "d", cats=("dresses", "upper_body"))
    run = load_run_config(None, ["weights.random_base=true", f"data.datasets=[{{kind: vitonhd, root: {viton}}}, "
                                 f"{{kind: dresscode, root: {dc}, categories: [dresses]}}]"])
    cfg = TWGTMConfig.tiny(height=H, width=W)
    train = build_train_dataset(run, cfg)
    parts = train.datasets
    assert [type(p) for p in parts] == [VitonHDDataset, DressCodeDataset] and parts[1].categories == ("dress",)
    assert isinstance(build_eval_dataset(run, cfg, pairs="paired"), VitonHDDataset)

    # a kind that no reader has is a ConfigError naming the known ones (it used to fall through to DressCode)
    run.data.datasets[1].kind = "deepfashion"
    with pytest.raises(ConfigError, match=r"expected one of \('auto', 'vitonhd', 'dresscode'\), got 'deepfashion'"):
        build_train_dataset(run, cfg)
    with pytest.raises(ConfigError, match=r"data.datasets\[1\].kind: expected one of \('vitonhd', 'dresscode'\)"):
        load_run_config(None, ["weights.random_base=true", f"data.datasets=[{{kind: vitonhd, root: {viton}}}, "
                                                            f"{{kind: deepfashion, root: {dc}}}]"])


def test_garment_mask_from_white_background_closes_gaps():
    img = np.full((64, 48, 3), 255, np.uint8)
    img[10:50, 10:38] = (120, 20, 20)
    img[10:50, 23] = 250                 # a thin near-white seam splitting the garment
    img[25:30, 15:20] = 255              # a white print
    mask = garment_mask_from_white_background(img)
    expected = np.zeros((64, 48), bool)
    expected[10:50, 10:38] = True
    assert np.array_equal(mask, expected)
