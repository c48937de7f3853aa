"""Spatial Refinement Module (SRM) and its Decoder (paper eq. 5-12; ARCHITECTURE.md section 1.3).

Data flow for one reference image (full config, 1024x768, K = 32, d = 256, D = 768):

    image [-1, 1] --preprocess--> Swin (timm, NHWC -> NCHW) --> H1 (1/4), H2 (1/8), H3 (1/16)
    pixel decoder ("fpn" default, "linear" paper-literal) --> Phi (1/4, d), P2 (1/8, d), P3 (1/16, d)
    memories: S1 = Linear(D->d)(F_QF) + lvl0 (no PE), S2 = P2 + lvl1, S3 = P3 + lvl2 (sine PE on keys)
    TaskFormer: U units x 3 blocks (masked cross-attn -> self-attn -> FFN, post-norm), masks from unit i-1
    heads (shared, on LN_dec(F_i)): M^1, M^2 logits, TFQ_0 logits (own MLP), TFQ_{j>=1} (shared MLP)
    SRMDecoder (eq. 12): TFQ^(U) --area--> per-level conv/GN/SiLU x2 -> BasicTransformerBlock -> LN -> Linear

Pixel-decoder options (``cfg.taskformer.pixel_decoder``):

* ``"fpn"``: lateral 1x1 convs to d, top-down ``P3 = out3(L3)``, ``P2 = out2(L2 + up(P3))``,
  ``P1 = out1(L1 + up(P2))`` (each ``out`` = 3x3 conv, GroupNorm, ReLU; the sum uses the previous
  level *after* its output conv, as Mask2Former's ``BasePixelDecoder``), ``Phi = Conv1x1(P1)``.
* ``"linear"``: ``Phi = Conv1x1(H1)`` only (eq. 9-11 read literally). The TaskFormer still needs
  d-wide memories, so ``P2 = Conv1x1(H2)`` and ``P3 = Conv1x1(H3)`` (plain lateral projections,
  no top-down path, no norm).

Attention-mask convention: boolean, ``True`` = "masked out" (Mask2Former / ``nn.MultiheadAttention``).
``torch.nn.functional.scaled_dot_product_attention`` uses the opposite convention (``True`` = attend),
so :class:`MaskedAttention` passes ``~mask``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import TWGTMConfig
from .errors import ConfigError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWIN_STRIDES = (4, 8, 16)  # H1, H2, H3


# helpers -------------------------------------------------------------------------------------------

def _group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm(32) at full width; the largest divisor of ``channels`` up to 32 at tiny widths."""
    return math.gcd(max_groups, channels)


