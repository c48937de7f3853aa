"""The TWGTM network: VAE + UNet with Extended Attention + SAM + SRM (+ Decoder), and its training loss.

``TWGTMModel`` owns every component; :class:`twgtm.pipeline.TWGTMPipeline` runs inference on it and
``training/`` optimises :meth:`TWGTMModel.compute_loss`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from .attention import add_extended_attention, extended_processors, precompute_srm_kv, set_plain_processors
from .config import PREDICTION_TYPES, TWGTMConfig
from .errors import ConfigError
from .latents import LatentCondition, build_condition, concat_halves, sample_square_region, split_halves, unet_input
from .losses import diffusion_loss, mask_loss
from .sam import SAMOutput, SemanticAbstractionModule, build_clip_text
from .srm import SpatialRefinementModule, SRMDecoder, SRMOutput

logger = logging.getLogger(__name__)


@dataclass
class ReferenceFeatures:
    """Step-independent features of the reference image, computed once per call."""

    sam: SAMOutput                       # F_SAM (B, 1+N, D) and parts
    srm: SRMOutput | None                # TaskFormer outputs (TFQ, mask logits)
    f_srm: dict[int, torch.Tensor] | None  # Decoder output per UNet level (stage 2), (B, T_l, C_l)


def _is_unet_transformer(name: str) -> bool:
    """UNet Transformer2D modules (attn1, attn2, ff, norms, proj_in/out) live under ``*.attentions.*``."""
    return ".attentions." in name


class TWGTMModel(nn.Module):
    """All TWGTM modules. Build from a config (random weights) or pass pretrained base components.

    Args:
        config: the model configuration; ``config.stage`` selects stage 1 (no Extended Attention or
            Decoder) or stage 2.
        vae, unet, clip_vision: optional pretrained base components (otherwise random from the config).
        text_encoder, tokenizer: used once to fill the cached category prompts. When omitted the
            prompts are left unbuilt unless ``random_prompts`` is True, in which case a seeded random
            CLIP text encoder encodes them (toy models only: the synthetic preset and tests).
    """

    def __init__(
        self,
        config: TWGTMConfig,
        *,
        vae: AutoencoderKL | None = None,
        unet: UNet2DConditionModel | None = None,
        clip_vision: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer=None,
        random_prompts: bool = False,
    ):
        super().__init__()
        config.validate()
        self.config = config
        self.vae = vae if vae is not None else AutoencoderKL(**config.vae)
        self.unet = unet if unet is not None else UNet2DConditionModel(**config.unet)
        self.sam = SemanticAbstractionModule(config, clip_vision=clip_vision)
        self.srm = SpatialRefinementModule(config)
        self.decoder: SRMDecoder | None = None
        set_plain_processors(self.unet)
        self.vae.requires_grad_(False)
        self.vae.eval()
        if text_encoder is not None:
            self.sam.prompts.build(text_encoder, tokenizer)
        elif random_prompts:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.sam.prompts.build(build_clip_text(config), None)
        if config.stage == 2:
            self._add_stage2_modules()

    # ------------------------------------------------------------------ stages
    @property
    def stage(self) -> int:
        return 2 if self.decoder is not None else 1

    def _add_stage2_modules(self) -> None:
        device, dtype = self.device, self.dtype
        self.decoder = SRMDecoder(self.config).to(device=device, dtype=dtype)
        add_extended_attention(self.unet)

    def enable_stage2(self) -> None:
        """Stage 1 -> stage 2: create the Decoder and the Extended Attention processors.

        ZLL starts at zero, so the model's output right after this call equals stage 1's.
        """
        if self.decoder is not None:
            return
        self._add_stage2_modules()
        self.config.stage = 2

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen, always in eval mode
        return self

    # ------------------------------------------------------------------ trainable sets (spec 1.6)
    def parameter_groups(self, *, lr_unet: float = 1e-5, lr_new: float = 1e-4, lr_swin: float = 1e-5) -> list[dict]:
        """Set ``requires_grad`` for the current stage and return AdamW parameter groups.

        Frozen: VAE, CLIP image encoder, UNet conv_in / resnets / time embedding / conv_out.
        Trained: UNet Transformer2D modules, Q-Former, Swin, pixel decoder, TaskFormer and heads,
        and in stage 2 the Decoder and the Extended Attention projections and ZLL.
        """
        self.requires_grad_(False)
        unet_tf, ea = [], []
        for name, p in self.unet.named_parameters():
            if ".processor." in name:
                ea.append(p)
            elif _is_unet_transformer(name):
                unet_tf.append(p)
        swin = list(self.srm.swin.parameters())
        swin_ids = {id(p) for p in swin}
        srm_rest = [p for p in self.srm.parameters() if id(p) not in swin_ids]
        groups = [
            {"name": "unet_transformer", "params": unet_tf, "lr": lr_unet},
            {"name": "qformer", "params": list(self.sam.qformer.parameters()), "lr": lr_new},
            {"name": "swin", "params": swin, "lr": lr_swin},
            {"name": "srm", "params": srm_rest, "lr": lr_new},
        ]
        if self.decoder is not None:
            groups.append({"name": "decoder", "params": list(self.decoder.parameters()), "lr": lr_new})
            groups.append({"name": "extended_attention", "params": ea, "lr": lr_new})
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        return groups

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The parts a training run changes (everything but the frozen base components), plus the
        cached category prompts. This is what a TWGTM ``.safetensors`` file holds."""
        sd = self.state_dict()
        out = {}
        for k, v in sd.items():
            if k.startswith("vae.") or k.startswith("sam.clip_vision."):
                continue
            if k.startswith("unet.") and not (_is_unet_transformer(k)):
                continue
            out[k] = v
        return out

    # ------------------------------------------------------------------ encode / decode
    def encode_images(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
                      sample: bool = False, chunk: int = 1) -> torch.Tensor:
        """VAE-encode pixels in [-1, 1] (B, 3, H, W) to scaled latents (B, 4, H/8, W/8).

        ``chunk`` images at a time keep the encoder's activation memory small. ``sample`` draws from
        the posterior (training); otherwise the posterior mean is used (deterministic inference).
        """
        vae_dtype = next(self.vae.parameters()).dtype
        outs = []
        for part in x.split(max(1, chunk)):
            dist = self.vae.encode(part.to(vae_dtype)).latent_dist
            z = dist.sample(generator=generator) if sample else dist.mode()
            outs.append((z - self._latent_shift(z)) * self.config.scaling_factor)
        return torch.cat(outs)

    def _latent_shift(self, z: torch.Tensor) -> torch.Tensor | float:
        """``config.shift_factor`` as a number or a (1, C, 1, 1) tensor on ``z``'s device and dtype."""
        sf = self.config.shift_factor
        if isinstance(sf, (list, tuple)):
            return torch.tensor(sf, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        return float(sf)

    def decode_latents(self, z: torch.Tensor, *, chunk: int = 1) -> torch.Tensor:
        """Scaled latents (B, 4, h, w) -> pixels in [-1, 1] (B, 3, 8h, 8w), ``chunk`` at a time."""
        vae_dtype = next(self.vae.parameters()).dtype
        outs = []
        for part in z.split(max(1, chunk)):
            part = part.to(vae_dtype) / self.config.scaling_factor
            outs.append(self.vae.decode(part + self._latent_shift(part)).sample)
        return torch.cat(outs)

    def encode_reference(self, reference: torch.Tensor, category_idx: torch.Tensor, *, with_srm: bool | None = None) -> ReferenceFeatures:
        """F_SAM, and in stage 2 (or when asked) the SRM outputs and the Decoder features F_SRM."""
        sam_out = self.sam(reference, category_idx)
        if with_srm is None:
            with_srm = self.decoder is not None
        if not with_srm:
            return ReferenceFeatures(sam=sam_out, srm=None, f_srm=None)
        srm_out = self.srm(reference, sam_out.f_qf)
        f_srm = self.decoder(srm_out.tfq) if self.decoder is not None else None
        return ReferenceFeatures(sam=sam_out, srm=srm_out, f_srm=f_srm)

    def predict_noise(self, latent_input: torch.Tensor, timestep: torch.Tensor, f_sam: torch.Tensor, *,
                      f_srm: dict[int, torch.Tensor] | None = None, srm_gate=None, srm_rows: slice | None = None,
                      srm_kv: dict | None = None) -> torch.Tensor:
        """One UNet call on the 9-channel input (B, 9, h, 2w) -> (B, 4, h, 2w): the noise, or the velocity or
        clean latent when ``config.scheduler["prediction_type"]`` says so (the schedulers read the same key)."""
        kwargs = None
        if self.decoder is not None and (f_srm is not None or srm_kv is not None):
            kwargs = {"srm": f_srm, "srm_gate": srm_gate, "srm_rows": srm_rows, "srm_kv": srm_kv}
        return self.unet(latent_input, timestep, encoder_hidden_states=f_sam,
                         cross_attention_kwargs=kwargs, return_dict=False)[0]

    def precompute_srm_kv(self, f_srm: dict[int, torch.Tensor]) -> dict:
        """K'/V' of every Extended Attention processor, computed once per call."""
        return precompute_srm_kv(self.unet, f_srm)

    def extended_attention_processors(self) -> dict:
        return extended_processors(self.unet)

    # ------------------------------------------------------------------ training loss (eq. 14-16)
    def compute_loss(self, batch: dict, noise_scheduler: DDPMScheduler, *, generator: torch.Generator | None = None,
                     vtoff_prob: float = 0.5) -> dict[str, torch.Tensor]:
        """Loss for one batch of pairs; every sample is a try-on or a try-off sample (50/50).

        ``batch`` holds ``person``, ``garment`` (B, 3, H, W) in [-1, 1], ``person_mask`` and
        ``garment_mask`` (B, 1, H, W) in {0, 1} and ``category_idx`` (B,). Random draws (task, CFG
        drop, stage-2 regions, VAE posterior, noise, timesteps) come from ``generator`` on the CPU so
        a run is reproducible on any device.
        """
        cfg = self.config
        dev = self.device
        person = batch["person"].to(dev, torch.float32)
        garment = batch["garment"].to(dev, torch.float32)
        person_mask = batch["person_mask"].to(dev, torch.float32)
        garment_mask = batch["garment_mask"].to(dev, torch.float32)
        cat_idx = batch["category_idx"].to(dev).long()
        b = person.shape[0]

        def rand(*shape):
            return torch.rand(*shape, generator=generator).to(dev)

        vtoff = rand(b) < vtoff_prob                                     # (B,) task per sample
        drop = rand(b) < cfg.cfg_dropout                                 # (B,) CFG dropout
        sel = vtoff.view(-1, 1, 1, 1)
        target = torch.where(sel, garment, person)
        reference = torch.where(sel, person, garment)
        if self.stage == 1:
            vtoff_region = garment_mask
        else:
            vtoff_region = sample_square_region(garment_mask.cpu(), generator, reference_height=1024).to(dev)
        region = torch.where(sel, vtoff_region, person_mask)

        def encode(x):  # E(x) = posterior sample x 0.18215 (frozen VAE, no graph)
            with torch.no_grad():
                return self.encode_images(x.to(self.dtype), generator=generator, sample=True, chunk=x.shape[0]).float()

        cond = build_condition(target, reference, region, encode, concat_dim=cfg.concat_dim, with_z0=True)
        keep = (~drop).float().view(-1, 1, 1, 1)
        tgt, ref = split_halves(cond.guidance, cfg.concat_dim)
        cond = LatentCondition(guidance=concat_halves(tgt, ref * keep, cfg.concat_dim), mask=cond.mask, z0=cond.z0)

        noise = torch.randn(cond.z0.shape, generator=generator).to(dev)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(dev)
        z_t = noise_scheduler.add_noise(cond.z0, noise, t)

        dtype = self.dtype
        mask_w = cfg.loss.mask_weight if self.stage == 1 else cfg.loss.stage2_mask_weight
        need_srm = self.stage == 2 or (mask_w > 0 and bool(vtoff.any()))
        feats = self.encode_reference(reference.to(dtype), cat_idx, with_srm=need_srm)
        f_sam = feats.sam.f_sam * keep.view(-1, 1, 1).to(dtype)
        pred = self.predict_noise(unet_input(z_t.to(dtype), cond), t, f_sam,
                                  f_srm=feats.f_srm, srm_gate=(~drop).to(dtype))
        kind = noise_scheduler.config.prediction_type  # SD1.5: epsilon; the synthetic toy: sample (x0)
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = noise_scheduler.get_velocity(cond.z0, noise, t)
        elif kind == "sample":
            target = cond.z0
        else:
            raise ConfigError(f"scheduler.prediction_type: expected one of {PREDICTION_TYPES}, got {kind!r}")
        l_diff = diffusion_loss(pred, target, region=cfg.loss.loss_region, concat_dim=cfg.concat_dim)
        if need_srm and mask_w > 0:
            l_mask = mask_loss(feats.srm.tfq0_logits, garment_mask, vtoff,
                               dice_weight=cfg.loss.dice_weight, bce_weight=cfg.loss.bce_weight)
        else:
            l_mask = l_diff.new_zeros(())
        return {"loss": l_diff + mask_w * l_mask, "diffusion": l_diff.detach(), "mask": l_mask.detach(),
                "vtoff_fraction": vtoff.float().mean()}
