"""A sweep's configuration: a base search config plus the ``sweep:`` section (grid and random
axes over config keys, samples, concurrency), validated as the search config is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ajpq.core.configtypes import ConfigError, Count, Flag, Rate, config_type, parse, to_plain
from ajpq.search.config import SearchConfig, apply_overrides, read_mapping, set_key

__all__ = ["SweepConfig", "SweepSection", "load_sweep", "parse_sweep_section", "with_values"]


DISTRIBUTIONS = ("uniform", "loguniform", "randint")
# what trials that share experience must have in common: the scores and the agent's
# observations mean the same in every trial only then
SHARED_KEYS = ("model", "weights", "head", "data", "scoring", "space", "method", "budget.kind")


@config_type
class SweepSection:
    """What a sweep varies: ``grid`` (every combination) and ``random`` (``num_samples`` draws
    per grid point: a list of values, or ``{uniform|loguniform|randint: [low, high]}``) over
    any dotted config key; how many searches run at once; the driver CPUs of each."""

    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_.-]+$")] = "sweep"
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    random: dict[str, Any] = Field(default_factory=dict)
    num_samples: Count = 1
    max_concurrent_trials: Count = 1
    trial_cpus: Rate = 1.0  # each search's own process: the agent learns there
    # trials share one journal of scores (no policy scored twice) and, for DDPG, the agent:
    # each trial starts from the networks and replay buffer the last finished trial left
    # (ajpq.run.experience); run trials one at a time (max_concurrent_trials 1) to learn most
    share_experience: Flag = False

    def __post_init__(self) -> None:
        if self.share_experience:
            for key in [*self.grid, *self.random]:
                if any(key == k or key.startswith(f"{k}.") for k in SHARED_KEYS):
                    raise ValueError(
                        f"share_experience: trials share scores and the agent, so they must "
                        f"not vary {key}; sweep it with share_experience false"
                    )
        both = sorted(set(self.grid) & set(self.random))
        if both:
            raise ValueError(f"random: {both[0]} is in grid too; sweep a key one way")
        for key, spec in self.random.items():
            if isinstance(spec, list) and spec:
                continue
            if isinstance(spec, dict) and len(spec) == 1:
                ((kind, bounds),) = spec.items()
                if (
                    kind in DISTRIBUTIONS
                    and isinstance(bounds, list)
                    and len(bounds) == 2
                    and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                    and bounds[0] < bounds[1]
                ):
                    continue
            raise ValueError(
                f"random.{key}: give a list of values or one of "
                "{uniform|loguniform|randint: [low, high]} with numbers low < high"
            )


def with_values(config: SearchConfig, values: dict[str, Any]) -> SearchConfig:
    """``config`` with dotted keys set (``{"budget.value": 0.125}``), validated again."""
    data = config.to_dict()
    for key, value in values.items():
        data = set_key(data, key, value)
    return SearchConfig.from_dict(data)


@config_type
class _SweepPart:  # so errors name sweep.<key>
    sweep: SweepSection


def parse_sweep_section(raw: Any) -> SweepSection:
    """A file's ``sweep:`` section, errors named ``sweep.<key>``."""
    return parse(_SweepPart, {"sweep": raw or {}}).sweep


@dataclass(frozen=True)
class SweepConfig:
    """A base search (every trial starts from it) and what the sweep varies."""

    base: SearchConfig
    sweep: SweepSection

    def trial_config(self, params: dict[str, Any]) -> SearchConfig:
        return with_values(self.base, params)

    def to_dict(self) -> dict[str, Any]:
        return {**self.base.to_dict(), "sweep": to_plain(self.sweep)}


def _check_sweep_values(config: SweepConfig) -> None:
    """Every value a trial may get makes a valid search: fail now, not in trial 7."""
    for section in ("grid", "random"):
        for key, spec in getattr(config.sweep, section).items():
            values = spec if isinstance(spec, list) else next(iter(spec.values()))
            for index, value in enumerate(values):
                try:
                    config.trial_config({key: value})
                except ConfigError as error:
                    raise ConfigError(f"sweep.{section}.{key}[{index}]: {error}") from None


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep file: a search config plus a ``sweep:`` section (see SweepSection)."""
    path, raw = read_mapping(path)
    raw = apply_overrides(raw, overrides or [])
    if "sweep" not in raw:
        raise ConfigError(f"{path} has no sweep: section; run it with ajpq search")
    sweep = parse_sweep_section(raw.pop("sweep"))
    config = SweepConfig(SearchConfig.from_dict(raw), sweep)
    _check_sweep_values(config)
    return config
