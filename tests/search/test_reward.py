"""One reward and one ranking of scored policies."""

from types import SimpleNamespace

import pytest

from ajpq.search.config import AgentSection
from ajpq.search.reward import best_key, compute_reward


def test_rewards_by_kind_and_failures():
    agent = AgentSection(reward_scale=2.0)
    assert compute_reward(agent, 0.9, 0.95, failed=False) == pytest.approx(-0.1)
    relative = AgentSection(reward="relative")
    assert compute_reward(relative, 0.9, 1.0, failed=False) == pytest.approx(-0.1)
    assert compute_reward(AgentSection(failed_reward=-3.0), 0.9, 0.95, failed=True) == -3.0


def test_the_best_is_the_highest_reward_then_the_smallest_network():
    records = [
        SimpleNamespace(reward=-0.01, compression_ratio=10.0),
        SimpleNamespace(reward=-0.01, compression_ratio=12.0),
        SimpleNamespace(reward=-0.02, compression_ratio=30.0),
    ]
    assert max(records, key=best_key) is records[1]
