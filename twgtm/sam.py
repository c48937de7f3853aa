"""Semantic Abstraction Module (SAM): F_SAM = [F_CLIP.G; Q-Former(F_CLIP.S, T_p)].

Spec: ``shared/design/ARCHITECTURE.md`` section 1.2 (invariant 8 of section 4).

* The reference image is padded to a square with white, resized bicubically to the CLIP input size and
  CLIP-normalised; the frozen ``CLIPVisionModelWithProjection`` gives the projected tokens
  ``F_CLIP.S = visual_projection(post_layernorm(last_hidden_state))`` (B, L, D). Token 0 is ``F_CLIP.G``, which
  equals CLIP's ``image_embeds``.
* The task prompt T_p ("upper garment", ...) is encoded once by the frozen CLIP text encoder and cached per
  category in :class:`PromptBank` buffers, so inference needs neither the text encoder nor a tokenizer.
* A hand-rolled InstructBLIP-layout :class:`QFormer` (N learnable queries; self-attention over
  ``[queries; text]`` with a key-padding mask on the text; cross-attention of the queries into F_CLIP.S in every
  layer; separate query/text FFNs; post-LN) gives ``F_QF`` (B, N, D).
* ``F_SAM = cat([F_CLIP.G, F_QF], 1)`` (B, 1 + N, D) is the ``encoder_hidden_states`` of every UNet ``attn2``.

References: transformers ``models/instructblip/modeling_instructblip.py`` (``InstructBlipQFormerEmbeddings``,
``InstructBlipQFormerLayer``) and ``models/clip/modeling_clip.py``.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from .config import QFormerConfig
from .errors import ConfigError, InputError, WeightsError

logger = logging.getLogger(__name__)

# OpenAI CLIP normalisation (CLIPImageProcessor image_mean / image_std)
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------
# frozen CLIP encoders
# ---------------------------------------------------------------------------------------------------
def build_clip_vision(cfg: Any) -> CLIPVisionModelWithProjection:
    """Randomly initialised CLIP image encoder + projection from ``cfg.clip_vision`` (SDPA attention).

    Returned frozen (``requires_grad`` False) and in eval mode; pretrained weights are loaded by the caller.
    """
    config = CLIPVisionConfig(**cfg.clip_vision, attn_implementation="sdpa")
    model = CLIPVisionModelWithProjection(config)
    return model.requires_grad_(False).eval()


def build_clip_text(cfg: Any) -> CLIPTextModel:
    """Randomly initialised CLIP text encoder from ``cfg.clip_text`` (SDPA attention), frozen and in eval mode."""
    config = CLIPTextConfig(**cfg.clip_text, attn_implementation="sdpa")
    model = CLIPTextModel(config)
    return model.requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------------
# image preprocessing
# ---------------------------------------------------------------------------------------------------
def _check_image(image: Any, name: str = "image") -> None:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"{name}: expected a (B, 3, H, W) tensor in [-1, 1], got {got}")


def pad_to_square(image: Tensor, value: float = 1.0) -> Tensor:
    """Pad (B, C, H, W) to (B, C, S, S), S = max(H, W), keeping the content centred; ``value`` +1 is white."""
    h, w = image.shape[-2:]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    return F.pad(image, (left, side - w - left, top, side - h - top), value=value)  # (B, C, S, S)


# ---------------------------------------------------------------------------------------------------
# Q-Former
# ---------------------------------------------------------------------------------------------------
class _Attention(nn.Module):
    """Multi-head attention sub-layer with BERT post-LN: ``LN(x + out(SDPA(q(x), k(ctx), v(ctx))))``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"qformer.num_heads: expected a divisor of hidden_size {dim}, got {num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)  # BERT / InstructBLIP layer_norm_eps

    def forward(self, x: Tensor, context: Tensor, keep: Tensor | None = None) -> Tensor:
        # x: (B, n, D), context: (B, m, Dc), keep: (B, 1, 1, m) bool, True = attend
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, n, d)
        out = rearrange(out, "b h n d -> b n (h d)")  # (B, n, D)
        return self.norm(x + self.to_out(out))


