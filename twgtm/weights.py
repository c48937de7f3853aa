"""Saving and loading TWGTM weights.

* A trained TWGTM model is **one ``.safetensors`` file**: the trained parts (UNet Transformer2D
  modules incl. Extended Attention, Q-Former, cached category prompts, Swin, pixel decoder,
  TaskFormer, heads, Decoder) with the config JSON in its metadata. ``include_base=True`` also stores
  the frozen base components (VAE, the rest of the UNet, CLIP image encoder): a self-contained file,
  which is what the tiny/synthetic models ship as.
* Base components load from local diffusers-format directories, a single-file SD1.5-inpainting
  checkpoint (``.safetensors``; ``.ckpt`` through ``torch.load(weights_only=True)``), transformers
  directories or single files, and timm weight files. Every one loads **strictly**: missing, unexpected,
  mis-shaped or non-float weights are a :class:`~twgtm.errors.WeightsError` that names them.
* **Nothing touches the network unless asked**: a source is a local path unless it is written
  ``hf://org/name`` (or ``hf://org/name/subfolder``), an explicit Hugging Face hub id; ``HF_HUB_OFFLINE=1``
  restricts even those to the local hub cache. A path that does not exist is a
  :class:`~twgtm.errors.MissingFileError` at once; every local ``from_pretrained`` call passes
  ``local_files_only=True``.

Model files are data, never code: nothing here unpickles arbitrary objects. Every problem with a file
(unreadable, wrong metadata or config, wrong keys, shapes or dtypes) is a typed error naming the file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import TWGTMConfig
from .errors import ConfigError, MissingFileError, TWGTMError, WeightsError
from .components import TWGTMComponents
from . import ldm_keys

logger = logging.getLogger(__name__)

FORMAT = "twgtm"
FORMAT_VERSION = "1"
HUB_PREFIX = "hf://"  # the one way to ask for a Hugging Face hub id
_FIRST = 5            # how many offending keys an error message lists
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


# ----------------------------------------------------------------------------- TWGTM files
def save_twgtm(components: TWGTMComponents, path: str | os.PathLike, *, include_base: bool = False,
               extra_metadata: dict[str, str] | None = None,
               state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` to one ``.safetensors`` file with its config in the metadata. ``state``: the tensors
    to write instead of ``components.state_dict(include_base=...)`` (same keys), e.g. gathered from shards."""
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
    if state is None:
        state = components.state_dict(include_base=include_base)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # the stage is the config's (one source of truth); files of this format written before the components
    # also carry a "stage" metadata entry, which load_twgtm checks against the config
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
        found = "it is a folder" if path.is_dir() else "it does not exist"
        raise MissingFileError(f"TWGTM weights: expected a .safetensors file at {str(path)!r}, but {found}")
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
    for key, allowed in (("stage", ("1", "2")), ("includes_base", ("0", "1"))):
        if key in meta and meta[key] not in allowed:
            raise WeightsError(f"TWGTM weights: {path.name!r} metadata {key!r}: expected one of {allowed}, "
                               f"got {meta[key]!r}")
    return meta


def read_config(path: str | os.PathLike) -> TWGTMConfig:
    """The validated config of a TWGTM file; a wrong one is a WeightsError naming the file and the field."""
    meta = read_metadata(path)
    if "config" not in meta:
        raise WeightsError(f"TWGTM weights: {Path(path).name!r} has no 'config' metadata entry")
    try:
        return TWGTMConfig.from_json(meta["config"])
    except ConfigError as exc:
        raise WeightsError(f"TWGTM weights: {Path(path).name!r} carries a wrong config (metadata 'config'): {exc}") from exc


@dataclass
class BaseSources:
    """Where the frozen base components come from: each a local path, an explicit hub id, or None.

    Every value is a **local path** (a folder or a file; ``~`` is expanded) unless it starts with ``hf://``:
    ``"hf://org/name"`` (or ``"hf://org/name/subfolder"``) asks for that Hugging Face hub repository, the only
    way anything is fetched from the network; under ``HF_HUB_OFFLINE=1`` it is read from the local hub cache
    only. A path that does not exist is a :class:`MissingFileError` at once, never a hub lookup.

    ``unet``/``vae`` accept a diffusers directory (the pipeline root or the component folder) or a
    single-file SD1.5-inpainting checkpoint; ``vae`` also a diffusers- or LDM-format VAE file;
    ``clip_vision`` a transformers directory (the image encoder or a full CLIP model) or a single
    file in the transformers or the OpenAI/open_clip (``visual.*``) layout; ``text_encoder``/``tokenizer``
    are only needed to (re)build the cached prompts;
    ``swin`` a timm weight file of ``config.swin.model_name``. Every component loads strictly: missing,
    unexpected, mis-shaped or non-float weights are a :class:`WeightsError` naming them.
    """

    unet: str | None = None
    vae: str | None = None
    clip_vision: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    swin: str | None = None


