"""A run's datasets, built in one place for the trainer, stage 0, the report and ``evaluate``.

* :func:`prepare_data` generates the run's synthetic set once (:mod:`training.synthetic`).
* :func:`build_train_dataset`: every training set of the run at the model size, concatenated (the synthetic set
  first), optionally decoded once (:class:`CachedDataset`) and mirrored (:class:`FlipDataset`).
* :func:`build_eval_dataset`: the held-out split of the run's first dataset (sample grids, the report).
* :func:`open_split`: one split of one dataset root; the kind -> reader dispatch is
  :func:`training.datasets.open_dataset` (an unknown kind is a ConfigError listing the known ones).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError

from .config import RunConfig
from .datasets import DressCodeDataset, VitonHDDataset, detect_layout, open_dataset
from .synthetic import generate_part, write_summary

logger = logging.getLogger(__name__)

__all__ = ["CachedDataset", "FlipDataset", "open_split", "prepare_data", "build_train_dataset", "build_eval_dataset"]


class CachedDataset(Dataset):
    """Every item decoded once, up front (small sets only)."""

    def __init__(self, base: Dataset):
        self.items = [base[i] for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class FlipDataset(Dataset):
    """Indices are ``(index, flip)`` pairs from :class:`training.trainer.ResumableBatchSampler`; ``flip`` mirrors
    every image and mask of the item (person, garment and both masks stay consistent). A plain index reads the
    item unflipped."""

    _IMAGE_KEYS = ("person", "garment", "person_mask", "garment_mask", "garment_target")

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key) -> dict:
        index, flip = key if isinstance(key, tuple) else (key, False)
        item = self.base[index]
        if flip:
            item = dict(item)
            for k in self._IMAGE_KEYS:
                if k in item:
                    item[k] = torch.flip(item[k], dims=(-1,))
        return item


def open_split(root: str, kind: str = "auto", *, split: str, pairs: str, size: Sequence[int],
               categories: Optional[Sequence[str]] = None) -> VitonHDDataset | DressCodeDataset:
    """One split of the dataset at ``root`` (``kind="auto"`` detects the layout). ``categories`` select DressCode
    categories (None: every one present); a VITON-HD root is read whole. The reader's ``.kind`` names its layout."""
    if kind == "auto":
        kind = detect_layout(root)
    extra = {"categories": categories} if kind == "dresscode" else {}
    return open_dataset(root, kind, split=split, pairs=pairs, size=tuple(size), **extra)


def validation_root(run: RunConfig) -> Optional[Path]:
    """The synthetic validation set's folder (``data.synthetic.n_val`` items, another seed), or None."""
    spec = run.data.synthetic
    return Path(run.resolve(spec.val_root)) if spec is not None and spec.n_val > 0 else None


def _synthetic_sets(run: RunConfig) -> list[tuple[str, Path, dict]]:
    """(config key, folder, generator arguments) of every synthetic set the run uses: training + test, validation."""
    spec = run.data.synthetic
    if spec is None:
        return []
    common = {"height": spec.height, "width": spec.width, "categories": list(spec.categories)}
    sets = [("data.synthetic", Path(run.resolve(spec.root)),
             {"n_train": spec.n_train, "n_test": spec.n_test, "seed": spec.seed, **common})]
    val = validation_root(run)
    if val is not None:
        seed = spec.seed + 1 if spec.val_seed is None else spec.val_seed
        sets.append(("data.synthetic.val_root", val, {"n_train": 0, "n_test": spec.n_val, "seed": seed, **common}))
    return sets


def prepare_data(run: RunConfig, accelerator) -> None:
    """Generate the synthetic sets once if the run uses them and they are not there yet, every process writing
    its share of the items (byte-identical to one process's); a set there generated with other parameters
    (``synthetic.json``) is a ConfigError, never silently reused."""
    rank, world = accelerator.process_index, accelerator.num_processes
    for key, root, want in _synthetic_sets(run):
        summary = root / "synthetic.json"
        todo = not summary.is_file()  # every process decides before the barrier below, so all decide alike
        if accelerator.is_main_process and not todo:  # generated before: reused only if it is this config's
            try:
                previous = json.loads(summary.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = {}
            differ = {k: previous.get(k) for k, v in want.items() if previous.get(k) != v}
            if differ:
                raise ConfigError(f"{key}: {str(root)!r} holds a synthetic set generated with {differ}, the config "
                                  f"asks for {({k: want[k] for k in differ})}; delete that folder (it is "
                                  f"regenerated) or set {key if key.endswith('root') else key + '.root'} to another "
                                  f"folder")
        t0 = time.perf_counter()
        made = generate_part(root, rank, world, **want) if todo else None
        accelerator.wait_for_everyone()
        if made is not None and accelerator.is_main_process:  # all parts written: mark the set complete
            write_summary(root, made)
            logger.info("synthetic data: %d + %d items in %s (%.1f s, %d process(es))", want["n_train"],
                        want["n_test"], root, time.perf_counter() - t0, world)
    accelerator.wait_for_everyone()


def _dataset_specs(run: RunConfig) -> list[tuple[str, str, Optional[list[str]]]]:
    """(kind, root, categories) of every dataset of the run; the synthetic set (VITON-HD layout) first."""
    specs = [(s.kind, run.resolve(s.root), s.categories) for s in run.data.datasets]
    if run.data.synthetic is not None:
        specs.insert(0, ("vitonhd", run.resolve(run.data.synthetic.root), None))
    return specs


def build_train_dataset(run: RunConfig, cfg: TWGTMConfig) -> Dataset:
    """All training sets at the model size, concatenated (paired train split)."""
    parts = [open_split(root, kind, split="train", pairs="paired", size=(cfg.height, cfg.width), categories=cats)
             for kind, root, cats in _dataset_specs(run)]
    ds: Dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    if run.data.cache_in_memory:
        ds = CachedDataset(ds)
    return FlipDataset(ds) if run.data.hflip else ds


def build_eval_dataset(run: RunConfig, cfg: TWGTMConfig, *, pairs: str = "unpaired",
                       root: Optional[str] = None) -> Dataset:
    """The held-out split of the first dataset (the synthetic set when there is one), or of the same kind of
    dataset at ``root`` (e.g. a validation set generated with another seed)."""
    kind, own_root, cats = _dataset_specs(run)[0]
    return open_split(root or own_root, kind, split=run.data.eval_split, pairs=pairs, size=(cfg.height, cfg.width),
                      categories=cats)
