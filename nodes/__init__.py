"""TWGTM nodes for ComfyUI (V3 ``io.ComfyNode`` schema), registered through ``comfy_entrypoint``.

ComfyUI calls the pack's ``comfy_entrypoint()`` and lists the nodes of the :class:`ComfyExtension` it
returns (``get_node_list``); node ids and display names come from each node's schema. Every module uses
the versioned API ``comfy_api.v0_0_2``, so a newer ComfyUI keeps the interface these nodes were written for.

Each node is a thin adapter over the ``twgtm`` library of this pack (imported relatively: ComfyUI loads
the pack by file path, and ``nodes`` is also the name of ComfyUI's own core module).

If the pack's Python requirements are missing, importing logs one warning with the install command; the
nodes are still listed, and those that need the requirements say the same when validated or run.
"""
from comfy_api.v0_0_2 import ComfyExtension, io

from . import requirements
from .conditioning import TWGTMTryOffConditioning, TWGTMTryOnConditioning
from .loader import TWGTMModelLoader
from .masks import TWGTMGarmentMask, TWGTMMaskToBox
from .sampler import TWGTMSampler

requirements.warn_if_missing()

NODES: list[type[io.ComfyNode]] = [TWGTMModelLoader, TWGTMTryOnConditioning, TWGTMTryOffConditioning,
                                   TWGTMGarmentMask, TWGTMSampler, TWGTMMaskToBox]


class TWGTMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> TWGTMExtension:
    """What ComfyUI calls to register the pack (``nodes.load_custom_node``)."""
    return TWGTMExtension()
