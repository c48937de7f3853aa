"""Saving and loading TWGTM weights.

* A trained TWGTM model is **one ``.safetensors`` file**: the trained parts (UNet Transformer2D
  modules incl. Extended Attention, Q-Former, cached category prompts, Swin, pixel decoder,
  TaskFormer, heads, Decoder) with the config JSON in its metadata. ``include_base=True`` also stores
  the frozen base components (VAE, the rest of the UNet, CLIP image encoder): a self-contained file,
  which is what the tiny/synthetic models ship as.
* Base components load from local diffusers-format directories, a single-file SD1.5-inpainting
  checkpoint (``.safetensors``; ``.ckpt`` through ``torch.load(weights_only=True)``), transformers
  directories or single files, and timm weight files. A hub id is only used when the caller passes
  one explicitly (a string that is not an existing path); nothing is ever downloaded implicitly.

Model files are data, never code: nothing here unpickles arbitrary objects.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import TWGTMConfig
from .errors import ConfigError, MissingFileError, WeightsError
from .components import TWGTMComponents

logger = logging.getLogger(__name__)

FORMAT = "twgtm"
FORMAT_VERSION = "1"
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


# ----------------------------------------------------------------------------- TWGTM files
def save_twgtm(components: TWGTMComponents, path: str | os.PathLike, *, include_base: bool = False,
               extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``components`` to one ``.safetensors`` file with its config (and so its stage) in the metadata."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"path: expected a file name ending in .safetensors, got {str(path)!r}")
    ref = components.reference_encoder
    if ref is None:
        raise WeightsError("components: expected a TWGTM model with a reference encoder, got the baseline "
                           "(reference_encoder=None)")
    if not ref.sam.prompts.is_built:
        raise WeightsError("model: expected the category prompts to be built before saving "
                           "(call reference_encoder.sam.prompts.build(text_encoder, tokenizer)), got unbuilt prompts")
    state = components.state_dict(include_base=include_base)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": components.config.to_json(),
            "includes_base": "1" if include_base else "0"}
    meta.update(extra_metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never leave a half-written model file behind
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a TWGTM file (no tensors read). Errors say what the file is if it is not TWGTM."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"TWGTM weights: expected a .safetensors file at {str(path)!r}, but it does not exist")
    if path.suffix != ".safetensors":
        raise WeightsError(f"TWGTM weights: expected a .safetensors file, got {path.name!r} "
                           "(pickled checkpoints are not loaded, they can run code)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"TWGTM weights: {str(path)!r} is not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        hint = ""
        if any(k.startswith("model.diffusion_model.") for k in keys):
            hint = " It looks like a Stable Diffusion checkpoint: that is a base component, not a TWGTM model."
        raise WeightsError(f"TWGTM weights: {path.name!r} is not a TWGTM checkpoint: expected metadata "
                           f"format='{FORMAT}', got {meta.get('format')!r}.{hint}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"TWGTM weights: {path.name!r} has format_version {meta.get('format_version')!r}, "
                           f"this library reads {FORMAT_VERSION!r}")
    return meta


def read_config(path: str | os.PathLike) -> TWGTMConfig:
    meta = read_metadata(path)
    try:
        return TWGTMConfig.from_json(meta["config"])
    except (KeyError, ConfigError) as exc:
        raise WeightsError(f"TWGTM weights: {Path(path).name!r} carries a wrong config: {exc}") from exc


@dataclass
class BaseSources:
    """Where the frozen base components come from (each a local dir/file, an explicit hub id, or None).

    ``unet``/``vae`` accept a diffusers directory (the pipeline root or the component folder) or a
    single-file SD1.5-inpainting checkpoint; ``clip_vision`` a transformers directory or a single
    safetensors file; ``text_encoder``/``tokenizer`` are only needed to (re)build the cached prompts.
    """

    unet: str | None = None
    vae: str | None = None
    clip_vision: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    swin: str | None = None


def _check_state(components: TWGTMComponents, state: dict[str, torch.Tensor], expected: set[str], where: str) -> None:
    own = components.state_dict()
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if k in own and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if bad:
        problems.append(f"{len(bad)} shape mismatches (first: " +
                        ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad[:3]) + ")")
    if problems:
        raise WeightsError(f"{where}: does not match the model built from its config: " + "; ".join(problems))


def load_twgtm(path: str | os.PathLike, *, base: BaseSources | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> TWGTMComponents:
    """Load a TWGTM ``.safetensors`` file into ready :class:`TWGTMComponents` (eval mode).

    A file saved with ``include_base=True`` needs no ``base``; otherwise ``base`` must name the UNet,
    VAE and CLIP image encoder sources. The stage is the one in the file's config.
    """
    path = Path(path)
    meta = read_metadata(path)
    cfg = read_config(path)
    if "stage" in meta and meta["stage"] != str(cfg.stage):  # files of format 1 also wrote it here
        raise WeightsError(f"TWGTM weights {path.name!r}: metadata 'stage' says {meta['stage']!r}, its config "
                           f"says {cfg.stage}")
    state = load_file(str(path))
    if meta.get("includes_base") == "1":
        with torch.device("meta"):
            components = TWGTMComponents.build(cfg)
        _check_state(components, state, set(components.state_dict()), f"TWGTM weights {path.name!r}")
        # fresh (aligned) storage per tensor: views into the file buffer can change SIMD summation order
        components.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
        _materialize_non_persistent(components)
    else:
        base = base or BaseSources()
        absent = [n for n in ("unet", "vae", "clip_vision") if getattr(base, n) is None]
        if absent:
            raise MissingFileError(f"base components: {path.name!r} holds only the trained parts; expected "
                                   f"sources for {absent} (SD1.5-inpainting UNet and VAE, CLIP ViT-L/14 image encoder)")
        components = TWGTMComponents.build(cfg, unet=load_unet(base.unet, cfg), vae=load_vae(base.vae, cfg),
                                           clip_vision=load_clip_vision(base.clip_vision, cfg))
        _check_state(components, state, set(components.trained_state_dict()), f"TWGTM weights {path.name!r}")
        components.load_state_dict(state, strict=False)
    if not components.reference_encoder.sam.prompts.is_built:
        raise WeightsError(f"TWGTM weights {path.name!r}: expected built category prompts, got none")
    return components.to(device=device, dtype=dtype).eval()


def _materialize_non_persistent(components: TWGTMComponents) -> None:
    """Buffers that no state dict holds (CLIP position ids, Swin relative-position indices) are still on
    the meta device after ``load_state_dict(assign=True)``: recompute them on the CPU."""
    ref = components.reference_encoder
    for part in components.modules().values():
        for module in part.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and buf.is_meta and name == "position_ids":
                    module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
    for module in ref.srm.swin.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype)
    ref.srm.init_non_persistent_buffers()
    left = [n for part in components.modules().values()
            for n, t in list(part.named_parameters()) + list(part.named_buffers()) if t.is_meta]
    if left:
        raise WeightsError(f"TWGTM weights: expected every tensor to be materialised, got meta tensors {left[:5]}")


# ----------------------------------------------------------------------------- base components
def _is_hub_id(source: str) -> bool:
    return not Path(source).exists() and source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _require(source: str, what: str, place: str) -> Path:
    p = Path(os.path.expanduser(source))
    if not p.exists():
        raise MissingFileError(f"{what}: expected {place} at {str(p)!r}, but nothing is there")
    return p


def _read_state_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        return obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    raise WeightsError(f"weights file: expected one of {_WEIGHT_SUFFIXES}, got {path.name!r}")


def _component_dir(root: Path, sub: str) -> Path:
    return root / sub if (root / sub / "config.json").is_file() else root


def _load_converted(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str) -> None:
    """Load a converted single-file state into ``module``; every key must fit (typed error otherwise)."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{what}: {name!r} does not fit the configured {what}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def load_unet(source: str, cfg: TWGTMConfig):
    """SD1.5-inpainting UNet from a diffusers dir, a single-file checkpoint or an explicit hub id."""
    from diffusers import UNet2DConditionModel

    if _is_hub_id(source):
        logger.info("loading UNet from the hub id %s (explicitly requested)", source)
        return UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    p = _require(source, "UNet", "a diffusers folder (with unet/config.json) or an SD1.5-inpainting .safetensors file")
    if p.is_dir():
        d = _component_dir(p, "unet")
        if not (d / "config.json").is_file():
            raise MissingFileError(f"UNet: expected {str(d / 'config.json')!r} (diffusers layout)")
        unet = UNet2DConditionModel.from_pretrained(str(d), local_files_only=True)
    else:
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        unet = UNet2DConditionModel(**cfg.unet)
        ckpt = _read_state_file(p)
        if not any(k.startswith("model.diffusion_model.") for k in ckpt):
            raise WeightsError(f"UNet: {p.name!r} has no 'model.diffusion_model.*' keys: expected an SD1.x checkpoint")
        _load_converted(unet, convert_ldm_unet_checkpoint(ckpt, dict(unet.config)), "UNet", p.name)
    if unet.config.in_channels != cfg.unet["in_channels"]:
        raise WeightsError(f"UNet: expected an inpainting UNet with {cfg.unet['in_channels']} input channels, "
                           f"got {unet.config.in_channels} (use stable-diffusion-inpainting, not the base model)")
    return unet


