"""The joint policy: per layer, the bit width of every output channel and of the activations.

A channel at 0 bits is pruned; 1..8 bits are quantized; 32 is left in float. A policy names the
model it was built for (name, input shape, a signature of its layers) so it can be replayed
exactly and rejected with a clear message when applied to another model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ajpq.core.quantize import FLOAT_BITS

__all__ = [
    "WEIGHT_BITS",
    "ACT_BITS",
    "LayerPolicy",
    "CompressionPolicy",
]

WEIGHT_BITS: frozenset[int] = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, FLOAT_BITS})
ACT_BITS: frozenset[int] = frozenset({2, 3, 4, 5, 6, 7, 8, FLOAT_BITS})


@dataclass(frozen=True)
class LayerPolicy:
    """Bits of one compressible layer: one entry per output channel, plus the input activation."""

    name: str
    weight_bits: tuple[int, ...]
    act_bits: int = FLOAT_BITS

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_bits", tuple(int(b) for b in self.weight_bits))
        object.__setattr__(self, "act_bits", int(self.act_bits))

    @property
    def kept(self) -> int:
        return sum(1 for b in self.weight_bits if b > 0)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / len(self.weight_bits)

    @property
    def mean_bits(self) -> float:
        kept = [b for b in self.weight_bits if b > 0]
        return sum(kept) / len(kept) if kept else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight_bits": list(self.weight_bits), "act_bits": self.act_bits}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPolicy:
        return cls(
            name=data["name"], weight_bits=tuple(data["weight_bits"]), act_bits=data["act_bits"]
        )


@dataclass(frozen=True)
class CompressionPolicy:
    """A whole-model joint pruning + quantization policy (JSON-serialisable, replayable)."""

    model_name: str
    input_shape: tuple[int, ...]
    signature: str
    layers: tuple[LayerPolicy, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))

    def layer(self, name: str) -> LayerPolicy:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"policy has no layer named {name!r}")

    def replace_layers(self, layers: Sequence[LayerPolicy]) -> CompressionPolicy:
        return CompressionPolicy(self.model_name, self.input_shape, self.signature, tuple(layers))

    def summary(self) -> str:
        """One compact line per layer: ``name: keep k/n, w~b.b, a=bits``."""
        rows = [
            f"{lp.name}: keep {lp.kept}/{len(lp.weight_bits)} w~{lp.mean_bits:.1f} a={lp.act_bits}"
            for lp in self.layers
        ]
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "ajpq.policy/1",
            "model_name": self.model_name,
            "input_shape": list(self.input_shape),
            "signature": self.signature,
            "layers": [lp.to_dict() for lp in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionPolicy:
        if data.get("format") != "ajpq.policy/1":
            raise ValueError(
                f"not an ajpq policy (format={data.get('format')!r}); expected 'ajpq.core.policy/1'"
            )
        return cls(
            model_name=data["model_name"],
            input_shape=tuple(data["input_shape"]),
            signature=data["signature"],
            layers=tuple(LayerPolicy.from_dict(d) for d in data["layers"]),
        )

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON (sorted keys) so equal policies give equal strings."""
        return json.dumps(
            self.to_dict(),
            sort_keys=True,
            indent=indent,
            separators=(",", ":") if indent is None else None,
        )

    @classmethod
    def from_json(cls, text: str) -> CompressionPolicy:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json(indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CompressionPolicy:
        return cls.from_json(Path(path).read_text())
