"""Command line of ``python -m training`` (also ``accelerate launch -m training ...``).

Commands::

    main      generate the synthetic data, train stage 0/1/2, export, write the baseline report
    train     one or all stages of a run (resumable: --resume auto, the default)
    evaluate  the paper's protocols (VTON paired/unpaired, VTOFF) on a dataset's test split
    export    copy the last stage's weights to the file the nodes load
    report    the synthetic baseline report for a run's exported model
    ablate    the paper's Table-4 ablation variants, each a main job with --set overrides (docs/ABLATIONS.md)

Examples::

    python -m training main                                   # synthetic preset on CPU, runs/synthetic
    python -m training train --config configs/paper_vitonhd_dresscode.yaml --stage 1 --output-dir runs/paper
    accelerate launch -m training train --config configs/paper_vitonhd_dresscode.yaml --stage all
    python -m training evaluate --checkpoint runs/paper/twgtm_paper.safetensors --data /data/zalando-hd-resized \\
        --config configs/paper_vitonhd_dresscode.yaml --out runs/paper/eval
    python -m training ablate --variants twgtm v1 v3 v4 v5 v6 v8 --seeds 2 --output-dir runs/ablate
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from twgtm.errors import ConfigError, TWGTMError
from twgtm.schedulers import SCHEDULER_NAMES

# the modules that import torch (trainer, data, report, evaluate, stage0_vae) are imported by the command that
# needs them: --help and argument errors come back at once
from .config import DATASET_KINDS, TRYOFF_REGIONS, RunConfig, dump_run_config, load_run_config
from .rundir import RunLock, describe, ensure_output_dir, held_by_launcher, previous_run, remove_previous_run

logger = logging.getLogger("training")

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/synthetic_cpu.yaml"


def _config_path(text: Optional[str]) -> Optional[Path]:
    if text is None:
        return None
    p = Path(text)
    if not p.is_file() and not p.is_absolute() and (_REPO / p).is_file():
        return _REPO / p  # configs/... relative to the project when not found from the working directory
    return p


def _load(args) -> RunConfig:
    """The run config of the command line; a tracker of ``report_to`` whose package is missing fails here, before
    any process is started or anything is trained."""
    from .tracking import check_report_to

    overrides = list(args.set or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    run = load_run_config(_config_path(args.config), overrides)
    check_report_to(run.report_to)
    return run


def _apply_max_steps(run, stages: Sequence[int], max_steps: Optional[int]) -> None:
    if max_steps is None:
        return
    for s in stages:
        if s == 0:
            run.stage0.max_steps = max_steps
        else:
            run.stage(s).max_steps = max_steps


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``python -m training train: error: argument --max-steps: ...``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_arg(lo: int, hi: Optional[int] = None):
    """An argparse type: an integer in [lo, hi]."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def _float_arg(lo: float, hi: Optional[float] = None, note: str = ""):
    """An argparse type: a finite number in [lo, hi]."""
    want = (f"a number >= {lo:g}" if hi is None else f"a number in [{lo:g}, {hi:g}]") + note

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return value

    return parse


