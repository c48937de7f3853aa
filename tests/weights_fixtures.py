"""Random-weight base-component files in the real formats (tiny config), written into a test's tmp_path.

* diffusers folders (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) as ``save_pretrained`` writes them;
* single-file SD1.x checkpoints in the original LDM layout (``model.diffusion_model.*``, ``first_stage_model.*``),
  made by renaming diffusers keys with :mod:`twgtm.ldm_keys` (the reverse of diffusers' conversion);
* transformers CLIP folders and single files; a timm Swin weight file.

Nothing is downloaded; every tensor is seeded random.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from twgtm import ldm_keys
from twgtm.config import TWGTMConfig
from twgtm.sam import build_clip_text, build_clip_vision


def tiny_cfg() -> TWGTMConfig:
    return TWGTMConfig.tiny()


def _seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def plain_unet(cfg: TWGTMConfig, seed: int = 1) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return _seeded(UNet2DConditionModel(**cfg.unet), seed)


def plain_vae(cfg: TWGTMConfig, seed: int = 2) -> AutoencoderKL:
    torch.manual_seed(seed)
    return _seeded(AutoencoderKL(**cfg.vae), seed)


def clip_vision(cfg: TWGTMConfig, seed: int = 3) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    return _seeded(build_clip_vision(cfg), seed)


def clip_text(cfg: TWGTMConfig, seed: int = 4) -> CLIPTextModel:
    torch.manual_seed(seed)
    return _seeded(build_clip_text(cfg), seed)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- LDM (original SD) layout
def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """A diffusers SD1.x UNet's weights under their original names, prefixed ``model.diffusion_model.``."""
    return ldm_keys.unet_to_ldm(state(unet), unet.config.layers_per_block, len(unet.config.block_out_channels))


def vae_to_ldm(vae: AutoencoderKL, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """A diffusers SD VAE's weights under their original LDM names (attention as 1x1 convs)."""
    return ldm_keys.vae_to_ldm(state(vae), vae.config.layers_per_block, len(vae.config.block_out_channels), prefix)


def sd_checkpoint(cfg: TWGTMConfig, path: Path, *, unet=None, vae=None, **extra: torch.Tensor) -> Path:
    """An SD1.x-inpainting single-file checkpoint (UNet + VAE; .safetensors or .ckpt by suffix)."""
    sd = {**unet_to_ldm(unet or plain_unet(cfg)), **vae_to_ldm(vae or plain_vae(cfg)), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "global_step": 0}, str(path))
    return path


# ----------------------------------------------------------------------------- folders and single files
def diffusers_root(cfg: TWGTMConfig, root: Path, *, unet=None, vae=None, text=None) -> Path:
    """A diffusers SD layout: unet/, vae/, text_encoder/ and a byte-level tokenizer/ (tiny vocabulary)."""
    (unet or plain_unet(cfg)).save_pretrained(root / "unet")
    (vae or plain_vae(cfg)).save_pretrained(root / "vae")
    (text or clip_text(cfg)).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    return root


def write_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte symbols plus their end-of-word forms."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2 / CLIP byte-to-symbol table: printable bytes stand for themselves, the rest map above 255
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tokenizer(folder: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def full_clip_folder(cfg: TWGTMConfig, folder: Path, seed: int = 5) -> CLIPModel:
    """A full CLIP model (both towers) saved as transformers writes openai/clip-vit-large-patch14."""
    torch.manual_seed(seed)
    cc = CLIPConfig(text_config=dict(cfg.clip_text), vision_config=dict(cfg.clip_vision),
                    projection_dim=cfg.clip_vision["projection_dim"])
    model = _seeded(CLIPModel(cc), seed)
    model.save_pretrained(folder)
    return model


def swin_reference(cfg: TWGTMConfig, seed: int = 6, **overrides) -> torch.nn.Module:
    """The full timm Swin of the configured architecture (with its classifier), seeded random."""
    torch.manual_seed(seed)
    kwargs = {**cfg.swin.kwargs, **overrides}
    return _seeded(timm.create_model(cfg.swin.model_name, pretrained=False, img_size=(cfg.height, cfg.width),
                                     num_classes=10, **kwargs), seed)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    else:
        torch.save(tensors, str(path))
    return path
