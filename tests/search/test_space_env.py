import dataclasses

import numpy as np
import pytest

from ajpq.core.budget import Budget, budget_value, fit_latency_model
from ajpq.core.cost import CostModel
from ajpq.search.config import SearchConfig, SpaceSection
from ajpq.search.context import prepare_context
from ajpq.search.env import CompressionEnv
from ajpq.search.space import action_to_knobs


def test_action_maps_onto_knob_ranges():
    space = SpaceSection(
        max_sparsity=0.5,
        min_weight_bits=2,
        max_weight_bits=8,
        min_act_bits=4,
        max_act_bits=8,
        max_spread=2,
    )
    low = action_to_knobs(np.zeros(4), space)
    high = action_to_knobs(np.ones(4), space)
    assert (low.sparsity, low.weight_bits, low.act_bits, low.spread) == (0.0, 2, 4, 0.0)
    assert (high.sparsity, high.weight_bits, high.act_bits, high.spread) == (0.5, 8, 8, 2.0)
    with pytest.raises(ValueError, match="4 values"):
        action_to_knobs(np.zeros(3), space)


class _Recorder:
    """A stand-in ``evaluate``: the env's own logic is tested without Ray."""

    def __call__(self, policy):
        self.last_policy = policy
        return {"reward": -0.5, "accuracy": 0.5}


def test_env_episode_meets_budget_and_observes_spending(tmp_path, model_cache, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {"budget": {"kind": "bitops", "value": 0.05}, "output_dir": str(tmp_path)}
    )
    context, _ = prepare_context(config)
    scorer = _Recorder()
    env = CompressionEnv(context, scorer)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    rng = np.random.default_rng(0)
    steps, done, spent = 0, False, []
    while not done:
        obs, reward, done, _, info = env.step(rng.uniform(0, 1, 4).astype(np.float32))
        spent.append(obs[-7])
        steps += 1
    assert steps == len(env.order) == len(env.graph.groups)
    assert reward == -0.5 and info["accuracy"] == 0.5
    assert spent == sorted(spent)  # spending only grows as groups are decided
    policy = scorer.last_policy
    assert budget_value(policy, Budget("bitops", 0.05), CostModel(env.graph)) <= 0.05


def test_an_episode_that_under_spends_is_filled_unless_turned_off(
    tmp_path, model_cache, monkeypatch
):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    budget = Budget("size", 0.1)
    used = {}
    for fill in (True, False):
        config = SearchConfig.from_dict(
            {
                "budget": budget.to_dict(),
                "space": {"fill_budget": fill},
                "output_dir": str(tmp_path),
            }
        )
        context, _ = prepare_context(config)
        scorer = _Recorder()
        env = CompressionEnv(context, scorer)
        env.play(np.tile([0.3, 0.0, 0.0, 0.0], (len(env.order), 1)))  # 30% pruned, 2 bits
        policy = scorer.last_policy
        used[fill] = budget_value(policy, budget, CostModel(env.graph))
        pruned = [np.asarray(lp.weight_bits) == 0 for lp in policy.layers]
        used[fill, "pruned"] = sum(int(p.sum()) for p in pruned)
    assert used[False] < 0.1 * 0.6  # the agent's policy leaves most of the budget
    assert 0.1 * 0.95 < used[True] <= 0.1  # filled: the budget binds
    assert used[True, "pruned"] == used[False, "pruned"]  # filling never unprunes


def test_latency_budget_is_observed_as_the_macs_fraction_it_allows(
    tmp_path, model_cache, monkeypatch
):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {"budget": {"kind": "latency", "value": 100.0}, "output_dir": str(tmp_path)}
    )
    context, _ = prepare_context(config)
    model = fit_latency_model(context.model, context.graph)
    fp32_macs = CostModel(context.graph).fp32_macs
    # set the ceiling to the latency the fitted model predicts for 40% of the fp32 MACs
    ceiling = model.predict_macs(0.4 * fp32_macs)
    budget = dataclasses.replace(config.budget, value=ceiling)
    context = dataclasses.replace(
        context.with_latency_model(model, "cpu"),
        config=dataclasses.replace(config, budget=budget),
    )
    env = CompressionEnv(context, _Recorder())
    obs, _ = env.reset(seed=0)
    expected = (ceiling - model.intercept_ms) / model.ms_per_mac / fp32_macs
    assert expected == pytest.approx(0.4)
    assert obs[-5] == pytest.approx(min(max(expected, 0.0), 1.0), rel=1e-5)
    assert obs[-6] == pytest.approx(1.0, rel=1e-5)  # nothing decided: all MACs still held


def test_large_datasets_are_read_on_each_node_and_a_missing_path_names_node_and_path(
    tmp_path, model_cache, monkeypatch
):
    import socket

    from ajpq.run.context_source import UriSource
    from ajpq.search.context import NodeLocalData, ShippedData, data_source_for
    from ajpq.task.data import DataConfig, DatasetName

    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict({"output_dir": str(tmp_path)})
    context, splits = prepare_context(config)
    shipped = data_source_for(config, splits)
    assert isinstance(shipped, ShippedData) and shipped.load() is splits
    missing = NodeLocalData(DataConfig(DatasetName.IMAGEFOLDER, path=str(tmp_path / "imagenet")))
    with pytest.raises(FileNotFoundError, match=f"node {socket.gethostname()}: data.path"):
        missing.load()
    # the shared-storage variant round-trips the context and data through a file
    source = UriSource.write(str(tmp_path / "shared" / "context.pt"), context, shipped)
    again = source.context()
    assert again.graph.signature == context.graph.signature
    assert again.fp32_val_accuracy == context.fp32_val_accuracy
    assert len(source.data().load().train) == len(splits.train)
    with pytest.raises(FileNotFoundError, match="context_uri must be storage"):
        UriSource(str(tmp_path / "nowhere.pt")).context()


@pytest.mark.parametrize("precision", ["mixed", "layer", "fixed"])
@pytest.mark.parametrize("kind", ["size", "bitops"])
def test_every_channel_stays_in_the_configured_bit_range(
    tmp_path, model_cache, monkeypatch, precision, kind
):
    """Spread, wall and fill included: over random episodes at a tight budget, every kept
    channel's bits lie in [min_weight_bits, max_weight_bits], every activation in
    [min_act_bits, max_act_bits]."""
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {
            "budget": {"kind": kind, "value": 0.06},
            "space": {
                "min_weight_bits": 3,
                "max_weight_bits": 6,
                "min_act_bits": 4,
                "max_act_bits": 6,
                "max_spread": 3.0,
                "precision": precision,
            },
            "output_dir": str(tmp_path),
        }
    )
    context, _ = prepare_context(config)
    scorer = _Recorder()
    env = CompressionEnv(context, scorer)
    rng = np.random.default_rng(1)
    widths, acts = set(), set()
    for _ in range(12):
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(rng.uniform(0, 1, 4).astype(np.float32))
        for lp in scorer.last_policy.layers:
            widths |= {b for b in lp.weight_bits if b > 0}
            acts.add(lp.act_bits)
        assert budget_value(scorer.last_policy, config.budget, CostModel(env.graph)) <= 0.06
    assert widths and min(widths) >= 3 and max(widths) <= 6, sorted(widths)
    assert min(acts) >= 4 and max(acts) <= 6, sorted(acts)