# ----------------------------------------------------------------------------- reading and checking states
def _reason(exc: BaseException) -> str:
    """The cause of a read error in one line, without torch's advice to retry with ``weights_only=False``
    or to allowlist globals: a pickle that holds more than tensors is refused, never unpickled."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = ("the weights-only unpickler refused it (the pickle holds more than tensors and could run code): "
                + text.split("WeightsUnpickler error:", 1)[1])
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    keep = [s for s in sentences if not re.search(r"weights_only|safe_globals|allowlist|trust", s)]
    out = " ".join(keep[:2]).strip()
    return f"{type(exc).__name__}: {out[:300]}" if out else type(exc).__name__


def _read_state_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of one weights file (``torch.load(weights_only=True)`` for pickles: data, never code).

    Lightning/timm wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped; anything unreadable,
    or anything but a mapping of names to tensors, is a WeightsError naming ``what`` and the file.
    """
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise WeightsError(f"{what}: expected a weights file ending in one of {_WEIGHT_SUFFIXES}, got {path.name!r}")
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # safetensors, zipfile and the unpickler each raise their own error types
        # from None: the cause is in the message; torch's own text advises weights_only=False, never pass that on
        raise WeightsError(f"{what}: {str(path)!r} is not a readable {path.suffix} weights file ({_reason(exc)})") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        got = f"an empty {type(obj).__name__}" if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{what}: {str(path)!r}: expected a mapping of tensor names to tensors, got {got}")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{what}: {str(path)!r}: expected tensors only, got {len(bad)} other entries "
                           f"(first: {', '.join(bad[:_FIRST])})")
    return obj


def _dtype_fits(file: torch.dtype, model: torch.dtype) -> bool:
    """Float weights may come in any float dtype (they are cast); integer/bool buffers must match exactly."""
    return file.is_floating_point if model.is_floating_point else file == model


def _problems(missing: Sequence[str] = (), unexpected: Sequence[str] = (), shapes: Sequence[str] = (),
              dtypes: Sequence[str] = ()) -> str:
    """One sentence listing the first few offending keys of each kind, and how many there are."""
    parts = []
    for items, what in ((sorted(missing), "missing keys"), (sorted(unexpected), "unexpected keys"),
                        (shapes, "shape mismatches"), (dtypes, "tensors of the wrong dtype")):
        if items:
            parts.append(f"{len(items)} {what} (first: {', '.join(items[:_FIRST])})")
    return "; ".join(parts)


def _fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], *, required: Iterable[str] | None = None,
         unused: Sequence[str] = ()) -> str:
    """What keeps ``state`` from loading exactly into a module whose state dict is ``own`` ('' when nothing).

    ``required``: the keys that must be present (default: all of ``own``); ``unused``: source keys a
    conversion did not consume, reported as unexpected.
    """
    required = set(own) if required is None else set(required)
    common = [k for k in state if k in own]
    return _problems(
        missing=list(required - set(state)),
        unexpected=[k for k in state if k not in own] + list(unused),
        shapes=[f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in common if state[k].shape != own[k].shape],
        dtypes=[f"{k}: file {state[k].dtype} vs model {'a float dtype' if own[k].is_floating_point() else own[k].dtype}"
                for k in common if not _dtype_fits(state[k].dtype, own[k].dtype)])


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str, *,
                 unused: Sequence[str] = (), hint: str = "") -> None:
    """Load ``state`` into ``module``: every key, shape and dtype must fit (WeightsError naming them otherwise)."""
    problems = _fit(module.state_dict(), state, unused=unused)
    if problems:
        raise WeightsError(f"{what}: {name!r} does not fit the configured {what}: {problems}{hint}")
    module.load_state_dict(state, strict=True)


def _check_state(components: TWGTMComponents, state: dict[str, torch.Tensor], expected: set[str], where: str) -> None:
    problems = _fit(components.state_dict(), state, required=expected)
    if problems:
        raise WeightsError(f"{where}: does not match the model built from its config: {problems}")


