import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN

from ajpq.agent.presets import pendulum_ddpg_config


def _random_return(episodes: int = 10) -> float:
    env = gym.make("Pendulum-v1")
    returns = []
    for i in range(episodes):
        env.reset(seed=i)
        env.action_space.seed(i)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


@pytest.mark.slow
@pytest.mark.ray
def test_pendulum_return_improves_clearly_over_random(ray_session):
    algo = pendulum_ddpg_config(seed=0).build_algo()
    try:
        for _ in range(40):  # 40 episodes x 200 steps = 8000 env steps
            result = algo.train()
    finally:
        algo.stop()
    learned = result[ENV_RUNNER_RESULTS][EPISODE_RETURN_MEAN]
    random = _random_return()
    assert learned > random + 400, (learned, random)
