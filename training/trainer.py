"""The two-stage TWGTM trainer (spec 1.5-1.6), on accelerate.

One command runs on one CPU, one GPU, or many GPUs and nodes (``accelerate launch -m training train ...``).

* **Stage 1** trains the UNet Transformer2D modules, Q-Former, Swin, pixel decoder, TaskFormer and heads
  with ``L_diff + lambda * L_mask``; **stage 2** starts from stage 1's weights, creates the Decoder and
  the Extended Attention processors (ZLL zero-initialised, so the model starts equal to stage 1) and
  trains with ``L_diff``. Both tasks are mixed in every batch and the classifier-free-guidance drop is
  applied per sample; the objective and the trainable sets are :mod:`training.objective`, and the
  stage change is :meth:`twgtm.components.TWGTMComponents.enable_stage2`; this module drives them.
* **Exact resume.** A checkpoint (``<stage dir>/checkpoints/step-NNNNNN/``) holds accelerate's state
  (model, optimiser, grad scaler, RNG states) plus ``trainer_state.json`` (step, LR schedule, data
  position), written last so a half-written checkpoint is never picked. Every random draw of a training
  step comes from a generator seeded by (seed, stage, step, micro-step, rank), and so do the draws from
  the global generators inside it (stochastic depth, dropout: :func:`seeded_rng`); the data order is a
  permutation per epoch seeded by (seed, epoch) and the DataLoader's own seed is not drawn from the
  global generator: a run killed with SIGKILL at any step and resumed reaches exactly the state of an
  uninterrupted run.
* **Outputs** per stage: ``log.csv`` (losses, learning rates, gradient norm, speed), ``samples/step-N.png``
  (try-on and try-off grids), ``model.safetensors`` (the stage's weights, TWGTM format); the same values and
  grids go to TensorBoard / W&B with ``report_to`` (:mod:`training.tracking`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
from diffusers import DDPMScheduler
from torch.utils.data import DataLoader, default_collate

from twgtm.config import TWGTMConfig
from twgtm.errors import ConfigError, MissingFileError, WeightsError
from twgtm.components import TWGTMComponents
from twgtm.weights import BaseSources, build_from_sources, load_twgtm, save_twgtm

from .config import RunConfig, StageConfig
from .data import build_eval_dataset, build_train_dataset
from .grids import sample_grid
from .objective import TrainingObjective, spec_parameter_groups
from .progress import progress_bar
from .stage0_vae import load_stage0_vae
from .tracking import StageTracker

logger = logging.getLogger(__name__)

__all__ = [
    "make_accelerator", "configure_torch", "model_config", "base_sources", "build_stage1_model",
    "load_catvton_attention", "ResumableBatchSampler", "train_stage", "stage_model_path", "find_checkpoint",
    "export_model", "StageResult", "seeded_rng", "checkpoint_keys",
]

STATE_FILE = "trainer_state.json"
_CKPT_RE = re.compile(r"^step-(\d+)$")


# ---------------------------------------------------------------------------------------------- setup
def configure_torch(run: RunConfig) -> None:
    """CPU threads and TF32, before anything is built."""
    if run.threads:
        torch.set_num_threads(int(run.threads))
    if run.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_accelerator(run: RunConfig, *, cpu: bool = False):
    """An ``Accelerator`` for this run (mixed precision from the config; DDP tolerates unused modules:
    in stage 1 the SRM gets no gradient on a batch without try-off samples). DDP's gradients are views into its
    all-reduce buckets (``gradient_as_bucket_view``): otherwise each process holds every trained gradient twice,
    1.7 GiB more per process at full size, which pushed two full-size CPU processes past 24 GiB."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from .tracking import LOG_DIR, check_report_to

    log_with = check_report_to(run.report_to) or None  # a missing tracker package fails here, before training
    accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=cpu, log_with=log_with,
                              project_dir=str(run.output_path / LOG_DIR) if log_with else None,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True,
                                                                             gradient_as_bucket_view=True)])
    _check_fsdp(accelerator)
    # every checkpoint this accelerator writes holds the trained tensors and buffers only (once per accelerator:
    # train_stage runs stage 1 and stage 2 on the same one)
    accelerator.register_save_state_pre_hook(_save_trained_only)
    return accelerator


