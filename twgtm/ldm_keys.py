"""Key maps between the diffusers/transformers layouts and the original single-file layouts users keep.

* SD1.x UNet and VAE: diffusers names -> the original LDM names (``model.diffusion_model.*``,
  ``first_stage_model.*``; the VAE's attention projections as 1x1 convolutions), the reverse of diffusers'
  own conversion (which :mod:`twgtm.weights` uses to read such files). Used to write single-file fixtures
  and to check that the two conversions are inverse.
* CLIP image encoder: transformers names <-> the OpenAI / open_clip layout (``visual.conv1.weight``,
  ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``visual.proj``), one of the single-file forms
  found in ComfyUI's ``models/clip_vision/``.

Pure renames and reshapes of tensors: nothing here reads files.
"""
from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."  # SD1.x: the transformers CLIPTextModel state under this prefix
OPENAI_VISUAL = "visual."


# ----------------------------------------------------------------------------- SD1.x UNet
def _unet_prefix_map(layers_per_block: int, levels: int) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) of the SD1.x UNet blocks: cross-attention at every level but the
    lowest going down and every level but the lowest going up; resnet internals are renamed separately."""
    n = layers_per_block + 1  # LDM input/output blocks per level
    out = [("mid_block.attentions.0.", "middle_block.1.")]
    out += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    for i in range(levels):
        for j in range(layers_per_block):
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n * i + j + 1}.0."))
            if i < levels - 1:
                out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n * i + j + 1}.1."))
        for j in range(n):
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n * i + j}.0."))
            if i > 0:
                out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n * i + j}.1."))
        if i < levels - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{n * (i + 1)}.0.op."))
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{n * i + n - 1}.{1 if i == 0 else 2}."))
    return out


_UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
_UNET_RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "norm2.": "out_layers.0.",
                "conv2.": "out_layers.3.", "time_emb_proj.": "emb_layers.1.", "conv_shortcut.": "skip_connection."}


def _replace_prefix(key: str, table) -> str | None:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, levels: int = 4,
                prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers SD1.x UNet state under its original LDM names (``prefix`` + name). Every key is mapped
    (a key this map does not know is a KeyError: the map covers the SD1.x architecture only)."""
    blocks = _unet_prefix_map(layers_per_block, levels)
    out = {}
    for key, value in state.items():
        new = _replace_prefix(key, _UNET_TOP.items())
        if new is None:
            for hf, sd in blocks:
                if key.startswith(hf):
                    rest = key[len(hf):]
                    if ".resnets." in hf:
                        rest = _replace_prefix(rest, _UNET_RESNET.items()) or rest
                    new = sd + rest
                    break
        if new is None:
            raise KeyError(f"unet_to_ldm: no LDM name for the diffusers key {key!r}")
        out[prefix + new] = value
    return out


# ----------------------------------------------------------------------------- SD VAE
def _vae_prefix_map(layers_per_block: int, levels: int) -> list[tuple[str, str]]:
    out = []
    for part in ("encoder", "decoder"):
        out.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        out += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.") for i in range(2)]
        out.append((f"{part}.conv_norm_out.", f"{part}.norm_out."))
    for i in range(levels):
        for j in range(layers_per_block):
            out.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        for j in range(layers_per_block + 1):
            out.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}."))
        if i < levels - 1:
            out.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            out.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample."))
    return out


_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
_VAE_SAME = ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.", "decoder.conv_out.",
             "quant_conv.", "post_quant_conv.")


def vae_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, levels: int = 4,
               prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers SD VAE state under its original LDM names (attention projections as 1x1 convs);
    ``prefix=""`` gives a bare VAE file such as vae-ft-mse-840000-ema-pruned."""
    blocks = _vae_prefix_map(layers_per_block, levels)
    out = {}
    for key, value in state.items():
        new = key if key.startswith(_VAE_SAME) else None
        for hf, sd in blocks:
            if new is None and key.startswith(hf):
                rest = key[len(hf):]
                if ".attentions." in hf:
                    rest = _replace_prefix(rest, _VAE_ATTN.items()) or rest
                    if rest.endswith(".weight") and value.ndim == 2:
                        value = value[:, :, None, None].contiguous()
                new = sd + rest.replace("conv_shortcut.", "nin_shortcut.")
        if new is None:
            raise KeyError(f"vae_to_ldm: no LDM name for the diffusers key {key!r}")
        out[prefix + new] = value
    return out


# ----------------------------------------------------------------------------- CLIP image encoder
_CLIP_TOP = {"class_embedding": "vision_model.embeddings.class_embedding",
             "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
             "positional_embedding": "vision_model.embeddings.position_embedding.weight",
             "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
             "ln_post.weight": "vision_model.post_layernorm.weight", "ln_post.bias": "vision_model.post_layernorm.bias"}
_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}
_QKV = ("q_proj", "k_proj", "v_proj")


def is_openai_clip_vision(state: dict[str, torch.Tensor], prefix: str = OPENAI_VISUAL) -> bool:
    return f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in state


def clip_vision_from_openai(state: dict[str, torch.Tensor], prefix: str = OPENAI_VISUAL
                            ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The transformers ``CLIPVisionModelWithProjection`` state of an OpenAI/open_clip image tower
    (keys under ``prefix``), and the keys under ``prefix`` this map did not use (for strict loading)."""
    out: dict[str, torch.Tensor] = {}
    unused = []
    block = "transformer.resblocks."
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _CLIP_TOP:
            out[_CLIP_TOP[name]] = value
        elif name == "proj":  # x @ proj in open_clip; a Linear's weight is its transpose
            out["visual_projection.weight"] = value.t()
        elif name.startswith(block) and name.count(".") >= 3:
            layer, rest = name[len(block):].split(".", 1)
            base = f"vision_model.encoder.layers.{layer}."
            sub, _, kind = rest.rpartition(".")
            if sub == "attn" and kind in ("in_proj_weight", "in_proj_bias"):
                for proj, part in zip(_QKV, value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{proj}.{kind[len('in_proj_'):]}"] = part
            elif sub in _CLIP_BLOCK and kind in ("weight", "bias"):
                out[f"{base}{_CLIP_BLOCK[sub]}.{kind}"] = value
            else:
                unused.append(key)
        else:
            unused.append(key)
    return out, unused


def clip_vision_to_openai(state: dict[str, torch.Tensor], prefix: str = OPENAI_VISUAL) -> dict[str, torch.Tensor]:
    """The inverse of :func:`clip_vision_from_openai` (q/k/v fused into ``in_proj``); position-id buffers
    are dropped (open_clip has none)."""
    top = {v: k for k, v in _CLIP_TOP.items()}
    block = {v: k for k, v in _CLIP_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    layers = "vision_model.encoder.layers."
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[prefix + top[key]] = value
        elif key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
        elif key.startswith(layers):
            layer, rest = key[len(layers):].split(".", 1)
            sub, _, kind = rest.rpartition(".")
            if sub.startswith("self_attn.") and sub[len("self_attn."):] in _QKV:
                qkv.setdefault(f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}", {})[sub[10:]] = value
            elif sub in block:
                out[f"{prefix}transformer.resblocks.{layer}.{block[sub]}.{kind}"] = value
            else:
                raise KeyError(f"clip_vision_to_openai: no open_clip name for {key!r}")
        else:
            raise KeyError(f"clip_vision_to_openai: no open_clip name for {key!r}")
    for name, parts in qkv.items():
        out[name] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out
