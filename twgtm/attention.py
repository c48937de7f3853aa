"""UNet attention processors: plain SDPA and the Extended Attention Block (eq. 13).

``F_fused = SelfAttn(Q, K, V) + gate * ZLL(CrossAttn(Q, K', V'))`` with ``K', V'`` projected from the
Spatial Refinement Module features of the processor's level, ZLL a zero-initialised Linear(C, C).

Extra features reach the processors through ``unet(..., cross_attention_kwargs=...)``; diffusers
forwards those kwargs to every ``attn1`` and ``attn2`` and silently drops names a processor's
``__call__`` does not declare, so both processors declare all of them:

* ``srm``: ``{level: (Bs, T_l, C_l)}`` decoder features, or ``None`` (stage 1 / branch off);
* ``srm_gate``: float or (Bs,) tensor; 0 turns the branch off for a sample (CFG unconditional);
* ``srm_rows``: a ``slice`` of the UNet batch the ``Bs`` SRM rows belong to (default: all rows).
  With batched CFG ``[uncond, cond]`` the pipeline passes the conditional rows only, so the
  unconditional half (gate 0) costs no Extended-Attention work;
* ``srm_kv``: ``{processor_name: (K', V')}`` projections computed once per call (they do not depend
  on the timestep); when absent the processor projects ``srm[level]`` itself;
* ``srm_mask``: a :class:`SpatialGate`, the task gate of the paper's stage 2 ("mask conditioning is
  either provided (VTON) or predicted (VTOFF) in the Extended Attention Module"): the SRM term of
  each of the ``Bs`` rows is multiplied, token by token, by that map at the processor's resolution,
  so it acts only where the try-on mask (given) or the flat-garment mask TFQ_0 (predicted) says, on
  the generated half; the reference half gets 0.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN1_SUFFIX = ".attn1.processor"


def level_from_name(name: str) -> int:
    """Attention level of a UNet processor from its block name (never from the channel count).

    ``down_blocks.i`` -> i, ``up_blocks.j`` -> 3 - j, ``mid_block`` -> 2.
    """
    if m := re.match(r"down_blocks\.(\d+)\.", name):
        return int(m.group(1))
    if m := re.match(r"up_blocks\.(\d+)\.", name):
        return 3 - int(m.group(1))
    if name.startswith("mid_block."):
        return 2
    raise ValueError(f"processor name: expected down_blocks.i / up_blocks.j / mid_block, got {name!r}")


class SpatialGate:
    """The task gate of Extended Attention: a map (Bs, 1, h, 2w) over the joined latent, in [0, 1].

    Built by :func:`twgtm.latents.task_gate` (the generated half holds the task's mask, the reference
    half 0). :meth:`tokens` gives it at the token grid of any UNet attention level, found from the token
    count (each SD downsampler halves a side rounding up, so the grid is the latent size divided by
    2^k, rounded up), area-resized and cached, so every processor of a level shares one resize per call.
    """

    def __init__(self, latent_map: torch.Tensor):
        if latent_map.ndim != 4 or latent_map.shape[1] != 1:
            raise ValueError(f"srm_mask: expected a (Bs, 1, h, 2w) map, got shape {tuple(latent_map.shape)}")
        self.map = latent_map
        self._cache: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def grid(self, count: int) -> tuple[int, int]:
        h, w = self.map.shape[-2:]
        for _ in range(16):
            if h * w == count:
                return h, w
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        raise ValueError(f"srm_mask: no token grid of {count} tokens below the latent size "
                         f"{tuple(self.map.shape[-2:])}")

    def tokens(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """(Bs, count, 1): the gate per query token of a level with ``count`` tokens."""
        key = (count, dtype)
        if key not in self._cache:
            size = self.grid(count)
            m = self.map if tuple(self.map.shape[-2:]) == size else F.interpolate(self.map.float(), size=size, mode="area")
            self._cache[key] = m.flatten(2).transpose(1, 2).to(dtype)  # (Bs, T, 1)
        return self._cache[key]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, heads, c // heads).transpose(1, 2)  # (B, heads, T, c/heads)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, C)


def _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
    """The input side of diffusers' ``AttnProcessor2_0``: norms, the mask, Q/K/V heads, and a ``finish``
    closure for the output side (reshape, residual, rescale). Returns ``(q, k, v, attention_mask, dtype,
    finish)``; shared by plain SDPA attention and the Variant-6 concatenation.

    Copied from diffusers (Apache-2.0), ``src/diffusers/models/attention_processor.py``,
    ``AttnProcessor2_0.__call__`` (diffusers 0.30-0.42), split before and after the attention product.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        b4, c4, h4, w4 = hidden_states.shape
        hidden_states = hidden_states.view(b4, c4, h4 * w4).transpose(1, 2)
    batch_size, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    q, k, v = _heads(query, attn.heads), _heads(key, attn.heads), _heads(value, attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)

    def finish(x: torch.Tensor) -> torch.Tensor:
        if input_ndim == 4:
            x = x.transpose(-1, -2).reshape(b4, c4, h4, w4)
        if attn.residual_connection:
            x = x + residual
        return x / attn.rescale_output_factor

    return q, k, v, attention_mask, query.dtype, finish


