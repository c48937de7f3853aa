"""The progress bar of every training loop (stage 0, 1 and 2): tqdm on the local main process only."""
from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(accelerator, start: int, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, disable=not accelerator.is_local_main_process,
                dynamic_ncols=True, mininterval=2.0)
