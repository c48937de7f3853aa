"""Performance benchmark: TWGTM try-on / try-off against a CatVTON-class baseline.

``python -m benchmarks [--json] [--flops-only] [--device cpu|cuda] [--dtype bf16|fp16|fp32]
[--config tiny|full] [--steps 50] [--sizes 1024x768,512x384] [--naive] [--offload]``

Two parts, side by side in one run (``docs/PERFORMANCE.md`` holds the results), and the targets:

1. **FLOPs** (:mod:`benchmarks.flops`), counted on the ``meta`` device for one image per size, CFG on:
   per denoising step and one-off per image, totals and ratios TWGTM / baseline.
2. **Wall time and peak memory** (:mod:`benchmarks.timing`) of the whole ``try_on`` / ``try_off`` calls
   and of the baseline, in one process on the given device, warm-up first, median of ``--repeats``.
3. **Targets** (:mod:`benchmarks.targets`): each limit, its source, and pass / fail / not measured.

The cases (:mod:`benchmarks.cases`) are built on the library's components, without patching anything.
Baseline (CatVTON class): the *same* SD1.5-inpainting UNet, scheduler, VAE and 9-channel concatenated
latent through the same :class:`~twgtm.pipeline.TWGTMPipeline`, with ``reference_encoder=None``: no SAM,
SRM, Decoder or Extended-Attention work, and a fixed, step-independent context of the F_SAM shape
(1 + N = 33 tokens of width 768, zeros, like a cached empty prompt) for the UNet cross-attention.
CatVTON itself deletes the cross-attention; keeping it at the F_SAM length means the difference measured
is exactly SAM + SRM + Decoder + Extended Attention (the cross-attention to F_SAM *replaces* SD's text
cross-attention, it is not an addition), and it matches the issue's reference point (16.9 TFLOP per CFG
step). The cross-attention-free UNet is reported too (``baseline_no_xattn``), for the stricter comparison.

This package is a development tool next to the library: ``twgtm`` never imports it.
"""