def _check_fsdp(accelerator) -> None:
    """``accelerate launch`` with an FSDP config sets ACCELERATE_USE_FSDP; accelerate (1.15) turns it into FSDP only
    on GPUs and other accelerators, and on CPU processes silently runs plain DDP (every process a whole copy).
    Refuse that instead of training with the memory the user sized FSDP to avoid."""
    from accelerate.utils import DistributedType

    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    if wanted and accelerator.num_processes > 1 and accelerator.distributed_type != DistributedType.FSDP:
        import accelerate

        raise ConfigError(f"FSDP: expected accelerate to shard the model (ACCELERATE_USE_FSDP is set), got "
                          f"distributed type {accelerator.distributed_type.value} on {accelerator.device}: accelerate "
                          f"{accelerate.__version__} applies FSDP only on GPUs/accelerators, not on CPU processes; "
                          f"use configs/accelerate/multi_gpu.yaml (DDP) there")


def _seed_from(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextmanager
def seeded_rng(seed: int, device: Any = None) -> Iterator[None]:
    """Run the block with every global random generator seeded by ``seed``: torch's CPU generator, the
    generator of ``device`` (when it is not the CPU), Python's ``random`` and NumPy's; their previous states
    are restored afterwards.

    The trainer wraps each micro-step (forward and backward) in it, seeded by (seed, stage, step, micro-step,
    rank): draws that do not take the step's explicit generator, e.g. timm Swin's stochastic depth
    (``drop_path``) or any ``nn.Dropout``, are then a pure function of the step, so a run resumed from a
    checkpoint draws exactly what the uninterrupted run drew (whatever the global state at the checkpoint).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    accel = [dev] if dev.type != "cpu" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=accel, device_type=dev.type if accel else "cuda"):
        torch.default_generator.manual_seed(seed)
        if accel:
            with torch.cuda.device(dev) if dev.type == "cuda" else nullcontext():
                getattr(torch, dev.type).manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ---------------------------------------------------------------------------------------------- data order (datasets: training.data)
class ResumableBatchSampler:
    """Infinite, seeded, resumable batches for one process.

    Sample positions form one stream: position ``p`` is item ``perm_e[p % n]`` of epoch ``e = p // n``,
    ``perm_e`` a permutation seeded by (seed, e). Micro-batch ``m`` of the whole job covers positions
    ``[m * G, (m + 1) * G)`` with ``G = batch_size * world``; process ``rank`` takes its ``batch_size``
    slice. Starting at micro-batch ``start`` therefore continues exactly where a run stopped.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1,
                 hflip: bool = False, merge: int = 1, merge_until: int = 0):
        if n < 1:
            raise ConfigError(f"dataset: expected at least one training item, got {n}")
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world, self.hflip = rank, world, hflip
        self.merge, self.merge_until = merge, merge_until
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(_seed_from("data", self.seed, epoch))
            self._perm_cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._perm_cache[epoch]

    def _flip(self, position: int) -> bool:
        return bool(_seed_from("flip", self.seed, position) & 1)

    def batch(self, micro: int) -> list:
        g = self.batch_size * self.world
        first = micro * g + self.rank * self.batch_size
        out = []
        for p in range(first, first + self.batch_size):
            idx = int(self._perm(p // self.n)[p % self.n])
            out.append((idx, self._flip(p)) if self.hflip else idx)
        return out

    def __iter__(self) -> Iterator[list]:
        """Before micro-batch ``merge_until`` (stage 1's mask warm-up), ``merge`` consecutive micro-batches are
        yielded as one bigger batch; the stream of positions is the same."""
        micro = self.start
        while True:
            k = self.merge if micro < self.merge_until else 1
            yield [item for m in range(micro, micro + k) for item in self.batch(m)]
            micro += k


def _warmup_merge(s: StageConfig) -> int:
    """How many ``batch_size`` micro-batches one warm-up micro-step takes (``stage1.mask_warmup_batch_size``)."""
    wb = s.mask_warmup_batch_size
    return 1 if not s.mask_warmup_steps or wb is None else wb // s.batch_size


def _micro_batches_before(s: StageConfig, step: int) -> int:
    """Sampler micro-batches (of ``batch_size`` per process) consumed by the first ``step`` optimiser steps."""
    warm = min(step, s.mask_warmup_steps)
    return (warm * _warmup_merge(s) + step - warm) * s.grad_accum


# ---------------------------------------------------------------------------------------------- model
def model_config(run: RunConfig, stage: int) -> TWGTMConfig:
    """The model config of a stage; with stage 0 its latent scaling and shift come from the own VAE."""
    cfg = run.model.build()
    cfg.stage = 1 if stage <= 1 else 2
    if run.stage0.enabled:
        _, scale, shift = load_stage0_vae(run)
        cfg.scaling_factor, cfg.shift_factor = scale, shift
    return cfg


def base_sources(run: RunConfig) -> BaseSources:
    """The run's local base weights (``weights.*``) for :func:`twgtm.weights.build_from_sources` / ``load_twgtm``."""
    w = run.weights
    return BaseSources(unet=run.resolve(w.unet), vae=run.resolve(w.vae), clip_vision=run.resolve(w.clip_vision),
                       text_encoder=run.resolve(w.text_encoder), tokenizer=run.resolve(w.tokenizer),
                       swin=run.resolve(w.swin))


def build_stage1_model(run: RunConfig, cfg: TWGTMConfig) -> TWGTMComponents:
    """Stage 1's starting point: pretrained base components (paper recipe) or a seeded random toy model."""
    torch.manual_seed(_seed_from("init", run.seed) & 0xFFFFFFFF)
    vae = None
    if run.stage0.enabled:
        vae, _, _ = load_stage0_vae(run)
    w = run.weights
    if w.random_base:
        model = TWGTMComponents.build(cfg, vae=vae, random_prompts=True)
    else:
        model = build_from_sources(cfg, base_sources(run))
        if vae is not None:
            model.vae = vae.requires_grad_(False).eval()
    if w.catvton_attention:
        load_catvton_attention(model.unet, run.resolve(w.catvton_attention))
    return model


_CATVTON_KEYS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")


def load_catvton_attention(unet: nn.Module, source: str) -> int:
    """Warm-start every UNet ``attn1`` from CatVTON's released self-attention weights.

    CatVTON (``model/utils.py::get_trainable_module(unet, "attention")``) saves
    ``nn.ModuleList(m for name, m in unet.named_modules() if "attn1" in name)`` with accelerate, which
    drops the duplicate names of shared tensors: each ``attn1`` block keeps
    ``<i>.to_q.weight``, ``<i>.to_k.weight``, ``<i>.to_v.weight``, ``<i>.to_out.0.weight`` and
    ``<i>.to_out.0.bias``, ``i`` = its position in that list (0, 8, 16, ... for 16 blocks). Blocks are
    matched to this UNet's ``attn1`` modules in ``named_modules`` order; full diffusers names
    (``...attn1.to_q.weight``) are accepted too. Returns the number of blocks loaded.
    """
    from safetensors.torch import load_file

    p = Path(source)
    if p.is_dir():
        cands = [p / n for n in ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin")]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise MissingFileError(f"weights.catvton_attention: expected CatVTON's attention weights "
                                   f"(mix-48k-1024/attention/model.safetensors from zhengchong/CatVTON) in "
                                   f"{str(p)!r}, found none of {[c.name for c in cands]}")
        p = found[0]
    elif not p.is_file():
        raise MissingFileError(f"weights.catvton_attention: expected CatVTON's mix-48k-1024/attention folder or its "
                               f"model.safetensors at {str(p)!r}, but nothing is there")
    if p.suffix == ".safetensors":
        state = load_file(str(p))
    else:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    blocks = [(n, m) for n, m in unet.named_modules() if n.endswith("attn1")]
    if any(".attn1." in k for k in state):  # full diffusers names
        groups = {}
        for name, _ in blocks:
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            groups[name] = sub
        ordered = [groups[n] for n, _ in blocks]
    else:
        by_index: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            m = re.match(r"^(\d+)\.(.+)$", k)
            if m and m.group(2) in _CATVTON_KEYS:
                by_index.setdefault(int(m.group(1)), {})[m.group(2)] = v
        ordered = [by_index[i] for i in sorted(by_index)]
    if len(ordered) != len(blocks):
        raise WeightsError(f"weights.catvton_attention {p.name!r}: expected {len(blocks)} attn1 blocks (this UNet), "
                           f"got {len(ordered)}")
    with torch.no_grad():
        for (name, module), sub in zip(blocks, ordered):
            for key in _CATVTON_KEYS:
                if key not in sub:
                    raise WeightsError(f"weights.catvton_attention {p.name!r}: block for {name} lacks {key!r}")
                target = module.get_parameter(key)
                if tuple(target.shape) != tuple(sub[key].shape):
                    raise WeightsError(f"weights.catvton_attention {p.name!r}: {name}.{key} has shape "
                                       f"{tuple(sub[key].shape)}, the UNet expects {tuple(target.shape)}")
                target.copy_(sub[key].to(target.dtype))
    logger.info("CatVTON attention warm start: %d attn1 blocks from %s", len(blocks), p)
    return len(blocks)


def stage_dir(run: RunConfig, stage: int) -> Path:
    return run.output_path / f"stage{stage}"


def stage_model_path(run: RunConfig, stage: int) -> Path:
    return stage_dir(run, stage) / "model.safetensors"


def load_stage_model(run: RunConfig, path: Path, device="cpu") -> TWGTMComponents:
    """A stage's saved weights (``model.safetensors``) as components."""
    base = None if run.export.include_base else base_sources(run)
    return load_twgtm(path, base=base, device=device)


def build_stage_model(run: RunConfig, stage: int) -> TWGTMComponents:
    if stage == 1:
        return build_stage1_model(run, model_config(run, 1))
    src = stage_model_path(run, 1)
    if not src.is_file():
        raise MissingFileError(f"stage 2 starts from stage 1: expected {str(src)!r}; run stage 1 first "
                               f"(`python -m training train --stage 1`)")
    torch.manual_seed(_seed_from("init2", run.seed) & 0xFFFFFFFF)
    model = load_stage_model(run, src)
    model.enable_stage2()  # Decoder + Extended Attention (ZLL = 0: output equals stage 1)
    return model


def parameter_groups(model: TWGTMComponents, s: StageConfig) -> list[dict]:
    """The spec's trainable sets (:func:`training.objective.spec_parameter_groups`), plus the UNet base when
    ``lr_unet_base`` is set (toy preset only: its UNet is random, there is no pretrained base to keep frozen),
    less the groups the stage names in ``frozen_groups`` (their parameters get ``requires_grad=False``)."""
    groups = spec_parameter_groups(model, lr_unet=s.lr_unet, lr_new=s.lr_new, lr_swin=s.lr_swin)
    if s.lr_unet_base is not None:
        taken = {id(p) for g in groups for p in g["params"]}
        base = [p for p in model.unet.parameters() if id(p) not in taken]
        for p in base:
            p.requires_grad_(True)
        groups.append({"name": "unet_base", "params": base, "lr": s.lr_unet_base})
    for g in groups:
        if g["name"] in s.frozen_groups:
            for p in g["params"]:
                p.requires_grad_(False)
    return [g for g in groups if g["params"] and g["name"] not in s.frozen_groups]


_FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cast_frozen(model: TWGTMComponents, groups: list[dict], frozen_dtype: Optional[str]) -> int:
    """``frozen_dtype``: store every floating parameter no optimiser group updates (VAE, CLIP, text encoder, the
    frozen UNet base) in bf16/fp16, as diffusers' training scripts keep their frozen VAE and text encoder in the
    mixed-precision dtype. Under that autocast the matmuls and convolutions run in it anyway; the trained
    parameters stay fp32 for AdamW. At full size this halves the frozen weights (3.7 of 5.2 GiB in stage 1).
    Returns the number of elements cast."""
    dtype = _FROZEN_DTYPES.get(frozen_dtype or "")
    if dtype is None:
        return 0
    trained = {id(p) for g in groups for p in g["params"]}
    n = 0
    with torch.no_grad():
        for p in (p for m in model.modules().values() for p in m.parameters()):
            if id(p) not in trained and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
                n += p.numel()
    logger.info("frozen weights stored as %s: %s parameters", frozen_dtype, f"{n:,}")
    return n


class EMA:
    """Exponential moving average of the trainable parameters (warm-up: decay ``min(d, (1+n)/(10+n))``)."""

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params = params
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone().float() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averaged ones (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp.float())

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({f"{i}": s.contiguous().cpu() for i, s in enumerate(self.shadow)}, str(path),
                  metadata={"updates": str(self.updates), "decay": repr(self.decay)})

    def load(self, path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        state = load_file(str(path))
        if len(state) != len(self.shadow):
            raise WeightsError(f"EMA {str(path)!r}: expected {len(self.shadow)} tensors, got {len(state)}")
        for i, s in enumerate(self.shadow):
            s.copy_(state[str(i)])
        with safe_open(str(path), framework="pt") as f:
            self.updates = int((f.metadata() or {}).get("updates", 0))


def _lr_lambda(warmup: int, restart: int = 0, *, total: int = 0, decay: str = "constant",
               min_ratio: float = 0.0):
    """Linear warm-up, then constant (spec #32) or a cosine down to ``min_ratio`` at step ``total``; with a stage-1
    mask warm-up of ``restart`` steps the warm-up (and the cosine) run again from there, when the UNet and the
    diffusion loss join."""
    span = max(1, total - restart - warmup)

    def factor(k: int) -> float:
        j = k if k < restart else k - restart
        if j < warmup or decay == "constant":
            return min(1.0, (j + 1) / max(1, warmup))
        if k < restart:  # the warm-up of the mask-only steps stays flat
            return 1.0
        frac = min(1.0, (j - warmup + 1) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return factor


# ---------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    if not ckpt_root.is_dir():
        return []
    out = []
    for d in ckpt_root.iterdir():
        m = _CKPT_RE.match(d.name)
        if m and (d / STATE_FILE).is_file():  # complete checkpoints only
            out.append((int(m.group(1)), d))
    return sorted(out)


def find_checkpoint(run: RunConfig, stage: int, resume: Optional[str]) -> Optional[Path]:
    """``resume``: None (fresh), ``"auto"`` (the newest complete checkpoint, if any) or a path."""
    if resume is None or resume in ("", "none", "no"):
        return None
    if resume == "auto":
        found = _checkpoints(stage_dir(run, stage) / "checkpoints")
        return found[-1][1] if found else None
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise MissingFileError(f"--resume: expected a checkpoint folder with {STATE_FILE} at {str(p)!r}")
    return p


def _is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _components_state(objective_state: dict[str, torch.Tensor], include_base: bool) -> dict[str, torch.Tensor]:
    """The objective's full state dict (``unet.*``, ``vae.*``, ``reference_encoder.*``: its submodules) under
    the TWGTM file keys of :meth:`TWGTMComponents.state_dict` (``unet.*``, ``vae.*``, reference encoder bare)."""
    from twgtm.components import is_trained_key

    out = {}
    for k, v in objective_state.items():
        if k.startswith("reference_encoder."):
            k = k[len("reference_encoder."):]
        if include_base or is_trained_key(k):
            out[k] = v
    return out


def checkpoint_keys(model: nn.Module) -> set[str]:
    """The state-dict keys a training checkpoint holds: the trainable parameters and every buffer. The frozen
    base weights (UNet convolutions and resnets, VAE, CLIP: 5.5 GB of the 7 GB fp32 model at full size) are not
    written: a resumed run rebuilds them exactly from the same sources (base files, stage 1's weights)."""
    from accelerate.utils import extract_model_from_parallel

    # accelerate writes and reads checkpoints with the unwrapped names (no DDP ``module.`` prefix): so must we
    # (2 processes failed to resume without)
    model = extract_model_from_parallel(model)
    return {k for k, v in model.state_dict(keep_vars=True).items()
            if not isinstance(v, nn.Parameter) or v.requires_grad}


def _save_trained_only(models: list, weights: list, output_dir: str) -> None:
    """accelerate ``save_state`` pre-hook: drop the frozen parameters from the model states it writes."""
    for model, state in zip(models, weights):
        keep = checkpoint_keys(model)
        for k in [k for k in state if k not in keep]:
            del state[k]


def _load_checkpoint_model(accelerator, model: nn.Module, ckpt: Path) -> None:
    """``accelerator.load_state`` of a checkpoint written with :func:`_save_trained_only`: the file must hold
    every trainable parameter and buffer of ``model`` (tensors shared under two names: either name)."""
    from safetensors import safe_open

    path = ckpt / "model.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            in_file = set(f.keys())
        sd = accelerator.unwrap_model(model).state_dict(keep_vars=True)
        by_storage: dict[tuple, list[str]] = {}
        for k in sorted(checkpoint_keys(model)):
            v = sd[k]
            by_storage.setdefault((v.data_ptr(), tuple(v.shape)) if v.numel() else (k,), []).append(k)
        missing = [names[0] for names in by_storage.values() if not in_file.intersection(names)]
        if missing:
            raise WeightsError(f"--resume {str(ckpt)!r}: the checkpoint lacks {len(missing)} trained tensors of this "
                               f"model, e.g. {missing[:3]}; expected a checkpoint of the same run and stage")
    accelerator.load_state(str(ckpt), strict=False)  # the frozen base weights are the ones just rebuilt


def _save_checkpoint(accelerator, ckpt_root: Path, step: int, state: dict, keep: int, extra=None) -> Path:
    path = ckpt_root / f"step-{step:06d}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        if extra is not None:
            extra(path)
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path / STATE_FILE)  # the completion marker, written last
        for _, old in _checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


# ---------------------------------------------------------------------------------------------- logging
class CSVLog:
    """Append-only CSV of training rows; on resume rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_step: Optional[int], enabled: bool):
        self.path, self.fields, self.enabled = path, fields, enabled
        if not enabled:
            return
        rows = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in fields})

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow({k: row.get(k, "") for k in self.fields})
            f.flush()


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class StageResult:
    stage: int
    model_path: Path
    steps: int
    seconds: float
    final_loss: Optional[float]


def train_stage(run: RunConfig, stage: int, accelerator, *, resume: Optional[str] = "auto",
                max_steps: Optional[int] = None, stop_after: Optional[int] = None) -> StageResult:
    """Train stage 1 or 2; returns where the stage's weights were written.

    Args:
        resume: None (start fresh), ``"auto"`` (continue from the newest checkpoint of this stage if any)
            or a checkpoint folder.
        max_steps: overrides ``stage{N}.max_steps``.
        stop_after: stop (after checkpointing) once this step is reached, without writing the final
            model; for tests and time-boxed jobs.
    """
    s = run.stage(stage)
    total = s.max_steps if max_steps is None else max_steps
    out = stage_dir(run, stage)
    ckpt_root = out / "checkpoints"
    final_path = stage_model_path(run, stage)
    t_start = time.perf_counter()
    found = _checkpoints(ckpt_root)
    if resume == "auto" and final_path.is_file() and (not found or found[-1][0] >= total):
        logger.info("stage %d: %s exists, skipping", stage, final_path)
        return StageResult(stage, final_path, total, 0.0, None)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    # 1. model, objective, optimiser, schedule
    model = build_stage_model(run, stage)
    if run.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if model.reference_encoder.srm is not None:
            model.reference_encoder.srm.enable_gradient_checkpointing(True)
    groups = parameter_groups(model, s)
    group_names = [g["name"] for g in groups]
    if run.frozen_dtype in _FROZEN_DTYPES and _is_fsdp(accelerator):
        # FSDP2 all-gathers each module's parameters in one buffer and expects one original dtype per group; it
        # shards the frozen weights over the GPUs already, so they stay fp32 there
        logger.warning("frozen_dtype %s: not applied under FSDP (it shards the frozen weights instead)",
                       run.frozen_dtype)
    else:
        cast_frozen(model, groups, run.frozen_dtype)
    optimizer = torch.optim.AdamW(groups, betas=tuple(s.betas), weight_decay=s.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(
        s.warmup_steps, s.mask_warmup_steps, total=total, decay=s.lr_decay, min_ratio=s.lr_min_ratio))
    noise_scheduler = DDPMScheduler.from_config(model.config.scheduler)
    objective = TrainingObjective(model, noise_scheduler, vtoff_prob=s.vtoff_prob,
                                  region_reference_height=s.region_reference_height).train()
    objective, optimizer = accelerator.prepare(objective, optimizer)
    raw_model: TWGTMComponents = accelerator.unwrap_model(objective).components
    # the optimiser's own parameters: under FSDP they are the sharded ones that replaced the module's originals
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    fsdp = _is_fsdp(accelerator)
    if fsdp and s.ema_decay:
        raise ConfigError(f"stage{stage}.ema_decay: expected null with FSDP (the EMA keeps whole tensors), got "
                          f"{s.ema_decay}")
    ema = EMA(trainable, s.ema_decay) if s.ema_decay else None
    logger.info("stage %d: %s trainable parameters in groups %s", stage,
                f"{sum(p.numel() for p in trainable):,}", group_names)

    # 2. resume
    step = 0
    ckpt = find_checkpoint(run, stage, resume)
    if ckpt is not None:
        state = json.loads((ckpt / STATE_FILE).read_text())
        if int(state.get("stage", stage)) != stage:
            raise ConfigError(f"--resume: expected a stage-{stage} checkpoint, got {str(ckpt)!r} "
                              f"(stage {state.get('stage')})")
        _load_checkpoint_model(accelerator, objective, ckpt)
        lr_schedule.load_state_dict(state["lr_schedule"])
        if ema is not None:
            ema.load(ckpt / "ema.safetensors")
        step = int(state["step"])
        if state.get("world") not in (None, accelerator.num_processes):
            logger.warning("resuming a %s-process run on %d processes: the data order continues from the same "
                           "sample position, but batches are split differently", state.get("world"),
                           accelerator.num_processes)
        logger.info("stage %d: resumed from %s (step %d)", stage, ckpt, step)

    # 3. data, resumable
    dataset = build_train_dataset(run, raw_model.config)
    world, rank = accelerator.num_processes, accelerator.process_index
    sampler = ResumableBatchSampler(len(dataset), s.batch_size, seed=run.seed, start=_micro_batches_before(s, step),
                                    rank=rank, world=world, hflip=run.data.hflip, merge=_warmup_merge(s),
                                    merge_until=_micro_batches_before(s, s.mask_warmup_steps))
    # the loader's own seed (its workers' base seed) comes from a seeded generator, not the global one; the items
    # themselves are a pure function of their key (index, flip), so workers need no further seeding
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=run.data.num_workers,
                        persistent_workers=run.data.num_workers > 0,
                        generator=torch.Generator().manual_seed(_seed_from("loader", run.seed, stage, rank)))
    batches = iter(loader)
    if fsdp and s.sample_every:
        logger.warning("stage %d: no sample grids with FSDP (sampling on rank 0 alone would wait for the other "
                       "ranks' shards); evaluate the stage's model.safetensors instead", stage)
    sample_items = _sample_items(run, raw_model.config, s) \
        if accelerator.is_main_process and s.sample_every and not fsdp else None

    # 4. loop
    fields = ["step", "loss", "diffusion", "mask", "vtoff_fraction", "grad_norm"] + \
             [f"lr_{n}" for n in group_names] + ["seconds_per_step", "samples_per_second", "elapsed"]
    log = CSVLog(out / "log.csv", fields, step if ckpt is not None else None, accelerator.is_main_process)
    tracker = StageTracker(run, stage, accelerator, step)
    progress = progress_bar(accelerator, step, total, f"stage {stage}")
    last_loss = None
    t_loop, steps_timed = time.perf_counter(), 0
    while step < total:
        t_step = time.perf_counter()
        sums = torch.zeros(4)
        for micro in range(s.grad_accum):
            batch = next(batches)
            seed = _seed_from("step", run.seed, stage, step, micro, rank)
            sync = micro == s.grad_accum - 1
            mask_only = step < s.mask_warmup_steps  # stage 1's mask warm-up (the config refuses it in stage 2)
            with seeded_rng(_seed_from("global-rng", run.seed, stage, step, micro, rank), accelerator.device), \
                    (nullcontext() if sync or world == 1 else accelerator.no_sync(objective)):
                parts = objective(batch, seed, mask_only)
                accelerator.backward(parts["loss"] / s.grad_accum)
            sums += torch.stack([parts[k].detach().float().cpu()
                                 for k in ("loss", "diffusion", "mask", "vtoff_fraction")])
        grad_norm = accelerator.clip_grad_norm_(trainable, s.grad_clip) if s.grad_clip > 0 else None
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        step += 1
        steps_timed += 1
        progress.update(1)

        means = accelerator.reduce((sums / s.grad_accum).to(accelerator.device), reduction="mean").cpu()
        last_loss = float(means[0])
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"stage {stage} step {step}: loss is {last_loss}; lower the learning rates "
                                     f"or use bf16 instead of fp16")
        if step % s.log_every == 0 or step == total:
            dt = time.perf_counter() - t_step
            samples = s.batch_size * s.grad_accum * world * (_warmup_merge(s) if mask_only else 1)
            row = {"step": step, "loss": f"{means[0]:.6f}", "diffusion": f"{means[1]:.6f}", "mask": f"{means[2]:.6f}",
                   "vtoff_fraction": f"{means[3]:.4f}",
                   "grad_norm": "" if grad_norm is None else f"{float(grad_norm):.4f}",
                   "seconds_per_step": f"{dt:.3f}",
                   "samples_per_second": f"{samples / max(dt, 1e-9):.2f}",
                   "elapsed": f"{time.perf_counter() - t_start:.1f}"}
            for n, lr in zip(group_names, lr_schedule.get_last_lr()):
                row[f"lr_{n}"] = f"{lr:.6g}"
            log.write(row)
            tracker.log(step, row)
            progress.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
        if sample_items is not None and (step % s.sample_every == 0 or step == total):
            if ema is not None:
                ema.swap()
            grid = out / "samples" / f"step-{step:06d}.png"
            _write_samples(objective, raw_model, sample_items, grid, s, run)
            tracker.log_image(step, grid)
            if ema is not None:
                ema.swap()
        if step % s.checkpoint_every == 0 or step == total or step == stop_after:
            micro_batches = _micro_batches_before(s, step)
            state = {"stage": stage, "step": step, "lr_schedule": lr_schedule.state_dict(),
                     "data_position": micro_batches * s.batch_size * world, "micro_batches": micro_batches,
                     "seed": run.seed, "world": world, "time": time.time()}
            _save_checkpoint(accelerator, ckpt_root, step, state, s.keep_checkpoints,
                             extra=(lambda d: ema.save(d / "ema.safetensors")) if ema is not None else None)
        if stop_after is not None and step >= stop_after:
            progress.close()
            return StageResult(stage, final_path, step, time.perf_counter() - t_start, last_loss)
    progress.close()
    if steps_timed:
        logger.info("stage %d: %d steps in %.1f s (%.2f s/step)", stage, steps_timed, time.perf_counter() - t_loop,
                    (time.perf_counter() - t_loop) / steps_timed)

    # 5. the stage's weights (the averaged ones with EMA)
    if ema is not None:
        ema.swap()
    # FSDP: the whole tensors are gathered from the shards (a collective: every rank takes part)
    state = _components_state(accelerator.get_state_dict(objective), run.export.include_base) if fsdp else None
    if accelerator.is_main_process:
        save_twgtm(raw_model, final_path, include_base=run.export.include_base, state=state,
                   extra_metadata={"run": run.name, "steps": str(step)})
        logger.info("stage %d: weights written to %s", stage, final_path)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return StageResult(stage, final_path, step, time.perf_counter() - t_start, last_loss)


def _sample_items(run: RunConfig, cfg: TWGTMConfig, s: StageConfig) -> Optional[dict]:
    """A fixed batch of held-out items for the sample grids (training items if there is no test split)."""
    try:
        ds = build_eval_dataset(run, cfg, pairs="unpaired")
    except (OSError, ValueError) as exc:
        logger.warning("sample grid: no held-out split (%s); using training items", exc)
        ds = build_train_dataset(run, cfg)
    n = min(s.num_samples, len(ds))
    if n == 0:
        return None
    return default_collate([ds[i] for i in range(n)])  # a FlipDataset reads a plain index unflipped


def _write_samples(objective: nn.Module, model: TWGTMComponents, items: dict, path: Path, s: StageConfig,
                   run: RunConfig) -> None:
    was_training = objective.training
    objective.eval()
    try:
        dtype = _FROZEN_DTYPES.get(run.frozen_dtype or "")
        device_type = next(model.unet.parameters()).device.type
        # frozen bf16/fp16 weights beside fp32 trained ones only run inside the autocast they were cast for
        with torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext():
            sample_grid(model, items, path, steps=s.sample_steps, seed=run.eval.seed,
                        guidance_scale=run.eval.guidance_scale, eta=run.eval.eta,
                        tryoff_region=run.eval.tryoff_region)
    finally:
        objective.train(was_training)


# ---------------------------------------------------------------------------------------------- export
def export_model(run: RunConfig, source: Optional[Path] = None, dest: Optional[str] = None) -> Path:
    """Write the file the nodes load (``export.filename``): the last stage's TWGTM weights file, which
    already holds the config in its metadata (and the base components when ``export.include_base``)."""
    src = Path(source) if source else stage_model_path(run, 2)
    if not src.is_file():
        raise MissingFileError(f"export: expected trained weights at {str(src)!r}; train stage 2 first")
    out = Path(dest or run.resolve(run.export.filename))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, out)
    logger.info("exported %s", out)
    return out
