"""Full-size random-weight base components in the on-disk formats users have (issue 12, item 1).

    python scripts/make_fullsize_fixtures.py [DIR]        # default: $TWGTM_FULLSIZE_DIR or ~/.cache/twgtm-fullsize

Writes (about 9 GB; nothing is downloaded, every tensor is seeded random, never committed):

  sd15-inpainting/                     diffusers root: model_index.json, unet/, vae/, text_encoder/, tokenizer/,
                                       scheduler/ (fp16 tensors, as ``save_pretrained`` writes an fp16 model)
  checkpoints/sd-v1-5-inpainting-fp16.safetensors   the same UNet/VAE/text encoder in the original LDM layout
                                       (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*,
                                       the DDPM schedule buffers and model_ema counters), fp16: ComfyUI's
                                       models/checkpoints/ form
  checkpoints/sd-v1-5-inpainting.ckpt  the same, as a pickle whose top level holds ``state_dict`` (and global_step)
  sd-vae-ft-mse/                       diffusers VAE folder (fp32, as stabilityai/sd-vae-ft-mse ships)
  vae/vae-ft-mse-840000-ema-pruned.safetensors   the same VAE as a bare LDM-key file (fp32); .ckpt likewise
  clip-vit-large-patch14/              transformers CLIPVisionModelWithProjection folder (fp16)
  clip_vision/clip_vit_l14_transformers.safetensors  the same, one file, transformers keys (fp16)
  clip_vision/clip_vit_l14_openai.safetensors        the same, one file, OpenAI/open_clip keys (visual.*) (fp16)
  swin_base_patch4_window12_384.safetensors          timm Swin-B weights with its 1000-class head (fp32)
  manifest.json                        every file with its size: a complete folder is not rebuilt

Importable: ``build(dir) -> dict of paths`` (cached), ``sources(paths, kind)`` -> BaseSources for one layout,
``trained_file(paths, height, width)`` -> a cached TWGTM file holding the trained parts only.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twgtm import ldm_keys  # noqa: E402
from twgtm.config import TWGTMConfig  # noqa: E402

VERSION = "1"
DEFAULT_DIR = Path(os.environ.get("TWGTM_FULLSIZE_DIR", "~/.cache/twgtm-fullsize")).expanduser()

FILES = {
    "sd_root": "sd15-inpainting",
    "sd_safetensors": "checkpoints/sd-v1-5-inpainting-fp16.safetensors",
    "sd_ckpt": "checkpoints/sd-v1-5-inpainting.ckpt",
    "vae_root": "sd-vae-ft-mse",
    "vae_safetensors": "vae/vae-ft-mse-840000-ema-pruned.safetensors",
    "vae_ckpt": "vae/vae-ft-mse-840000-ema-pruned.ckpt",
    "clip_root": "clip-vit-large-patch14",
    "clip_transformers": "clip_vision/clip_vit_l14_transformers.safetensors",
    "clip_openai": "clip_vision/clip_vit_l14_openai.safetensors",
    "swin": "swin_base_patch4_window12_384.safetensors",
}


def log(msg: str) -> None:
    print(f"[fixtures {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- random weights, fast
def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights with the scale of PyTorch's default init (std 1/sqrt(3 fan_in)); norm weights 1,
    biases small, embeddings std 0.02. Much faster than the modules' own init at 860M parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "embed" not in name:
                p.normal_(0.0, 1.0 / math.sqrt(3 * p[0].numel()), generator=g)
            elif p.ndim >= 2 or "embedding" in name:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith("weight"):
                p.fill_(1.0).add_(torch.randn(p.shape, generator=g), alpha=0.01)
            else:
                p.normal_(0.0, 0.01, generator=g)
    return module.eval()


def _build(factory, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device="cpu")
    for sub in module.modules():  # non-persistent buffers (position ids) were on meta: recompute them
        for name, buf in list(sub._buffers.items()):
            if buf is not None and name == "position_ids":
                sub._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
    return _randomize(module, seed)


def _state(module: torch.nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous()
            for k, v in module.state_dict().items()}


def _save(tensors: dict[str, torch.Tensor], path: Path, wrap: bool = False) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    else:
        torch.save({"state_dict": tensors, "global_step": 0} if wrap else tensors, str(tmp))
    os.replace(tmp, path)


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer: the 256 byte symbols and their end-of-word forms, and the special tokens at
    SD1.5's ids (49406, 49407), so every id fits the full text encoder's vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


def _ddpm_buffers(cfg: TWGTMConfig) -> dict[str, torch.Tensor]:
    """What an LDM checkpoint carries besides the networks (the schedule and EMA counters): ignored by loaders."""
    s = cfg.scheduler
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, s["num_train_timesteps"]) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return {"betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": torch.cat([torch.ones(1), ac[:-1]]),
            "sqrt_alphas_cumprod": ac.sqrt(), "model_ema.decay": torch.tensor(0.9999),
            "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)}


# ----------------------------------------------------------------------------- the files
def _sd15(root: Path, cfg: TWGTMConfig) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from twgtm.sam import build_clip_text

    sd_root = root / FILES["sd_root"]
    ldm: dict[str, torch.Tensor] = {}
    log("SD1.5-inpainting UNet (860M)")
    unet = _build(lambda: UNet2DConditionModel(**cfg.unet), seed=11).half()
    unet.save_pretrained(sd_root / "unet")
    ldm.update(ldm_keys.unet_to_ldm(_state(unet, None), cfg.unet["layers_per_block"], len(cfg.unet["block_out_channels"])))
    del unet
    gc.collect()
    log("SD1.5 VAE and text encoder")
    vae = _build(lambda: AutoencoderKL(**cfg.vae), seed=12).half()
    vae.save_pretrained(sd_root / "vae")
    ldm.update(ldm_keys.vae_to_ldm(_state(vae, None), cfg.vae["layers_per_block"], len(cfg.vae["block_out_channels"])))
    del vae
    text = _build(lambda: build_clip_text(cfg), seed=13).half()
    text.save_pretrained(sd_root / "text_encoder")
    ldm.update({ldm_keys.TEXT_PREFIX + k: v for k, v in _state(text, None).items()})
    del text
    write_tokenizer(sd_root / "tokenizer")
    (sd_root / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd_root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", **cfg.scheduler, "skip_prk_steps": True}))
    (sd_root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"]}))
    ldm.update(_ddpm_buffers(cfg))
    log("SD1.5-inpainting single files (.safetensors, .ckpt)")
    _save(ldm, root / FILES["sd_safetensors"])
    _save(ldm, root / FILES["sd_ckpt"], wrap=True)


def _vae_ft_mse(root: Path, cfg: TWGTMConfig) -> None:
    from diffusers import AutoencoderKL

    log("sd-vae-ft-mse (folder, single files)")
    vae = _build(lambda: AutoencoderKL(**cfg.vae), seed=21)
    vae.save_pretrained(root / FILES["vae_root"])
    ldm = ldm_keys.vae_to_ldm(_state(vae, None), cfg.vae["layers_per_block"], len(cfg.vae["block_out_channels"]), prefix="")
    _save(ldm, root / FILES["vae_safetensors"])
    _save(ldm, root / FILES["vae_ckpt"], wrap=True)


def _clip_vision(root: Path, cfg: TWGTMConfig) -> None:
    from twgtm.sam import build_clip_vision

    log("CLIP ViT-L/14 image encoder (folder, single files)")
    model = _build(lambda: build_clip_vision(cfg), seed=31).half()
    model.save_pretrained(root / FILES["clip_root"])
    state = _state(model, None)
    _save({k: v for k, v in state.items() if not k.endswith("position_ids")}, root / FILES["clip_transformers"])
    _save(ldm_keys.clip_vision_to_openai(state), root / FILES["clip_openai"])


def _swin(root: Path, cfg: TWGTMConfig) -> None:
    import timm

    log(f"timm {cfg.swin.model_name}")
    model = _build(lambda: timm.create_model(cfg.swin.model_name, pretrained=False), seed=41)
    state = {k: v for k, v in _state(model, None).items() if "relative_position_index" not in k and "attn_mask" not in k}
    _save(state, root / FILES["swin"])


def _paths(root: Path) -> dict[str, Path]:
    return {k: root / v for k, v in FILES.items()}


def is_complete(root: Path) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except ValueError:
        return False
    if data.get("version") != VERSION:
        return False
    return all((root / rel).is_file() and (root / rel).stat().st_size == size for rel, size in data["files"].items())


def build(root: str | os.PathLike | None = None, *, force: bool = False) -> dict[str, Path]:
    """Write every fixture under ``root`` (default :data:`DEFAULT_DIR`) unless a complete manifest is there."""
    root = Path(root).expanduser() if root else DEFAULT_DIR
    if not force and is_complete(root):
        return _paths(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    cfg = TWGTMConfig.full()
    t0 = time.time()
    for step in (_sd15, _vae_ft_mse, _clip_vision, _swin):
        step(root, cfg)
        gc.collect()
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))
             if p.is_file() and p.name != "manifest.json" and not p.name.endswith(".tmp")
             and not p.relative_to(root).parts[0].startswith("twgtm-")}
    (root / "manifest.json").write_text(json.dumps({"version": VERSION, "files": files}, indent=1))
    log(f"done in {time.time() - t0:.0f} s: {sum(files.values()) / 2**30:.1f} GiB in {root}")
    return _paths(root)


# ----------------------------------------------------------------------------- using them
SOURCE_KINDS = ("folders", "single_safetensors", "single_ckpt")


def sources(paths: dict[str, Path], kind: str = "folders"):
    """BaseSources for one family of layouts: diffusers/transformers folders, or the single files ComfyUI keeps
    (SD checkpoint for UNet and VAE, sd-vae-ft-mse file, CLIP vision file), as safetensors or pickles."""
    from twgtm.weights import BaseSources

    common = dict(text_encoder=str(paths["sd_root"]), swin=str(paths["swin"]))
    if kind == "folders":
        return BaseSources(unet=str(paths["sd_root"]), vae=str(paths["vae_root"]), clip_vision=str(paths["clip_root"]),
                           **common)
    if kind == "single_safetensors":
        return BaseSources(unet=str(paths["sd_safetensors"]), vae=str(paths["vae_safetensors"]),
                           clip_vision=str(paths["clip_openai"]), **common)
    if kind == "single_ckpt":
        return BaseSources(unet=str(paths["sd_ckpt"]), vae=str(paths["vae_ckpt"]),
                           clip_vision=str(paths["clip_transformers"]), **common)
    raise ValueError(f"kind: expected one of {SOURCE_KINDS}, got {kind!r}")


def trained_file(paths: dict[str, Path], height: int = 256, width: int = 192) -> Path:
    """A TWGTM file (stage 2, trained parts only, random TWGTM parts on the fixture base components) for
    ``TWGTMConfig.full(height=, width=)``, cached next to the fixtures."""
    from twgtm.weights import build_from_sources, save_twgtm

    root = paths["sd_root"].parent
    out = root / f"twgtm-full-{height}x{width}.safetensors"
    if out.is_file():
        return out
    cfg = TWGTMConfig.full(height=height, width=width)
    torch.manual_seed(0)
    components = build_from_sources(cfg, sources(paths, "folders"))
    save_twgtm(components, out, include_base=False)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", nargs="?", default=None, help=f"output folder (default {DEFAULT_DIR})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    paths = build(args.dir, force=args.force)
    for name, p in paths.items():
        print(f"{name:18s} {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
