"""The one loader of ``package.module:attr`` specs (model factories, scorers).

Specs written before the package had floors (``ajpq.scoring:score_policy`` in configs and run
folders) keep working: their modules are mapped to where the code lives now.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["MOVED_MODULES", "load_object"]

# old module path -> new one (the flat layout before ajpq.core / task / export / search / run)
MOVED_MODULES = {
    "ajpq.scoring": "ajpq.task.scoring",
    "ajpq.models": "ajpq.task.models",
    "ajpq.data": "ajpq.task.data",
    "ajpq.train": "ajpq.task.train",
    "ajpq.importance": "ajpq.core.importance",
}


def load_object(spec: str, what: str, install_hint: str) -> Callable[..., Any]:
    """The callable ``package.module:attr`` names. A ValueError starting with ``what`` (the
    config key or the object) says what to change; ``install_hint`` how to make it importable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what}: {spec!r} is not of the form package.module:function")
    module_name = MOVED_MODULES.get(module_name, module_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"{what}: cannot import {module_name!r} ({error}); {install_hint}"
        ) from None
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ValueError(f"{what}: {module_name} has no function {attribute!r}")
    return found
