"""HAQ's latency lookup table: each layer timed alone at a few kept-channel fractions, in float
and (in a runtime with integer kernels) in integer form, on the device and runtime that time the
search's policies; a policy's latency is the sum of its layers' interpolated times plus the
rest of the network (what the whole network takes beyond its layers' sum, measured at the same
fractions: negative where a layer timed alone pays a call's overhead the network pays once).

A layer's time is interpolated over its kept MACs (what the policy keeps of its inputs and
outputs, from :class:`ajpq.core.cost.CostModel`), so pruned inputs count as pruned outputs do;
below the smallest fraction measured, the smallest's time is kept (a small layer costs its
overhead). Which form a layer takes: ``integer`` (measured as 8-bit: integer kernels in onnxruntime, a
quantized input's extra ops in torch) when ``forms`` holds it and the layer's activations and
every kept weight are 8 bits or fewer; else ``float``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ajpq.core.apply import input_keep_masks
from ajpq.core.builder import LayerKnobs
from ajpq.core.cost import CostModel
from ajpq.core.graph import LayerInfo, ModelGraph
from ajpq.core.importance import ImportanceCriterion, layer_importance
from ajpq.core.materialize import QuantizedInput
from ajpq.core.policy import CompressionPolicy
from ajpq.core.quantize import FLOAT_BITS, ActivationQuantizer
from ajpq.core.snap import build_snapped

__all__ = [
    "LatencyTable",
    "fit_latency_table",
    "layer_module",
    "with_input_quantizer",
    "FLOAT",
    "INTEGER",
    "ROUNDS",
]

FLOAT, INTEGER = "float", "integer"
FRACTIONS = (0.3, 0.55, 0.8, 1.0)
ROUNDS = 5  # timings per entry, taken in turn over the whole table; the fastest is kept
_MACS = 2  # the MACs column of CostModel.layer_costs

LayerTimer = Callable[[nn.Module, tuple[int, ...], str], float]
NetworkTimer = Callable[[CompressionPolicy, str], float]


@dataclass(frozen=True)
class LatencyTable:
    """Per form, per layer: the kept-MACs fractions measured and the ms at each; per form, the
    rest of the network at the whole network's MACs fractions."""

    forms: tuple[str, ...]
    layer_fractions: dict[str, list[list[float]]]
    layer_ms: dict[str, list[list[float]]]
    network_fractions: dict[str, list[float]]
    rest_ms: dict[str, list[float]]

    def predict(self, policy: CompressionPolicy, costs: CostModel) -> float:
        """Predicted ms of ``policy``'s deployable network."""
        kept = costs.layer_costs(policy)[:, _MACS]
        total = 0.0
        integer = 0
        for index, (layer, lp) in enumerate(zip(costs.graph.layers, policy.layers)):
            form = self.form_of(lp.weight_bits, lp.act_bits)
            integer += form == INTEGER
            fraction = kept[index] / max(layer.macs, 1)
            total += float(
                np.interp(fraction, self.layer_fractions[form][index], self.layer_ms[form][index])
            )
        form = INTEGER if INTEGER in self.forms and 2 * integer >= len(policy.layers) else FLOAT
        whole = kept.sum() / max(costs.fp32_macs, 1)
        rest = float(np.interp(whole, self.network_fractions[form], self.rest_ms[form]))
        return max(total + rest, 1e-6)

    def form_of(self, weight_bits: tuple[int, ...], act_bits: int) -> str:
        if INTEGER not in self.forms or act_bits >= FLOAT_BITS:
            return FLOAT
        kept = [b for b in weight_bits if b > 0]
        return INTEGER if kept and max(kept) <= 8 else FLOAT

    def macs_for(self, ms: float, costs: CostModel) -> float:
        """The MACs a uniformly pruned integer (or float) network may keep to take ``ms``: the
        wall's first target, refined against :meth:`predict`."""
        form = INTEGER if INTEGER in self.forms else FLOAT
        whole = np.asarray(self.network_fractions[form])
        layers = np.asarray(
            [
                [np.interp(f, fr, t) for f in whole]
                for fr, t in zip(self.layer_fractions[form], self.layer_ms[form])
            ]
        ).sum(axis=0)
        times = layers + np.asarray(self.rest_ms[form])
        fraction = float(np.interp(ms, times, whole)) if np.all(np.diff(times) > 0) else 1.0
        return fraction * costs.fp32_macs

    def to_dict(self) -> dict:
        return {"kind": "table", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        fields = {k: v for k, v in data.items() if k != "kind"}
        return cls(**{**fields, "forms": tuple(fields["forms"])})


def layer_module(model: nn.Module, layer: LayerInfo, kept_in: int, kept_out: int) -> nn.Module:
    """The layer alone with ``kept_in`` inputs and ``kept_out`` outputs (a conv keeps its
    kernel, stride, padding and, depthwise, one group per channel), with a bias as a folded
    BatchNorm leaves one."""
    original = model.get_submodule(layer.name)
    if isinstance(original, nn.Linear):
        return nn.Linear(kept_in, kept_out)
    depthwise = original.groups > 1 and original.groups == original.in_channels
    groups = kept_in if depthwise else original.groups
    if not depthwise and original.groups > 1:  # grouped: whole groups kept
        kept_in = max(groups, kept_in // groups * groups)
        kept_out = max(groups, kept_out // groups * groups)
    if depthwise:
        kept_out = kept_in * (original.out_channels // original.in_channels)
    return nn.Conv2d(
        kept_in,
        kept_out,
        original.kernel_size,
        stride=original.stride,
        padding=original.padding,
        dilation=original.dilation,
        groups=groups,
    )


def with_input_quantizer(module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``module`` behind a calibrated 8-bit activation quantizer, as a materialized layer with a
    quantized input runs in torch."""
    act = ActivationQuantizer(8).train()
    with torch.no_grad():
        act(torch.randn((2, *input_shape)))
    return QuantizedInput(act.eval(), module).eval()


def fit_latency_table(
    model: nn.Module,
    graph: ModelGraph,
    time_layer: LayerTimer,
    time_network: NetworkTimer,
    forms: tuple[str, ...] = (FLOAT,),
    fractions: tuple[float, ...] = FRACTIONS,
    rounds: int = ROUNDS,
    channel_multiple: int = 1,
) -> LatencyTable:
    """Time every layer alone (``time_layer(module, input_shape, form)``) and the whole
    network (``time_network(policy, form)``) at uniform kept fractions, per form. Every entry is
    the fastest of ``rounds`` timings taken in turn over the whole table (round 1 of every entry,
    then round 2, ...): load on the machine comes in bursts of seconds that slow every timing
    inside them, so the fastest of rounds spread over the fit is the entry's own time. (With the
    median of 3, two fits a minute apart predicted the Fashion-MNIST CNN's policies 17-30%
    apart; with the fastest of 5, 0.2-6.9% apart: ``results/deploy.md``.) With
    ``channel_multiple`` the uniform networks keep whole multiples of channels
    (:func:`ajpq.core.snap.snap_channels`), as the search's policies do."""
    costs = CostModel(graph)
    importance = layer_importance(model, graph, ImportanceCriterion.L2)
    plans: list[tuple[str, CompressionPolicy, list[tuple[nn.Module, tuple[int, ...]]]]] = []
    for form in forms:
        bits = 8 if form == INTEGER else FLOAT_BITS
        for fraction in fractions:
            knobs = LayerKnobs(1.0 - fraction, bits, bits)
            policy = build_snapped(model, graph, knobs, importance, channel_multiple)
            masks = input_keep_masks(policy, graph)
            modules = []
            for index, (layer, lp) in enumerate(zip(graph.layers, policy.layers)):
                kept_out = sum(1 for b in lp.weight_bits if b > 0)
                mask = masks.get(index)
                kept_in = int(mask.sum()) if mask is not None else layer.in_channels
                module = layer_module(model, layer, kept_in, kept_out).eval()
                shape = (kept_in,) if isinstance(module, nn.Linear) else (kept_in, *layer.input_hw)
                modules.append((module, shape))
            plans.append((form, policy, modules))
    # rounds x (every layer of every plan, then the plan's network)
    layer_times: list[list[list[float]]] = [[[] for _ in graph.layers] for _ in plans]
    network_times: list[list[float]] = [[] for _ in plans]
    for _ in range(max(1, rounds)):
        for number, (form, policy, modules) in enumerate(plans):
            for index, (module, shape) in enumerate(modules):
                layer_times[number][index].append(time_layer(module, shape, form))
            network_times[number].append(time_network(policy, form))

    layer_fractions: dict[str, list[list[float]]] = {f: [] for f in forms}
    layer_ms: dict[str, list[list[float]]] = {f: [] for f in forms}
    network_fractions: dict[str, list[float]] = {f: [] for f in forms}
    rest_ms: dict[str, list[float]] = {f: [] for f in forms}
    for form in forms:
        per_layer: list[list[tuple[float, float]]] = [[] for _ in graph.layers]
        for number, (plan_form, policy, _) in enumerate(plans):
            if plan_form != form:
                continue
            kept = costs.layer_costs(policy)[:, _MACS]
            summed = 0.0
            for index, layer in enumerate(graph.layers):
                ms = float(np.min(layer_times[number][index]))
                summed += ms
                per_layer[index].append((kept[index] / max(layer.macs, 1), ms))
            network_fractions[form].append(kept.sum() / max(costs.fp32_macs, 1))
            # negative where timing a layer alone costs more than it does inside the network
            # (a call's overhead, paid once per layer here): the rest corrects the sum
            rest_ms[form].append(float(np.min(network_times[number])) - summed)
        for points in per_layer:
            points.sort()
            layer_fractions[form].append([p[0] for p in points])
            layer_ms[form].append([p[1] for p in points])
        order = np.argsort(network_fractions[form])
        network_fractions[form] = [float(network_fractions[form][i]) for i in order]
        rest_ms[form] = [float(rest_ms[form][i]) for i in order]
    return LatencyTable(forms, layer_fractions, layer_ms, network_fractions, rest_ms)
