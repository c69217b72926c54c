import json

import numpy as np
import pytest

from ajpq.budget import Budget, budget_value
from ajpq.config import SearchConfig, SpaceSection
from ajpq.cost import CostModel
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


class _FakeEnv(CompressionEnv):
    """Scores with a closed-form stand-in, so the env's own logic is tested without Ray."""

    def evaluate(self, policy_json):
        self.last_policy_json = policy_json
        return {"reward": -0.5, "accuracy": 0.5}


def test_env_episode_meets_budget_and_observes_spending(tmp_path, model_cache, monkeypatch):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {"budget": {"kind": "bitops", "value": 0.05}, "output_dir": str(tmp_path)}
    )
    prepare_context(config, tmp_path / "context")
    env = _FakeEnv({"context_dir": str(tmp_path / "context")})
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
    from ajpq.policy import CompressionPolicy

    policy = CompressionPolicy.from_json(env.last_policy_json)
    assert budget_value(policy, Budget("bitops", 0.05), CostModel(env.graph)) <= 0.05


def test_latency_budget_is_observed_as_the_macs_fraction_it_allows(
    tmp_path, model_cache, monkeypatch
):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {"budget": {"kind": "latency", "value": 100.0}, "output_dir": str(tmp_path)}
    )
    context = prepare_context(config, tmp_path / "context")
    model = context.latency_model
    fp32_macs = CostModel(context.graph).fp32_macs
    # set the ceiling to the latency the fitted model predicts for 40% of the fp32 MACs
    ceiling = model.predict(0.4 * fp32_macs)
    meta_path = tmp_path / "context" / "context.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["budget"]["value"] = ceiling
    meta_path.write_text(json.dumps(meta))
    env = _FakeEnv({"context_dir": str(tmp_path / "context")})
    obs, _ = env.reset(seed=0)
    expected = (ceiling - model.intercept_ms) / model.ms_per_mac / fp32_macs
    assert expected == pytest.approx(0.4)
    assert obs[-5] == pytest.approx(min(max(expected, 0.0), 1.0), rel=1e-5)
    assert obs[-6] == pytest.approx(1.0, rel=1e-5)  # nothing decided: all MACs still held