def _is_derived(key: str) -> bool:
    """Position-id buffers: recomputed by the model, present in some (older) files, never weights."""
    return key.endswith("position_ids")


# ----------------------------------------------------------------------------- TWGTM files
def load_twgtm(path: str | os.PathLike, *, base: BaseSources | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> TWGTMComponents:
    """Load a TWGTM ``.safetensors`` file into ready :class:`TWGTMComponents` (eval mode).

    A file saved with ``include_base=True`` needs no ``base``; otherwise ``base`` must name the UNet,
    VAE and CLIP image encoder sources (local paths, or ``hf://org/name`` hub ids: see :class:`BaseSources`).
    Every problem with the file (metadata, config, tensors) is a WeightsError that names the file. The stage
    is the one in the file's config.
    """
    path = Path(path)
    meta = read_metadata(path)
    cfg = read_config(path)
    if "stage" in meta and meta["stage"] != str(cfg.stage):  # older files of format 1 also wrote it here
        raise WeightsError(f"TWGTM weights {path.name!r}: metadata 'stage' says {meta['stage']!r}, its config "
                           f"says {cfg.stage}")
    where = f"TWGTM weights {path.name!r}"
    state = _read_state_file(path, where)
    try:
        if meta.get("includes_base") == "1":
            with torch.device("meta"):
                model = _build_model(lambda: TWGTMComponents.build(cfg), where)
            _check_state(model, state, set(model.state_dict()), where)
            # fresh (aligned) storage per tensor: views into the file buffer can change SIMD summation order
            model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True, assign=True)
            _materialize_non_persistent(model)
        else:
            base = base or BaseSources()
            absent = [n for n in ("unet", "vae", "clip_vision") if getattr(base, n) is None]
            if absent:
                raise MissingFileError(f"base components: {path.name!r} holds only the trained parts; expected "
                                       f"sources for {absent} (SD1.5-inpainting UNet and VAE, CLIP ViT-L/14 image encoder)")
            parts = dict(unet=load_unet(base.unet, cfg), vae=load_vae(base.vae, cfg),
                         clip_vision=load_clip_vision(base.clip_vision, cfg))
            model = _build_model(lambda: TWGTMComponents.build(cfg, **parts), where)
            _check_state(model, state, set(model.trained_state_dict()), where)
            model.load_state_dict(state, strict=False)  # the rest are the base components just loaded
    except ConfigError as exc:  # the file's config does not fit the base components or cannot be built
        raise WeightsError(f"{where}: its config does not build a model: {exc}") from exc
    if not model.reference_encoder.sam.prompts.is_built:
        raise WeightsError(f"{where}: expected built category prompts, got none")
    return model.to(device=device, dtype=dtype).eval()


def _build_model(build: Callable[[], TWGTMComponents], where: str) -> TWGTMComponents:
    """Build the model a file's config describes; constructor errors (diffusers/transformers/timm get the
    config's kwargs) become a WeightsError naming the file."""
    try:
        return build()
    except (TWGTMError, MemoryError):
        raise
    except Exception as exc:
        raise WeightsError(f"{where}: its config does not build a model ({type(exc).__name__}: {exc})") from exc


def _materialize_non_persistent(components: TWGTMComponents) -> None:
    """Buffers that no state dict holds (CLIP position ids, Swin relative-position indices) are still on
    the meta device after ``load_state_dict(assign=True)``: recompute them on the CPU."""
    parts = list(components.modules().values())
    srm = components.reference_encoder.srm  # None without an SRM (ablation Variant 1)
    for part in parts:
        for module in part.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None and buf.is_meta and name == "position_ids":
                    module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
    for module in srm.swin.modules() if srm is not None else ():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty(buf.shape, dtype=buf.dtype)
    if srm is not None:
        srm.init_non_persistent_buffers()
    left = [n for part in parts for n, t in list(part.named_parameters()) + list(part.named_buffers()) if t.is_meta]
    if left:
        raise WeightsError(f"TWGTM weights: expected every tensor to be materialised, got meta tensors {left[:5]}")


# ----------------------------------------------------------------------------- where base components come from
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HUB_HINT = (f"Nothing is downloaded implicitly: to load from the Hugging Face hub, pass '{HUB_PREFIX}org/name' "
             f"(or '{HUB_PREFIX}org/name/subfolder').")


@dataclass(frozen=True)
class _Hub:
    repo: str
    subfolder: str | None


