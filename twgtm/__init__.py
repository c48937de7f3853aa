"""TWGTM: the Two-Way Garment Transfer Model (virtual try-on and try-off in one diffusion model).

This package is the model library. It never imports ComfyUI.
"""
from .config import CATEGORIES, TWGTMConfig, canonical_category
from .errors import ConfigError, InputError, MissingFileError, TWGTMError, WeightsError

__all__ = ["CATEGORIES", "TWGTMConfig", "canonical_category",
           "ConfigError", "InputError", "MissingFileError", "TWGTMError", "WeightsError"]
