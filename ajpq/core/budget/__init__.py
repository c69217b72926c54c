"""Budgets: the types, the wall that squeezes a policy inside a budget, and the filler that
spends what a policy leaves on bits."""

from ajpq.core.budget.fill import fill_budget
from ajpq.core.budget.state import PolicyState, quant_error
from ajpq.core.budget.types import (
    MIN_ACT_BITS,
    QUANT_TOP_BITS,
    Budget,
    BudgetKind,
    Precision,
    WallRules,
    budget_value,
    check_precision,
)
from ajpq.core.budget.wall import Squeezer, enforce_budget, floor_policy
from ajpq.core.latency import LatencyModel, fit_latency_model

__all__ = [
    "MIN_ACT_BITS",
    "QUANT_TOP_BITS",
    "Budget",
    "BudgetKind",
    "LatencyModel",
    "PolicyState",
    "Precision",
    "Squeezer",
    "WallRules",
    "budget_value",
    "check_precision",
    "enforce_budget",
    "fill_budget",
    "fit_latency_model",
    "floor_policy",
    "quant_error",
]
