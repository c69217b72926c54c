"""The hot loop makes no device-to-host sync: every read of a tensor's value on the host
(``bool``, ``float``, ``int``, ``item``, ``tolist``) is counted with patched tensor methods.
On a GPU each one would stall the stream; the quantizer's forward must make none, a finetune
reads its loss every ``CHECK_EVERY`` steps and at the end, an evaluation once."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import TensorDataset

from ajpq.core.analysis import analyze
from ajpq.core.apply import apply_policy
from ajpq.core.builder import uniform_policy
from ajpq.core.quantize import ActivationQuantizer
from ajpq.task.models import build_model
from ajpq.task.train import CHECK_EVERY, FinetuneConfig, evaluate, finetune

READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")


@contextlib.contextmanager
def host_reads() -> Iterator[Counter]:
    calls: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name: str):
        original = saved[name]

        def read(self, *args, **kwargs):
            calls[name] += 1
            return original(self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


@pytest.fixture(scope="module")
def simulated():
    model = build_model("resnet18", 10, 3)
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    return apply_policy(model, uniform_policy(graph, 4, 6, "resnet18"), graph)


def test_the_counter_sees_a_read():
    with host_reads() as calls:
        float(torch.ones(()))
        bool(torch.ones(()) > 0)
    assert sum(calls.values()) == 2


def test_quantizer_forward_reads_nothing_back():
    quantizer = ActivationQuantizer(4)
    x = torch.randn(8, 16)
    with host_reads() as calls:
        quantizer.train()
        quantizer(x)  # calibrates
        quantizer(x * 2)  # moving average
        quantizer.eval()
        quantizer(x)
        ActivationQuantizer(3).eval()(x)  # uncalibrated: the batch's own range
    assert sum(calls.values()) == 0, calls


def test_simulated_network_forward_reads_nothing_back(simulated):
    x = torch.randn(4, 3, 32, 32)
    simulated.train()
    simulated(x)
    with host_reads() as calls:
        simulated.train()
        simulated(x)
        simulated.eval()
        simulated(x)
    assert sum(calls.values()) == 0, calls


def test_a_finetune_reads_its_loss_only_when_it_checks():
    model = build_model("digits_cnn", 10, 1)
    graph = analyze(model, torch.zeros(1, 1, 8, 8))
    small = apply_policy(model, uniform_policy(graph, 4, 6, "digits_cnn"), graph)
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    reads = {}
    for steps in (3, CHECK_EVERY + 2):
        with host_reads() as calls:
            finetune(small, data, FinetuneConfig(steps=steps, batch_size=8))
        reads[steps] = sum(calls.values())
    assert reads == {3: 1, CHECK_EVERY + 2: 2}


def test_an_evaluation_reads_once(simulated):
    data = TensorDataset(torch.randn(96, 3, 32, 32), torch.randint(0, 10, (96,)))
    with host_reads() as calls:
        result = evaluate(simulated, data, batch_size=32)
    assert result.samples == 96
    assert sum(calls.values()) == 3  # the three totals, read together at the end


def test_a_nan_loss_is_still_caught():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    data = TensorDataset(torch.randn(32, 12), torch.randint(0, 3, (32,)))
    result = finetune(model, data, FinetuneConfig(steps=CHECK_EVERY * 2, batch_size=8))
    assert result.diverged and result.steps == CHECK_EVERY