def _source(source: Any, arg: str, place: str) -> _Hub | Path:
    """An explicit ``hf://org/name[/subfolder]`` hub id, or an existing local path.

    A string without the prefix is always a path: one that does not exist is a MissingFileError at once,
    naming ``arg`` and the path, without ever touching the network.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise WeightsError(f"{arg}: expected a local path or '{HUB_PREFIX}org/name', got {type(source).__name__} {source!r}")
    if source.startswith(HUB_PREFIX):
        parts = source[len(HUB_PREFIX):].strip("/").split("/")
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:]) or None
        if not _HUB_ID.fullmatch(repo) or (sub is not None and ".." in sub.split("/")):
            raise WeightsError(f"{arg}: expected a hub id written '{HUB_PREFIX}org/name' or "
                               f"'{HUB_PREFIX}org/name/subfolder', got {source!r}")
        return _Hub(repo, sub)
    p = Path(os.path.expanduser(source))
    if not p.exists():
        shown = repr(source) if p.is_absolute() else f"{source!r} (relative to {os.getcwd()!r})"
        raise MissingFileError(f"{arg}: expected {place} at {shown}, but nothing is there. {_HUB_HINT}")
    return p


def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE``, read when loading (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextlib.contextmanager
def _no_hub_requests(active: bool = True) -> Iterator[None]:
    """Put huggingface_hub in offline mode for the duration of a load: ``local_files_only`` alone is not
    enough, since huggingface_hub fetches other things (a user-agent registry) on its first request, and it
    reads ``HF_HUB_OFFLINE`` only once, at import. In offline mode every request it would make raises."""
    if not active:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _component_dir(root: Path, sub: str, arg: str, what: str) -> Path:
    """``root/sub`` when it holds a config.json (a pipeline root), else ``root``; it must hold config.json
    and weights, and every tensor in its safetensors files must be a float tensor."""
    d = root / sub if (root / sub / "config.json").is_file() else root
    if not (d / "config.json").is_file():
        raise MissingFileError(f"{arg}: expected {str(d / 'config.json')!r} (a {what} folder in the diffusers/"
                               f"transformers layout, or a pipeline root with {sub}/config.json)")
    weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin"))
    if not weights:
        raise MissingFileError(f"{arg}: expected the {what} weights (*.safetensors or *.bin) in {str(d)!r}, found none")
    for f in weights:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as h:
                    codes = {k: h.get_slice(k).get_dtype() for k in h.keys()}
            except Exception as exc:
                raise WeightsError(f"{arg}: {str(f)!r} is not a readable safetensors file ({_reason(exc)})") from exc
            bad = [f"{k} ({c})" for k, c in codes.items() if not _is_derived(k) and not c.startswith(("F", "BF"))]
            if bad:
                raise WeightsError(f"{arg}: {str(f)!r} holds {len(bad)} non-float tensors where the {what} expects "
                                   f"float weights (first: {', '.join(bad[:_FIRST])})")
    return d


def _local_variant(folder: Path) -> str | None:
    """"fp16" when a folder holds only the fp16 variant of its weights (``diffusion_pytorch_model.fp16.safetensors``,
    ``model.fp16.safetensors``, sharded likewise), as a hub download restricted to the fp16 files leaves it;
    ``from_pretrained`` finds those only when told the variant. None when plain weights are there."""
    names = [f.name for f in folder.iterdir() if f.is_file() and f.name.endswith((".safetensors", ".bin"))]
    if not names or any(".fp16" not in n for n in names):
        return None
    return "fp16"


def _from_pretrained(cls: Any, where: _Hub | Path, arg: str, what: str, *, ignore: tuple[str, ...] = (),
                     **kwargs: Any) -> Any:
    """``cls.from_pretrained`` made strict: missing, unexpected or mis-shaped keys are a WeightsError.

    A local folder loads with ``local_files_only=True``; a hub id is fetched only because the caller wrote
    ``hf://``, and from the local cache only under ``HF_HUB_OFFLINE``. ``ignore``: key prefixes a folder may
    hold besides this component (the other tower of a full CLIP model).
    """
    hub = isinstance(where, _Hub)
    offline = not hub or _hub_offline()
    if hub:
        shown = f"'{HUB_PREFIX}{where.repo}'" + (f" (subfolder {where.subfolder!r})" if where.subfolder else "")
        logger.info("%s: loading the %s from the Hugging Face hub id %s (explicitly requested%s)", arg, what, shown,
                    "; HF_HUB_OFFLINE: local cache only" if offline else "")
        name, kwargs = where.repo, {**kwargs, **({"subfolder": where.subfolder} if where.subfolder else {})}
    else:
        shown, name = repr(str(where)), str(where)
        variant = _local_variant(where)
        if variant:
            kwargs = {**kwargs, "variant": variant}
    try:
        with _no_hub_requests(offline):
            model, info = cls.from_pretrained(name, local_files_only=offline, output_loading_info=True, **kwargs)
    except MemoryError:
        raise
    except Exception as exc:  # diffusers/transformers/huggingface_hub raise OSError, ValueError, RuntimeError...
        if hub and offline:
            raise MissingFileError(f"{arg}: the {what} {shown} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                                   f"is set, so nothing is downloaded ({_reason(exc)})") from exc
        # from None: the cause is in the message (a pickled .bin's error text would advise weights_only=False)
        raise WeightsError(f"{arg}: could not load the {what} from {shown} ({_reason(exc)})") from None
    problems = _problems(
        missing=[k for k in info.get("missing_keys", ()) if not _is_derived(k)],
        unexpected=[k for k in info.get("unexpected_keys", ()) if not _is_derived(k) and not k.startswith(ignore)],
        shapes=[str(m) for m in info.get("mismatched_keys", ())])
    problems = "; ".join(p for p in [problems] + [str(e) for e in info.get("error_msgs", ())] if p)
    if problems:
        raise WeightsError(f"{arg}: {shown} does not fit {cls.__name__} strictly: {problems}")
    return model


# ----------------------------------------------------------------------------- base components
def _convert(convert: Callable, state: dict[str, torch.Tensor], prefix: str, module: Any, arg: str, path: Path,
             *, skip: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Run a diffusers LDM -> diffusers conversion. Returns the converted state and the source keys under
    ``prefix`` that it did not use (they are unexpected: strict loading reports them)."""
    try:
        converted = convert(state, dict(module.config))
    except MemoryError:
        raise
    except Exception as exc:  # the converters index keys they expect: an incomplete file is a KeyError
        raise WeightsError(f"{arg}: {path.name!r} could not be converted from the original SD layout "
                           f"({type(exc).__name__}: {exc}); expected a complete SD1.x checkpoint") from exc
    converted = {k: v for k, v in converted.items() if isinstance(v, torch.Tensor)}  # absent sources -> missing keys
    used = {v.data_ptr() for v in converted.values()}  # converted tensors are the file's tensors or views of them
    unused = sorted(k for k, v in state.items()
                    if k.startswith(prefix) and not k[len(prefix):].startswith(skip) and v.data_ptr() not in used)
    return converted, unused


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)