def _conv_gn(in_ch: int, out_ch: int, kernel: int, act: nn.Module) -> nn.Sequential:
    """Conv (no bias, a norm follows) -> GroupNorm -> activation."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(_group_count(out_ch), out_ch),
        act,
    )


def sine_position_embedding(height: int, width: int, dim: int, *, device: torch.device | str | None = None,
                            dtype: torch.dtype = torch.float32, temperature: float = 10000.0) -> Tensor:
    """Mask2Former ``PositionEmbeddingSine(dim // 2, normalize=True)`` for an unpadded map, as tokens.

    Built on the fly (no buffers), so it works on the meta device. Returns (height * width, dim),
    row-major like ``flatten(2)``: channels ``[pos_y (dim/2), pos_x (dim/2)]``.
    """
    if dim % 4:
        raise ConfigError(f"taskformer.hidden_dim: expected a multiple of 4 for the sine position embedding, got {dim}")
    num_feats, scale, eps = dim // 2, 2 * math.pi, 1e-6
    y_embed = torch.arange(1, height + 1, device=device, dtype=torch.float32)  # cumsum of a mask of ones
    x_embed = torch.arange(1, width + 1, device=device, dtype=torch.float32)
    y_embed = y_embed / (height + eps) * scale
    x_embed = x_embed / (width + eps) * scale
    dim_t = torch.arange(num_feats, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y_embed[:, None] / dim_t  # (h, f)
    pos_x = x_embed[:, None] / dim_t  # (w, f)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # (h, f)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # (w, f)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)), dim=-1)  # (h, w, dim)
    return pos.reshape(height * width, dim).to(dtype)


def attention_mask_from_logits(logits: Tensor, size: tuple[int, int] | None, num_heads: int,
                               threshold: float = 0.5, mode: str = "hard") -> Tensor:
    """Masked-attention mask from mask logits (M^1 or M^2 of the previous unit).

    Args:
        logits: (B, K, h, w) mask logits (M^2), or (B, K, T) token logits (M^1, then ``size=None``).
        size: (h_l, w_l) of the memory the mask is for; the logits are bilinearly resized
            (``align_corners=False``) to it. ``None`` keeps the logits' own layout.
        num_heads: attention heads; the mask is repeated per head, head-major within each sample.
        threshold: ``"hard"`` only: positions with ``sigmoid(logit) < threshold`` are masked out.
        mode: ``"hard"``: Mask2Former's boolean mask (True = masked out), detached; a row that would mask
            every key is reset to all False. ``"soft"``: an additive float bias ``log M = logsigmoid(logit)``
            (<= 0), differentiable, so the mask heads learn from the losses downstream; attention weights
            become proportional to ``M * exp(q.k)``, a soft version of the hard mask (no row can be empty).

    Returns:
        (B * num_heads, K, T): bool (hard) or the logits' dtype (soft).
    """
    if mode == "hard":
        logits = logits.detach()
    if size is not None:
        if logits.ndim != 4:
            raise InputError(f"logits: expected (B, K, h, w) when size is given, got shape {tuple(logits.shape)}")
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    if mode == "soft":
        return F.logsigmoid(logits.flatten(2)).repeat_interleave(num_heads, dim=0)  # (B * heads, K, T)
    if mode != "hard":
        raise ConfigError(f"taskformer.mask_mode: expected 'soft' or 'hard', got {mode!r}")
    mask = logits.flatten(2).sigmoid() < threshold  # (B, K, T)
    mask = mask & ~mask.all(dim=-1, keepdim=True)  # fully-masked rows attend everywhere (Mask2Former)
    return mask.repeat_interleave(num_heads, dim=0)  # (B * heads, K, T)


class MLP(nn.Module):
    """Mask2Former ``MLP``: ``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# pixel decoders --------------------------------------------------------------------------------------

class FPNPixelDecoder(nn.Module):
    """Lateral 1x1 convs + top-down FPN (3x3 conv, GN, ReLU per level) + 1x1 mask-feature conv (Phi)."""

    def __init__(self, in_channels: tuple[int, int, int], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.output = nn.ModuleList(_conv_gn(dim, dim, 3, nn.ReLU()) for _ in in_channels)
        self.mask_features = nn.Conv2d(dim, dim, 1)

    def forward(self, h1: Tensor, h2: Tensor, h3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        l1, l2, l3 = (conv(h) for conv, h in zip(self.lateral, (h1, h2, h3)))
        p3 = self.output[2](l3)  # (B, d, H/16, W/16)
        p2 = self.output[1](l2 + F.interpolate(p3, size=l2.shape[-2:], mode="nearest"))  # (B, d, H/8, W/8)
        p1 = self.output[0](l1 + F.interpolate(p2, size=l1.shape[-2:], mode="nearest"))  # (B, d, H/4, W/4)
        return self.mask_features(p1), p2, p3


class LinearPixelDecoder(nn.Module):
    """Paper-literal: Phi = Conv1x1(H1); the memories P2/P3 are 1x1 lateral projections of H2/H3."""

    def __init__(self, in_channels: tuple[int, int, int], dim: int):
        super().__init__()
        self.mask_features = nn.Conv2d(in_channels[0], dim, 1)
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels[1:])

    def forward(self, h1: Tensor, h2: Tensor, h3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.mask_features(h1), self.lateral[0](h2), self.lateral[1](h3)


# TaskFormer --------------------------------------------------------------------------------------------

class MaskedAttention(nn.Module):
    """Multi-head attention on SDPA; ``mask`` is bool (B * heads, Lq, Lk) with True = masked out, or a float
    additive bias of that shape (soft masks)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"taskformer.num_heads: expected a divisor of hidden_dim {dim}, got {num_heads}")
        self.num_heads = num_heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = (rearrange(proj(x), "b l (h c) -> b h l c", h=self.num_heads)
                   for proj, x in ((self.to_q, query), (self.to_k, key), (self.to_v, value)))  # (B, h, L, c)
        keep = None
        if mask is not None:
            keep = rearrange(mask, "(b h) q k -> b h q k", h=self.num_heads)
            if keep.dtype == torch.bool:
                keep = ~keep  # SDPA: True = attend
            else:
                keep = keep.to(q.dtype)  # additive bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, Lq, c)
        return self.to_out(rearrange(out, "b h l c -> b l (h c)"))  # (B, Lq, d)


class TaskFormerBlock(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each a post-norm residual (Mask2Former, dropout 0)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.cross_attn = MaskedAttention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = MaskedAttention(dim, num_heads)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norm_ffn = nn.LayerNorm(dim)
        for p in self.parameters():  # Mask2Former's _reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor | None,
                mask: Tensor) -> Tensor:
        """tgt/query_pos (B, K, d); memory (B, T, d); memory_pos (1, T, d) or None; mask (B*heads, K, T)."""
        key = memory if memory_pos is None else memory + memory_pos
        tgt = self.norm_cross(tgt + self.cross_attn(tgt + query_pos, key, memory, mask))
        q = tgt + query_pos
        tgt = self.norm_self(tgt + self.self_attn(q, q, tgt))
        return self.norm_ffn(tgt + self.ffn(tgt))  # (B, K, d)


class TaskFormer(nn.Module):
    """Queries, memory embeddings and the U x 3 unshared blocks (unit i, block j: ``units[i][j]``)."""

    def __init__(self, cfg: TWGTMConfig):
        super().__init__()
        tf = cfg.taskformer
        d = tf.hidden_dim
        self.num_heads = tf.num_heads
        self.query_feat = nn.Embedding(tf.num_queries, d)
        self.query_pos = nn.Embedding(tf.num_queries, d)
        self.level_embed = nn.Embedding(3, d)  # S1, S2, S3
        self.qf_proj = nn.Linear(cfg.qformer.hidden_size, d)  # S1 = Linear(D -> d)(F_QF)
        self.units = nn.ModuleList(
            nn.ModuleList(TaskFormerBlock(d, tf.num_heads, tf.ffn_dim) for _ in range(3))
            for _ in range(tf.num_units))
        self.threshold = tf.mask_threshold
        self.mask_mode = tf.mask_mode
        self.gradient_checkpointing = False

    def memories(self, f_qf: Tensor, p2: Tensor, p3: Tensor) -> list[tuple[Tensor, Tensor | None, tuple | None]]:
        """(memory, key position embedding, spatial size) for S1 (F_QF tokens), S2 (1/8) and S3 (1/16)."""
        lvl = self.level_embed.weight  # (3, d)
        out = [(self.qf_proj(f_qf) + lvl[0], None, None)]  # S1 (B, N, d): no PE
        for i, p in ((1, p2), (2, p3)):
            size = tuple(p.shape[-2:])
            pos = sine_position_embedding(*size, p.shape[1], device=p.device, dtype=p.dtype)[None]  # (1, T, d)
            out.append((rearrange(p, "b c h w -> b (h w) c") + lvl[i], pos, size))  # (B, T, d)
        return out

    def _run_block(self, block: TaskFormerBlock, *args: Tensor | None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, heads: "PredictionHeads", phi: Tensor, p2: Tensor, p3: Tensor, f_qf: Tensor
                ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
        """The U-unit loop (eq. 5-11); the masks from unit i-1 are fixed for all three blocks of unit i.

        ``heads`` are the prediction heads shared by every unit (a separate module, so their weights keep
        their ``srm.heads.*`` names). Returns ``(LN_dec(F_U), M^1 per unit 0..U (probabilities),
        M^2 logits per unit 0..U, TFQ_0 logits per unit 1..U)``.
        """
        batch = f_qf.shape[0]
        memories = self.memories(f_qf, p2, p3)
        output = self.query_feat.weight[None].expand(batch, -1, -1)  # (B, K, d)
        query_pos = self.query_pos.weight[None].expand(batch, -1, -1)  # (B, K, d)
        f, m1_logits, m2_logits = heads.masks(output, phi, f_qf)
        m1, m2, tfq0 = [m1_logits.sigmoid()], [m2_logits], []
        for unit in self.units:
            masks = [attention_mask_from_logits(m1_logits, None, self.num_heads, self.threshold,
                                                self.mask_mode)]  # (B*h, K, N)
            masks += [attention_mask_from_logits(m2_logits, size, self.num_heads, self.threshold, self.mask_mode)
                      for _, _, size in memories[1:]]  # (B*h, K, T_l)
            for block, (memory, pos, _), mask in zip(unit, memories, masks):
                output = self._run_block(block, output, query_pos, memory, pos, mask)  # (B, K, d)
            f, m1_logits, m2_logits = heads.masks(output, phi, f_qf)
            m1.append(m1_logits.sigmoid())
            m2.append(m2_logits)
            tfq0.append(heads.tfq0_logits(f, phi))
        return f, m1, m2, tfq0


class PredictionHeads(nn.Module):
    """Heads shared by all units, applied to ``LN_dec(F)`` (eq. 8-11)."""

    def __init__(self, cfg: TWGTMConfig):
        super().__init__()
        d = cfg.taskformer.hidden_dim
        self.decoder_norm = nn.LayerNorm(d)
        self.mask_embed = MLP(d, d, d)  # M^2
        self.m1_proj = nn.Linear(d, cfg.qformer.hidden_size)  # M^1: d -> D, dotted with F_QF
        self.task0_embed = MLP(d, d, d)  # TFQ_0
        self.task_embed = MLP(d, d, d)  # TFQ_{j>=1}, shared by every j

    def masks(self, feats: Tensor, phi: Tensor, f_qf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (LN_dec(F) (B, K, d), M^1 logits (B, K, N), M^2 logits (B, K, H/4, W/4))."""
        f = self.decoder_norm(feats)
        m1_logits = torch.einsum("bkc,bnc->bkn", self.m1_proj(f), f_qf)
        m2_logits = torch.einsum("bkc,bchw->bkhw", self.mask_embed(f), phi)
        return f, m1_logits, m2_logits

    def tfq0_logits(self, f: Tensor, phi: Tensor) -> Tensor:
        return torch.einsum("bkc,bchw->bkhw", self.task0_embed(f[:, :1]), phi)  # (B, 1, H/4, W/4)

    def tfq_rest(self, f: Tensor, phi: Tensor) -> Tensor:
        return torch.einsum("bkc,bchw->bkhw", self.task_embed(f[:, 1:]), phi)  # (B, K-1, H/4, W/4)


# SRM ----------------------------------------------------------------------------------------------------

@dataclass
class SRMOutput:
    tfq: Tensor  # (B, K, H/4, W/4) final unit: channel 0 = sigmoid(TFQ_0 logits), 1.. raw TFQ_j
    tfq0_logits: list[Tensor]  # units i = 1..U, (B, 1, H/4, W/4), pre-sigmoid TFQ_0 (mask loss uses all)
    m1: list[Tensor]  # units i = 0..U (0 = initial prediction), (B, K, N) in [0, 1]
    m2_logits: list[Tensor]  # units i = 0..U, (B, K, H/4, W/4)
    features: tuple[Tensor, Tensor, Tensor]  # H1, H2, H3 NCHW (strides 4, 8, 16)


class SpatialRefinementModule(nn.Module):
    """Swin -> pixel decoder -> TaskFormer -> heads. ``forward(image, f_qf) -> SRMOutput``."""

    def __init__(self, cfg: TWGTMConfig):
        super().__init__()
        tf = cfg.taskformer
        if tf.pixel_decoder not in ("fpn", "linear"):
            raise ConfigError(f"taskformer.pixel_decoder: expected 'fpn' or 'linear', got {tf.pixel_decoder!r}")
        if tf.num_units < 1 or tf.num_queries < 1:
            raise ConfigError(f"taskformer.num_units/num_queries: expected >= 1, got {tf.num_units}/{tf.num_queries}")
        if tf.hidden_dim % 4:
            raise ConfigError(f"taskformer.hidden_dim: expected a multiple of 4 (sine PE), got {tf.hidden_dim}")
        self.height, self.width = cfg.height, cfg.width
        self.num_fqf_tokens, self.fqf_dim = cfg.semantic_token_count, cfg.qformer.hidden_size

        self.swin = timm.create_model(cfg.swin.model_name, pretrained=False, features_only=True,
                                      out_indices=tuple(cfg.swin.out_indices), img_size=(cfg.height, cfg.width),
                                      **cfg.swin.kwargs)
        reductions = tuple(self.swin.feature_info.reduction())
        if reductions != SWIN_STRIDES:
            raise ConfigError(f"swin.out_indices: expected feature strides {SWIN_STRIDES}, "
                              f"got {reductions} for {cfg.swin.model_name} out_indices={cfg.swin.out_indices}")
        channels = tuple(self.swin.feature_info.channels())
        decoder_cls = FPNPixelDecoder if tf.pixel_decoder == "fpn" else LinearPixelDecoder
        self.pixel_decoder = decoder_cls(channels, tf.hidden_dim)
        self.taskformer = TaskFormer(cfg)
        self.heads = PredictionHeads(cfg)

    # -- public helpers -------------------------------------------------------------------------
    def preprocess(self, image: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1] -> ImageNet mean/std."""
        mean = torch.tensor(IMAGENET_MEAN, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        return ((image + 1) / 2 - mean) / std

    def enable_gradient_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every Swin stage (block by block) and every TaskFormer block."""
        for module in self.swin.modules():
            # the stages, not the FeatureListNet wrapper (it would skip the last, deepest stage)
            if module is not self.swin and hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enable
        self.taskformer.gradient_checkpointing = enable

    def init_non_persistent_buffers(self) -> None:
        """Recompute timm Swin's non-persistent buffers (relative position index, shift masks).

        Needed after building on the meta device and materialising with ``to_empty`` /
        ``load_state_dict(assign=True)``: those buffers are not in any state dict.
        """
        for module in self.swin.modules():
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()

    # -- forward ----------------------------------------------------------------------------------
    def _check_inputs(self, image: Tensor, f_qf: Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (self.height, self.width):
            raise InputError(f"image: expected (B, 3, {self.height}, {self.width}) in [-1, 1], "
                             f"got shape {tuple(image.shape)}")
        expected = (image.shape[0], self.num_fqf_tokens, self.fqf_dim)
        if tuple(f_qf.shape) != expected:
            raise InputError(f"f_qf: expected (B, N, D) = {expected}, got shape {tuple(f_qf.shape)}")

    def forward(self, image: Tensor, f_qf: Tensor) -> SRMOutput:
        """image (B, 3, H, W) in [-1, 1]; f_qf (B, N, D) Q-Former output."""
        self._check_inputs(image, f_qf)

        # 1. Swin features, NHWC -> NCHW
        feats = [rearrange(f, "b h w c -> b c h w") for f in self.swin(self.preprocess(image))]
        for f, s in zip(feats, SWIN_STRIDES):
            if tuple(f.shape[-2:]) != (self.height // s, self.width // s):
                raise ConfigError(f"swin: expected a stride-{s} map of {(self.height // s, self.width // s)}, "
                                  f"got {tuple(f.shape[-2:])}")
        h1, h2, h3 = feats  # (B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16)

        # 2. pixel decoder -> mask features Phi and multi-scale memories
        phi, p2, p3 = self.pixel_decoder(h1, h2, h3)  # (B, d, H/4, W/4), (B, d, H/8, W/8), (B, d, H/16, W/16)

        # 3. TaskFormer: memories S1-S3, then the U-unit loop with the shared heads
        f, m1, m2, tfq0 = self.taskformer(self.heads, phi, p2, p3, f_qf)

        # 4. final TFQ: sigmoid mask channel + unconstrained detail channels
        tfq = torch.cat([tfq0[-1].sigmoid(), self.heads.tfq_rest(f, phi)], dim=1)  # (B, K, H/4, W/4)
        return SRMOutput(tfq=tfq, tfq0_logits=tfq0, m1=m1, m2_logits=m2, features=(h1, h2, h3))


# Decoder (eq. 12) ----------------------------------------------------------------------------------------

class DecoderLevel(nn.Module):
    """Conv3x3/GN/SiLU x2 -> tokens -> BasicTransformerBlock -> LayerNorm -> Linear(width -> C_l)."""

    def __init__(self, in_channels: int, width: int, num_heads: int, head_dim: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(_conv_gn(in_channels, width, 3, nn.SiLU()), _conv_gn(width, width, 3, nn.SiLU()))
        self.block = BasicTransformerBlock(width, num_heads, head_dim, cross_attention_dim=None)
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(self.convs(x), "b c h w -> b (h w) c")  # (B, h*w, width)
        return self.proj_out(self.norm_out(self.block(x)))  # (B, h*w, C_l)


class SRMDecoder(nn.Module):
    """One unshared branch per UNet attention level 0, 1, 2: ``forward(tfq) -> {l: (B, h_l*w_l, C_l)}``."""

    def __init__(self, cfg: TWGTMConfig):
        super().__init__()
        dec = cfg.decoder
        if dec.num_heads * dec.head_dim != dec.width:
            raise ConfigError(f"decoder.num_heads * decoder.head_dim: expected decoder.width {dec.width}, "
                              f"got {dec.num_heads} * {dec.head_dim}")
        self.num_queries = cfg.taskformer.num_queries
        self.sizes = tuple(tuple(s) for s in cfg.level_sizes())
        self.levels = nn.ModuleList(
            DecoderLevel(self.num_queries, dec.width, dec.num_heads, dec.head_dim, c) for c in cfg.level_channels())

    def forward(self, tfq: Tensor) -> dict[int, Tensor]:
        if tfq.ndim != 4 or tfq.shape[1] != self.num_queries:
            raise InputError(f"tfq: expected (B, {self.num_queries}, H/4, W/4), got shape {tuple(tfq.shape)}")
        out = {}
        for lvl, (branch, size) in enumerate(zip(self.levels, self.sizes)):
            x = F.interpolate(tfq, size=size, mode="area")  # (B, K, h_l, w_l)
            out[lvl] = branch(x)  # (B, h_l*w_l, C_l)
        return out
