"""Configuration dataclasses for TWGTM.

Every field carries a one-line reason. Two presets:

* ``TWGTMConfig.full()``: SD1.5-inpainting shapes, CLIP ViT-L/14, Swin-B, Q-Former N=32,
  TaskFormer K=32, U=3 (``shared/design/ARCHITECTURE.md`` section 3, "Full").
* ``TWGTMConfig.tiny()``: under 5M parameters, 64x48 images, every code path kept
  (CPU tests, the synthetic main job, the example workflows).

Configs round-trip through JSON (``to_json`` / ``from_json``); the trained ``.safetensors``
file stores this JSON in its metadata.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# Canonical category names, and the aliases users and datasets use for them.
CATEGORIES: tuple[str, ...] = ("upper", "lower", "dress")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what the UNet predicts; SD1.5: epsilon
SRM_FUSIONS = ("extended_attention", "concat")  # TWGTMConfig.srm_fusion: eq. 13 (the paper) or Variant 6
CATEGORY_ALIASES: dict[str, str] = {
    "upper": "upper", "upper_body": "upper", "upper garment": "upper", "top": "upper", "tops": "upper",
    "lower": "lower", "lower_body": "lower", "lower garment": "lower", "bottom": "lower", "bottoms": "lower",
    "dress": "dress", "dresses": "dress", "overall": "dress", "full": "dress",
}


def canonical_category(value: str) -> str:
    """Map a user/dataset category name to one of :data:`CATEGORIES`, or raise."""
    if not isinstance(value, str):
        raise ConfigError(f"category: expected a string among {CATEGORIES}, got {type(value).__name__} {value!r}")
    key = value.strip().lower()
    if key not in CATEGORY_ALIASES:
        raise ConfigError(f"category: expected one of {CATEGORIES} (or an alias such as 'upper_body'), got {value!r}")
    return CATEGORY_ALIASES[key]


# --- field checks (configs come from files: every value is checked before it is used) ------------
def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _fail(name: str, expected: str, value: Any) -> None:
    raise ConfigError(f"{name}: expected {expected}, got {_show(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bounds(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def _int(name: str, value: Any, *, lo: int | None = None, hi: int | None = None, choices: tuple = (),
         expected: str | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi) and (not choices or value in choices)
    if not ok:
        _fail(name, expected or ("one of " + ", ".join(map(str, choices)) if choices
                                 else f"an integer {_bounds(lo, hi)}".rstrip()), value)
    return value


def _num(name: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False) -> float:
    ok = _is_number(value) and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        _fail(name, f"a finite number {_bounds(lo, hi, lo_open, hi_open)}".rstrip(), value)
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(name, "true or false", value)
    return value


def _str(name: str, value: Any, *, choices: tuple = ()) -> str:
    if not isinstance(value, str) or not value or (choices and value not in choices):
        _fail(name, f"one of {choices}" if choices else "a non-empty string", value)
    return value


def _obj(name: str, value: Any, *, what: str = "a mapping with string keys") -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        _fail(name, what, value)
    return value


def _key(mapping: dict[str, Any], name: str, key: str) -> Any:
    if key not in mapping:
        raise ConfigError(f"{name}: expected a {key!r} entry, got keys {sorted(mapping)}")
    return mapping[key]


def _seq(name: str, value: Any, *, min_len: int = 0, max_len: int | None = None) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) < min_len or (max_len is not None and len(value) > max_len):
        size = f"{min_len}" if max_len == min_len else f"at least {min_len}"
        _fail(name, f"a list of {size} values", value)
    return tuple(value)


def _int_seq(name: str, value: Any, *, min_len: int = 0, max_len: int | None = None, lo: int | None = None) -> tuple:
    items = _seq(name, value, min_len=min_len, max_len=max_len)
    for i, v in enumerate(items):
        _int(f"{name}[{i}]", v, lo=lo)
    return items


def _tuples(mapping: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists where the constructors' configs hold tuples: one form, so configs compare equal."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}


@dataclass
class QFormerConfig:
    hidden_size: int = 768        # D: one width for CLIP tokens, queries and the UNet cross-attention (spec 1.2)
    num_heads: int = 12           # BLIP-2 / InstructBLIP head count at width 768
    num_layers: int = 4           # trained from scratch, so 4 layers (about 57M) instead of BLIP-2's 12
    ffn_dim: int = 3072           # 4x width, BERT layout
    num_queries: int = 32         # N learnable queries, as BLIP-2
    text_dim: int = 768           # width of the frozen CLIP text encoder's hidden states
    vision_dim: int = 768         # width of the projected CLIP image tokens F_CLIP.S


@dataclass
class TaskFormerConfig:
    hidden_dim: int = 256         # d: Mask2Former decoder width
    num_heads: int = 8            # Mask2Former default
    ffn_dim: int = 2048           # Mask2Former default
    num_queries: int = 32         # K: number of TFQ channels handed to the Decoder
    num_units: int = 3            # U: 3 units x 3 blocks = Mask2Former's 9 layers over 3 levels
    pixel_decoder: str = "fpn"    # "fpn" (Mask2Former-like fused 1/4 features) or "linear" (paper-literal 1x1 on H1)
    mask_threshold: float = 0.5   # attention-mask threshold on sigmoid probabilities (mask_mode "hard")
    mask_mode: str = "soft"       # "soft": scores + log M, so M^1/M^2 learn (docs/DESIGN.md); "hard": Mask2Former's detached M < thr


@dataclass
class DecoderConfig:
    width: int = 256              # conv/transformer width of the lightweight per-level Decoder (eq. 12)
    num_heads: int = 4            # BasicTransformerBlock heads
    head_dim: int = 64            # BasicTransformerBlock head size (heads x head_dim = width)


@dataclass
class SwinConfig:
    model_name: str = "swin_base_patch4_window12_384"  # Swin-B 384, window 12 (Mask2Former's Swin-B)
    out_indices: tuple[int, ...] = (0, 1, 2)           # stages giving strides 4, 8, 16 (H1, H2, H3)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (tiny sizes)


@dataclass
class LossConfig:
    mask_weight: float = 1.0      # lambda (eq. 14); with Adam it only moves the shared Q-Former
    dice_weight: float = 1.0      # lambda' (eq. 15); Mask2Former uses equal dice/BCE weights
    bce_weight: float = 1.0       # lambda'' (eq. 15)
    stage2_mask_weight: float = 0.0  # eq. 16 has no mask loss; set > 0 to keep TFQ_0 sharp for Mask2BBox(pred)
    loss_region: str = "full"     # "full" concatenated latent (CatVTON practice) or "target" half only


def _sd15_unet() -> dict[str, Any]:
    # stable-diffusion-v1-5/stable-diffusion-inpainting unet/config.json (diffusers defaults + 9 input channels)
    return dict(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )


def _sd_vae() -> dict[str, Any]:
    # stabilityai/sd-vae-ft-mse config.json
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32, sample_size=512,
    )


def _scheduler() -> dict[str, Any]:
    # the inpainting checkpoint's scheduler config: DDPM training, epsilon prediction
    return dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, clip_sample=False, set_alpha_to_one=False,
    )


_NESTED: dict[str, type] = {"swin": SwinConfig, "qformer": QFormerConfig, "taskformer": TaskFormerConfig,
                           "decoder": DecoderConfig, "loss": LossConfig}


@dataclass
class TWGTMConfig:
    # --- images and latents -------------------------------------------------------------------
    height: int = 1024            # model input height (VITON-HD / DressCode native, CatVTON 1024)
    width: int = 768              # model input width (3:4 portrait)
    vae_scale_factor: int = 8     # SD VAE downsampling; latent = 128x96 per half
    latent_channels: int = 4      # SD VAE latent channels
    scaling_factor: float = 0.18215  # SD1.x latent scaling
    # Latent shift subtracted before scaling, as SD3's VAE: z = (E(x) - shift) * scale. 0 for SD1.x. A float
    # or one value per latent channel; the synthetic preset's own VAE sets its per-channel latent mean so the
    # diffusion sees zero-mean latents (otherwise the signal left at t = T leaks the mean colour in
    # training that pure-noise sampling lacks: measured, see docs/TRAINING.md).
    shift_factor: Any = 0.0       # float or per-channel list (SD3 convention); SD1.x: 0
    concat_dim: int = -1          # -1: width (paper's 3xHx2W); -2: height (CatVTON / TryOffAnyone)
    # --- base components (diffusers / transformers / timm constructor kwargs) ---------------
    unet: dict[str, Any] = field(default_factory=_sd15_unet)        # SD1.5-inpainting UNet
    vae: dict[str, Any] = field(default_factory=_sd_vae)            # sd-vae-ft-mse
    clip_vision: dict[str, Any] = field(default_factory=lambda: dict(  # openai/clip-vit-large-patch14
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=768))
    clip_text: dict[str, Any] = field(default_factory=lambda: dict(    # SD1.5 text encoder (CLIP ViT-L/14 text)
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    text_max_length: int = 77     # CLIP tokenizer max length (padded)
    swin: SwinConfig = field(default_factory=SwinConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    taskformer: TaskFormerConfig = field(default_factory=TaskFormerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scheduler: dict[str, Any] = field(default_factory=_scheduler)   # DDPM training schedule
    # --- task conditioning --------------------------------------------------------------------
    categories: tuple[str, ...] = CATEGORIES  # row order of the cached prompt embeddings
    prompts: dict[str, str] = field(default_factory=lambda: {      # T_p per category (spec 1.2)
        "upper": "upper garment", "lower": "lower garment", "dress": "dress"})
    # --- training-time choices that also shape inference ------------------------------------
    loss: LossConfig = field(default_factory=LossConfig)
    cfg_dropout: float = 0.1      # p of dropping reference latent + F_SAM + SRM gate together (CatVTON)
    stage: int = 2                # 1: no Extended Attention / Decoder; 2: full model
    # --- ablation switches (docs/ABLATIONS.md; the defaults are the paper's model) ---------------
    use_srm: bool = True          # False: Variant 1, no SRM, Decoder or Extended Attention (no predicted mask)
    use_qformer: bool = True      # False: Variant 8, CLIP image + prompt tokens straight to cross-attention
    srm_fusion: str = "extended_attention"  # how F_SRM enters attn1: eq. 13's gated cross term, or "concat":
                                            # Variant 6, F_SRM tokens joined to attn1's keys/values
    # --- inference defaults --------------------------------------------------------------------
    num_inference_steps: int = 50  # CatVTON default
    guidance_scale: float = 2.5    # CatVTON default
    eta: float = 1.0               # DDIM eta used by CatVTON

    # ---------------------------------------------------------------------------------------------
    @classmethod
    def full(cls, **overrides: Any) -> "TWGTMConfig":
        """The paper's model at 1024x768 (ARCHITECTURE.md section 3, Full)."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> "TWGTMConfig":
        """Under 5M parameters at 64x48; every code path of the full model is kept."""
        cfg = cls(
            height=64, width=48,
            unet=dict(
                sample_size=8, in_channels=9, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
            ),
            vae=dict(
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                block_out_channels=(8, 8, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                norm_num_groups=4, sample_size=64,
            ),
            clip_vision=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8, projection_dim=32),
            clip_text=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                           bos_token_id=998, eos_token_id=999, pad_token_id=999),
            swin=SwinConfig(
                model_name="swin_tiny_patch4_window7_224",
                kwargs=dict(embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 4), window_size=(4, 3)),
            ),
            qformer=QFormerConfig(hidden_size=32, num_heads=4, num_layers=2, ffn_dim=64, num_queries=4,
                                  text_dim=32, vision_dim=32),
            taskformer=TaskFormerConfig(hidden_dim=32, num_heads=4, ffn_dim=64, num_queries=4, num_units=2),
            decoder=DecoderConfig(width=32, num_heads=4, head_dim=8),
        )
        return dataclasses.replace(cfg, **overrides)

    # --- derived sizes -----------------------------------------------------------------------
    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of one latent half."""
        return self.height // self.vae_scale_factor, self.width // self.vae_scale_factor

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    def level_channels(self) -> tuple[int, int, int]:
        """UNet hidden size C at attention levels 0, 1, 2 (down_blocks.i / up_blocks.3-i)."""
        ch = tuple(self.unet["block_out_channels"])
        return ch[0], ch[1], ch[2]

    def level_sizes(self) -> tuple[tuple[int, int], ...]:
        """(h, w) of the reference half at levels 0, 1, 2: ceil(h / 2^l), never hard-coded."""
        h, w = self.latent_size
        return tuple((-(-h // 2 ** lvl), -(-w // 2 ** lvl)) for lvl in range(3))

    @property
    def semantic_token_count(self) -> int:
        """Tokens of F_QF, the SAM output the SRM reads (S1): the Q-Former's N queries, or without a Q-Former
        (Variant 8) the CLIP image tokens (patches + class token) followed by the prompt's text tokens."""
        if self.use_qformer:
            return self.qformer.num_queries
        cv = self.clip_vision
        return (int(cv["image_size"]) // int(cv["patch_size"])) ** 2 + 1 + self.text_max_length

    def category_index(self, category: str) -> int:
        return self.categories.index(canonical_category(category))

    # --- validation & (de)serialisation ------------------------------------------------------
    def validate(self) -> "TWGTMConfig":
        """Type- and range-check every field (configs also come from files); normalise lists to tuples.

        Raises ConfigError naming the field, what was expected and what was received.
        """
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                _fail(name, f"a {cls.__name__}", getattr(self, name))
        self.vae_scale_factor = f = _int("vae_scale_factor", self.vae_scale_factor, lo=1)
        self.height = _int("height", self.height, lo=1)
        self.width = _int("width", self.width, lo=1)
        if self.height % f or self.width % f:
            raise ConfigError(f"height/width: expected multiples of vae_scale_factor={f}, got {self.height}x{self.width}")
        self.latent_channels = _int("latent_channels", self.latent_channels, lo=1)
        self.scaling_factor = _num("scaling_factor", self.scaling_factor, lo=0.0, lo_open=True)
        sf = self.shift_factor
        if isinstance(sf, (list, tuple)):
            if len(sf) != self.latent_channels or not all(_is_number(v) for v in sf):
                raise ConfigError(f"shift_factor: expected a number or {self.latent_channels} numbers (one per latent "
                                  f"channel), got {sf!r}")
            self.shift_factor = [float(v) for v in sf]
        elif _is_number(sf):
            self.shift_factor = float(sf)
        else:
            raise ConfigError(f"shift_factor: expected a number or a list of {self.latent_channels} numbers, got {sf!r}")
        self.concat_dim = _int("concat_dim", self.concat_dim, choices=(-1, -2),
                               expected="-1 (width) or -2 (height)")

        # base components: constructor kwargs; the keys this library reads are checked here
        self.unet = _tuples(_obj("unet", self.unet))
        for key in ("in_channels", "cross_attention_dim"):
            _int(f"unet.{key}", _key(self.unet, "unet", key), lo=1)
        _int_seq("unet.block_out_channels", _key(self.unet, "unet", "block_out_channels"), min_len=3, lo=1)
        self.vae = _tuples(_obj("vae", self.vae))
        self.clip_vision = _obj("clip_vision", self.clip_vision)
        _int("clip_vision.projection_dim", _key(self.clip_vision, "clip_vision", "projection_dim"), lo=1)
        self.clip_text = _obj("clip_text", self.clip_text)
        _int("clip_text.hidden_size", _key(self.clip_text, "clip_text", "hidden_size"), lo=1)
        self.text_max_length = _int("text_max_length", self.text_max_length, lo=2)

        sw = self.swin
        sw.model_name = _str("swin.model_name", sw.model_name)
        sw.out_indices = _int_seq("swin.out_indices", sw.out_indices, min_len=3, max_len=3, lo=0)
        sw.kwargs = _tuples(_obj("swin.kwargs", sw.kwargs))
        for sub in ("qformer", "taskformer", "decoder"):
            for fld in dataclasses.fields(getattr(self, sub)):
                if fld.type in ("int", int):
                    setattr(getattr(self, sub), fld.name, _int(f"{sub}.{fld.name}", getattr(getattr(self, sub), fld.name), lo=1))
        if self.qformer.hidden_size != self.cross_attention_dim:
            raise ConfigError(f"qformer.hidden_size: expected the UNet cross_attention_dim "
                              f"{self.cross_attention_dim}, got {self.qformer.hidden_size}")
        if self.clip_vision["projection_dim"] != self.qformer.vision_dim:
            raise ConfigError(f"clip_vision.projection_dim: expected qformer.vision_dim {self.qformer.vision_dim}, "
                              f"got {self.clip_vision['projection_dim']}")
        if self.clip_text["hidden_size"] != self.qformer.text_dim:
            raise ConfigError(f"clip_text.hidden_size: expected qformer.text_dim {self.qformer.text_dim}, "
                              f"got {self.clip_text['hidden_size']}")
        tf = self.taskformer
        tf.pixel_decoder = _str("taskformer.pixel_decoder", tf.pixel_decoder, choices=("fpn", "linear"))
        tf.mask_mode = _str("taskformer.mask_mode", tf.mask_mode, choices=("soft", "hard"))
        tf.mask_threshold = _num("taskformer.mask_threshold", tf.mask_threshold, lo=0.0, hi=1.0, lo_open=True, hi_open=True)

        self.scheduler = _obj("scheduler", self.scheduler)
        timesteps = _int("scheduler.num_train_timesteps", _key(self.scheduler, "scheduler", "num_train_timesteps"), lo=1)
        offset = _int("scheduler.steps_offset", self.scheduler.get("steps_offset", 0), lo=0)
        _str("scheduler.prediction_type", self.scheduler.get("prediction_type", "epsilon"), choices=PREDICTION_TYPES)

        self.categories = tuple(_seq("categories", self.categories, min_len=1))
        for c in self.categories:
            if not isinstance(c, str) or c.strip().lower() not in CATEGORY_ALIASES:
                _fail("categories", f"names among {CATEGORIES} (or their aliases)", self.categories)
        if len(set(self.categories)) != len(self.categories):
            _fail("categories", "distinct names", self.categories)
        self.prompts = _obj("prompts", self.prompts)
        if sorted(self.prompts) != sorted(self.categories):
            raise ConfigError(f"prompts: expected one prompt per category {self.categories}, got keys {sorted(self.prompts)}")
        for c, text in self.prompts.items():
            _str(f"prompts.{c}", text)

        loss = self.loss
        for name in ("mask_weight", "dice_weight", "bce_weight", "stage2_mask_weight"):
            setattr(loss, name, _num(f"loss.{name}", getattr(loss, name), lo=0.0))
        loss.loss_region = _str("loss.loss_region", loss.loss_region, choices=("full", "target"))
        self.cfg_dropout = _num("cfg_dropout", self.cfg_dropout, lo=0.0, hi=1.0)
        self.stage = _int("stage", self.stage, choices=(1, 2))
        self.use_srm = _bool("use_srm", self.use_srm)
        self.use_qformer = _bool("use_qformer", self.use_qformer)
        self.srm_fusion = _str("srm_fusion", self.srm_fusion, choices=SRM_FUSIONS)
        if not self.use_srm and self.srm_fusion != SRM_FUSIONS[0]:
            _fail("srm_fusion", f"{SRM_FUSIONS[0]!r} (the default) when use_srm is false (no SRM features to fuse)",
                  self.srm_fusion)
        if not self.use_qformer:
            for key in ("image_size", "patch_size"):
                _int(f"clip_vision.{key}", _key(self.clip_vision, "clip_vision", key), lo=1)
        self.num_inference_steps = _int("num_inference_steps", self.num_inference_steps, lo=1, hi=timesteps - offset)
        self.guidance_scale = _num("guidance_scale", self.guidance_scale, lo=1.0, hi=100.0)
        self.eta = _num("eta", self.eta, lo=0.0)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TWGTMConfig":
        """Build and :meth:`validate` a config from plain JSON data (unknown fields are errors)."""
        _obj("config", data, what="a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: unknown fields {unknown}; expected a subset of {sorted(known)}")
        kwargs: dict[str, Any] = dict(data)
        for name, sub in _NESTED.items():
            if name not in data:
                continue
            value = _obj(name, data[name], what="a JSON object")
            sub_known = {f.name for f in dataclasses.fields(sub)}
            bad = sorted(set(value) - sub_known)
            if bad:
                raise ConfigError(f"config.{name}: unknown fields {bad}; expected a subset of {sorted(sub_known)}")
            kwargs[name] = sub(**value)
        return cls(**kwargs).validate()

    @classmethod
    def from_json(cls, text: str) -> "TWGTMConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: expected valid JSON, got a parse error: {exc}") from exc
        return cls.from_dict(data)
