"""Stage 0 (synthetic preset only): fit the toy model's own small VAE.

No pretrained SD VAE is reachable offline, so the synthetic preset fits the configured
``AutoencoderKL`` on the images the diffusion model will encode: persons, flat garments, and both with
their repaint region blanked to 0 (the masked inputs of eq. 1). Loss: L1 + MSE reconstruction plus a
small KL term. A randomly initialised AutoencoderKL reproduces colour only after ~1,500 steps (measured:
it learns luminance structure first), far beyond the CPU budget, so by default (``stage0.init:
lowpass``) it starts as a colour-exact low-pass autoencoder (:func:`identity_init_vae`) and is fine-tuned
from there; a few held-out images select the weights kept (the fine-tuning must not make it worse).
Afterwards the VAE is frozen; the latent shift is set to the per-channel mean of its latents and the
scaling factor to ``1 / std`` of the centred latents (as SD's 0.18215 was chosen, and as SD3 adds a
shift), so the diffusion model sees zero-mean, unit-variance latents. Without the shift the colour means
(~0.9 std) survive at t = T as a small signal the model learns to read in training, but pure-noise
sampling does not have it: measured on the main job, try-on came out in wrong, over-saturated colours.

Outputs in ``<output_dir>/stage0/``: ``vae.safetensors`` (weights, with the VAE config and the
scaling factor in its metadata), ``log.csv`` and ``recon.png`` (inputs over reconstructions).
The run is resumable: a checkpoint (weights, optimiser, step) is written every ``checkpoint_every``
steps, and batches are a pure function of (seed, step); the held-out selection restarts at the resumed
weights.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from twgtm.config import TWGTMConfig
from twgtm.errors import MissingFileError, WeightsError

from .config import RunConfig
from .grids import save_image_grid
from .progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = ["train_vae", "load_stage0_vae", "vae_image_pool", "identity_init_vae"]

_VAE_FILE = "vae.safetensors"


def vae_image_pool(dataset) -> torch.Tensor:
    """All images the diffusion model will encode, from a dataset of items: (N, 3, H, W) in [-1, 1]."""
    imgs = []
    for i in range(len(dataset)):
        item = dataset[i]
        person, garment = item["person"], item["garment"]
        imgs += [person, garment, person * (1.0 - item["person_mask"]), garment * (1.0 - item["garment_mask"])]
    return torch.stack(imgs)  # (4N, 3, H, W)


# ---------------------------------------------------------------------------------------------- initialisation
def _zero_(m: nn.Module) -> None:
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()


def _const_value(channel: int, const: float) -> float:
    """Constant carried by a non-colour channel: +K, -K, +K, ... from channel 3 on (mean ~0)."""
    return 0.0 if channel < 3 else (const if (channel - 3) % 2 == 0 else -const)


def _diag_conv_(conv: nn.Conv2d, n: int, taps: tuple[slice, slice], value: float, const: float = 0.0,
                const_from: Optional[int] = None) -> None:
    """``conv`` := per-channel identity on the first ``n`` channels with ``value`` on ``taps``, zero elsewhere;
    output channels from ``const_from`` on get the bias pattern of :func:`_const_value`."""
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(n):
            conv.weight[c, c, taps[0], taps[1]] = value
        if conv.bias is not None:
            conv.bias.zero_()
            if const_from is not None:
                for c in range(const_from, conv.out_channels):
                    conv.bias[c] = _const_value(c, const)


def _identity_resnet_(block: nn.Module, const: float) -> None:
    """A diffusers ResnetBlock2D as the identity (zero residual branch; shortcut embeds the channels)."""
    _zero_(block.conv2)
    if block.conv_shortcut is not None:
        cin, cout = block.conv_shortcut.in_channels, block.conv_shortcut.out_channels
        centre = block.conv_shortcut.kernel_size[0] // 2
        _diag_conv_(block.conv_shortcut, min(cin, cout), (slice(centre, centre + 1),) * 2, 1.0,
                    const=const, const_from=min(cin, cout))


def _identity_mid_(mid: nn.Module, const: float) -> None:
    for r in mid.resnets:
        _identity_resnet_(r, const)
    for a in mid.attentions:
        if a is not None:
            _zero_(a.to_out[0])  # residual connection only


def _affine_norm_out_(norm: nn.GroupNorm, const: float, offset: float) -> float:
    """Make ``norm`` an affine map ``x -> x - p*m + offset`` on the colour channels and ``-> offset - p*m``
    on the constant channels, for inputs [R, G, B, +K, -K, +K, ...] (m: the image's colour mean, p: the
    colour share of the group). The +-K constants dominate the group's std without moving its mean, so
    the std is nearly image-independent. Returns the SiLU slope at ``offset`` (for the next conv)."""
    per_group = norm.num_channels // norm.num_groups
    k = torch.tensor([_const_value(c, const) for c in range(per_group)], dtype=torch.float64)
    mu_k = float(k.mean())                                     # mean of the constants over the group
    sigma = float(((k ** 2).mean() - mu_k ** 2).sqrt())        # the group's std (colour part neglected)
    with torch.no_grad():
        norm.weight.fill_(sigma)
        for c in range(norm.num_channels):
            kc = _const_value(c % per_group, const)
            norm.bias[c] = (mu_k + offset) if c % per_group < 3 else (mu_k - kc + offset)
    x = torch.tensor(offset)
    return float(torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))))  # d/dx SiLU at offset


def _smooth_upsampler_(conv: nn.Conv2d, const: float) -> None:
    """The conv after a 2x nearest upsampling as a [1, 2, 1] / 4 smoothing of the colour channels (together: 2x
    bilinear interpolation, half-pixel centres) and the identity on the constant channels.

    A 3x3 conv pads with zeros, which would darken a one-pixel frame; so the colour is smoothed relative to white
    (1 in [-1, 1]): ``out = smooth(c) - smooth(K) / K + 1``, exactly ``smooth(c)`` inside, where the +K channel
    is constant, and pulled towards white at the border (where garments are white)."""
    k1 = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    k3 = torch.outer(k1, k1)
    kc = _const_value(3, const)
    _diag_conv_(conv, conv.out_channels, (slice(1, 2), slice(1, 2)), 1.0)
    with torch.no_grad():
        for c in range(3):
            conv.weight[c, c] = k3
            conv.weight[c, 3] = -k3 / kc
            conv.bias[c] = 1.0


def identity_init_vae(vae: AutoencoderKL, *, const: float = 3.0, offset: float = 3.0, logvar: float = -10.0,
                      upsampling: str = "nearest") -> bool:
    """Initialise a fresh ``AutoencoderKL`` as ``decode(encode(x)) ~= upsample(avg_pool(x))``, the upsampling
    ``"nearest"`` (blocks of the latent cell's colour) or ``"bilinear"`` (2x bilinear per decoder level; a
    sampled latent's errors then show as smooth shading instead of cell-sized blocks, docs/TRAINING.md).

    A randomly initialised AutoencoderKL learns colour very late (luminance structure first: in our
    measurements chroma appeared only after ~1,500 steps), so stage 0 starts from this colour-exact
    low-pass autoencoder instead and only has to learn the detail. Construction: every residual branch
    and attention output is zeroed (identity blocks), downsamplers average 2x2, upsamplers copy (nearest),
    conv_in/conv_out carry R, G, B on channels 0-2, and the other channels hold large constants +-K so
    that the final GroupNorms act as a fixed affine map (the image-mean term they still subtract is
    cancelled through a constant channel). Latent channels 0-2 start as the averaged colours, the rest free; the
    posterior starts with a tiny std (``logvar``). Exact for ``norm_num_groups=1``; needs at least 5 channels
    per norm group (returns False
    and leaves the VAE untouched otherwise).
    """
    enc, dec = vae.encoder, vae.decoder
    for norm in (enc.conv_norm_out, dec.conv_norm_out):
        if norm.num_channels // norm.num_groups < 5:
            logger.warning("identity_init_vae: needs >= 5 channels per GroupNorm group, got %d/%d; keeping the "
                           "random initialisation", norm.num_channels, norm.num_groups)
            return False
    lc = vae.config.latent_channels
    centre = (slice(1, 2), slice(1, 2))
    # encoder: conv_in -> [R, G, B, K, ...]; identity blocks; 2x2 average downsampling
    _diag_conv_(enc.conv_in, 3, centre, 1.0, const=const, const_from=3)
    for block in enc.down_blocks:
        for r in block.resnets:
            _identity_resnet_(r, const)
        for d in block.downsamplers or []:
            _diag_conv_(d.conv, d.conv.out_channels, (slice(0, 2), slice(0, 2)), 0.25)  # pad (0,1,0,1), stride 2
    _identity_mid_(enc.mid_block, const)
    slope = _affine_norm_out_(enc.conv_norm_out, const, offset)
    with torch.no_grad():  # moments: mean channels 0-2 = colour, the rest 0; logvar = constant
        w = enc.conv_out.weight
        w.zero_()
        enc.conv_out.bias.zero_()
        for c in range(3):
            w[c, c, 1, 1] = 1.0 / slope
            w[c, 3, 1, 1] = -1.0 / slope
        enc.conv_out.bias[lc:] = logvar
        if vae.quant_conv is not None:
            vae.quant_conv.weight.zero_()
            vae.quant_conv.bias.zero_()
            for c in range(2 * lc):
                vae.quant_conv.weight[c, c, 0, 0] = 1.0
        if vae.post_quant_conv is not None:
            vae.post_quant_conv.weight.zero_()
            vae.post_quant_conv.bias.zero_()
            for c in range(lc):
                vae.post_quant_conv.weight[c, c, 0, 0] = 1.0
    # decoder: conv_in -> [R, G, B, K, ...]; identity blocks; nearest upsampling
    _diag_conv_(dec.conv_in, 3, centre, 1.0, const=const, const_from=3)
    _identity_mid_(dec.mid_block, const)
    for block in dec.up_blocks:
        for r in block.resnets:
            _identity_resnet_(r, const)
        for u in block.upsamplers or []:  # nearest x2, then the identity or a bilinear smoothing
            if upsampling == "bilinear":
                _smooth_upsampler_(u.conv, const)
            else:
                _diag_conv_(u.conv, u.conv.out_channels, centre, 1.0)
    slope = _affine_norm_out_(dec.conv_norm_out, const, offset)
    with torch.no_grad():
        dec.conv_out.weight.zero_()
        dec.conv_out.bias.zero_()
        for c in range(3):
            dec.conv_out.weight[c, c, 1, 1] = 1.0 / slope
            dec.conv_out.weight[c, 3, 1, 1] = -1.0 / slope
    return True


def _save_vae(vae: AutoencoderKL, path: Path, scaling_factor: float, shift: list[float], step: int) -> None:
    meta = {"vae_config": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in dict(vae.config).items()
                                      if not k.startswith("_")}),
            "scaling_factor": repr(float(scaling_factor)), "shift_factor": json.dumps([float(v) for v in shift]),
            "step": str(step)}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_stage0_vae(run: RunConfig) -> tuple[AutoencoderKL, float, list[float]]:
    """The frozen stage-0 VAE, its latent scaling factor and its per-channel latent shift."""
    path = run.output_path / "stage0" / _VAE_FILE
    if not path.is_file():
        raise MissingFileError(f"stage 0 VAE: expected {str(path)!r}; run `python -m training train --stage 0` first")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        cfg = json.loads(meta["vae_config"])
        scale = float(meta["scaling_factor"])
        shift = [float(v) for v in json.loads(meta["shift_factor"])]
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f"stage 0 VAE {str(path)!r}: expected vae_config, scaling_factor and shift_factor "
                           f"metadata (a file from an older version: delete it to refit stage 0)") from exc
    known = set(inspect.signature(AutoencoderKL.__init__).parameters)
    vae = AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in known})
    vae.load_state_dict(load_file(str(path)))
    vae.requires_grad_(False).eval()
    return vae, scale, shift


class _Reconstruction(torch.nn.Module):
    """encode -> reparameterised sample -> decode, as one forward (so DDP sees one call)."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x).latent_dist
        z = dist.mean + dist.std * noise                  # (B, 4, h, w)
        return self.vae.decode(z).sample, dist.kl()       # (B, 3, H, W), (B,)


def _batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch,), generator=g)


