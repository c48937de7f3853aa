"""Full-size training on CPU with the paper preset (issue 12, item 3): kill, exact resume, export, reload.

    nice -n 19 python scripts/train_fullsize.py WORKDIR [--steps1 2 --steps2 2] [--size 256x192] [--threads 2]
                                                        [--processes 2 --threads 1]

``configs/paper_vitonhd_dresscode.yaml`` as shipped (bf16 autocast, gradient checkpointing), pointed at the
random-weight full-size base files of ``scripts/make_fullsize_fixtures.py`` (diffusers / transformers folders and
the timm Swin file; the preset keeps the frozen weights in bf16) and at a few VITON-HD and DressCode items written as 1024x768 JPEGs in their real layouts
(``scripts/make_fullsize_dataset.py``), trained at a reduced canvas with batch 1. Each stage runs in its own
``python -m training train`` process (with ``--processes 2`` it starts two gloo data-parallel workers, as
``accelerate launch`` would), measured (wall time, peak RSS of the largest process from ``wait4``):

1. run ``a``: stage 1 then stage 2, uninterrupted;
2. run ``b``: the same, each stage SIGKILLed once its step-1 checkpoint is complete, then resumed (``--resume auto``);
3. both runs' stage weights and loss rows must be identical; the export (trained parts only) of each is
   reloaded on the base files and one try-on step must give identical images.

Prints one JSON object (per-stage seconds per step, peak RSS, checkpoint size, the checks) and writes it to
``WORKDIR/result.json``. Uses about 11-12 GB of RAM and 10 GB of disk at 256x192 (a stage's checkpoints are deleted once it is done).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def run_args(paths: dict, data: dict, out: Path, height: int, width: int, threads: int,
             processes: int = 1) -> list[str]:
    sets = {
        "weights.unet": paths["sd_root"], "weights.vae": paths["vae_root"], "weights.clip_vision": paths["clip_root"],
        "weights.text_encoder": paths["sd_root"], "weights.tokenizer": Path(paths["sd_root"]) / "tokenizer",
        "weights.swin": paths["swin"],
        "data.datasets.0.root": data["vitonhd"], "data.datasets.1.root": data["dresscode"], "data.num_workers": 0,
        "model.overrides.height": height, "model.overrides.width": width, "threads": threads,
        "processes": processes,
    }
    for s in ("stage1", "stage2"):
        sets.update({f"{s}.batch_size": 1, f"{s}.checkpoint_every": 1, f"{s}.keep_checkpoints": 1,
                     f"{s}.sample_every": 0, f"{s}.log_every": 1})
    argv = ["--config", str(REPO / "configs" / "paper_vitonhd_dresscode.yaml"), "--output-dir", str(out)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return argv


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def train(args: list[str], stage: int, steps: int, *, kill_after_checkpoint: int | None = None,
          out: Path | None = None) -> dict:
    """One ``train --stage N`` process; returns its wall time, peak RSS and exit status."""
    cmd = [sys.executable, "-m", "training", "train", *args, "--stage", str(stage), "--max-steps", str(steps)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    if kill_after_checkpoint is not None:
        marker = out / f"stage{stage}" / "checkpoints" / f"step-{kill_after_checkpoint:06d}" / "trainer_state.json"
        while proc.poll() is None and not marker.is_file():
            time.sleep(0.2)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 and not killed:
        raise RuntimeError(f"stage {stage} failed (exit {rc}):\n{err[-4000:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "killed": killed}


def log_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: r[k] for k in ("step", "loss", "diffusion", "mask", "grad_norm")} | {"s": r["seconds_per_step"]}
                for r in csv.DictReader(f)]


def same_file_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if set(fa.keys()) != set(fb.keys()):
            return False
        return all(fa.get_tensor(k).equal(fb.get_tensor(k)) for k in fa.keys())


def try_on_once(model_file: Path, sources, height: int, width: int):
    import torch

    from twgtm.pipeline import TWGTMPipeline
    from twgtm.weights import load_twgtm

    g = torch.Generator().manual_seed(0)
    person, garment = torch.rand(1, 3, height, width, generator=g), torch.rand(1, 3, height, width, generator=g)
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 4:3 * height // 4, width // 4:3 * width // 4] = 1
    pipe = TWGTMPipeline.from_components(load_twgtm(model_file, base=sources))
    return pipe.try_on(person, garment, mask, "upper", num_inference_steps=1, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(1)).images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--steps1", type=int, default=2)
    p.add_argument("--steps2", type=int, default=2)
    p.add_argument("--size", default="256x192")
    p.add_argument("--threads", type=int, default=2, help="per process")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel CPU processes (gloo), started by `python -m training train` itself")
    args = p.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    work = Path(args.workdir)
    import make_fullsize_dataset as ds
    import make_fullsize_fixtures as fx

    paths = fx.build()
    data = {k: v for k, v in ds.write_both(work / "data", n=2).items()}
    result: dict = {"size": [height, width], "threads": args.threads, "processes": args.processes,
                    "load_before": os.getloadavg(), "runs": {}}
    for name in ("a", "b"):
        out = work / f"run-{name}"
        a = run_args(paths, data, out, height, width, args.threads, args.processes)
        stages = {}
        for stage, steps in ((1, args.steps1), (2, args.steps2)):
            if name == "a":
                stages[stage] = train(a, stage, steps)
            else:
                first = train(a, stage, steps, kill_after_checkpoint=1, out=out)
                assert first["killed"], f"stage {stage}: the process ended before it could be killed"
                assert not (out / f"stage{stage}" / "model.safetensors").exists()
                stages[stage] = {"killed_run": first, "resumed": train(a, stage, steps)}
            ckpts = sorted((out / f"stage{stage}" / "checkpoints").glob("step-*"))
            stages[stage]["checkpoint_gib"] = round(sum(f.stat().st_size for f in ckpts[-1].iterdir()) / 2**30, 2)
            # 4.8 GB each (5 GB in stage 2): four of them filled this machine's disk; the stage's weights remain
            shutil.rmtree(out / f"stage{stage}" / "checkpoints")
            stages[stage]["log"] = log_rows(out / f"stage{stage}" / "log.csv")
        result["runs"][name] = stages
    ra, rb = work / "run-a", work / "run-b"
    checks = {}
    for stage in (1, 2):
        checks[f"stage{stage}_weights_identical"] = same_file_tensors(ra / f"stage{stage}" / "model.safetensors",
                                                                      rb / f"stage{stage}" / "model.safetensors")
        strip = [{k: v for k, v in r.items() if k != "s"} for r in result["runs"]["a"][stage]["log"]]
        checks[f"stage{stage}_losses_identical"] = strip == [{k: v for k, v in r.items() if k != "s"}
                                                             for r in result["runs"]["b"][stage]["log"]]
    # export (trained parts only: export.include_base false in the preset), reload on the base files, same outputs
    exported = {}
    for name, out in (("a", ra), ("b", rb)):
        a = run_args(paths, data, out, height, width, args.threads, args.processes)
        subprocess.run([sys.executable, "-m", "training", "export", *a], cwd=REPO, env=_env(), check=True,
                       capture_output=True)
        exported[name] = out / "twgtm_paper.safetensors"
    from twgtm.components import is_trained_key
    from twgtm.weights import read_metadata
    from safetensors import safe_open

    with safe_open(str(exported["a"]), "pt") as f:
        keys = list(f.keys())
    checks["export_trained_parts_only"] = (read_metadata(exported["a"]).get("includes_base") != "1"
                                           and all(is_trained_key(k) for k in keys))
    result["export_gib"] = round(exported["a"].stat().st_size / 2**30, 2)
    t0 = time.perf_counter()
    src = fx.sources(paths, "folders")
    img_a = try_on_once(exported["a"], src, height, width)
    img_b = try_on_once(exported["b"], src, height, width)
    checks["reloaded_outputs_identical"] = bool(img_a.equal(img_b))
    result["reload_and_try_on_s"] = round(time.perf_counter() - t0, 1)
    result["checks"] = checks
    result["load_after"] = os.getloadavg()
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
