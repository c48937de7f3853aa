"""TWGTM for ComfyUI: virtual try-on and try-off with one model.

ComfyUI imports this file (the pack root) and registers the nodes through ``comfy_entrypoint`` (the V3
extension API). There is deliberately no ``NODE_CLASS_MAPPINGS`` here: ComfyUI 0.3.64 ignores
``comfy_entrypoint`` in a pack that has one. The nodes live in ``nodes/``, the model library in
``twgtm/``. Model files go in ``models/twgtm/`` (see docs/COMFYUI.md).

Outside ComfyUI (the library, the trainer, pytest collecting this folder as a package) there is no
``comfy_api`` to import, so the pack then exports nothing instead of failing; inside ComfyUI the nodes are
always imported and any error in them is raised as usual.
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
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
else:  # not running inside ComfyUI
    __all__: list = []