@torch.no_grad()
def _val_l1(vae: AutoencoderKL, val: torch.Tensor) -> float:
    """Mean absolute reconstruction error (posterior mean) on held-out images in [-1, 1]."""
    was = vae.training
    vae.eval()
    dev = next(vae.parameters()).device
    err = [F.l1_loss(vae.decode(vae.encode(x.to(dev)).latent_dist.mode()).sample.float(), x.to(dev)).item() * len(x)
           for x in val.split(32)]
    vae.train(was)
    return sum(err) / len(val)


#: images the latent statistics are measured on (a seeded random subset of a larger pool): on the main job's
#: pool, 4,096 of its 16,384 images gave a shift within 0.004 and a std within 0.0012 of the whole pool's (1 % of
#: the latent std), and encoding all of them took 30 s of its stage 0 on the 2-core machine
STATS_IMAGES = 4096


@torch.no_grad()
def _latent_stats(vae: AutoencoderKL, pool: torch.Tensor, seed: int,
                  max_images: int = STATS_IMAGES) -> tuple[list[float], float]:
    """Per-channel mean of the posterior samples of ``pool`` (at most ``max_images`` of them, a seeded random
    subset) and the std of the centred latents."""
    g = torch.Generator().manual_seed(seed)
    if len(pool) > max_images:
        pool = pool[torch.randperm(len(pool), generator=g)[:max_images].sort().values]
    z = torch.cat([vae.encode(part).latent_dist.sample(generator=g) for part in pool.split(64)]).float()
    mean = z.mean(dim=(0, 2, 3))
    return mean.tolist(), float((z - mean.view(1, -1, 1, 1)).std())