def _sdpa_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
    """diffusers ``AttnProcessor2_0`` logic (:func:`_project`, then the attention product and the output
    projection), returning the projected output, the query heads and the ``finish`` closure, so the Extended
    Attention processor can add its branch before the output reshape."""
    q, k, v, attention_mask, dtype, finish = _project(attn, hidden_states, encoder_hidden_states, attention_mask,
                                                      temb)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    out = _merge(out).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    return out, q, finish


class TWGTMAttnProcessor:
    """Plain SDPA attention (``AttnProcessor2_0``) that accepts and ignores the SRM kwargs.

    Used for every ``attn2`` (cross-attention to F_SAM) and for ``attn1`` in stage 1.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 srm=None, srm_gate=None, srm_rows=None, srm_kv=None, srm_mask=None):
        out, _, finish = _sdpa_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return finish(out)


class ExtendedAttnProcessor(nn.Module):
    """Extended Attention for one ``attn1`` (eq. 13), IP-Adapter-style processor with its own weights.

    Differences from ``IPAdapterAttnProcessor2_0``: ``to_out`` is not applied to the cross branch (the
    zero-initialised ZLL replaces it), and the fixed ``scale`` becomes that learned layer.
    """

    def __init__(self, hidden_size: int, level: int, name: str = ""):
        super().__init__()
        self.level = level
        self.name = name
        self.to_k_srm = nn.Linear(hidden_size, hidden_size, bias=False)
        self.to_v_srm = nn.Linear(hidden_size, hidden_size, bias=False)
        self.zll = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.zll.weight)
        nn.init.zeros_(self.zll.bias)

    @torch.no_grad()
    def init_from(self, attn) -> None:
        """K'/V' start as copies of ``attn.to_k`` / ``attn.to_v`` (gap #21)."""
        self.to_k_srm.weight.copy_(attn.to_k.weight)
        self.to_v_srm.weight.copy_(attn.to_v.weight)

    def project(self, srm_feature: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K', V' heads for one level's features (Bs, T, C) -> (Bs, heads, T, C/heads)."""
        return _heads(self.to_k_srm(srm_feature), heads), _heads(self.to_v_srm(srm_feature), heads)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 srm=None, srm_gate=None, srm_rows=None, srm_kv=None, srm_mask=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                srm, srm_gate, srm_rows, srm_kv, srm_mask)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                srm=None, srm_gate=None, srm_rows=None, srm_kv=None, srm_mask=None):
        out, q, finish = _sdpa_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        kv = srm_kv.get(self.name) if srm_kv else None
        if kv is None and srm is None:
            return finish(out)
        if isinstance(srm_gate, (int, float)) and srm_gate == 0:
            return finish(out)
        if kv is None:
            kv = self.project(srm[self.level].to(q.dtype), attn.heads)
        k2, v2 = kv
        rows = srm_rows if srm_rows is not None else slice(None)
        q_rows = q[rows]  # (Bs, heads, T, d)
        if k2.shape[0] != q_rows.shape[0]:
            raise ValueError(f"srm features: expected batch {q_rows.shape[0]} (rows {rows}), got {k2.shape[0]}")
        cross = self.zll(_merge(F.scaled_dot_product_attention(q_rows, k2.to(q.dtype), v2.to(q.dtype))))
        if srm_gate is not None and not isinstance(srm_gate, (int, float)):
            cross = cross * srm_gate.to(cross.dtype).view(-1, 1, 1)
        elif srm_gate is not None:
            cross = cross * srm_gate
        if srm_mask is not None:  # the task gate: only where the task's mask is, on the generated half
            gate = srm_mask.tokens(cross.shape[1], cross.dtype)  # (Bs, T, 1)
            if gate.shape[0] != cross.shape[0]:
                raise ValueError(f"srm_mask: expected batch {cross.shape[0]} (rows {rows}), got {gate.shape[0]}")
            cross = cross * gate
        if srm_rows is None:
            out = out + cross
        else:
            start = rows.start or 0
            stop = out.shape[0] if rows.stop is None else rows.stop
            out = torch.cat([out[:start], out[start:stop] + cross, out[stop:]])
        return finish(out)


