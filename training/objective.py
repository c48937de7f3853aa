"""The training objective (paper eq. 14-16, spec 1.5-1.6): task and region sampling, noising, the loss,
and which parameters train. The model library (``twgtm/``) keeps only what inference needs.

Every sample of a batch is a try-on or a try-off sample (``vtoff_prob``). Try-on: target = person,
reference = garment, region = the agnostic mask. Try-off: target = garment, reference = person, region =
the flat-garment mask in stage 1 and a sampled "square-shaped" region in stage 2 (gap #29). The CFG drop
zeroes the reference latent half, F_SAM and the SRM gate of a sample together (CatVTON). The loss is the
diffusion loss on the scheduler's prediction type, plus in stage 1 (and in stage 2 when
``stage2_mask_weight`` > 0) the deep-supervised dice + BCE on TFQ_0 for try-off samples.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler

from twgtm.attention import SpatialGate, model_output
from twgtm.components import TWGTMComponents, is_unet_transformer
from twgtm.config import PREDICTION_TYPES
from twgtm.errors import ConfigError
from twgtm.latents import (LatentCondition, build_condition, concat_halves, dilate, erode, mask_to_box, split_halves,
                           task_gate, unet_input, vae_encode)

from .losses import diffusion_loss, mask_loss

#: the stage-2 region sampler's kernel sizes are given at this image height and scaled to the data's
REGION_REFERENCE_HEIGHT = 1024


def _odd(x: float) -> int:
    k = max(1, int(round(x)))
    return k if k % 2 == 1 else k + 1


def sample_square_region(
    garment_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    p_box: float = 0.5,
    p_full: float = 0.1,
    erode_range: tuple[int, int] = (1, 15),
    dilate_range: tuple[int, int] = (33, 129),
    reference_height: int = REGION_REFERENCE_HEIGHT,
) -> torch.Tensor:
    """Stage-2 "square-shaped" inpainting region R per sample (spec 1.1, gap #29).

    ``R = dilate_sq(erode_sq(M_c, k_e), k_d) | M_c``; with probability ``p_box`` R becomes its
    bounding box and with ``p_full`` the whole canvas (the full-canvas share covers mask-free
    inference). Kernel sizes are given at ``reference_height`` px and scaled to the mask height; they
    stay odd.
    """
    b, _, hgt, _ = garment_mask.shape
    scale = hgt / reference_height
    m = (garment_mask > 0.5).float()
    out = []
    for i in range(b):
        r = torch.rand(3, generator=generator)
        mi = m[i:i + 1]
        if r[0] < p_full:
            out.append(torch.ones_like(mi))
            continue
        ke = erode_range[0] + 2 * int(r[1] * ((erode_range[1] - erode_range[0]) // 2 + 1))
        kd = dilate_range[0] + 2 * int(r[2] * ((dilate_range[1] - dilate_range[0]) // 2 + 1))
        ke, kd = _odd(min(ke, erode_range[1]) * scale), _odd(min(kd, dilate_range[1]) * scale)
        region = torch.maximum(dilate(erode(mi, ke), kd), mi)
        if torch.rand(1, generator=generator) < p_box / max(1e-8, 1.0 - p_full):
            region = torch.maximum(mask_to_box(region, margin=0.0), mi)
        out.append(region)
    return torch.cat(out).to(garment_mask.dtype)


class TrainingObjective(nn.Module):
    """The loss of one batch as a ``forward``, so DDP/accelerate see one call per micro-batch.

    Holds the components being trained (UNet, reference encoder) and the frozen VAE as submodules.
    ``forward(batch, seed)``: ``batch`` holds ``person``, ``garment`` (B, 3, H, W) in [-1, 1],
    ``person_mask`` and ``garment_mask`` (B, 1, H, W) in {0, 1} and ``category_idx`` (B,); every random
    draw of the objective (task, CFG drop, stage-2 regions, VAE posterior, noise, timesteps) comes from a
    CPU generator seeded with ``seed``, so a run is reproducible on any device.
    """

    def __init__(self, components: TWGTMComponents, noise_scheduler: DDPMScheduler, *, vtoff_prob: float = 0.5,
                 region_reference_height: int = REGION_REFERENCE_HEIGHT):
        super().__init__()
        if components.reference_encoder is None:
            raise ConfigError("components: expected a reference encoder to train, got the baseline (None)")
        self.components = components
        self.unet = components.unet
        self.vae = components.vae
        self.reference_encoder = components.reference_encoder
        self.noise_scheduler = noise_scheduler
        self.vtoff_prob = vtoff_prob
        self.region_reference_height = region_reference_height

    @property
    def config(self):
        return self.components.config

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen, always in eval mode
        return self

    def forward(self, batch: dict, seed: int, mask_only: bool = False) -> dict[str, torch.Tensor]:
        return self.compute_loss(batch, generator=torch.Generator().manual_seed(seed), mask_only=mask_only)

    def _mask_loss(self, feats, garment_mask: torch.Tensor, vtoff: torch.Tensor) -> torch.Tensor:
        """Eq. 15 on every unit's TFQ_0, for the samples ``vtoff`` marks (the joint step and the warm-up)."""
        loss = self.config.loss
        return mask_loss(feats.srm.tfq0_logits, garment_mask, vtoff, dice_weight=loss.dice_weight,
                         bce_weight=loss.bce_weight)

    def mask_only_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Stage 1's mask warm-up (``stage1.mask_warmup_steps``): every sample is a try-off sample and only the
        garment-mask loss on TFQ_0 trains the reference encoder; the UNet and the VAE are not run.

        Why: trained jointly from the start, the TaskFormer stays on the plateau where its mask ignores the
        category (docs/TRAINING.md); trained on the mask alone it leaves it after a few hundred cheap steps."""
        if self.components.stage != 1:
            raise ConfigError(f"mask_only: expected stage 1 (the mask warm-up), got stage {self.components.stage}")
        self.reference_encoder.require_srm("stage1.mask_warmup_steps")
        dev, dtype = self.reference_encoder.device, self.reference_encoder.dtype
        person = batch["person"].to(dev, dtype)
        garment_mask = batch["garment_mask"].to(dev, torch.float32)
        cat_idx = batch["category_idx"].to(dev).long()
        every = torch.ones(person.shape[0], dtype=torch.bool, device=dev)
        feats = self.reference_encoder(person, cat_idx, with_srm=True)
        l_mask = self._mask_loss(feats, garment_mask, every)
        zero = l_mask.detach().new_zeros(())
        return {"loss": l_mask, "diffusion": zero, "mask": l_mask.detach(), "vtoff_fraction": every.float().mean()}

    def compute_loss(self, batch: dict, *, generator: torch.Generator | None = None,
                     mask_only: bool = False) -> dict[str, torch.Tensor]:
        if mask_only:
            return self.mask_only_loss(batch)
        cfg = self.config
        dev = next(self.unet.parameters()).device
        dtype = next(self.unet.parameters()).dtype
        person = batch["person"].to(dev, torch.float32)
        garment = batch["garment"].to(dev, torch.float32)
        person_mask = batch["person_mask"].to(dev, torch.float32)
        garment_mask = batch["garment_mask"].to(dev, torch.float32)
        cat_idx = batch["category_idx"].to(dev).long()
        b = person.shape[0]
        stage = self.components.stage

        def rand(*shape):
            return torch.rand(*shape, generator=generator).to(dev)

        vtoff = rand(b) < self.vtoff_prob                                # (B,) task per sample
        drop = rand(b) < cfg.cfg_dropout                                 # (B,) CFG dropout
        sel = vtoff.view(-1, 1, 1, 1)
        target_image = torch.where(sel, garment, person)
        reference = torch.where(sel, person, garment)
        if stage == 1:
            vtoff_region = garment_mask
        else:
            vtoff_region = sample_square_region(garment_mask.cpu(), generator,
                                                reference_height=self.region_reference_height).to(dev)
        region = torch.where(sel, vtoff_region, person_mask)

        def encode(x):  # E(x) = posterior sample, shifted and scaled (frozen VAE, no graph)
            with torch.no_grad():
                return vae_encode(self.vae, x.to(dtype), cfg, generator=generator, sample=True, chunk=x.shape[0]).float()

        cond = build_condition(target_image, reference, region, encode, concat_dim=cfg.concat_dim, with_z0=True)
        keep = (~drop).float().view(-1, 1, 1, 1)
        tgt, ref = split_halves(cond.guidance, cfg.concat_dim)
        cond = LatentCondition(guidance=concat_halves(tgt, ref * keep, cfg.concat_dim), mask=cond.mask, z0=cond.z0)

        noise = torch.randn(cond.z0.shape, generator=generator).to(dev)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(dev)
        z_t = self.noise_scheduler.add_noise(cond.z0, noise, t)

        # the mask loss needs TFQ_0: a model without an SRM (ablation Variant 1) has neither
        mask_w = (cfg.loss.mask_weight if stage == 1 else cfg.loss.stage2_mask_weight) if cfg.use_srm else 0.0
        need_srm = cfg.use_srm and (stage == 2 or (mask_w > 0 and bool(vtoff.any())))
        feats = self.reference_encoder(reference.to(dtype), cat_idx, with_srm=need_srm)
        f_sam = feats.sam.f_sam * keep.view(-1, 1, 1).to(dtype)
        srm_mask = None
        if feats.f_srm is not None:  # stage 2: the task gate, the given try-on mask or the predicted TFQ_0
            predicted = feats.srm.tfq[:, :1].detach().float()  # (B, 1, H/4, W/4), sigmoid(TFQ_0 logits)
            predicted = F.interpolate(predicted, size=person_mask.shape[-2:], mode="bilinear", align_corners=False)
            gate = torch.where(sel, predicted, person_mask)
            half = split_halves(cond.mask, cfg.concat_dim)[0].shape[-2:]  # (h, w) of one latent half
            srm_mask = SpatialGate(task_gate(gate, half, cfg.concat_dim).to(dtype))
        pred = model_output(self.unet, unet_input(z_t.to(dtype), cond), t, f_sam,
                            f_srm=feats.f_srm, srm_gate=(~drop).to(dtype), srm_mask=srm_mask)
        kind = self.noise_scheduler.config.prediction_type  # SD1.5: epsilon; the synthetic toy: sample (x0)
        if kind == "epsilon":
            loss_target = noise
        elif kind == "v_prediction":
            loss_target = self.noise_scheduler.get_velocity(cond.z0, noise, t)
        elif kind == "sample":
            loss_target = cond.z0
        else:
            raise ConfigError(f"scheduler.prediction_type: expected one of {PREDICTION_TYPES}, got {kind!r}")
        l_diff = diffusion_loss(pred, loss_target, region=cfg.loss.loss_region, concat_dim=cfg.concat_dim)
        if need_srm and mask_w > 0:
            l_mask = self._mask_loss(feats, garment_mask, vtoff)
        else:
            l_mask = l_diff.new_zeros(())
        return {"loss": l_diff + mask_w * l_mask, "diffusion": l_diff.detach(), "mask": l_mask.detach(),
                "vtoff_fraction": vtoff.float().mean()}


def spec_parameter_groups(components: TWGTMComponents, *, lr_unet: float = 1e-5, lr_new: float = 1e-4,
                          lr_swin: float = 1e-5) -> list[dict]:
    """Set ``requires_grad`` for the current stage and return AdamW parameter groups (spec 1.6).

    Frozen: VAE, CLIP image encoder, UNet conv_in / resnets / time embedding / conv_out.
    Trained: UNet Transformer2D modules, Q-Former, Swin, pixel decoder, TaskFormer and heads,
    and in stage 2 the Decoder and the Extended Attention projections and ZLL.
    """
    ref = components.reference_encoder
    for m in components.modules().values():
        m.requires_grad_(False)
    unet_tf, ea = [], []
    for name, p in components.unet.named_parameters():
        if ".processor." in name:
            ea.append(p)
        elif is_unet_transformer(name):
            unet_tf.append(p)
    # ablation variants: no SRM (Variant 1) leaves the swin and srm groups empty; no Q-Former (Variant 8) trains
    # the SAM's width projections, if the widths differ, in its place
    swin = list(ref.srm.swin.parameters()) if ref.srm is not None else []
    swin_ids = {id(p) for p in swin}
    srm_rest = [p for p in ref.srm.parameters() if id(p) not in swin_ids] if ref.srm is not None else []
    sam = ref.sam
    sam_trained = [sam.qformer] if sam.qformer is not None else \
        [m for m in (sam.vision_proj, sam.text_proj) if m is not None]
    groups = [
        {"name": "unet_transformer", "params": unet_tf, "lr": lr_unet},
        {"name": "qformer" if sam.qformer is not None else "sam_projection",
         "params": [p for m in sam_trained for p in m.parameters()], "lr": lr_new},
        {"name": "swin", "params": swin, "lr": lr_swin},
        {"name": "srm", "params": srm_rest, "lr": lr_new},
    ]
    if ref.decoder is not None:
        groups.append({"name": "decoder", "params": list(ref.decoder.parameters()), "lr": lr_new})
        groups.append({"name": "extended_attention", "params": ea, "lr": lr_new})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    return groups
