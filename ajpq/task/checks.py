"""Checks of what the user brings, each failing with one line that names the object: the
model factory's network (it must take the data's input and have one output per class), a
weights file (a state dict of this network), the scorer (called once before a search)."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajpq.core.redact import redact

__all__ = ["cause", "check_model", "check_scorer", "is_builtin", "load_weights"]


def cause(error: BaseException) -> str:
    """``Type: first line of the message`` (cut, secrets masked) for one-line errors."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {redact(text)[:200]}".rstrip(": ")


def load_weights(
    model: nn.Module, path: str | Path, replaceable: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Load the state-dict file ``path`` into ``model``; a ValueError names the file and what
    is wrong with it (not a state dict, a pickled object, keys or shapes of another network).

    Tensors of the ``replaceable`` modules (the classifier head, the stem) whose shapes differ
    (another number of classes or input channels) are left as the model has them: those
    modules are returned, to be trained before the search."""
    label = f"weights {redact(path)}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file") from None
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise ValueError(
                f"{label}: not a state dict (it holds a pickled object; save "
                "model.state_dict() instead of the model)"
            ) from None
        raise ValueError(f"{label}: not a state dict ({cause(error)})") from None
    except Exception as error:  # noqa: BLE001 - random bytes, a truncated file, ...
        raise ValueError(f"{label}: not a state dict ({cause(error)})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{label}: not a state dict (it holds a {type(state).__name__}; save "
            "model.state_dict())"
        )
    own = model.state_dict()
    strangers = sorted(set(state) ^ set(own))
    if strangers:
        raise ValueError(
            f"{label}: {len(strangers)} keys do not match the model, e.g. {strangers[0]} "
            "(saved from another network?)"
        )
    shapes = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    fresh = tuple(sorted({m for m in replaceable for k in shapes if k.startswith(f"{m}.")}))
    kept = [k for k in shapes if not any(k.startswith(f"{m}.") for m in fresh)]
    if kept:
        key = kept[0]
        raise ValueError(
            f"{label}: {len(kept)} tensors have other shapes than the model's, e.g. {key} "
            f"{tuple(state[key].shape)} vs {tuple(own[key].shape)} (another variant of the network?)"
        )
    if fresh:  # e.g. a 1000-class head on 4 classes: the head stays new, the rest loads
        prefixes = tuple(f"{m}." for m in fresh)
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
        model.load_state_dict(state, strict=False)
        return fresh
    model.load_state_dict(state)
    return ()


def check_model(
    model: nn.Module, label: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Run ``model`` once on a zero batch of the data's shape: a ValueError names the model
    when it cannot take the input or has another number of outputs than the data's classes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as error:  # noqa: BLE001 - the user's code: one line naming it
        raise ValueError(
            f"model {label!r} cannot run on the data's input {tuple(input_shape)}: {cause(error)}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model {label!r} returns {shape} for a batch of 2; a classifier returns (batch, classes)"
        )
    if out.shape[1] != num_classes:
        raise ValueError(
            f"model {label!r} has {out.shape[1]} outputs, the data has {num_classes} classes"
        )


def is_builtin(spec: str) -> bool:
    """A ``package.module:attr`` of ajpq itself (checked by ajpq's own tests)."""
    return spec.split(":", 1)[0].split(".")[0] == "ajpq"


def check_scorer(
    spec: str,
    scorer: Any,
    call: tuple[Any, ...],
    scorer_args: Mapping[str, Any],
) -> None:
    """Call the user's scorer once with ``call`` = (model, policy, graph, splits, settings,
    device) before a search: a signature that does not take them, an exception or a result that
    is not a :class:`~ajpq.task.scoring.PolicyScore` is one line naming the scorer."""
    from ajpq.task.scoring import PolicyScore

    label = f"evaluator.scorer {spec!r}"
    try:
        inspect.signature(scorer).bind(*call, **scorer_args)
    except TypeError as error:
        raise ValueError(
            f"{label} does not take (model, policy, graph, splits, settings, device"
            f"{', **scorer_args' if scorer_args else ''}): {redact(error)[:200]}"
        ) from None
    except ValueError:  # no signature to read (a builtin): the call below tells
        pass
    try:
        score = scorer(*call, **scorer_args)
    except Exception as error:  # noqa: BLE001 - the user's code: one line naming it
        raise ValueError(f"{label} raised {cause(error)} (called once before the search)") from None
    if not isinstance(score, PolicyScore):
        raise ValueError(
            f"{label} returned {type(score).__name__}, not an ajpq.task.scoring.PolicyScore"
        )
