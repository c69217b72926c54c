import numpy as np
import pytest
import torch

from ajpq.agent import DDPGConfig, greedy_action
from ajpq.agent.module import mlp
from ajpq.agent.prior import clone_actor, clone_into
from ajpq.agent.toy_env import HiddenTargetsEnv

LENGTH = 6


def test_cloning_moves_the_actor_towards_the_prior():
    torch.manual_seed(0)
    actor = mlp([LENGTH, 32, 32, 2], torch.nn.Tanh())
    observations = np.eye(LENGTH, dtype=np.float32)
    prior = np.random.default_rng(0).uniform(0.05, 0.95, (LENGTH, 2)).astype(np.float32)
    result = clone_actor(actor, observations, prior, steps=300)
    assert result.distance_before > 0.1
    assert result.distance_after < 0.2 * result.distance_before
    with torch.no_grad():
        greedy = (actor(torch.as_tensor(observations)).numpy() + 1) / 2
    np.testing.assert_allclose(greedy, prior, atol=0.05)


def test_cloning_no_steps_changes_nothing():
    torch.manual_seed(1)
    actor = mlp([3, 8, 1], torch.nn.Tanh())
    before = [p.detach().clone() for p in actor.parameters()]
    result = clone_actor(actor, np.eye(3, dtype=np.float32), np.full((3, 1), 0.5), steps=0)
    assert result.distance_before == result.distance_after
    assert all(torch.equal(a, b) for a, b in zip(before, actor.parameters()))


@pytest.mark.ray
def test_clone_into_a_ddpg_sets_greedy_actions_and_warmup_explores_near_them(ray_session):
    algo = (
        DDPGConfig()
        .environment(HiddenTargetsEnv, env_config={"length": LENGTH}, disable_env_checking=True)
        .env_runners(num_env_runners=0)
        .training(warmup_episodes=4, warmup_random=False, noise_sigma=0.05)
        .debugging(seed=0)
        .build_algo()
    )
    try:
        observations = np.eye(LENGTH, dtype=np.float32)
        prior = np.full((LENGTH, 1), 0.8, dtype=np.float32)
        result = clone_into(algo, observations, prior, steps=300)
        assert result.distance_after < 0.05 < result.distance_before
        greedy = np.array([greedy_action(algo, o)[0] for o in observations])
        np.testing.assert_allclose(greedy, 0.8, atol=0.05)
        target = algo.learner_group._learner.module["default_policy"].unwrapped().target_actor
        with torch.no_grad():
            np.testing.assert_allclose(
                (target(torch.as_tensor(observations)) + 1) / 2, 0.8, atol=0.05
            )
        for _ in range(4):  # warm-up: noise around the cloned actor, not uniform actions
            algo.train()
        assert algo.in_warmup() is False
        played = algo.local_replay_buffer.sample(num_items=20, n_step=1, sample_episodes=True)
        actions = np.concatenate([np.asarray(e.get_actions()).reshape(-1) for e in played])
        assert np.abs((actions + 1) / 2 - 0.8).mean() < 0.1
    finally:
        algo.stop()