def _save_recon_grid(vae: AutoencoderKL, pool: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        x = pool[:: max(1, len(pool) // 8)][:8]
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    save_image_grid([list((x + 1) / 2), list(((y + 1) / 2).clamp(0, 1))], path, row_labels=["input", "recon"])


def train_vae(run: RunConfig, cfg: TWGTMConfig, dataset, accelerator) -> Path:
    """Fit the VAE of ``cfg.vae`` on ``dataset``; returns the path of ``vae.safetensors``.

    Runs on every process of ``accelerator`` (DDP); the files are written by the main process.
    """
    s0 = run.stage0
    out = run.output_path / "stage0"
    final = out / _VAE_FILE
    if final.is_file():
        logger.info("stage 0: %s exists, skipping", final)
        return final
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoint"

    # 1. data and model
    pool = vae_image_pool(dataset)  # (N, 3, H, W)
    g_val = torch.Generator().manual_seed(run.seed + 17)
    val_idx = torch.randperm(len(pool), generator=g_val)[: min(64, max(1, len(pool) // 8))]
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[val_idx] = False
    val, pool = pool[val_idx], pool[keep]  # a few held-out images select the best weights
    torch.manual_seed(run.seed)
    vae = AutoencoderKL(**cfg.vae)
    if s0.init == "lowpass":
        identity_init_vae(vae, upsampling=s0.upsampling)
    opt = torch.optim.AdamW(vae.parameters(), lr=s0.lr, weight_decay=0.0)
    start = 0
    if (ckpt_dir / "state.json").is_file():  # resume
        state = json.loads((ckpt_dir / "state.json").read_text())
        vae.load_state_dict(load_file(str(ckpt_dir / "vae.safetensors")))
        opt.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True))
        start = int(state["step"])
        logger.info("stage 0: resuming from step %d", start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, s0.warmup_steps)) *
                                              (0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, s0.max_steps))))))
    for _ in range(start):
        sched.step()
    handler = getattr(accelerator, "ddp_handler", None)  # every VAE parameter gets a gradient: no search
    unused = getattr(handler, "find_unused_parameters", None)
    if handler is not None:
        handler.find_unused_parameters = False
    objective, opt = accelerator.prepare(_Reconstruction(vae), opt)
    if handler is not None:
        handler.find_unused_parameters = unused
    rank, world = accelerator.process_index, accelerator.num_processes

    # 2. loop
    log_path = out / "log.csv"
    if accelerator.is_main_process and start == 0:
        log_path.write_text("step,loss,l1,mse,kl,lr,seconds\n")
    objective.train()
    f = 2 ** (len(cfg.vae["block_out_channels"]) - 1)
    latent_hw = (pool.shape[-2] // f, pool.shape[-1] // f)
    t0 = time.perf_counter()
    progress = progress_bar(accelerator, start, s0.max_steps, "stage 0 (VAE)")
    best = (_val_l1(accelerator.unwrap_model(objective).vae, val), start,
            {k: v.detach().clone() for k, v in accelerator.unwrap_model(objective).vae.state_dict().items()})
    for step in range(start, s0.max_steps):
        idx = _batch_indices(len(pool), s0.batch_size * world, run.seed, step)[rank::world]
        x = pool[idx].to(accelerator.device)
        g = torch.Generator().manual_seed(run.seed * 7919 + step * world + rank)
        noise = torch.randn((x.shape[0], cfg.latent_channels, *latent_hw), generator=g).to(x.device)
        y, kl = objective(x, noise)
        l1 = F.l1_loss(y.float(), x)
        mse = F.mse_loss(y.float(), x)
        kl = kl.float().mean() / x[0].numel()  # per pixel
        loss = l1 + mse + s0.kl_weight * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        progress.update(1)
        if accelerator.is_main_process and (done % s0.log_every == 0 or done == s0.max_steps):
            with log_path.open("a") as f:
                f.write(f"{done},{loss.item():.6f},{l1.item():.6f},{mse.item():.6f},{kl.item():.6f},"
                        f"{sched.get_last_lr()[0]:.6g},{time.perf_counter() - t0:.2f}\n")
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if done % s0.eval_every == 0 or done == s0.max_steps:
            raw = accelerator.unwrap_model(objective).vae
            v = _val_l1(raw, val)
            if v < best[0]:
                best = (v, done, {k: t.detach().clone() for k, t in raw.state_dict().items()})
            objective.train()
        if done % s0.checkpoint_every == 0 and done < s0.max_steps and accelerator.is_main_process:
            ckpt_dir.mkdir(exist_ok=True)
            raw = accelerator.unwrap_model(objective).vae
            save_file({k: v.detach().cpu().contiguous() for k, v in raw.state_dict().items()},
                      str(ckpt_dir / "vae.safetensors"))
            torch.save(opt.state_dict(), ckpt_dir / "optimizer.pt")
            (ckpt_dir / "state.json").write_text(json.dumps({"step": done}))
    progress.close()

    # 3. keep the best weights, freeze, scale, save
    raw = accelerator.unwrap_model(objective).vae.eval()
    raw.load_state_dict(best[2])
    logger.info("stage 0: validation L1 %.4f at step %d (kept)", best[0], best[1])
    if accelerator.is_main_process:
        shift, std = _latent_stats(raw, pool.to(accelerator.device), run.seed)
        scale = 1.0 / max(std, 1e-6)
        _save_vae(raw, final, scale, shift, s0.max_steps)
        _save_recon_grid(raw, pool.to(accelerator.device), out / "recon.png")
        logger.info("stage 0: VAE saved to %s (latent shift %s, std %.4f, scaling factor %.4f, %.1f s)", final,
                    [round(v, 4) for v in shift], std, scale,
                    time.perf_counter() - t0)
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return final

