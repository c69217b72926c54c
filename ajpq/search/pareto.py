"""Pareto fronts over evaluated policies (plain Python): accuracy against compression."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["pareto_front", "dominates"]

T = TypeVar("T")


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` is at least as good as ``b`` in both objectives (both maximised) and better in one."""
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def pareto_front(items: Sequence[T], objectives: Callable[[T], tuple[float, float]]) -> list[T]:
    """The items no other item dominates, both objectives maximised (negate one to minimise),
    sorted by the first objective, best first. Duplicated points are kept once."""
    ranked = sorted(items, key=lambda item: objectives(item), reverse=True)
    front: list[T] = []
    best_second = float("-inf")
    for item in ranked:
        point = objectives(item)
        if point[1] > best_second:
            front.append(item)
            best_second = point[1]
    return front
