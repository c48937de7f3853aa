"""What the ComfyUI that imported the pack does, found by asking it rather than by reading its version.

The pack supports ComfyUI 0.3.64 (Oct 2025) to 0.33.0 (Aug 2026), the two hosts its CI runs (docs/COMFYUI.md,
"Versions"). One difference between them changes what the pack must declare, and one probe tells which side of
it the running host is on:

* **Combo values.** ComfyUI 0.3.64 checks a combo value at ``POST /prompt`` only when the input's *type* is its
  list of options (the V1 form); a V3 combo's type is ``"COMBO"`` and an unknown value (category ``"shirt"``)
  reaches ``execute`` unchecked. Upstream PR #11345 (Dec 2025, ComfyUI v0.21 and later; 0.33.0 here) made the
  server check ``"COMBO"`` values against the input's ``options`` itself, and in the same change it started to
  expand a V3 node's inputs by looking each input's type up in a dict (``parse_class_inputs`` in the API's
  ``_io`` module), so a list-typed input became ``TypeError: unhashable type: 'list'`` and the whole
  prompt is rejected. Because one change did both, one question decides the declaration:
  :func:`checks_combo_values`. Yes (0.33.0): declare ``"COMBO"``, the host checks it. No (0.3.64): declare the
  list of options, the form that host checks. Unknown (the probe could not run): ``"COMBO"``, which every host
  accepts; on a host that does not check it, a wrong value is then an error when the node runs
  (``common.check_option``), not when the prompt is queued.

The probe validates a one-input throwaway prompt with the host's own ``execution.validate_inputs`` and looks
for the ``value_not_in_list`` error. It uses ``execution`` and ``nodes`` as the host has already imported them
(ComfyUI's ``main.py`` imports both before it loads custom nodes) and imports nothing itself.
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

_PROBE_NODE = "TWGTMHostProbe"


class _ComboProbe:
    """A V1 node with one ``"COMBO"`` input whose only option is ``"a"``; it is never run."""

    RETURN_TYPES = ()
    FUNCTION = "run"
    CATEGORY = "_"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("COMBO", {"options": ["a"]})}}


def _validate_probe(execution, registry: dict) -> list[dict]:
    """The errors the host's prompt validation gives for ``value="b"`` on :class:`_ComboProbe`."""
    prompt = {"1": {"class_type": _PROBE_NODE, "inputs": {"value": "b"}}}
    registry[_PROBE_NODE] = _ComboProbe
    try:
        # validate_inputs is a coroutine function; for a node with no links and no validate function it
        # finishes without awaiting anything, so it is driven here directly (ComfyUI imports custom nodes
        # while its own event loop runs, where asyncio.run is not allowed).
        coro = execution.validate_inputs("twgtm-host-probe", prompt, "1", {})
        try:
            coro.send(None)
        except StopIteration as done:
            _valid, errors, _node = done.value
            return list(errors)
        coro.close()
        raise RuntimeError("execution.validate_inputs awaited something for a node without links")
    finally:
        registry.pop(_PROBE_NODE, None)


def checks_combo_values() -> bool | None:
    """Does this host check a ``"COMBO"`` input's value against its options at ``POST /prompt``?

    ``True`` for ComfyUI >= v0.21 (0.33.0 here), ``False`` for older hosts (0.3.64), ``None`` when the host's
    ``execution`` / ``nodes`` modules are not loaded or the probe fails (the reason is logged).
    """
    execution, nodes = sys.modules.get("execution"), sys.modules.get("nodes")
    registry = getattr(nodes, "NODE_CLASS_MAPPINGS", None)
    if execution is None or not hasattr(execution, "validate_inputs") or not isinstance(registry, dict):
        logger.info("TWGTM: ComfyUI's execution/nodes modules are not loaded; combo inputs are declared as COMBO")
        return None
    try:
        errors = _validate_probe(execution, registry)
    except Exception as exc:  # noqa: BLE001 - any failure only means "unknown": the safe declaration is used
        logger.info("TWGTM: could not probe ComfyUI's combo validation (%s: %s); combo inputs are declared as "
                    "COMBO", type(exc).__name__, exc)
        return None
    return any(isinstance(e, dict) and e.get("type") == "value_not_in_list" for e in errors)


# Probed once, when the pack is imported (ComfyUI imports a pack once per start).
CHECKS_COMBO_VALUES: bool | None = checks_combo_values()
