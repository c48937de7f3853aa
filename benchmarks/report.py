"""The benchmark report: flat headline keys (``--json``) and markdown tables (the default output, and the
source of the tables in ``docs/PERFORMANCE.md``)."""
from __future__ import annotations

import math
from typing import Any

from .flops import TFLOP
from .targets import SCOPE, SOURCE


def flat_keys(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers as flat JSON keys (``flops_ratio_tryon_1024x768`` ...)."""
    out: dict[str, Any] = {}
    for key, rec in (report.get("flops") or {}).get("sizes", {}).items():
        for name, value in rec["ratio"].items():
            out[f"flops_ratio_{name}_{key}"] = value
        out[f"flops_step_baseline_tflop_{key}"] = rec["per_step"]["baseline"] / TFLOP
        out[f"flops_step_twgtm_tflop_{key}"] = rec["per_step"]["twgtm"] / TFLOP
    timing = report.get("timing")
    if timing:
        for name, rec in timing["cases"].items():
            out[f"time_s_{name}"] = rec["median_s"]
            out[f"time_ratio_{name}"] = rec["ratio_to_baseline"]
            if rec["peak_gib"] is not None:
                out[f"peak_gib_{name}"] = rec["peak_gib"]
        for name, rec in timing["step"].items():
            out[f"step_ms_{name}"] = rec["median_ms"]
    return out


def _f(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _flops_markdown(fl: dict[str, Any]) -> list[str]:
    lines = [f"FLOPs ({fl['counter']}, {fl['device']} device), config `{fl['config']}`, {fl['steps']} steps, "
             f"CFG {'on' if fl['cfg'] else 'off'} (UNet batch {fl['unet_batch']}), one image; TFLOP", "",
             "| size | case | per step | one-off | total | ratio to baseline |", "|---|---|---:|---:|---:|---:|"]
    for key, rec in fl["sizes"].items():
        s, o, tot, r = rec["per_step"], rec["one_off"], rec["total"], rec["ratio"]
        vae = 2 * o["vae_encode"] + o["vae_decode"]
        enc = o["sam"] + o["srm"] + o["decoder"]
        rows = [
            ("baseline (same UNet, 33-token cross-attn)", s["baseline"], vae, tot["baseline"], 1.0),
            ("baseline without cross-attn (CatVTON)", s["baseline_no_xattn"], vae, tot["baseline_no_xattn"],
             tot["baseline_no_xattn"] / tot["baseline"]),
            ("TWGTM try-on", s["twgtm"], vae + enc + o["srm_kv"], tot["tryon"], r["tryon"]),
            ("TWGTM try-off", s["twgtm"], vae + enc + o["srm_kv"], tot["tryoff"], r["tryoff"]),
            ("TWGTM naive EA (both halves, K'/V' every step)", s["twgtm_naive"], vae + enc, tot["tryon_naive"],
             r["tryon_naive"]),
            ("TWGTM K'/V' once, EA on both halves", s["twgtm_kv_once_both_halves"], vae + enc + o["srm_kv"],
             tot["tryon_kv_once_both_halves"], r["tryon_kv_once_both_halves"]),
            ("TWGTM EA on cond rows, K'/V' every step", s["twgtm_cond_rows_kv_every_step"], vae + enc,
             tot["tryon_cond_rows_kv_every_step"], r["tryon_cond_rows_kv_every_step"]),
        ]
        for name, step, once, total, ratio in rows:
            lines.append(f"| {key} | {name} | {step / TFLOP:.3f} | {once / TFLOP:.3f} | {total / TFLOP:.1f} "
                         f"| {ratio:.4f} |")
    lines += ["", "One-off pieces per image (TFLOP)", "",
              "| size | VAE encode (x2) | SAM | SRM | Decoder | K'/V' | VAE decode |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, rec in fl["sizes"].items():
        o = rec["one_off"]
        lines.append(f"| {key} | {o['vae_encode'] / TFLOP:.3f} (x2) | {o['sam'] / TFLOP:.3f} | "
                     f"{o['srm'] / TFLOP:.3f} | {o['decoder'] / TFLOP:.3f} | {o['srm_kv'] / TFLOP:.4f} | "
                     f"{o['vae_decode'] / TFLOP:.3f} |")
    lines += ["", "UNet step FLOPs by kind (TFLOP, CFG batch)", "",
              "| size | step | conv | linear | attention (QK^T, PV) | other |", "|---|---|---:|---:|---:|---:|"]
    for key, rec in fl["sizes"].items():
        for name, k in rec["per_step_by_kind"].items():
            lines.append(f"| {key} | {name} | {k['conv'] / TFLOP:.3f} | {k['linear'] / TFLOP:.3f} | "
                         f"{k['attention'] / TFLOP:.3f} | {k['other'] / TFLOP:.3f} |")
    return lines


def _timing_markdown(tm: dict[str, Any]) -> list[str]:
    lines = ["", f"Wall time: config `{tm['config']}` at {tm['size']}, {tm['device']}, {tm['dtype']}, "
             f"{tm['steps']} steps, CFG {tm['guidance_scale']}, {tm['scheduler']}, median of {tm['repeats']} "
             f"after {tm['warmup']} warm-up", "",
             "| case | median s | ratio to baseline | peak GiB | peak above start GiB |",
             "|---|---:|---:|---:|---:|"]
    for name, rec in tm["cases"].items():
        lines.append(f"| {name} | {rec['median_s']:.3f} | {rec['ratio_to_baseline']:.3f} | {_f(rec['peak_gib'])} | "
                     f"{_f(rec['peak_above_start_gib'])} |")
    lines += ["", "| UNet step (CFG batch 2) | median ms | ratio to baseline | TFLOP/s | fraction of matmul peak |",
              "|---|---:|---:|---:|---:|"]
    for name, rec in tm["step"].items():
        lines.append(f"| {name} | {rec['median_ms']:.2f} | {rec['ratio_to_baseline']:.3f} | "
                     f"{_f(rec.get('tflops_per_s'), '.4g')} | {_f(rec.get('fraction_of_peak'))} |")
    if tm.get("phases_gib"):
        lines += ["", "| phase | GiB |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in tm["phases_gib"].items()]
    return lines


def targets_markdown(targets: dict[str, dict]) -> list[str]:
    """The targets table: limit, value, pass / FAIL / not measured (with the reason)."""
    scope = ", ".join(f"{k} {v}" for k, v in SCOPE.items())
    lines = ["", f"Targets (from {SOURCE}), per image at {scope}", "", "| target | limit | value | result |",
             "|---|---:|---:|---|"]
    for t in targets.values():
        result = "pass" if t["met"] else "FAIL" if t["met"] is False else f"no verdict: {t['note']}"
        lines.append(f"| {t['description']} | {t['op']} {t['limit']:g} | {_f(t['value'], '.4f')} | {result} |")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """Human-readable tables of a report."""
    lines: list[str] = []
    if report.get("flops"):
        lines += _flops_markdown(report["flops"])
    if report.get("timing"):
        lines += _timing_markdown(report["timing"])
    if report.get("targets"):
        lines += targets_markdown(report["targets"])
    return "\n".join(lines) + "\n"
