"""The pack's Python requirements: found at import, or one log line saying how to install them.

ComfyUI lists a pack's nodes as soon as its ``__init__`` imports, and the TWGTM nodes import the model
code (diffusers, transformers, timm) only when they run. Without this check a pack installed without its
requirements shows its nodes and then fails on run with ``No module named 'diffusers'``. Here the
requirements are looked up once at import (``importlib.util.find_spec``: nothing is imported, so start-up
stays fast); if some are missing, one warning names them and the command that installs them, and the
nodes that need them raise :class:`MissingRequirementError` with the same command when validated or run.
Standard library only, so that this module itself always imports.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys

from ..twgtm.errors import TWGTMError

logger = logging.getLogger(__name__)

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder in custom_nodes/
REQUIREMENTS_FILE = os.path.join(PACK_DIR, "requirements.txt")
# requirements.txt name -> module the pack imports (tests/test_nodes.py checks both lists agree)
REQUIRED_MODULES = {"diffusers": "diffusers", "transformers": "transformers", "timm": "timm",
                    "safetensors": "safetensors", "einops": "einops", "numpy": "numpy"}


class MissingRequirementError(TWGTMError, ModuleNotFoundError):
    """A Python package the node needs is not installed; the message gives the install command."""


def _module_found(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec: it is there
        return True
    except ImportError:  # a parent package or an import hook refuses it
        return False


def find_missing() -> list[str]:
    """Requirement names whose module cannot be found, in requirements.txt order."""
    return [req for req, module in REQUIRED_MODULES.items() if not _module_found(module)]


def _quote(arg: str) -> str:
    return f'"{arg}"' if any(c.isspace() for c in arg) else arg


def install_command() -> str:
    """The command that installs the requirements into the Python running ComfyUI (real paths)."""
    return " ".join(_quote(a) for a in (sys.executable, "-m", "pip", "install", "-r", REQUIREMENTS_FILE))


MISSING: list[str] = find_missing()  # looked up once, at import; a restart picks up new installs


def missing_message(who: str = "TWGTM") -> str:
    names = ", ".join(MISSING)
    return (f"{who} needs the Python package{'s' if len(MISSING) > 1 else ''} {names}, not installed in the "
            f"Python that runs ComfyUI. Install the pack's requirements with: {install_command()} "
            "and restart ComfyUI.")


def warn_if_missing() -> None:
    """At import: one warning line if requirements are missing (the nodes are still listed)."""
    if MISSING:
        logger.warning("%s The TWGTM nodes are listed but cannot run until then.", missing_message())


def require(who: str) -> None:
    """Raise :class:`MissingRequirementError` naming the missing modules and the install command."""
    if MISSING:
        raise MissingRequirementError(missing_message(who), name=MISSING[0])
