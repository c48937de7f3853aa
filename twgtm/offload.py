"""Component offload for plain PyTorch use (in ComfyUI, its own model management does this job).

:class:`ModelOffload` is a ``prepare`` hook for :class:`twgtm.pipeline.TWGTMPipeline`: before each phase the
pipeline names the components it needs; those move to the compute device and every other one to the
offload device. At full size in bf16 the reference encoders (CLIP image encoder, Q-Former, SRM, Decoder,
about 0.9 GiB) are then off the GPU during the denoising loop and the decode. Outputs are unchanged; the
cost is the weight transfers (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ModelOffload:
    """``prepare(*names)``: the named components to ``device``, all the others to ``offload_device``."""

    def __init__(self, components: dict[str, nn.Module], device: str | torch.device,
                 offload_device: str | torch.device = "cpu"):
        self.components = dict(components)
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        for m in self.components.values():
            m.to(self.offload_device)

    def __call__(self, *names: str) -> None:
        for name, module in self.components.items():
            if name not in names:
                module.to(self.offload_device)
        for name in names:
            self.components[name].to(self.device)