def load_unet(source: str, cfg: TWGTMConfig, *, arg: str = "unet"):
    """SD1.5-inpainting UNet, loaded strictly, from one of:

    * a local diffusers folder: a pipeline root (with ``unet/``) or the ``unet/`` folder itself;
    * a local single file (.safetensors, or .ckpt read with ``weights_only=True``): an SD1.x-inpainting
      checkpoint (``model.diffusion_model.*`` keys; its other components are ignored) or a diffusers-format UNet;
    * ``"hf://org/name"`` (its ``unet/`` subfolder) or ``"hf://org/name/subfolder"``: the hub, only when so written.

    ``arg`` names the argument in error messages.
    """
    from diffusers import UNet2DConditionModel

    src = _source(source, arg, "a diffusers folder (with unet/config.json) or an SD1.5-inpainting .safetensors/.ckpt file")
    if isinstance(src, _Hub):
        unet = _from_pretrained(UNet2DConditionModel, src if src.subfolder else _Hub(src.repo, "unet"), arg, "UNet")
    elif src.is_dir():
        unet = _from_pretrained(UNet2DConditionModel, _component_dir(src, "unet", arg, "UNet"), arg, "UNet")
    else:
        unet = _build_component(lambda: UNet2DConditionModel(**cfg.unet), "unet")
        ckpt = _read_state_file(src, arg)
        hint = ""
        if any(k.startswith("model.diffusion_model.") for k in ckpt):
            state, unused = _convert(_ldm_converter("unet"), ckpt, "model.diffusion_model.", unet, arg, src)
            hint = " (an SD1.x checkpoint: expected stable-diffusion-inpainting, whose UNet has 9 input channels)"
        elif "conv_in.weight" in ckpt:  # a diffusers-format UNet file
            state, unused = ckpt, []
        else:
            raise WeightsError(f"{arg}: {src.name!r} has neither 'model.diffusion_model.*' keys (an SD1.x checkpoint) "
                               f"nor diffusers UNet keys ('conv_in.weight'); first keys: {sorted(ckpt)[:_FIRST]}")
        _load_strict(unet, state, arg, src.name, unused=unused, hint=hint)
    for key in ("in_channels", "cross_attention_dim", "block_out_channels"):
        if not _same(unet.config[key], cfg.unet[key]):
            extra = (" (use stable-diffusion-inpainting, not the base model)" if key == "in_channels" else "")
            raise WeightsError(f"{arg}: expected a UNet with {key}={cfg.unet[key]!r} as the TWGTM config says, "
                               f"got {unet.config[key]!r} from {source!r}{extra}")
    return unet