def _add_run_args(p: argparse.ArgumentParser, config_default: Optional[str]) -> None:
    p.add_argument("--config", default=config_default, help="run YAML (configs/*.yaml)")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config value by dotted path, e.g. --set stage1.batch_size=8 (repeatable)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m training", description="TWGTM training, evaluation and export")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    steps = _int_arg(1)

    p = sub.add_parser("main", help="the synthetic end-to-end job: data, stage 0/1/2, export, report")
    _add_run_args(p, DEFAULT_CONFIG)
    p.add_argument("--max-steps", type=steps, help="max steps of every stage (stage 0 included)")
    p.add_argument("--resume", choices=["auto", "none"],
                   help="auto (default: continue where a killed job stopped) or none (start over)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a run: delete its stage outputs, export and report first")

    p = sub.add_parser("train", help="train one stage or all")
    _add_run_args(p, None)
    p.add_argument("--stage", default="all", choices=["0", "1", "2", "all"],
                   help="stage to train (all: 0 if enabled, 1, 2, export)")
    p.add_argument("--max-steps", type=steps, help="max optimiser steps of the stage(s) trained now")
    p.add_argument("--resume", help="auto (default: newest checkpoint of the stage), none (start over), or a "
                                    "checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a folder that holds a run: delete the outputs of the stage(s) trained now, "
                        "of later stages, the export and the report first")
    p.add_argument("--stop-after", type=steps, help="checkpoint and stop at this step (time-boxed jobs, tests)")

    p = sub.add_parser("evaluate", help="VTON paired/unpaired and VTOFF protocols on a test split")
    p.add_argument("--checkpoint", required=True, help="TWGTM .safetensors file")
    p.add_argument("--data", required=True, help="dataset root (VITON-HD or DressCode layout)")
    p.add_argument("--out", help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--config", help="run YAML: base weight paths and eval defaults (eval: section)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (with --config)")
    p.add_argument("--protocol", nargs="+", default=["vton_paired", "vton_unpaired", "vtoff"],
                   choices=["vton_paired", "vton_unpaired", "vtoff"])
    p.add_argument("--kind", default="auto", choices=("auto",) + DATASET_KINDS)
    p.add_argument("--categories", nargs="+", help="DressCode categories (default: all present)")
    p.add_argument("--steps", type=_int_arg(1, 1000), help="sampler steps (default: eval.num_inference_steps)")
    p.add_argument("--guidance-scale", type=_float_arg(1, 100, " (1 disables CFG)"))
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES)
    p.add_argument("--eta", type=_float_arg(0, 1, " (DDIM: 0 deterministic, 1 as DDPM)"),
                   help="DDIM eta in [0, 1] (default: the model config's)")
    p.add_argument("--seed", type=_int_arg(0))
    p.add_argument("--batch-size", type=_int_arg(1))
    p.add_argument("--max-items", type=_int_arg(1), help="evaluate the first N test items only")
    p.add_argument("--size", type=_int_arg(8), nargs=2, metavar=("H", "W"),
                   help="evaluation size (default: the model's)")
    p.add_argument("--tryoff-region", choices=TRYOFF_REGIONS,
                   help="try-off region: whole canvas, or box / silhouette of the ground-truth or predicted mask")
    p.add_argument("--weights-dir", help="folder with LPIPS/DISTS torchvision backbones and the FID Inception file")
    p.add_argument("--clip-dir", help="CLIP ViT-B/32 transformers folder (CLIP-FID)")
    p.add_argument("--dino-dir", help="DINO ViT-S/16 transformers folder (DINO score)")
    p.add_argument("--lpips-net", choices=["alex", "squeeze", "vgg"])
    p.add_argument("--save-images", action="store_true", help="also write every generated image as PNG")
    p.add_argument("--strict", action="store_true", help="fail if any metric had to be skipped")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])

    p = sub.add_parser("export", help="write the final .safetensors the nodes load")
    _add_run_args(p, None)
    p.add_argument("--from", dest="source", help="weights to export (default: <output_dir>/stage2/model.safetensors)")
    p.add_argument("--out", help="destination (default: export.filename)")

    p = sub.add_parser("report", help="synthetic baseline report for a trained model")
    _add_run_args(p, DEFAULT_CONFIG)
    p.add_argument("--checkpoint", help="TWGTM file (default: export.filename)")
    p.add_argument("--eval-data", help="synthetic data folder whose test split replaces the run's held-out pairs, "
                                       "e.g. a validation set: python -m training.synthetic --out DIR --n-train 0 "
                                       "--n-test 64 --height 64 --width 48 --seed 1")
    p.add_argument("--out", help="report folder (default: <output_dir>/report)")

    from .ablate import VARIANTS

    p = sub.add_parser("ablate", help="the paper's Table-4 ablations: one main job per variant and seed, then "
                                      "<output-dir>/ablations.md (docs/ABLATIONS.md)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="run YAML of TWGTM, the base of every variant")
    p.add_argument("--output-dir", default="runs/ablate", help="root: <variant>/seed<k>/ per run, data/ shared")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value of the base config "
                                                                      "(every variant, repeatable)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"variants among {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--seeds", type=_int_arg(1), default=2, help="training seeds per variant: seed + 0 .. seed + N-1")
    p.add_argument("--max-steps", type=steps, help="max steps of every stage (the mask warm-up keeps its share)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")

    p = sub.add_parser("plot", help="draw a run's loss curves (each stage's log.csv) into RUN_DIR/loss_curves.png")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output folder (with stage1/ and/or stage2/)")
    p.add_argument("--out", help="PNG to write (default: RUN_DIR/loss_curves.png)")
    return parser


# ---------------------------------------------------------------------------------------------- commands
def _stages(run, which: str) -> list[int]:
    if which == "all":
        return ([0] if run.stage0.enabled else []) + [1, 2]
    return [int(which)]


def _resume_mode(args) -> str:
    """``--resume`` as given ("auto" by default; "no" is "none"); ``--overwrite`` means starting over."""
    resume = {"no": "none", "": "none"}.get(args.resume, args.resume)
    if args.overwrite:
        if resume not in (None, "none"):
            raise ConfigError(f"--overwrite: starts the run over, so expected no --resume or --resume none, "
                              f"got --resume {args.resume}")
        return "none"
    return resume or "auto"


@contextmanager
def _claim_output(run, stages: list[int], resume: str, overwrite: bool) -> Iterator[None]:
    """Hold the output folder's lock for the whole command and refuse to start a run over an earlier one
    (``--resume none``) unless ``overwrite``, which removes the earlier run's outputs first.

    Worker processes skip this: those this command starts find the lock held by their launcher, and under
    ``accelerate launch`` rank 0 alone takes it."""
    if held_by_launcher(run.output_path) or int(os.environ.get("RANK", "0")) > 0:
        yield
        return
    ensure_output_dir(run)
    with RunLock(run.output_path):
        if resume == "none":
            found = previous_run(run, stages[0])
            if found and not overwrite:
                raise ConfigError(f"--resume none: {str(run.output_path)!r} already holds a run "
                                  f"({describe(found, run.output_path)}); expected an empty folder: pass "
                                  f"--overwrite to delete it and start over, or --resume auto to continue it")
            remove_previous_run(run, stages[0])
        yield


def _train(run, stages: list[int], resume: str, stop_after: Optional[int], accelerator) -> dict[str, float]:
    from .data import build_train_dataset, prepare_data
    from .tracking import end_trackers
    from .trainer import export_model, train_stage

    timings: dict[str, float] = {}
    if accelerator.is_main_process:
        dump_run_config(run, run.output_path / "config.yaml")
    t0 = time.perf_counter()
    prepare_data(run, accelerator)
    timings["data_s"] = round(time.perf_counter() - t0, 1)
    resume_arg = None if resume in ("none", "no", "") else resume
    for stage in stages:
        t0 = time.perf_counter()
        if stage == 0:
            from .stage0_vae import train_vae

            cfg = run.model.build()
            train_vae(run, cfg, build_train_dataset(run, cfg), accelerator)
        else:
            train_stage(run, stage, accelerator, resume=resume_arg, stop_after=stop_after)
        timings[f"stage{stage}_s"] = round(time.perf_counter() - t0, 1)
    end_trackers(accelerator)
    if stages and stages[-1] == 2 and stop_after is None:
        if accelerator.is_main_process:
            t0 = time.perf_counter()
            export_model(run)
            timings["export_s"] = round(time.perf_counter() - t0, 1)
        # the other processes read the export next (the validation report): none may run ahead of it (a
        # 2-process main job with short stages failed with "expected a .safetensors file at .../export/...")
        accelerator.wait_for_everyone()
    return timings


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the launching process dies (a killed job leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    _die_with_parent()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    rc = main(argv)
    if rc:
        raise SystemExit(rc)


def _spawned(run, argv: Optional[Sequence[str]]) -> Optional[int]:
    """With ``processes > 1`` on a machine without GPUs, run this command in that many CPU worker processes
    (gloo DDP, rank 0 writes the files). Returns None when it did not spawn, else the workers' exit code."""
    import torch

    if run.processes <= 1 or "WORLD_SIZE" in os.environ or torch.cuda.is_available():
        return None
    import torch.multiprocessing as mp

    logger.info("starting %d CPU worker processes (%s thread(s) each)", run.processes, run.threads or "default")
    try:
        mp.spawn(_worker, args=(run.processes, _free_port(), list(argv or sys.argv[1:])), nprocs=run.processes,
                 join=True)
    except mp.ProcessExitedException as exc:
        logger.error("a worker process failed (exit code %s); see its message above", exc.exit_code)
        return int(exc.exit_code or 1)
    except mp.ProcessRaisedException as exc:
        logger.error("a worker process raised: %s", exc)
        return 1
    return 0


def _cpu_workers() -> bool:
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def cmd_train(args) -> int:
    from .trainer import configure_torch, make_accelerator

    resume = _resume_mode(args)
    run = _load(args)
    stages = _stages(run, args.stage)
    with _claim_output(run, stages, resume, args.overwrite):
        rc = _spawned(run, args.argv)
        if rc is not None:
            return rc
        _apply_max_steps(run, stages, args.max_steps)
        configure_torch(run)
        accelerator = make_accelerator(run, cpu=args.cpu or _cpu_workers())
        timings = _train(run, stages, resume, args.stop_after, accelerator)
    logger.info("done: %s", json.dumps(timings))
    return 0


def cmd_main(args) -> int:
    t_all = time.perf_counter()
    resume = _resume_mode(args)
    run = _load(args)
    stages = _stages(run, "all")
    with _claim_output(run, stages, resume, args.overwrite):
        return _main_job(run, args, stages, resume, t_all)


def _main_job(run, args, stages: list[int], resume: str, t_all: float) -> int:
    from .data import validation_root
    from .trainer import configure_torch, make_accelerator

    rc = _spawned(run, args.argv)
    if rc is not None:
        return rc
    _apply_max_steps(run, stages, args.max_steps)
    configure_torch(run)
    accelerator = make_accelerator(run, cpu=args.cpu or _cpu_workers())
    timings_path = run.output_path / "timings.json"
    previous = json.loads(timings_path.read_text()) if timings_path.is_file() and resume == "auto" else {}
    timings = _train(run, stages, resume, None, accelerator)
    # the reports: the test split on the main process; the validation set (data.synthetic.n_val) on the second
    # process when there is one, at the same time, else after the test split
    val_root, val_out = validation_root(run), run.output_path / "report_val"
    val_here = val_root is not None and accelerator.process_index == min(1, accelerator.num_processes - 1)
    if val_here and not accelerator.is_main_process:
        _report(run, None, eval_data=str(val_root), out=str(val_out))
    if accelerator.is_main_process:
        t0 = time.perf_counter()
        report = _report(run, None, {**previous, **timings}, loss_curves=True)
        if val_here:
            _report(run, None, eval_data=str(val_root), out=str(val_out))
        timings["report_s"] = round(time.perf_counter() - t0, 1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        passed = {"test": report["passed"]}
        if val_root is not None:
            passed["validation"] = json.loads((val_out / "report.json").read_text())["passed"]
        timings["report_wait_s"] = round(time.perf_counter() - t0, 1)
        timings["total_s"] = round(time.perf_counter() - t_all, 1)
        timings_path.write_text(json.dumps({**previous, **timings}, indent=2) + "\n")
        logger.info("main job finished in %.1f s; report: %s (passed=%s)%s", timings["total_s"],
                    run.output_path / "report" / "report.md", passed["test"],
                    f"; validation report: {val_out / 'report.md'} "
                    f"(passed={passed['validation']})" if val_root is not None else "")
    return 0


def _report(run, checkpoint: Optional[str], timings: Optional[dict] = None, *, eval_data: Optional[str] = None,
            out: Optional[str] = None, loss_curves: bool = False) -> dict:
    """The baseline report of the run's export (or ``checkpoint``); with ``loss_curves``, the stages' loss curves
    (``loss_curves.png`` from their log.csv) go into the report folder and report.md shows them."""
    import torch

    from twgtm.weights import load_twgtm

    from .report import baseline_report
    from .tracking import plot_losses
    from .trainer import base_sources

    path = checkpoint or run.resolve(run.export.filename)
    base = None if run.export.include_base else base_sources(run)
    model = load_twgtm(path, base=base, device="cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out) if out else run.output_path / "report"
    curves = plot_losses(run.output_path, out_dir / "loss_curves.png") if loss_curves else None
    return baseline_report(model, run, out_dir, timings=timings, eval_root=eval_data, loss_curves=curves)


def cmd_report(args) -> int:
    from .trainer import configure_torch

    run = _load(args)
    configure_torch(run)
    report = _report(run, args.checkpoint, eval_data=args.eval_data, out=args.out)
    return 0 if report["passed"] else 1


def cmd_export(args) -> int:
    from .trainer import export_model

    run = _load(args)
    out = export_model(run, Path(args.source) if args.source else None, args.out)
    logger.info("exported %s", out)
    return 0


def _launched_device(requested: Optional[str]) -> Optional[str]:
    """Under ``accelerate launch`` / torchrun (``WORLD_SIZE`` > 1): initialise the process group the way the
    trainer's Accelerator does (accelerate's ``PartialState``: gloo on CPU, NCCL on GPUs), so that evaluation
    shards its items over the processes, and return this process's device (``cuda:<LOCAL_RANK>``; every process
    would otherwise take cuda:0). Without a launcher: ``requested`` as given."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return requested
    from accelerate import PartialState

    state = PartialState(cpu=requested == "cpu")
    logger.info("evaluate: process %d of %d on %s", state.process_index, state.num_processes, state.device)
    return requested if requested not in (None, "cuda") else str(state.device)


def cmd_evaluate(args) -> int:
    import torch

    from .evaluate import EvalOptions, evaluate_checkpoint

    args.device = _launched_device(args.device)

    base, opts = None, EvalOptions()
    if args.config:
        from .trainer import base_sources, configure_torch

        run = load_run_config(_config_path(args.config), list(args.set or []))
        configure_torch(run)
        base = base_sources(run)
        opts = EvalOptions.from_config(run.eval, **{k: run.resolve(getattr(run.eval, k))
                                                    for k in ("weights_dir", "clip_dir", "dino_dir")})
    cli = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "scheduler": args.scheduler,
           "eta": args.eta, "seed": args.seed, "batch_size": args.batch_size, "max_items": args.max_items,
           "tryoff_region": args.tryoff_region, "weights_dir": args.weights_dir, "clip_dir": args.clip_dir,
           "dino_dir": args.dino_dir, "lpips_net": args.lpips_net,
           "size": tuple(args.size) if args.size else None, "categories": args.categories}
    for k, v in cli.items():
        if v is not None:
            setattr(opts, k, v)
    opts.save_images, opts.strict, opts.kind = args.save_images, args.strict, args.kind
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    out = args.out or str(Path(args.checkpoint).parent / "eval")
    summary = evaluate_checkpoint(args.checkpoint, args.data, out, base=base if base and base.unet else None,
                                  protocols=args.protocol, opts=opts, device=device, dtype=dtype)
    logger.info("evaluation written to %s (%s)", Path(out) / "evaluation.md",
                ", ".join(f"{p}: {v['items']} items" for p, v in summary["protocols"].items()))
    return 0


def cmd_ablate(args) -> int:
    from .ablate import run_ablation

    run_ablation(args.variants, args.seeds, args.output_dir, main_job=main, report=_report,
                 config=str(_config_path(args.config)),
                 sets=list(args.set or []), max_steps=args.max_steps, log_level=args.log_level, cpu=args.cpu)
    return 0


def cmd_plot(args) -> int:
    from .tracking import plot_losses

    try:
        out = plot_losses(args.run_dir, args.out)
    except FileNotFoundError as exc:
        logger.error("%s", exc)
        return 2
    logger.info("loss curves: %s", out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    if int(os.environ.get("RANK", "0")) > 0:
        level = max(level, logging.WARNING)  # worker processes other than rank 0 only warn
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file otherwise
    handlers = {"main": cmd_main, "train": cmd_train, "evaluate": cmd_evaluate, "export": cmd_export,
                "report": cmd_report, "ablate": cmd_ablate, "plot": cmd_plot}
    try:
        return handlers[args.command](args)
    except TWGTMError as exc:
        logger.error("%s", exc)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
        logger.error("cannot write %r: %s", exc.filename, exc.strerror or exc)  # e.g. a read-only --out folder
        return 2


if __name__ == "__main__":
    sys.exit(main())