class _FeedForward(nn.Module):
    """BERT feed-forward sub-layer with post-LN: ``LN(x + W2 GELU(W1 x))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class QFormerLayer(nn.Module):
    """One InstructBLIP Q-Former layer with cross-attention (``InstructBlipQFormerLayer``, dropout 0)."""

    def __init__(self, qcfg: QFormerConfig) -> None:
        super().__init__()
        d = qcfg.hidden_size
        self.self_attn = _Attention(d, d, qcfg.num_heads)                 # over [queries; text]
        self.cross_attn = _Attention(d, qcfg.vision_dim, qcfg.num_heads)  # queries -> F_CLIP.S
        self.ffn_query = _FeedForward(d, qcfg.ffn_dim)                   # InstructBLIP intermediate_query/output_query
        self.ffn_text = _FeedForward(d, qcfg.ffn_dim)                    # InstructBLIP intermediate/output

    def forward(self, hidden: Tensor, image_tokens: Tensor, keep: Tensor, num_queries: int) -> Tensor:
        # hidden: (B, N + T, D), image_tokens: (B, L, Dv), keep: (B, 1, 1, N + T)
        hidden = self.self_attn(hidden, hidden, keep)
        q, t = hidden[:, :num_queries], hidden[:, num_queries:]  # (B, N, D), (B, T, D)
        q = self.ffn_query(self.cross_attn(q, image_tokens))
        t = self.ffn_text(t)
        return torch.cat([q, t], dim=1)  # (B, N + T, D)


class QFormer(nn.Module):
    """Hand-rolled InstructBLIP-layout Q-Former (spec 1.2), trained from scratch.

    ``forward(image_tokens (B, L, Dv), text_embeds (B, T, Dt), text_mask (B, T)) -> F_QF (B, N, D)``.
    ``text_mask`` is nonzero/True for real tokens; padded text tokens are never attended to, and the queries
    are never masked, so no attention row is empty.
    """

    def __init__(self, qcfg: QFormerConfig) -> None:
        super().__init__()
        self.config = qcfg
        d = qcfg.hidden_size
        self.query_tokens = nn.Parameter(torch.empty(1, qcfg.num_queries, d))  # (1, N, D)
        self.text_proj = nn.Linear(qcfg.text_dim, d)
        self.embed_norm = nn.LayerNorm(d, eps=1e-12)   # LN over [queries; text] (InstructBlipQFormerEmbeddings)
        self.layers = nn.ModuleList(QFormerLayer(qcfg) for _ in range(qcfg.num_layers))
        self.out_norm = nn.LayerNorm(d, eps=1e-12)     # F_QF = LN(q_L)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init: queries and Linear weights N(0, 0.02), biases 0, LayerNorm (1, 0). Works on meta."""
        nn.init.normal_(self.query_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_inputs(self, image_tokens: Tensor, text_embeds: Tensor, text_mask: Tensor | None) -> None:
        c = self.config
        if image_tokens.ndim != 3 or image_tokens.shape[-1] != c.vision_dim:
            raise InputError(f"image_tokens: expected (B, L, {c.vision_dim}), got {tuple(image_tokens.shape)}")
        if text_embeds.ndim != 3 or text_embeds.shape[-1] != c.text_dim or text_embeds.shape[0] != image_tokens.shape[0]:
            raise InputError(f"text_embeds: expected (B={image_tokens.shape[0]}, T, {c.text_dim}), "
                             f"got {tuple(text_embeds.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
            raise InputError(f"text_mask: expected {tuple(text_embeds.shape[:2])} (B, T), got {tuple(text_mask.shape)}")

    def forward(self, image_tokens: Tensor, text_embeds: Tensor, text_mask: Tensor | None = None) -> Tensor:
        self._check_inputs(image_tokens, text_embeds, text_mask)
        b, n = image_tokens.shape[0], self.config.num_queries
        dtype = self.query_tokens.dtype
        image_tokens = image_tokens.to(dtype)

        queries = self.query_tokens.expand(b, -1, -1)                # (B, N, D)
        text = self.text_proj(text_embeds.to(dtype))                 # (B, T, D)
        hidden = self.embed_norm(torch.cat([queries, text], dim=1))  # (B, N + T, D)

        # key-padding mask: queries always visible, text only where text_mask marks a real token
        if text_mask is None:
            text_keep = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        else:
            text_keep = text_mask.to(device=text.device) != 0
        query_keep = torch.ones(b, n, dtype=torch.bool, device=text.device)
        keep = torch.cat([query_keep, text_keep], dim=1)[:, None, None, :]  # (B, 1, 1, N + T)

        for layer in self.layers:
            hidden = layer(hidden, image_tokens, keep, n)
        return self.out_norm(hidden[:, :n])  # (B, N, D); the text outputs are discarded


# ---------------------------------------------------------------------------------------------------
# cached task prompts
# ---------------------------------------------------------------------------------------------------
def fallback_tokenize(texts: Sequence[str], *, max_length: int, vocab_size: int, bos_token_id: int,
                      eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Deterministic stand-in for ``CLIPTokenizer`` used with tiny/random text encoders (no vocabulary file).

    Each text is lower-cased and split on whitespace. The ids are ``[bos, id(w_1), ..., id(w_k), eos, pad, ...]``
    with ``id(w) = zlib.crc32(w.encode("utf-8")) % (vocab_size - 3)`` (the top three ids are left to the special
    tokens, as in CLIP), truncated so that eos always fits in ``max_length``. The mask is 1 on bos, the words and
    eos, 0 on padding. Returns ``(input_ids, attention_mask)``, both int64 (len(texts), max_length).
    """
    if max_length < 2 or vocab_size < 4:
        raise ConfigError(f"fallback tokenizer: expected max_length >= 2 and vocab_size >= 4, "
                          f"got max_length={max_length}, vocab_size={vocab_size}")
    ids = torch.full((len(texts), max_length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), max_length), dtype=torch.long)
    for row, text in enumerate(texts):
        words = text.lower().split()[: max_length - 2]
        tokens = [bos_token_id] + [zlib.crc32(w.encode("utf-8")) % (vocab_size - 3) for w in words] + [eos_token_id]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    return ids, mask


class PromptBank(nn.Module):
    """Cached T_p per category: the text encoder is frozen and prompts are fixed, so the encoded prompts are
    buffers that live in the state dict (and in the trained .safetensors); inference never needs the text
    encoder or a tokenizer once built.

    Buffers: ``embeds`` (C, T, Dt) float, ``mask`` (C, T) int64 (1 = real token), ``built`` scalar bool.
    Rows follow ``cfg.categories``; row c holds ``cfg.prompts[cfg.categories[c]]``.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.categories: tuple[str, ...] = tuple(cfg.categories)
        self.prompts: tuple[str, ...] = tuple(cfg.prompts[c] for c in self.categories)
        self.max_length = int(cfg.text_max_length)
        text_dim = int(cfg.clip_text["hidden_size"])
        c, t = len(self.categories), self.max_length
        self.register_buffer("embeds", torch.zeros(c, t, text_dim))            # (C, T, Dt)
        self.register_buffer("mask", torch.zeros(c, t, dtype=torch.long))     # (C, T)
        self.register_buffer("built", torch.zeros((), dtype=torch.bool))

    @property
    def is_built(self) -> bool:
        if self.built.is_meta:
            return False
        return bool(self.built.item())

    @torch.no_grad()
    def build(self, text_encoder: CLIPTextModel, tokenizer: Any | None = None) -> None:
        """Encode every prompt with the frozen ``text_encoder`` and store the result in the buffers.

        Args:
            text_encoder: a ``CLIPTextModel``; its ``last_hidden_state`` (C, T, Dt) is cached.
            tokenizer: a ``CLIPTokenizer`` (called with ``padding="max_length"``, ``max_length=text_max_length``,
                ``truncation=True``), or None for :func:`fallback_tokenize` (tiny/random text encoders).
        """
        if tokenizer is None:
            tc = text_encoder.config
            eos = int(tc.eos_token_id)
            pad = int(tc.pad_token_id) if tc.pad_token_id is not None else eos
            ids, mask = fallback_tokenize(self.prompts, max_length=self.max_length, vocab_size=int(tc.vocab_size),
                                          bos_token_id=int(tc.bos_token_id), eos_token_id=eos, pad_token_id=pad)
        else:
            enc = tokenizer(list(self.prompts), padding="max_length", max_length=self.max_length,
                            truncation=True, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        if tuple(ids.shape) != tuple(self.mask.shape):
            raise ConfigError(f"tokenizer: expected input_ids of shape {tuple(self.mask.shape)} (categories, "
                              f"text_max_length), got {tuple(ids.shape)}")

        device = next(text_encoder.parameters()).device
        # SD1.5 convention: input ids only; CLIP's causal mask keeps real tokens blind to the padding after them
        hidden = text_encoder(input_ids=ids.to(device)).last_hidden_state  # (C, T, Dt)
        if hidden.shape != self.embeds.shape:
            raise ConfigError(f"text_encoder: expected last_hidden_state {tuple(self.embeds.shape)} "
                              f"(categories, text_max_length, clip_text.hidden_size), got {tuple(hidden.shape)}")
        self.embeds.copy_(hidden.to(self.embeds))
        self.mask.copy_(mask.to(self.mask))
        self.built.fill_(True)
        logger.info("PromptBank: cached %d prompts %s (tokenizer: %s)", len(self.prompts), self.prompts,
                    "fallback" if tokenizer is None else type(tokenizer).__name__)

    def forward(self, category_idx: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) category indices -> cached prompt embeddings (B, T, Dt) and mask (B, T)."""
        if self.embeds.is_meta:  # shape-only evaluation (FLOP counting on meta): no values to check
            idx = category_idx.to(self.embeds.device)
            return self.embeds[idx], self.mask[idx]
        if not self.is_built:
            raise WeightsError("PromptBank: expected cached prompt embeddings (built=True), got an unbuilt bank; "
                               "call build(text_encoder, tokenizer) or load a trained state dict")
        if not isinstance(category_idx, Tensor) or category_idx.dtype != torch.long or category_idx.ndim != 1:
            got = (f"{category_idx.dtype} {tuple(category_idx.shape)}" if isinstance(category_idx, Tensor)
                   else type(category_idx).__name__)
            raise InputError(f"category_idx: expected a (B,) int64 tensor, got {got}")
        idx = category_idx.to(self.embeds.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self.categories)):
            raise InputError(f"category_idx: expected values in [0, {len(self.categories)}) for categories "
                             f"{self.categories}, got {idx.tolist()}")
        return self.embeds[idx], self.mask[idx]  # (B, T, Dt), (B, T)


# ---------------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------------
@dataclass
class SAMOutput:
    f_sam: Tensor     # (B, 1 + N, D): cat([F_CLIP.G, F_QF], 1), the UNet attn2 context
    f_qf: Tensor      # (B, N, D): Q-Former output (also the TaskFormer's S1 memory); Variant 8: = f_sam
    f_clip_g: Tensor  # (B, 1, D): projected CLIP class token (= image_embeds)


class SemanticAbstractionModule(nn.Module):
    """SAM (spec 1.2): frozen CLIP image encoder + cached prompts + trainable Q-Former -> F_SAM.

    ``clip_vision`` is frozen and stays in eval mode even after ``.train()``; :meth:`encode_image` runs it
    without gradients, so only the Q-Former (queries, ``text_proj``, layers) receives gradients.
    """

    def __init__(self, cfg: Any, clip_vision: CLIPVisionModelWithProjection | None = None) -> None:
        super().__init__()
        self.clip_vision = clip_vision if clip_vision is not None else build_clip_vision(cfg)
        self.clip_vision.requires_grad_(False).eval()
        vc = self.clip_vision.config
        if vc.projection_dim != cfg.qformer.vision_dim:
            raise ConfigError(f"clip_vision.projection_dim: expected qformer.vision_dim {cfg.qformer.vision_dim}, "
                              f"got {vc.projection_dim}")
        self.image_size = int(vc.image_size)
        q = cfg.qformer
        # Variant 8 (use_qformer false): no Q-Former; the CLIP image tokens and the cached prompt tokens go to
        # cross-attention as they are, through a linear map only where their width is not the UNet's (D)
        self.qformer = QFormer(q) if cfg.use_qformer else None
        self.vision_proj = nn.Linear(q.vision_dim, q.hidden_size) \
            if not cfg.use_qformer and q.vision_dim != q.hidden_size else None
        self.text_proj = nn.Linear(q.text_dim, q.hidden_size) \
            if not cfg.use_qformer and q.text_dim != q.hidden_size else None
        self.prompts = PromptBank(cfg)

    def train(self, mode: bool = True) -> "SemanticAbstractionModule":
        super().train(mode)
        self.clip_vision.eval()  # frozen encoder: never in training mode
        return self

    def preprocess(self, image: Tensor) -> Tensor:
        """[-1, 1] (B, 3, H, W) -> CLIP pixel values (B, 3, S, S), S = CLIP image_size.

        White (+1) padding to a centred square (no centre crop), antialiased bicubic resize (like the PIL resize
        of ``CLIPImageProcessor``) clamped to [-1, 1], then ``(x + 1) / 2`` and CLIP mean/std.
        """
        _check_image(image)
        x = pad_to_square(image.float(), value=1.0)  # (B, 3, S0, S0)
        size = (self.image_size, self.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)  # (B, 3, S, S)
        x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(image.dtype)

    def encode_image(self, image: Tensor) -> Tensor:
        """F_CLIP.S (B, L, D) = visual_projection(post_layernorm(last_hidden_state)); no gradients."""
        clip = self.clip_vision
        with torch.no_grad():
            pixels = self.preprocess(image).to(clip.visual_projection.weight.dtype)  # (B, 3, S, S)
            hidden = clip(pixel_values=pixels).last_hidden_state                   # (B, L, Dclip)
            return clip.visual_projection(clip.vision_model.post_layernorm(hidden))  # (B, L, D)

    def forward(self, image: Tensor, category_idx: Tensor) -> SAMOutput:
        """Reference image [-1, 1] (B, 3, H, W) and (B,) category indices -> :class:`SAMOutput`.

        A single category index (shape (1,)) is broadcast over the batch.
        """
        _check_image(image)
        b = image.shape[0]
        if isinstance(category_idx, Tensor) and category_idx.ndim == 1 and category_idx.numel() == 1 and b > 1:
            category_idx = category_idx.expand(b)
        if isinstance(category_idx, Tensor) and category_idx.shape != (b,):
            raise InputError(f"category_idx: expected shape ({b},) matching the image batch, "
                             f"got {tuple(category_idx.shape)}")
        f_clip_s = self.encode_image(image)           # (B, L, D)
        text, text_mask = self.prompts(category_idx)  # (B, T, Dt), (B, T)
        if self.qformer is None:
            return self._without_qformer(f_clip_s, text)
        f_qf = self.qformer(f_clip_s, text, text_mask)  # (B, N, D)
        f_clip_g = f_clip_s[:, :1].to(f_qf.dtype)     # (B, 1, D)
        f_sam = torch.cat([f_clip_g, f_qf], dim=1)    # (B, 1 + N, D)
        return SAMOutput(f_sam=f_sam, f_qf=f_qf, f_clip_g=f_clip_g)

    def _without_qformer(self, f_clip_s: Tensor, text: Tensor) -> SAMOutput:
        """Variant 8: ``F_SAM = [F_CLIP.S; T_p]`` (B, L + T, D), the CLIP image tokens and the category prompt's
        text tokens (all T, padding included, as SD1.5 feeds its text encoder's output to cross-attention), each
        mapped to width D where it differs. The same tokens are the SRM's S1 memory (``f_qf``), so the category
        reaches the TaskFormer too."""
        dtype = self.prompts.embeds.dtype
        image_tokens, text = f_clip_s.to(dtype), text.to(dtype)
        if self.vision_proj is not None:
            image_tokens = self.vision_proj(image_tokens)
        if self.text_proj is not None:
            text = self.text_proj(text)
        tokens = torch.cat([image_tokens, text], dim=1)  # (B, L + T, D)
        return SAMOutput(f_sam=tokens, f_qf=tokens, f_clip_g=image_tokens[:, :1])