def load_vae(source: str, cfg: TWGTMConfig, *, arg: str = "vae"):
    """VAE, loaded strictly, from a local diffusers folder (a pipeline root with ``vae/``, or the VAE folder),
    a local single file (an SD1.x checkpoint: its ``first_stage_model.*`` keys; an LDM VAE file such as
    vae-ft-mse-840000-ema-pruned, whose ``loss.*`` training weights are skipped; or a diffusers-format VAE
    file), or ``"hf://org/name[/subfolder]"`` (the repository root unless a subfolder is given)."""
    from diffusers import AutoencoderKL

    src = _source(source, arg, "a diffusers VAE folder (config.json) or a .safetensors/.ckpt VAE or SD checkpoint")
    if isinstance(src, _Hub):
        return _from_pretrained(AutoencoderKL, src, arg, "VAE")
    if src.is_dir():
        return _from_pretrained(AutoencoderKL, _component_dir(src, "vae", arg, "VAE"), arg, "VAE")
    vae = _build_component(lambda: AutoencoderKL(**cfg.vae), "vae")
    sd = _read_state_file(src, arg)
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # already diffusers-format
        state, unused = sd, []
    else:
        if not any(k.startswith("first_stage_model.") for k in sd):
            if any(k.startswith("model.diffusion_model.") for k in sd):
                raise WeightsError(f"{arg}: {src.name!r} is an SD checkpoint without 'first_stage_model.*' (VAE) keys")
            sd = {"first_stage_model." + k: v for k, v in sd.items()}  # bare LDM VAE file
        state, unused = _convert(_ldm_converter("vae"), sd, "first_stage_model.", vae, arg, src, skip=("loss.",))
    _load_strict(vae, state, arg, src.name, unused=unused)
    return vae


def _ldm_converter(which: str) -> Callable:
    from diffusers.loaders import single_file_utils as sfu

    return sfu.convert_ldm_unet_checkpoint if which == "unet" else sfu.convert_ldm_vae_checkpoint


def _build_component(build: Callable[[], Any], field: str) -> Any:
    """Build a base component from the config's kwargs; a constructor error names the config field."""
    try:
        return build()
    except (TWGTMError, MemoryError):
        raise
    except Exception as exc:
        raise ConfigError(f"{field}: these kwargs do not build the component ({type(exc).__name__}: {exc})") from exc


_CLIP_TEXT_TOWER = ("text_model.", "text_projection.", "logit_scale")
_CLIP_IMAGE_TOWER = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")


def load_clip_vision(source: str, cfg: TWGTMConfig, *, arg: str = "clip_vision"):
    """CLIP ViT image encoder with projection, loaded strictly, from a local transformers folder (the image
    encoder, or a full CLIP model such as openai/clip-vit-large-patch14: its text tower is skipped), a local
    single file (.safetensors, or a pickle read with ``weights_only=True``) in those two layouts or in the
    OpenAI / open_clip layout (``visual.*`` keys, with or without the text tower), as ComfyUI's
    ``models/clip_vision/`` holds them, or ``"hf://org/name[/subfolder]"``."""
    from transformers import CLIPVisionModelWithProjection

    from .sam import build_clip_vision

    src = _source(source, arg, "a transformers folder (config.json) or a .safetensors/.ckpt/.bin file")
    if isinstance(src, _Hub):
        return _from_pretrained(CLIPVisionModelWithProjection, src, arg, "CLIP image encoder",
                                ignore=_CLIP_TEXT_TOWER, attn_implementation="sdpa")
    if src.is_dir():
        return _from_pretrained(CLIPVisionModelWithProjection, _component_dir(src, "image_encoder", arg, "CLIP image encoder"),
                                arg, "CLIP image encoder", ignore=_CLIP_TEXT_TOWER, attn_implementation="sdpa")
    model = _build_component(lambda: build_clip_vision(cfg), "clip_vision")
    sd = _read_state_file(src, arg)
    unused: list[str] = []
    if ldm_keys.is_openai_clip_vision(sd):  # OpenAI / open_clip layout (visual.*), alone or with its text tower
        sd, unused = ldm_keys.clip_vision_from_openai(sd)
    elif any(k.startswith("text_model.") for k in sd):  # a full transformers CLIP file: keep the image tower
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLIP_TEXT_TOWER)}
    sd = {k: v for k, v in sd.items() if not _is_derived(k)}
    _load_strict(model, sd, arg, src.name, unused=unused)
    return model


