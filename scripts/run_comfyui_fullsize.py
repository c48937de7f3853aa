"""The pack's try-on and try-off workflows in the real ComfyUI, on the full-size files users have (issue 12, item 2).

    source /work/comfyhost/env.sh
    nice -n 19 python scripts/run_comfyui_fullsize.py WORKDIR [--steps 2] [--size 256x192]

Lays out a ComfyUI base folder the way a user's is: ``models/twgtm/`` the TWGTM file with the trained parts only
(``scripts/make_fullsize_fixtures.py``'s ``twgtm-full-<H>x<W>.safetensors``), ``models/checkpoints/`` the
SD1.5-inpainting single file, ``models/clip_vision/`` the OpenAI-layout CLIP ViT-L/14 file (symlinks into the
fixture cache). The shipped workflows (``workflows/twgtm_try_on_api.json``, ``twgtm_try_off_api.json``) are copied
with the loader pointed at those files and ``--steps`` sampler steps (the shipped files name the tiny synthetic
model and 30 steps); nothing else changes. Each runs through the host's ``serve_and_run.py``; the server's peak
RSS is sampled from ``/proc`` every 0.2 s, the run's time is read from ComfyUI's own execution messages.
Prints and writes ``WORKDIR/comfyui.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def _server_rss(stop: threading.Event, peak: dict) -> None:
    """Max RSS (GiB) of any ComfyUI ``main.py --cpu`` process while the workflow runs."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if b"main.py" not in cmd or b"--base-directory" not in cmd:
                    continue
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        peak["gib"] = max(peak.get("gib", 0.0), int(line.split()[1]) / 2**20)
            except OSError:
                continue
        stop.wait(0.2)


def workflow_copy(src: Path, dest: Path, twgtm: str, checkpoint: str, clip: str, steps: int) -> Path:
    wf = json.loads(src.read_text())
    for node in wf.values():
        if node["class_type"] == "TWGTMModelLoader":
            node["inputs"].update(twgtm_file=twgtm, base_model=checkpoint, clip_vision=clip, vae="(none)")
        if node["class_type"] == "TWGTMSampler":
            node["inputs"]["steps"] = steps
    dest.write_text(json.dumps(wf, indent=1))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", default="256x192")
    p.add_argument("--timeout", type=float, default=900)
    args = p.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    comfy, python = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    host = Path(os.environ.get("COMFYHOST", "/work/shared/tools/comfyhost"))
    if not comfy or not python:
        raise SystemExit("source the comfyhost env.sh first (COMFYUI_DIR, COMFYUI_PYTHON)")
    import make_fullsize_fixtures as fx

    paths = fx.build()
    twgtm = fx.trained_file(paths, height, width)
    work = Path(args.workdir).resolve()
    base = work / "base"
    links = {"twgtm": twgtm, "checkpoints": paths["sd_safetensors"], "clip_vision": paths["clip_openai"]}
    for sub, target in links.items():
        (base / "models" / sub).mkdir(parents=True, exist_ok=True)
        link = base / "models" / sub / Path(target).name
        if not link.is_symlink():
            link.symlink_to(target)
    inputs = sorted(str(f) for f in (REPO / "workflows" / "example_inputs").glob("*.png"))
    result = {"size": [height, width], "steps": args.steps, "load_before": os.getloadavg(), "runs": {}}
    for name in ("try_on", "try_off"):
        wf = workflow_copy(REPO / "workflows" / f"twgtm_{name}_api.json", work / f"{name}_api.json",
                           twgtm.name, Path(paths["sd_safetensors"]).name, Path(paths["clip_openai"]).name, args.steps)
        out = work / name
        stop, peak = threading.Event(), {}
        sampler = threading.Thread(target=_server_rss, args=(stop, peak), daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(host / "serve_and_run.py"), "--comfy", comfy, "--python", python,
                               "--pack", str(REPO), "--workflow", str(wf), "--inputs", *inputs, "--out", str(out),
                               "--base", str(base), "--keep-base", "--timeout", str(args.timeout)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        run = {"rc": proc.returncode, "wall_s": round(wall, 1), "server_peak_rss_gib": round(peak.get("gib", 0), 2)}
        hist = out / "history.json"
        if hist.is_file():
            h = json.loads(hist.read_text())
            entry = next(iter(h.values())) if isinstance(h, dict) and h and "status" not in h else h
            msgs = {m[0]: m[1] for m in entry.get("status", {}).get("messages", [])}
            if "execution_start" in msgs and "execution_success" in msgs:
                run["execution_s"] = round((msgs["execution_success"]["timestamp"]
                                            - msgs["execution_start"]["timestamp"]) / 1000, 1)
            run["outputs"] = sorted(str(f.relative_to(out)) for f in out.rglob("*.png"))
        if proc.returncode:
            run["stderr_tail"] = (proc.stdout + proc.stderr)[-3000:]
        result["runs"][name] = run
    result["load_after"] = os.getloadavg()
    (work / "comfyui.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if all(r["rc"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