class ConcatAttnProcessor:
    """Variant 6 of the paper's ablations (``srm_fusion: concat``): the level's F_SRM tokens are joined to the
    self-attention's keys and values, projected by ``attn1``'s own ``to_k`` / ``to_v``, and one softmax runs
    over both: ``SelfAttn(Q, [K; K_srm], [V; V_srm])``, the same as concatenating F_SRM to the tokens before
    self-attention and keeping the outputs of the UNet tokens only. No weights of its own (no ZLL: the term is
    not zero at the start of stage 2).

    The gates act on the SRM keys' attention weights before normalisation (an additive ``log gate``, as the
    TaskFormer's soft masks): ``srm_gate`` 0 (CFG drop) or a task-gate token at 0 removes them, so the row
    attends to the UNet tokens alone, exactly plain self-attention. Same keyword arguments as
    :class:`ExtendedAttnProcessor` (module docstring).
    """

    def __init__(self, level: int, name: str = ""):
        self.level = level
        self.name = name

    @staticmethod
    def kv(attn, srm_feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_srm, V_srm heads of one level's features (Bs, T, C) -> (Bs, heads, T, C/heads), with attn1's weights."""
        srm_feature = srm_feature.to(attn.to_k.weight.dtype)
        return _heads(attn.to_k(srm_feature), attn.heads), _heads(attn.to_v(srm_feature), attn.heads)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 srm=None, srm_gate=None, srm_rows=None, srm_kv=None, srm_mask=None):
        kv = srm_kv.get(self.name) if srm_kv else None
        off = (kv is None and srm is None) or (isinstance(srm_gate, (int, float)) and srm_gate == 0)
        if off or encoder_hidden_states is not None:
            out, _, finish = _sdpa_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            return finish(out)
        if kv is None:
            kv = self.kv(attn, srm[self.level])
        return _concat_attention(attn, hidden_states, attention_mask, temb, kv, srm_gate, srm_rows, srm_mask)


def _concat_attention(attn, hidden_states, attention_mask, temb, kv, srm_gate, srm_rows, srm_mask):
    """Self-attention whose rows ``srm_rows`` also attend to the SRM keys/values ``kv`` (ConcatAttnProcessor)."""
    q, k, v, attention_mask, dtype, finish = _project(attn, hidden_states, None, attention_mask, temb)
    rows = srm_rows if srm_rows is not None else slice(None)
    k2, v2 = (t.to(q.dtype) for t in kv)
    if attn.norm_k is not None:
        k2 = attn.norm_k(k2)
    q_r, k_r, v_r = q[rows], k[rows], v[rows]
    if k2.shape[0] != q_r.shape[0]:
        raise ValueError(f"srm features: expected batch {q_r.shape[0]} (rows {rows}), got {k2.shape[0]}")
    # gate (Bs, 1, T, 1) in [0, 1] on the SRM keys, as an additive log bias: 0 removes them
    gate = torch.ones(q_r.shape[0], 1, q_r.shape[2], 1, dtype=q.dtype, device=q.device)
    if srm_gate is not None:
        g = srm_gate if isinstance(srm_gate, (int, float)) else srm_gate.to(q.dtype).view(-1, 1, 1, 1)
        gate = gate * g
    if srm_mask is not None:
        gate = gate * srm_mask.tokens(q_r.shape[2], q.dtype)[:, None]  # (Bs, 1, T, 1)
    bias = torch.cat([torch.zeros_like(gate).expand(-1, -1, -1, k_r.shape[2]),
                      torch.log(gate).expand(-1, -1, -1, k2.shape[2])], dim=-1)  # (Bs, 1, T, T + T_srm)
    if attention_mask is not None:
        bias = bias + F.pad(attention_mask[rows].to(q.dtype), (0, k2.shape[2]))
    joined = F.scaled_dot_product_attention(q_r, torch.cat([k_r, k2], 2), torch.cat([v_r, v2], 2),
                                            attn_mask=bias)  # (Bs, heads, T, d)
    if srm_rows is None:
        out_heads = joined
    else:  # the other rows (CFG's unconditional half) get plain self-attention, computed for them alone
        start = rows.start or 0
        stop = q.shape[0] if rows.stop is None else rows.stop

        def plain(sl: slice) -> torch.Tensor:
            mask = None if attention_mask is None else attention_mask[sl]
            return F.scaled_dot_product_attention(q[sl], k[sl], v[sl], attn_mask=mask)

        out_heads = torch.cat([plain(slice(0, start)), joined, plain(slice(stop, None))])
    return finish(attn.to_out[1](attn.to_out[0](_merge(out_heads).to(dtype))))


def attn1_names(unet) -> list[str]:
    """Processor names of every self-attention (``attn1``) in the UNet, in module order."""
    return [n for n in unet.attn_processors if n.endswith(ATTN1_SUFFIX)]


def set_plain_processors(unet) -> None:
    """Stage 1: SDPA everywhere, Extended Attention absent."""
    unet.set_attn_processor({name: TWGTMAttnProcessor() for name in unet.attn_processors})


def add_extended_attention(unet, fusion: str = "extended_attention") -> dict:
    """Stage 2: every ``attn1`` becomes an :class:`ExtendedAttnProcessor` (K'/V' copied from to_k/to_v,
    ZLL zero), so the UNet output is bit-identical to stage 1 until ZLL is trained. ``fusion="concat"``
    (``config.srm_fusion``, ablation Variant 6) installs a :class:`ConcatAttnProcessor` instead."""
    procs = {}
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith(ATTN1_SUFFIX) and fusion == "concat":
            procs[name] = ConcatAttnProcessor(level_from_name(name), name=name)
        elif name.endswith(ATTN1_SUFFIX):
            attn = modules[name[: -len(".processor")]]
            p = ExtendedAttnProcessor(attn.to_q.out_features, level_from_name(name), name=name)
            p.init_from(attn)
            p.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
            procs[name] = p
    unet.set_attn_processor({n: procs.get(n, TWGTMAttnProcessor()) for n in unet.attn_processors})
    return procs


def extended_processors(unet) -> dict[str, ExtendedAttnProcessor]:
    return {n: p for n, p in unet.attn_processors.items() if isinstance(p, ExtendedAttnProcessor)}


def srm_processors(unet) -> dict:
    """Every processor that takes F_SRM: Extended Attention (eq. 13) or the Variant-6 concatenation."""
    return {n: p for n, p in unet.attn_processors.items() if isinstance(p, (ExtendedAttnProcessor, ConcatAttnProcessor))}


def precompute_srm_kv(unet, srm: dict[int, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K'/V' for every Extended Attention processor (K_srm/V_srm for Variant 6's), once per call (they do not
    depend on t)."""
    unet = getattr(unet, "_orig_mod", unet)  # a torch.compile wrapper prefixes module names
    modules = dict(unet.named_modules())
    out = {}
    for name, proc in srm_processors(unet).items():
        attn = modules[name[: -len(".processor")]]
        if isinstance(proc, ConcatAttnProcessor):
            out[name] = proc.kv(attn, srm[proc.level])
        else:
            out[name] = proc.project(srm[proc.level].to(attn.to_q.weight.dtype), attn.heads)
    return out


def model_output(unet, latent_input: torch.Tensor, timestep: torch.Tensor, f_sam: torch.Tensor, *,
                 f_srm: dict[int, torch.Tensor] | None = None, srm_gate=None, srm_rows: slice | None = None,
                 srm_kv: dict | None = None, srm_mask: SpatialGate | None = None) -> torch.Tensor:
    """One UNet call on the 9-channel input (B, 9, h, 2w) -> (B, 4, h, 2w).

    The output is in the scheduler's prediction type (``config.scheduler["prediction_type"]``): the noise
    (epsilon), the velocity (v_prediction) or the clean latent (sample). ``f_sam`` is the ``attn2``
    context; the SRM arguments (module docstring) reach the Extended Attention processors, and are left
    out when there are none, so a stage-1 UNet and the baseline take exactly the plain path.
    """
    kwargs = None
    if f_srm is not None or srm_kv is not None:
        kwargs = {"srm": f_srm, "srm_gate": srm_gate, "srm_rows": srm_rows, "srm_kv": srm_kv, "srm_mask": srm_mask}
    return unet(latent_input, timestep, encoder_hidden_states=f_sam, cross_attention_kwargs=kwargs,
                return_dict=False)[0]
