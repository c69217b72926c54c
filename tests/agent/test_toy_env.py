import numpy as np
import pytest

from ajpq.agent.toy_env import HiddenTargetsEnv


def _episode(env: HiddenTargetsEnv, actions: np.ndarray) -> tuple[float, dict]:
    env.reset()
    for row in actions:
        _, reward, done, _, info = env.step(row)
    assert done
    return reward, info


def test_knobs_and_noise_around_the_noise_free_score():
    env = HiddenTargetsEnv({"length": 7, "knobs": 4, "scale": 0.5, "noise": 0.1})
    assert env.action_space.shape == (4,) and env.targets.shape == (7, 4)
    actions = np.random.default_rng(3).uniform(0, 1, (7, 4))
    expected = -0.5 * float(np.sum((actions - env.targets) ** 2))
    rewards = []
    for _ in range(400):
        reward, info = _episode(env, actions)
        assert info["score"] == pytest.approx(expected, rel=1e-5)
        rewards.append(reward)
    assert env.score(actions) == pytest.approx(expected, rel=1e-5)
    assert np.mean(rewards) == pytest.approx(expected, abs=0.03)
    assert np.std(rewards) == pytest.approx(0.1, rel=0.15)
    assert env.score(env.targets) == 0.0


def test_one_knob_without_noise_is_the_original_task():
    env = HiddenTargetsEnv({"length": 8})
    actions = np.linspace(0, 1, 8)
    reward, _ = _episode(env, actions[:, None])
    assert reward == pytest.approx(env.score(actions)) and reward < 0
