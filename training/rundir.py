"""A run's output folder: one run at a time, and no silent mixing of an old run into a new one.

* :class:`RunLock` -- ``<output_dir>/.twgtm-run.lock``, an exclusive ``flock`` (``msvcrt.locking`` on Windows)
  held by the launching process for the whole command; the file names the holder's PID. The operating system
  releases the lock when its process dies, so the lock of a killed run (SIGKILL included) is simply taken
  over. Worker processes started under a held lock (``processes: 2``) find its path in ``TWGTM_RUN_LOCK``
  and do not take it again; under ``accelerate launch`` only rank 0 takes it.
* :func:`previous_run` / :func:`remove_previous_run` -- what a fresh start (``--resume none``) would
  overwrite or mix in: the stage folders from the first stage trained on (later stages are built on it),
  the exported file, the report and the timings. The CLI refuses to start over such a run unless
  ``--overwrite`` is given, and then removes them first.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from twgtm.errors import ConfigError

from .config import RunConfig

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "LOCK_ENV", "RunLock", "ensure_output_dir", "held_by_launcher", "previous_run", "describe",
           "remove_previous_run"]

LOCK_NAME = ".twgtm-run.lock"
LOCK_ENV = "TWGTM_RUN_LOCK"

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None


def ensure_output_dir(run: RunConfig) -> Path:
    """Create the run's output folder; a file in its place or an unwritable folder is a ConfigError."""
    out = run.output_path
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(f"--output-dir: expected a folder, but {str(exc.filename or out)!r} is a file") from exc
    except PermissionError as exc:
        raise ConfigError(f"--output-dir: cannot create {str(out)!r} (permission denied at "
                          f"{str(exc.filename or out)!r})") from exc
    if not out.is_dir():
        raise ConfigError(f"--output-dir: expected a folder, got {str(out)!r} (not a folder)")
    return out


#: seconds to wait for the leftover child processes of a dead run to release its lock
ORPHAN_WAIT_S = 30.0


def _recorded_pid_dead(holder: str) -> bool:
    """True when the lock text names a PID (``"PID 123, ..."``) that no longer runs."""
    if not holder.startswith("PID "):
        return False
    try:
        pid = int(holder.split()[1].rstrip(","))
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if sys.platform.startswith("win"):
        return True  # os.kill(pid, 0) would terminate it on Windows; only used for a log message
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run's output folder, held until :meth:`release` (or the process's death)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: Optional[int] = None

    def _holder(self, fd: int) -> str:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 4096).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as exc:
            raise ConfigError(f"--output-dir: {str(self.out_dir)!r} is not writable (permission denied); "
                              f"expected a folder this user can write to") from exc
        except OSError as exc:
            raise ConfigError(f"--output-dir: cannot write to {str(self.out_dir)!r}: {exc.strerror}") from exc
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    import msvcrt

                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                holder = self._holder(fd) or "PID unknown"
                # a killed run's DataLoader / worker processes inherit the lock and hold it until they notice
                # their parent is gone (seconds): wait for them when the recorded owner is dead
                if _recorded_pid_dead(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
            os.close(fd)
            raise ConfigError(f"--output-dir: {str(self.out_dir)!r} is in use by another run ({holder}); "
                              f"wait for it to finish, stop it, or pass another --output-dir") from None
        previous = self._holder(fd)
        if _recorded_pid_dead(previous):
            logger.info("taking over the lock of a run that is no longer running (%s)", previous)
        self._fd = fd
        self._write(f"PID {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                    f"python -m training {' '.join(sys.argv[1:])}"[:1000])
        os.environ[LOCK_ENV] = str(self.path.resolve())  # for the worker processes this command starts
        return self

    def _write(self, text: str) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, text.encode("utf-8"))

    def release(self) -> None:
        """Unlock; the (emptied) file stays, so no other process can ever lock a file that is being removed."""
        if self._fd is None:
            return
        try:
            self._write("")
        except OSError:
            pass
        os.close(self._fd)  # closing releases flock / msvcrt locks
        self._fd = None
        if os.environ.get(LOCK_ENV) == str(self.path.resolve()):
            del os.environ[LOCK_ENV]

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def held_by_launcher(out_dir: Path) -> bool:
    """True in a worker process whose launching process holds the lock of ``out_dir``."""
    return os.environ.get(LOCK_ENV) == str((Path(out_dir) / LOCK_NAME).resolve())


# ---------------------------------------------------------------------------------------------- previous run
def _stage_dirs(run: RunConfig, first_stage: int) -> list[Path]:
    return [run.output_path / f"stage{s}" for s in (0, 1, 2) if s >= first_stage]


def previous_run(run: RunConfig, first_stage: int) -> list[Path]:
    """Outputs of an earlier run that a fresh start from ``first_stage`` would overwrite or build on: that
    stage's folder and every later one's (non-empty), the exported file, ``report/`` and ``timings.json``.
    The data folder and ``config.yaml`` are not part of it (inputs; the config is rewritten by every run)."""
    found = [d for d in _stage_dirs(run, first_stage) if d.is_dir() and any(d.iterdir())]
    export = Path(run.resolve(run.export.filename))
    for p in (export, run.output_path / "report", run.output_path / "timings.json"):
        if p.exists():
            found.append(p)
    return found


def describe(paths: list[Path], root: Path) -> str:
    def name(p: Path) -> str:
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = str(p)
        return rel + ("/" if p.is_dir() else "")

    return ", ".join(name(p) for p in paths)


def remove_previous_run(run: RunConfig, first_stage: int) -> list[Path]:
    """Delete what :func:`previous_run` lists; returns it."""
    found = previous_run(run, first_stage)
    if found:
        logger.warning("--overwrite: removing the previous run's %s in %s (the data folder is kept)",
                       describe(found, run.output_path), run.output_path)
    for p in found:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return found
