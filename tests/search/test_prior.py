import numpy as np
import pytest

from ajpq.core.builder import LayerKnobs
from ajpq.search.config import Prior, SearchConfig, SpaceSection
from ajpq.search.context import prepare_context
from ajpq.search.env import CompressionEnv
from ajpq.search.methods import uniform_knobs
from ajpq.search.prior import knobs_to_action, prior_episode
from ajpq.search.space import action_to_knobs


@pytest.mark.parametrize("knobs", [LayerKnobs(0.0, 4, 8, 0.0), LayerKnobs(0.4, 2, 5, 1.0)])
def test_knobs_to_action_inverts_action_to_knobs(knobs):
    space = SpaceSection()
    back = action_to_knobs(knobs_to_action(knobs, space), space)
    assert (back.weight_bits, back.act_bits) == (knobs.weight_bits, knobs.act_bits)
    assert back.sparsity == pytest.approx(knobs.sparsity)
    assert back.spread == pytest.approx(knobs.spread)


def test_prior_episode_plays_the_uniform_policy_that_meets_the_budget(
    tmp_path, model_cache, monkeypatch
):
    monkeypatch.setenv("AJPQ_CACHE", str(model_cache))
    config = SearchConfig.from_dict(
        {"budget": {"kind": "size", "value": 0.1}, "output_dir": str(tmp_path)}
    )
    context, _ = prepare_context(config)
    observations, actions = prior_episode(context, Prior.UNIFORM)
    env = CompressionEnv(context, lambda policy: {"reward": 0.0})
    assert observations.shape == (len(env.order), env.observation_space.shape[0])
    assert all(env.observation_space.contains(o) for o in observations)
    first = uniform_knobs(
        context.model, context.graph, context.importance, config.budget, config.space, config.model
    )[0]
    played = action_to_knobs(actions[0], config.space)
    assert (played.weight_bits, played.act_bits, played.sparsity) == (
        first.weight_bits,
        first.act_bits,
        0.0,
    )
    assert np.all(actions == actions[0])  # one action at every step: the uniform policy
    with pytest.raises(ValueError, match="no prior"):
        prior_episode(context, Prior.NONE)