def load_text_encoder(source: str, tokenizer_source: str | None = None, *, arg: str = "text_encoder"):
    """The SD1.5 CLIP text encoder and tokenizer (only needed to build the cached category prompts).

    ``source``: a local diffusers root (with ``text_encoder/`` and ``tokenizer/``), a text-encoder folder, or
    ``"hf://org/name"`` (its ``text_encoder/`` and ``tokenizer/`` subfolders). ``tokenizer_source``: a local
    tokenizer folder (vocab.json, merges.txt) or ``"hf://org/name[/subfolder]"``; default: next to the encoder.
    The encoder loads strictly (a full CLIP folder's image tower is skipped).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    src = _source(source, arg, "a diffusers folder (text_encoder/, tokenizer/) or a text_encoder folder")
    tok = _source(tokenizer_source, "tokenizer", "a CLIP tokenizer folder (vocab.json, merges.txt)") \
        if tokenizer_source else None
    if isinstance(src, _Hub):
        encoder = _from_pretrained(CLIPTextModel, src if src.subfolder else _Hub(src.repo, "text_encoder"), arg,
                                   "CLIP text encoder", ignore=_CLIP_IMAGE_TOWER)
        tok = tok or _Hub(src.repo, "tokenizer")
    else:
        enc_dir = _component_dir(src, "text_encoder", arg, "CLIP text encoder")
        encoder = _from_pretrained(CLIPTextModel, enc_dir, arg, "CLIP text encoder", ignore=_CLIP_IMAGE_TOWER)
        tok = tok or (src / "tokenizer" if (src / "tokenizer").is_dir() else enc_dir)
    if isinstance(tok, Path) and not ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()):
        raise MissingFileError(f"tokenizer: expected vocab.json and merges.txt in {str(tok)!r}")
    return encoder, _tokenizer(CLIPTokenizer, tok)


def _tokenizer(cls: Any, where: _Hub | Path) -> Any:
    hub = isinstance(where, _Hub)
    offline = not hub or _hub_offline()
    kwargs = {"subfolder": where.subfolder} if hub and where.subfolder else {}
    try:
        with _no_hub_requests(offline):
            return cls.from_pretrained(where.repo if hub else str(where), local_files_only=offline, **kwargs)
    except MemoryError:
        raise
    except Exception as exc:
        shown = f"'{HUB_PREFIX}{where.repo}'" if hub else repr(str(where))
        err = MissingFileError if hub and offline else WeightsError
        raise err(f"tokenizer: could not load the CLIP tokenizer from {shown}"
                  f"{' (HF_HUB_OFFLINE is set: local cache only)' if hub and offline else ''} ({_reason(exc)})") from exc


def load_swin_weights(components: TWGTMComponents, source: str, *, arg: str = "swin") -> None:
    """Initialise the SRM's Swin from a timm weight file of ``config.swin.model_name``, strictly.

    ``source``: a local .safetensors/.pth/.bin file (e.g. timm's swin_base_patch4_window12_384 weights, or the
    original Microsoft release: timm's ``checkpoint_filter_fn`` converts it and resizes the relative-position
    tables to the configured window), a local folder with model.safetensors / pytorch_model.bin (timm's hub
    layout), or ``"hf://org/name"`` (that repository's model.safetensors). Every tensor the feature extractor
    uses must be in the file with its shape; keys a full Swin of this architecture does not have are
    unexpected; only the classifier (``head.*``) and the stages after the last used one may be unused.
    """
    import timm
    from timm.models.swin_transformer import checkpoint_filter_fn

    cfg = components.config
    swin = components.reference_encoder.require_srm(arg).swin
    src = _source(source, arg, f"a timm .safetensors/.pth/.bin file of {cfg.swin.model_name}")
    path = _swin_file(src, arg)
    state = _read_state_file(path, arg)
    with torch.device("meta"):  # the full network: its key set and shapes, and what the filter needs
        full = _build_component(lambda: timm.create_model(cfg.swin.model_name, pretrained=False, num_classes=0,
                                                          img_size=(cfg.height, cfg.width), **cfg.swin.kwargs), "swin")
    features = swin.state_dict()
    top = {name for name, _ in full.named_children()}
    to_full = {k: k if k.split(".")[0] in top else k.replace("_", ".", 1) for k in features}  # layers_0 -> layers.0
    full_own = full.state_dict()

    def fit(sd: dict[str, torch.Tensor]) -> str:
        # required: what the feature extractor uses; allowed besides: the rest of a full Swin of this architecture
        return _fit(full_own, {k: v for k, v in sd.items() if not k.startswith("head.")}, required=set(to_full.values()))

    try:
        state = checkpoint_filter_fn(state, full)
    except MemoryError:
        raise
    except Exception as exc:  # it looks up modules by the file's key names: a foreign file fails here
        problems = fit(state) or f"{type(exc).__name__}: {exc}"
        raise WeightsError(f"{arg}: {path.name!r} does not fit timm {cfg.swin.model_name} "
                           f"({cfg.swin.kwargs or 'default sizes'}): {problems}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the classifier: unused here
    problems = fit(state)
    if problems:
        raise WeightsError(f"{arg}: {path.name!r} does not fit timm {cfg.swin.model_name} "
                           f"({cfg.swin.kwargs or 'default sizes'}): {problems}")
    swin.load_state_dict({k: state[to_full[k]] for k in features}, strict=True)


def _swin_file(src: _Hub | Path, arg: str) -> Path:
    names = ("model.safetensors", "pytorch_model.bin")
    if isinstance(src, _Hub):
        from huggingface_hub import hf_hub_download

        offline = _hub_offline()
        filename = f"{src.subfolder}/{names[0]}" if src.subfolder else names[0]
        logger.info("%s: fetching %s from the hub id '%s%s' (explicitly requested)", arg, filename, HUB_PREFIX, src.repo)
        try:
            with _no_hub_requests(offline):
                return Path(hf_hub_download(src.repo, filename, local_files_only=offline))
        except MemoryError:
            raise
        except Exception as exc:
            err = MissingFileError if offline else WeightsError
            raise err(f"{arg}: could not get {filename} of '{HUB_PREFIX}{src.repo}'"
                      f"{' (HF_HUB_OFFLINE is set: local cache only)' if offline else ''} ({_reason(exc)})") from exc
    if src.is_dir():
        found = [src / n for n in names if (src / n).is_file()]
        if not found:
            raise MissingFileError(f"{arg}: expected {' or '.join(names)} in {str(src)!r}, found neither")
        return found[0]
    return src


def build_from_sources(cfg: TWGTMConfig, sources: BaseSources, *, dtype: torch.dtype = torch.float32) -> TWGTMComponents:
    """A fresh (untrained TWGTM parts) model on pretrained base components: the paper recipe's start.

    Every component is cast to ``dtype`` (fp32 for training: the weights stay fp32 under bf16 autocast), whatever
    the files hold: transformers 5 keeps a file's own dtype, so an fp16 CLIP or text-encoder file would otherwise
    give fp16 modules, which CPU bf16 autocast refuses ("Unexpected floating ScalarType in autocast::prioritize")."""
    missing = [n for n in ("unet", "vae", "clip_vision", "text_encoder") if getattr(sources, n) is None]
    if missing:
        raise MissingFileError(f"base components: expected sources for {missing}")
    te, tok = load_text_encoder(sources.text_encoder, sources.tokenizer)
    model = TWGTMComponents.build(cfg, unet=load_unet(sources.unet, cfg), vae=load_vae(sources.vae, cfg),
                                  clip_vision=load_clip_vision(sources.clip_vision, cfg), text_encoder=te,
                                  tokenizer=tok)
    if sources.swin:
        load_swin_weights(model, sources.swin)
    return model.to(dtype)


def describe(path: str | os.PathLike) -> dict:
    """Metadata summary of a TWGTM file, for the UI and logs."""
    meta = read_metadata(path)
    cfg = read_config(path)
    return {"stage": cfg.stage, "includes_base": meta.get("includes_base") == "1",
            "height": cfg.height, "width": cfg.width}
