"""The samplers TWGTM offers, in one place: the pipeline, the Sampler node and the CLI all use this list.

Importing this module does not import diffusers (the ComfyUI node list is built from ``SCHEDULER_NAMES``
before any model is loaded); :func:`make_scheduler` imports it when a scheduler is made.
"""
from __future__ import annotations

from .errors import InputError

#: name -> diffusers class name; the first is the default (the paper's DDIM, eta 1)
_CLASSES = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",  # DPM-Solver++(2M)
    "euler": "EulerDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(_CLASSES)
DEFAULT_SCHEDULER = SCHEDULER_NAMES[0]
_ALIASES = {"dpmpp": "dpm++", "dpm_solver++": "dpm++", "dpmpp_2m": "dpm++"}


def canonical_scheduler(name: str) -> str:
    """A scheduler name or alias (any case) -> its name in :data:`SCHEDULER_NAMES`."""
    if not isinstance(name, str):
        raise InputError(f"scheduler: expected one of {list(SCHEDULER_NAMES)} (a str), got {name!r}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _CLASSES:
        raise InputError(f"scheduler: expected one of {list(SCHEDULER_NAMES)}, got {name!r}")
    return key


def scheduler_class(name: str):
    import diffusers

    return getattr(diffusers, _CLASSES[canonical_scheduler(name)])


TIMESTEP_SPACING = "trailing"  # the first timestep is always num_train_timesteps - 1 (docs/DESIGN.md)


def make_scheduler(name: str, config: dict):
    """A fresh scheduler per call (no state shared between runs, so an interrupted run harms nothing).

    Every scheduler is made here, with ``timestep_spacing="trailing"``: its first timestep is
    ``num_train_timesteps - 1`` for any number of steps, so even one step starts from pure noise at t = T
    (the default "leading" spacing of DDIM/DDPM starts 1 step at t = 1 and Euler's "linspace" at t = 0).
    """
    key = canonical_scheduler(name)
    kwargs = dict(config, timestep_spacing=TIMESTEP_SPACING)
    if key == "dpm++":
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2)
    return scheduler_class(key).from_config(kwargs)
