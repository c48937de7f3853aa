"""TWGTM nodes for ComfyUI (V3 ``io.ComfyNode`` schema), registered through ``NODE_CLASS_MAPPINGS``.

Each node is a thin adapter over the ``twgtm`` library of this pack (imported relatively: ComfyUI loads
the pack by file path, and ``nodes`` is also the name of ComfyUI's own core module).

If the pack's Python requirements are missing, importing logs one warning with the install command; the
nodes are still listed, and those that need the requirements say the same when validated or run.
"""
from . import requirements
from .conditioning import TWGTMTryOffConditioning, TWGTMTryOnConditioning
from .loader import TWGTMModelLoader
from .masks import TWGTMGarmentMask, TWGTMMaskToBox
from .sampler import TWGTMSampler

requirements.warn_if_missing()

NODE_CLASS_MAPPINGS = {
    "TWGTMModelLoader": TWGTMModelLoader,
    "TWGTMTryOnConditioning": TWGTMTryOnConditioning,
    "TWGTMTryOffConditioning": TWGTMTryOffConditioning,
    "TWGTMGarmentMask": TWGTMGarmentMask,
    "TWGTMSampler": TWGTMSampler,
    "TWGTMMaskToBox": TWGTMMaskToBox,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TWGTMModelLoader": "TWGTM Model Loader",
    "TWGTMTryOnConditioning": "TWGTM Try-On Conditioning",
    "TWGTMTryOffConditioning": "TWGTM Try-Off Conditioning",
    "TWGTMGarmentMask": "TWGTM Garment Mask",
    "TWGTMSampler": "TWGTM Sampler",
    "TWGTMMaskToBox": "TWGTM Mask to Box",
}