def load_vae(source: str, cfg: TWGTMConfig):
    """VAE from a diffusers dir (root or vae/), a single file (SD checkpoint or a VAE file) or a hub id."""
    from diffusers import AutoencoderKL

    if _is_hub_id(source):
        logger.info("loading VAE from the hub id %s (explicitly requested)", source)
        return AutoencoderKL.from_pretrained(source)
    p = _require(source, "VAE", "a diffusers VAE folder (config.json) or a .safetensors VAE / SD checkpoint")
    if p.is_dir():
        d = _component_dir(p, "vae")
        return AutoencoderKL.from_pretrained(str(d), local_files_only=True)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL(**cfg.vae)
    sd = _read_state_file(p)
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers-format
        converted = sd
    else:
        if not any(k.startswith("first_stage_model.") for k in sd):
            sd = {"first_stage_model." + k: v for k, v in sd.items()}  # bare LDM VAE file
        converted = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    _load_converted(vae, converted, "VAE", p.name)
    return vae


def load_clip_vision(source: str, cfg: TWGTMConfig):
    """CLIP ViT image encoder with projection, from a transformers dir, a single safetensors file or a hub id."""
    from transformers import CLIPVisionModelWithProjection

    from .sam import build_clip_vision

    if _is_hub_id(source):
        logger.info("loading CLIP image encoder from the hub id %s (explicitly requested)", source)
        return CLIPVisionModelWithProjection.from_pretrained(source, attn_implementation="sdpa")
    p = _require(source, "CLIP image encoder", "a transformers folder (config.json) or a .safetensors file")
    if p.is_dir():
        return CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True, attn_implementation="sdpa")
    model = build_clip_vision(cfg)
    sd = _read_state_file(p)
    if any(k.startswith("text_model.") for k in sd):  # a full CLIP file: keep the image tower
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise WeightsError(f"CLIP image encoder: {p.name!r} does not fit CLIPVisionModelWithProjection "
                           f"({cfg.clip_vision}): missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def load_text_encoder(source: str, tokenizer_source: str | None = None):
    """The SD1.5 CLIP text encoder and tokenizer (only needed to build the cached category prompts)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    if _is_hub_id(source):
        return (CLIPTextModel.from_pretrained(source, subfolder="text_encoder"),
                CLIPTokenizer.from_pretrained(tokenizer_source or source, subfolder="tokenizer"))
    p = _require(source, "CLIP text encoder", "a diffusers folder (text_encoder/, tokenizer/) or a text_encoder folder")
    enc_dir = _component_dir(p, "text_encoder")
    tok_dir = Path(tokenizer_source) if tokenizer_source else (p / "tokenizer" if (p / "tokenizer").is_dir() else enc_dir)
    if not (tok_dir / "vocab.json").is_file():
        raise MissingFileError(f"CLIP tokenizer: expected vocab.json and merges.txt in {str(tok_dir)!r}")
    return (CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True),
            CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True))


def load_swin_weights(components: TWGTMComponents, source: str) -> None:
    """Initialise the SRM's Swin from a timm weight file (e.g. swin_base_patch4_window12_384 .safetensors)."""
    import timm

    cfg = components.config
    p = _require(source, "Swin weights", "a timm .safetensors/.pth/.bin file of " + cfg.swin.model_name)
    ref = timm.create_model(cfg.swin.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(p)),
                            features_only=True, out_indices=cfg.swin.out_indices,
                            img_size=(cfg.height, cfg.width), **cfg.swin.kwargs)
    missing, unexpected = components.reference_encoder.srm.swin.load_state_dict(ref.state_dict(), strict=False)
    if missing or unexpected:
        raise WeightsError(f"Swin weights {p.name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_from_sources(cfg: TWGTMConfig, sources: BaseSources) -> TWGTMComponents:
    """A fresh (untrained TWGTM parts) model on pretrained base components: the paper recipe's start."""
    missing = [n for n in ("unet", "vae", "clip_vision", "text_encoder") if getattr(sources, n) is None]
    if missing:
        raise MissingFileError(f"base components: expected sources for {missing}")
    te, tok = load_text_encoder(sources.text_encoder, sources.tokenizer)
    components = TWGTMComponents.build(cfg, unet=load_unet(sources.unet, cfg), vae=load_vae(sources.vae, cfg),
                                       clip_vision=load_clip_vision(sources.clip_vision, cfg), text_encoder=te,
                                       tokenizer=tok)
    if sources.swin:
        load_swin_weights(components, sources.swin)
    return components


def describe(path: str | os.PathLike) -> dict:
    """Metadata summary of a TWGTM file, for the UI and logs."""
    meta = read_metadata(path)
    cfg = json.loads(meta["config"])
    return {"stage": cfg.get("stage"), "includes_base": meta.get("includes_base") == "1",
            "height": cfg.get("height"), "width": cfg.get("width")}
