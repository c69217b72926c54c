import pytest
from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN

from ajpq.agent.presets import pendulum_ddpg_config, random_policy_return


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.ray
def test_pendulum_return_improves_clearly_over_random(ray_session):
    algo = pendulum_ddpg_config(seed=0).build_algo()
    try:
        for _ in range(50):  # 50 episodes x 200 steps = 10000 env steps
            result = algo.train()
    finally:
        algo.stop()
    learned = result[ENV_RUNNER_RESULTS][EPISODE_RETURN_MEAN]
    random = random_policy_return("Pendulum-v1", episodes=10)
    assert learned > random + 400, (learned, random)
