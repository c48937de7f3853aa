"""The run configuration: YAML -> OmegaConf structured configs -> dataclasses.

A run file (``configs/*.yaml``) has these sections, each a dataclass below; every field has a default,
so a file only names what differs::

    name, output_dir, seed, threads, mixed_precision, gradient_checkpointing, frozen_dtype, allow_tf32
    model:    preset (tiny | full) + overrides (merged into TWGTMConfig, e.g. height, unet, ...)
    weights:  where the pretrained base components live (local folders/files), or random_base
    data:     datasets (VITON-HD / DressCode roots) and/or a synthetic set to generate
    stage0:   the toy preset's own VAE (synthetic data only)
    stage1, stage2: optimiser, batch, steps, checkpoint / log / sample cadence per stage
    eval:     sampler settings and metric backbones for ``python -m training evaluate`` and the report
    export:   the final ``.safetensors`` file

Loading is OmegaConf's: the dataclasses are its schema (``OmegaConf.structured``), the YAML file and then the
``--set a.b=c`` overrides (``OmegaConf.from_dotlist``) are merged onto it, values are converted to the annotated
types, and ``${...}`` interpolations are resolved against the run (``${output_dir}``, ``${name}``, ``${config_dir}``
= the folder of the YAML file, or any other key). What OmegaConf refuses becomes a one-line :class:`ConfigError`
naming the key, the expected type and the value received; :meth:`RunConfig.validate` then checks values and
ranges. The model section stays a plain mapping for :meth:`twgtm.config.TWGTMConfig.from_dict`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError, InterpolationResolutionError, OmegaConfBaseException

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError
from twgtm.schedulers import SCHEDULER_NAMES, canonical_scheduler

__all__ = [
    "DATASET_KINDS", "TRYOFF_REGIONS", "DatasetSpec", "SyntheticSpec", "DataConfig", "WeightsConfig", "ModelSection",
    "Stage0Config", "StageConfig", "EvalConfig", "ExportConfig", "RunConfig", "load_run_config", "dump_run_config",
]

#: ``data.datasets[].kind``: the readers of :mod:`training.datasets` (``open_dataset`` dispatches on these)
DATASET_KINDS: tuple[str, ...] = ("vitonhd", "dresscode")
#: ``eval.tryoff_region``: the whole canvas, or the box / silhouette of the ground-truth or predicted garment mask
TRYOFF_REGIONS: tuple[str, ...] = ("full", "gt_box", "pred_box", "gt_mask", "pred_mask")


@dataclass
class DatasetSpec:
    kind: str = "vitonhd"                  # one of DATASET_KINDS (training.datasets readers)
    root: str = ""                         # dataset root folder
    categories: Optional[list[str]] = None  # DressCode categories to read (None: every one present)


@dataclass
class SyntheticSpec:
    root: str = "${output_dir}/data"       # where training.synthetic writes the set (skipped if present)
    n_train: int = 256                     # training items
    n_test: int = 32                       # held-out items (unpaired pairs with rendered ground truth)
    height: int = 64                       # rendered size; the reader resizes to the model size anyway
    width: int = 48
    seed: int = 0
    categories: list[str] = field(default_factory=lambda: ["upper", "lower", "dress"])
    n_val: int = 0                         # validation items, generated with val_seed into val_root (0: none); the
                                           # main job reports on them too (report_val/); settings are chosen on them
    val_seed: Optional[int] = None         # None: seed + 1 (no person or garment shared with the training set)
    val_root: str = "${output_dir}/data_val"


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)  # training sets, concatenated
    synthetic: Optional[SyntheticSpec] = None  # generate this set and train on it (VITON-HD layout)
    cache_in_memory: bool = False          # decode every item once (small sets: the synthetic preset)
    num_workers: int = 0                   # DataLoader workers (0: in the main process)
    hflip: bool = False                    # mirror person, garment and masks together with p = 0.5
    eval_split: str = "test"               # split used for the training-time sample grid and the report


@dataclass
class WeightsConfig:
    """Local base weights (never downloaded). See docs/TRAINING.md for the folder layout."""

    random_base: bool = False              # toy preset: random UNet / CLIP, seeded random prompt encoder
    unet: Optional[str] = None             # SD1.5-inpainting diffusers root (or unet/ folder, or single file)
    vae: Optional[str] = None              # VAE folder / file (SD root, sd-vae-ft-mse folder, ...)
    clip_vision: Optional[str] = None      # CLIP ViT-L/14 image encoder (transformers folder or file)
    text_encoder: Optional[str] = None     # SD1.5 text encoder (SD root or text_encoder/ folder)
    tokenizer: Optional[str] = None        # SD1.5 tokenizer folder (default: <text_encoder root>/tokenizer)
    swin: Optional[str] = None             # timm Swin-B weight file (swin_base_patch4_window12_384)
    catvton_attention: Optional[str] = None  # CatVTON 'attention' folder or its model.safetensors (warm start)


@dataclass
class ModelSection:
    preset: str = "tiny"                   # "tiny" or "full" (TWGTMConfig.tiny() / .full())
    overrides: dict[str, Any] = field(default_factory=dict)  # deep-merged into the preset's fields

    def build(self) -> TWGTMConfig:
        if self.preset not in ("tiny", "full"):
            raise ConfigError(f"model.preset: expected 'tiny' or 'full', got {self.preset!r}")
        base = (TWGTMConfig.tiny() if self.preset == "tiny" else TWGTMConfig.full()).to_dict()
        try:
            merged = OmegaConf.to_container(OmegaConf.merge(base, self.overrides))
        except OmegaConfBaseException as exc:
            raise _omegaconf_error(exc, "model.overrides.") from None
        return TWGTMConfig.from_dict(merged)


@dataclass
class Stage0Config:
    enabled: bool = False                  # fit the toy preset's own VAE before stage 1
    init: str = "lowpass"                  # "lowpass": start as a colour-exact low-pass autoencoder; "random"
    upsampling: str = "nearest"            # lowpass init's decoder: "nearest" (4x4 blocks per latent cell) or
                                           # "bilinear" (smooth shading; the toy preset, docs/TRAINING.md)
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 3e-5
    kl_weight: float = 1e-6                # small KL, as the SD VAE (latents stay informative)
    warmup_steps: int = 20
    log_every: int = 10
    checkpoint_every: int = 100
    eval_every: int = 50                   # validation L1 on held-out images; the best weights are kept


#: the trainer's AdamW parameter groups (training.objective.spec_parameter_groups, plus the toy's UNet base): the
#: names StageConfig.frozen_groups takes ("sam_projection" stands for "qformer" in a model without a Q-Former)
PARAMETER_GROUPS = ("unet_transformer", "qformer", "sam_projection", "swin", "srm", "decoder", "extended_attention",
                    "unet_base")

#: learning-rate shapes after the linear warm-up (StageConfig.lr_decay)
LR_DECAYS = ("constant", "cosine")


@dataclass
class StageConfig:
    max_steps: int = 16000                 # optimiser steps
    batch_size: int = 1                    # per device and micro-step
    grad_accum: int = 1                    # micro-steps per optimiser step
    lr_unet: float = 1e-5                  # UNet Transformer2D modules (spec 1.6)
    lr_new: float = 1e-4                   # Q-Former, SRM heads, Decoder, Extended Attention
    lr_swin: float = 1e-5                  # Swin (backbone multiplier 0.1)
    lr_unet_base: Optional[float] = None   # toy only: also train the UNet's conv/resnet base (None: frozen)
    ema_decay: Optional[float] = None      # EMA of the trained weights, used for samples and the saved model
                                           # (None: off, as the paper; spec #35)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    lr_decay: str = "constant"             # after the warm-up: "constant" (spec #32) or "cosine" (down to
                                           # lr_min_ratio x the rate at the last step; the toy preset, TRAINING.md)
    lr_min_ratio: float = 0.0              # cosine only: the final learning rate as a share of the peak
    grad_clip: float = 1.0                 # max gradient norm (0: off)
    vtoff_prob: float = 0.5                # share of try-off samples in every batch
    mask_warmup_steps: int = 0             # stage 1 only: the first N steps train the reference encoder on the
                                           # mask loss alone, every sample a try-off sample (no UNet, no VAE);
                                           # the UNet's learning-rate warm-up starts after them (TRAINING.md)
    mask_warmup_batch_size: Optional[int] = None  # per device, during the mask warm-up only: a multiple of
                                           # batch_size (None: batch_size). Warm-up steps are cheap (no UNet), so a
                                           # bigger batch costs little and steadies the mask (TRAINING.md)
    frozen_groups: list[str] = field(default_factory=list)  # parameter groups (PARAMETER_GROUPS) this stage
                                           # leaves as they are, e.g. the toy's stage 2 keeps stage 1's garment-
                                           # mask path ([qformer, swin, srm]); [] trains every group (the paper)
    region_reference_height: int = 1024    # stage 2: the region sampler's kernel sizes are given at this height
    checkpoint_every: int = 1000           # optimiser steps between resumable checkpoints
    keep_checkpoints: int = 2              # older ones are deleted
    log_every: int = 10                    # steps between CSV rows
    sample_every: int = 2000               # steps between sample grids (0: never)
    sample_steps: int = 10                 # DDIM steps for the sample grid
    num_samples: int = 4                   # items in the sample grid


@dataclass
class EvalConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 2.5
    scheduler: str = "ddim"                # one of twgtm.schedulers.SCHEDULER_NAMES (or an alias)
    eta: Optional[float] = None            # DDIM eta for evaluation (None: the model config's, CatVTON's 1.0)
    seed: int = 0
    batch_size: int = 8
    max_items: Optional[int] = None        # evaluate only the first N test items
    tryoff_region: str = "full"            # TRYOFF_REGIONS: "full" (mask-free), "gt_box"/"pred_box" (Mask2BBox),
                                           # "gt_mask"/"pred_mask"
    weights_dir: Optional[str] = None      # torchvision / Inception backbone files (LPIPS, DISTS, FID, KID)
    clip_dir: Optional[str] = None         # CLIP ViT-B/32 transformers folder (CLIP-FID)
    dino_dir: Optional[str] = None         # DINO ViT-S/16 transformers folder (DINO score)
    lpips_net: str = "alex"


@dataclass
class ExportConfig:
    filename: str = "${output_dir}/twgtm_${name}.safetensors"
    include_base: bool = False             # also store VAE / UNet base / CLIP (self-contained file)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/${name}"
    seed: int = 0
    threads: Optional[int] = None          # torch CPU threads per process (None: torch's default)
    processes: int = 1                     # CPU only: data-parallel worker processes started by the command
                                           # itself (gloo DDP); GPUs: use `accelerate launch` instead
    mixed_precision: str = "no"            # "no", "bf16" or "fp16" (accelerate autocast)
    gradient_checkpointing: bool = False   # UNet and SRM
    frozen_dtype: Optional[str] = None     # null: frozen weights stay fp32; "bf16"/"fp16" (= mixed_precision):
                                           # the weights no optimiser updates are stored in that dtype (halves
                                           # their memory; autocast computes in it anyway)
    allow_tf32: bool = True
    report_to: str = "none"                # experiment trackers through accelerate: "none", "tensorboard",
                                           # "wandb" or "all" (training/tracking.py; packages: .[tensorboard], .[wandb])
    model: ModelSection = field(default_factory=ModelSection)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(max_steps=32000))
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    config_dir: str = "."                  # set by load_run_config: folder of the YAML file

    # ------------------------------------------------------------------ helpers
    def stage(self, index: int) -> StageConfig:
        if index not in (1, 2):
            raise ConfigError(f"stage: expected 1 or 2, got {index!r}")
        return self.stage1 if index == 1 else self.stage2

    def resolve(self, text: Optional[str]) -> Optional[str]:
        """A path from the config with ``~`` expanded. Values loaded by :func:`load_run_config` are already
        interpolated; a string with ``${...}`` (e.g. on a RunConfig built in code) is resolved against this run."""
        if text is None:
            return None
        text = str(text)
        if "${" in text:
            node = OmegaConf.create({**dataclasses.asdict(self), "_text": text})
            try:
                text = str(node._text)
            except OmegaConfBaseException as exc:
                raise _omegaconf_error(exc) from None
        return os.path.expanduser(text)

    @property
    def output_path(self) -> Path:
        return Path(self.resolve(self.output_dir))

    def validate(self) -> "RunConfig":
        for s in (self.stage1, self.stage2):
            s.betas = tuple(s.betas)  # omegaconf 2.3 gives a list for a tuple field
        if not isinstance(self.processes, int) or self.processes < 1:
            raise ConfigError(f"processes: expected an int >= 1, got {self.processes!r}")
        self._validate_numbers()
        from .tracking import trackers

        trackers(self.report_to)  # a ConfigError naming the allowed values
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision: expected 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.frozen_dtype not in (None, "fp32", "bf16", "fp16"):
            raise ConfigError(f"frozen_dtype: expected null, 'fp32', 'bf16' or 'fp16', got {self.frozen_dtype!r}")
        if self.frozen_dtype in ("bf16", "fp16") and self.frozen_dtype != self.mixed_precision:
            raise ConfigError(f"frozen_dtype: {self.frozen_dtype!r} needs mixed_precision {self.frozen_dtype!r} (the "
                              f"frozen weights only work inside that autocast), got mixed_precision "
                              f"{self.mixed_precision!r}")
        if not self.data.datasets and self.data.synthetic is None:
            raise ConfigError("data: expected at least one entry in data.datasets or a data.synthetic section, "
                              "got neither")
        for i, spec in enumerate(self.data.datasets):
            if spec.kind not in DATASET_KINDS:
                raise ConfigError(f"data.datasets[{i}].kind: expected one of {DATASET_KINDS}, got {spec.kind!r}")
        if self.stage0.init not in ("lowpass", "random"):
            raise ConfigError(f"stage0.init: expected 'lowpass' or 'random', got {self.stage0.init!r}")
        if self.stage0.upsampling not in ("nearest", "bilinear"):
            raise ConfigError(f"stage0.upsampling: expected 'nearest' or 'bilinear', got {self.stage0.upsampling!r}")
        if self.stage0.enabled and self.data.synthetic is None:
            raise ConfigError("stage0.enabled: the own-VAE stage is for the synthetic preset; expected data.synthetic")
        model_cfg = self.model.build()  # raises ConfigError on a bad model section
        for i in (1, 2):
            s = self.stage(i)
            self._validate_frozen_groups(i, model_cfg)
            if s.lr_unet_base is not None and not self.export.include_base:
                raise ConfigError(f"stage{i}.lr_unet_base: training the UNet base changes base weights, so "
                                  "export.include_base must be true; got false")
        if self.eval.tryoff_region not in TRYOFF_REGIONS:
            raise ConfigError(f"eval.tryoff_region: expected one of {TRYOFF_REGIONS}, got {self.eval.tryoff_region!r}")
        try:
            canonical_scheduler(self.eval.scheduler)
        except ValueError:
            raise ConfigError(f"eval.scheduler: expected one of {SCHEDULER_NAMES}, got {self.eval.scheduler!r}") from None
        if not self.weights.random_base:
            missing = [n for n in ("unet", "vae", "clip_vision", "text_encoder") if getattr(self.weights, n) is None]
            if missing and not self.stage0.enabled:
                raise ConfigError(f"weights: expected local paths for {missing} "
                                  "(or weights.random_base: true for a toy run)")
        if not model_cfg.use_srm:  # ablation Variant 1: no SRM, so no garment mask to warm up or to place try-off by
            if self.stage1.mask_warmup_steps:
                raise ConfigError(f"stage1.mask_warmup_steps: expected 0 with model.overrides.use_srm false (the "
                                  f"warm-up trains the SRM's garment mask), got {self.stage1.mask_warmup_steps}")
            if self.eval.tryoff_region.startswith("pred"):
                raise ConfigError(f"eval.tryoff_region: expected one of {[r for r in TRYOFF_REGIONS if 'pred' not in r]} "
                                  f"with model.overrides.use_srm false (no SRM: no predicted garment mask), got "
                                  f"{self.eval.tryoff_region!r}")
        return self

    def _validate_frozen_groups(self, i: int, model_cfg) -> None:
        s, key = self.stage(i), f"stage{i}.frozen_groups"
        groups = s.frozen_groups
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"{key}: expected a list of parameter-group names from {PARAMETER_GROUPS}, got {groups!r}")
        unknown = [g for g in groups if g not in PARAMETER_GROUPS]
        if unknown:
            raise ConfigError(f"{key}: expected names from {PARAMETER_GROUPS}, got unknown {unknown}")
        if i == 1 and groups:
            raise ConfigError(f"{key}: expected [] (stage 1 trains from a fresh model; freezing is for stage 2), "
                              f"got {list(groups)}")
        mask_path = {"qformer", "swin", "srm"}
        weight = model_cfg.loss.stage2_mask_weight
        if i == 2 and mask_path <= set(groups) and weight > 0:
            raise ConfigError(f"{key}: freezes the whole garment-mask path {sorted(mask_path)}, so its mask loss "
                              f"trains nothing: expected model.overrides.loss.stage2_mask_weight 0, got {weight}")
        s.frozen_groups = list(groups)

    def _validate_numbers(self) -> None:
        """Every numeric field in its range (a negative step count or learning rate is an error, not a no-op)."""
        ints: list[tuple[str, Any, int]] = [("seed", self.seed, 0), ("data.num_workers", self.data.num_workers, 0)]
        floats: list[tuple[str, Any, float, Optional[float], bool]] = []  # (name, value, lo, hi, hi inclusive)
        if self.threads is not None:
            ints.append(("threads", self.threads, 1))
        if self.data.synthetic is not None:
            sy = self.data.synthetic
            ints += [("data.synthetic.n_train", sy.n_train, 1), ("data.synthetic.n_test", sy.n_test, 0),
                     ("data.synthetic.height", sy.height, 8), ("data.synthetic.width", sy.width, 8),
                     ("data.synthetic.seed", sy.seed, 0), ("data.synthetic.n_val", sy.n_val, 0)]
            if sy.val_seed is not None:
                ints.append(("data.synthetic.val_seed", sy.val_seed, 0))
                if sy.val_seed == sy.seed:
                    raise ConfigError(f"data.synthetic.val_seed: expected a seed other than data.synthetic.seed "
                                      f"({sy.seed}: the validation set would repeat the training persons), got "
                                      f"{sy.val_seed}")
        s0 = self.stage0
        ints += [(f"stage0.{n}", getattr(s0, n), lo) for n, lo in (
            ("max_steps", 0), ("batch_size", 1), ("warmup_steps", 0), ("log_every", 1), ("checkpoint_every", 1),
            ("eval_every", 1))]
        floats += [("stage0.lr", s0.lr, 0.0, None, True), ("stage0.kl_weight", s0.kl_weight, 0.0, None, True)]
        for i in (1, 2):
            s, p = self.stage(i), f"stage{i}."
            ints += [(p + n, getattr(s, n), lo) for n, lo in (
                ("max_steps", 1), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0), ("checkpoint_every", 1),
                ("keep_checkpoints", 1), ("log_every", 1), ("sample_every", 0), ("sample_steps", 1),
                ("num_samples", 1), ("mask_warmup_steps", 0))]
            warm = s.mask_warmup_steps if isinstance(s.mask_warmup_steps, int) else 0  # type checked below
            if warm and i == 2:
                raise ConfigError(f"stage2.mask_warmup_steps: expected 0 (stage 2 trains the mask head with the "
                                  f"diffusion loss), got {s.mask_warmup_steps!r}")
            if warm and isinstance(s.max_steps, int) and warm >= s.max_steps:
                raise ConfigError(f"stage1.mask_warmup_steps: expected fewer than stage1.max_steps "
                                  f"({s.max_steps}), got {s.mask_warmup_steps!r}")
            wb = s.mask_warmup_batch_size
            if wb is not None:
                if i == 2:
                    raise ConfigError(f"stage2.mask_warmup_batch_size: expected null (stage 2 has no mask warm-up), "
                                      f"got {wb!r}")
                if isinstance(wb, bool) or not isinstance(wb, int) or not isinstance(s.batch_size, int) \
                        or wb < s.batch_size or wb % max(s.batch_size, 1):
                    raise ConfigError(f"stage1.mask_warmup_batch_size: expected null or a multiple of "
                                      f"stage1.batch_size ({s.batch_size!r}) that is at least as large, got {wb!r}")
            floats += [(p + n, getattr(s, n), 0.0, None, True) for n in ("lr_unet", "lr_new", "lr_swin",
                                                                          "weight_decay", "grad_clip")]
            floats += [(p + "vtoff_prob", s.vtoff_prob, 0.0, 1.0, True)]
            floats += [(p + "lr_min_ratio", s.lr_min_ratio, 0.0, 1.0, True)]
            if s.lr_decay not in LR_DECAYS:
                raise ConfigError(f"{p}lr_decay: expected one of {LR_DECAYS}, got {s.lr_decay!r}")
            floats += [(f"{p}betas[{k}]", b, 0.0, 1.0, False) for k, b in enumerate(s.betas)]
            if len(s.betas) != 2:
                raise ConfigError(f"{p}betas: expected two numbers (Adam's beta1, beta2), got {list(s.betas)}")
            if s.lr_unet_base is not None:
                floats.append((p + "lr_unet_base", s.lr_unet_base, 0.0, None, True))
            if s.ema_decay is not None:
                floats.append((p + "ema_decay", s.ema_decay, 0.0, 1.0, False))
        ev = self.eval
        ints += [("eval.num_inference_steps", ev.num_inference_steps, 1), ("eval.seed", ev.seed, 0),
                 ("eval.batch_size", ev.batch_size, 1)]
        if ev.max_items is not None:
            ints.append(("eval.max_items", ev.max_items, 1))
        floats.append(("eval.guidance_scale", ev.guidance_scale, 1.0, 100.0, True))
        if ev.eta is not None:
            floats.append(("eval.eta", ev.eta, 0.0, 1.0, True))
        for name, v, lo in ints:
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name}: expected an integer >= {lo}, got {v!r}")
        for name, v, lo, hi, hi_incl in floats:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= lo
            if ok and hi is not None:
                ok = v <= hi if hi_incl else v < hi
            if not ok:
                rng = f">= {lo:g}" if hi is None else f"in [{lo:g}, {hi:g}{']' if hi_incl else ')'}"
                raise ConfigError(f"{name}: expected a number {rng}, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("config_dir")
        return _plain(d)


# ---------------------------------------------------------------------------------------------- loading
def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _optional_arg(hint: Any) -> Any:
    """``X`` for ``Optional[X]``, else ``hint``."""
    if get_origin(hint) is Union:
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def _describe(hint: Any) -> str:
    """An annotation in words, for "expected ..." in error messages."""
    inner = _optional_arg(hint)
    if inner is not hint:
        return _describe(inner) + " or null"
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    if origin is tuple:
        return f"a list of {len(args)} values ({_describe(args[0])} each)"
    if origin is list:
        return f"a list ({_describe(args[0])} each)" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _first_refused(data: Any, cls: type, where: str) -> Optional[str]:
    """Why OmegaConf refuses ``data`` for the dataclass ``cls``, as "key: expected ..., got ...", with the full key
    (OmegaConf's own error has none for a section given a scalar, a tuple of the wrong length or a list item)."""
    if not isinstance(data, dict):
        return f"{where or 'config'}: expected {_describe(cls)}, got {data!r}"
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        return f"{where or 'config'}: unknown keys {unknown}; expected a subset of {names}"
    hints = get_type_hints(cls)
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        inner = _optional_arg(hints[key])
        item = get_args(inner)[0] if get_origin(inner) is list and get_args(inner) else None
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            found = _first_refused(value, inner, path)
        elif dataclasses.is_dataclass(item) and isinstance(value, list):
            found = next(filter(None, (_first_refused(v, item, f"{path}[{i}]") for i, v in enumerate(value))), None)
        else:
            try:
                OmegaConf.merge(OmegaConf.structured(cls), {key: value})
                found = None
            except OmegaConfBaseException:
                found = f"{path}: expected {_describe(hints[key])}, got {value!r}"
        if found:
            return found
    return None


def _omegaconf_error(exc: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    """OmegaConf's error as one line naming the key, what was expected and what was received."""
    key = prefix + (exc.full_key or "") or "config"
    reason = " ".join(str(exc.msg or exc).split("full_key:")[0].split())
    got = f", got {str(exc.child_node)!r}" if getattr(exc, "child_node", None) is not None else ""
    if isinstance(exc, (InterpolationResolutionError, GrammarParseError)):
        return ConfigError(f"{key}: expected ${{...}} to name keys of the run (such as ${{output_dir}}, ${{name}}, "
                           f"${{config_dir}}) and to give the key's type; {reason}{got}")
    return ConfigError(f"{key}: {reason}{got}")


def _empty_sections_as_defaults(data: dict[str, Any], cls: type) -> dict[str, Any]:
    """A YAML section with nothing under it (``stage0:``) reads as null: it means the section's defaults."""
    hints = get_type_hints(cls)
    for key, value in data.items():
        hint = hints.get(key)
        if value is None and dataclasses.is_dataclass(hint):
            data[key] = {}
        elif isinstance(value, dict) and dataclasses.is_dataclass(_optional_arg(hint)):
            _empty_sections_as_defaults(value, _optional_arg(hint))
    return data


def _index_into_lists(data: dict[str, Any], base: Any, path: str) -> dict[str, Any]:
    """``--set data.datasets.0.root=x`` arrives as ``{"datasets": {"0": {"root": x}}}``; where the config holds a
    list there, it becomes that list with entry 0 updated (OmegaConf's merge cannot put a mapping onto a list)."""
    for key, value in list(data.items()):
        sub = base.get(key) if isinstance(base, dict) else None
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and isinstance(sub, list):
            if not all(str(k).isdigit() for k in value):
                raise ConfigError(f"{where}: expected list indices after '{where}.', got {sorted(map(str, value))}")
            merged = list(sub)
            for k, v in value.items():
                i = int(k)
                if i >= len(sub):
                    have = f"0..{len(sub) - 1}" if sub else "none: the list is empty; set the whole list"
                    raise ConfigError(f"{where}: expected an index of an existing entry ({have}), got {i}")
                merged[i] = _deep_update(merged[i], v)
            data[key] = merged
        elif isinstance(value, dict) and isinstance(sub, dict):
            _index_into_lists(value, sub, where)
    return data


def _deep_update(base: Any, value: Any) -> Any:
    if isinstance(base, dict) and isinstance(value, dict):
        out = dict(base)
        for k, v in value.items():
            out[k] = _deep_update(out.get(k), v)
        return out
    return value


def _merge(cfg: DictConfig, layer: DictConfig) -> DictConfig:
    data = _empty_sections_as_defaults(OmegaConf.to_container(layer), RunConfig)
    data = _index_into_lists(data, OmegaConf.to_container(cfg, resolve=False), "")
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        why = _first_refused(data, RunConfig, "")
        raise (ConfigError(why) if why else _omegaconf_error(exc)) from None


def _read_yaml(p: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(p)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {p}: expected valid YAML, got a parse error: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise ConfigError(f"--config {p}: expected a readable YAML file with a mapping at the top level, got: {exc}") \
            from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"--config {p}: expected a mapping at the top level, got a list")
    return loaded


def _read_overrides(overrides: list[str]) -> DictConfig:
    """``a.b.c=value`` strings (values parsed as YAML) as one config layer."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item or not key or not all(key.split(".")):
            raise ConfigError(f"--set: expected 'dotted.key=value', got {item!r}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set: expected YAML values, got a parse error in {list(overrides)}: "
                          f"{' '.join(str(exc).split())}") from None
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, "--set ") from None


def load_run_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None) -> RunConfig:
    """Read a YAML run file, apply ``--set`` overrides, resolve ``${...}`` and validate."""
    cfg = OmegaConf.structured(RunConfig)
    config_dir = "."
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: expected a YAML file, got {str(p)!r} (not found)")
        cfg = _merge(cfg, _read_yaml(p))
        config_dir = str(p.resolve().parent)
    if overrides:
        cfg = _merge(cfg, _read_overrides(list(overrides)))
    cfg.config_dir = config_dir
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc) from None
    return run.validate()


def dump_run_config(run: RunConfig, path: str | os.PathLike) -> Path:
    """Write the effective configuration (interpolations resolved) next to the run's outputs
    (``<output_dir>/config.yaml``); loading that file gives the same run."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(run.to_dict(), sort_keys=False), encoding="utf-8")
    return p
