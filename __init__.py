"""TWGTM for ComfyUI: virtual try-on and try-off with one model.

ComfyUI imports this file (the pack root). The nodes live in ``nodes/``, the model library in ``twgtm/``.
Model files go in ``models/twgtm/`` (see docs/COMFYUI.md).

Outside ComfyUI (the library, the trainer, pytest collecting this folder as a package) there is no
``comfy_api`` to import, so the pack then exports empty mappings instead of failing; inside ComfyUI the
nodes are always imported and any error in them is raised as usual.
"""
import importlib.util
import sys


def _inside_comfyui() -> bool:
    if "comfy_api" in sys.modules:  # ComfyUI (or a test's stand-in) has loaded it already
        return True
    try:
        return importlib.util.find_spec("comfy_api") is not None
    except (ImportError, ValueError):
        return False


if _inside_comfyui():
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # not running inside ComfyUI
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
