import numpy as np
import pytest

from ajpq.agent import DDPG, DDPGConfig, greedy_action
from ajpq.agent.toy_env import HiddenTargetsEnv

LENGTH = 8


def _config(seed: int = 0, **training) -> DDPGConfig:
    return (
        DDPGConfig()
        .environment(HiddenTargetsEnv, env_config={"length": LENGTH}, disable_env_checking=True)
        .env_runners(num_env_runners=0)
        .training(**training)
        .debugging(seed=seed)
    )


def _greedy_score(algo: DDPG) -> float:
    env = HiddenTargetsEnv({"length": LENGTH})
    obs = np.eye(LENGTH, dtype=np.float32)
    actions = np.array([greedy_action(algo, obs[k])[0] for k in range(LENGTH)])
    return env.score(actions)


@pytest.mark.ray
def test_learns_hidden_targets_and_beats_random_search(ray_session):
    episodes = 300
    algo = _config(seed=0, warmup_episodes=50).build_algo()
    try:
        for _ in range(episodes):
            algo.train()
        score = _greedy_score(algo)
    finally:
        algo.stop()
    env = HiddenTargetsEnv({"length": LENGTH})
    rng = np.random.default_rng(12345)  # not the env's target seed
    random_scores = [env.score(rng.uniform(0, 1, LENGTH)) for _ in range(episodes)]
    random_mean = -LENGTH / 6  # expected return of the uniform policy
    # within 10% of the optimum (0), measured against the random policy's regret
    assert score >= 0.1 * random_mean, score
    assert score > max(random_scores), (score, max(random_scores))


@pytest.mark.ray
def test_exploration_warmup_is_uniform_and_sigma_decays(ray_session):
    algo = _config(seed=1, warmup_episodes=6, noise_sigma=0.4, noise_decay=0.9).build_algo()
    try:
        for _ in range(6):
            algo.train()
        warm = algo.local_replay_buffer.sample(num_items=40, n_step=1, sample_episodes=True)
        actions = np.concatenate([np.asarray(e.get_actions()).reshape(-1) for e in warm])
        assert actions.min() < -0.6 and actions.max() > 0.6 and actions.std() > 0.4
        assert algo.in_warmup() is False
        sigmas = []
        for _ in range(4):
            algo.train()
            sigmas.append(algo.noise_sigma())
        expected = [0.4 * 0.9**k for k in range(1, 5)]
        np.testing.assert_allclose(sigmas, expected, rtol=1e-9)
    finally:
        algo.stop()


@pytest.mark.ray
def test_checkpoint_round_trip_keeps_everything(ray_session, tmp_path):
    algo = _config(seed=2, warmup_episodes=3, train_batch_size_per_learner=16).build_algo()
    try:
        for _ in range(6):
            algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        before_actions = [
            greedy_action(algo, np.eye(LENGTH, dtype=np.float32)[k]) for k in range(LENGTH)
        ]
        state_updates = algo.updates_done
        assert state_updates > 0
        state = (
            algo.episodes_done,
            algo.reward_baseline,
            algo.noise_sigma(),
            algo.local_replay_buffer.get_num_timesteps(),
        )
    finally:
        algo.stop()
    restored = DDPG.from_checkpoint(path)
    try:
        after_actions = [
            greedy_action(restored, np.eye(LENGTH, dtype=np.float32)[k]) for k in range(LENGTH)
        ]
        np.testing.assert_array_equal(np.array(before_actions), np.array(after_actions))
        assert (
            restored.episodes_done,
            restored.reward_baseline,
            restored.noise_sigma(),
            restored.local_replay_buffer.get_num_timesteps(),
        ) == state
        restored.train()
        assert restored.episodes_done == state[0] + 1
        assert restored.updates_done > state_updates
    finally:
        restored.stop()


@pytest.mark.ray
@pytest.mark.parametrize("runners", [0, 2])
def test_runs_under_tune(ray_session, tmp_path, runners):
    from ray import tune

    config = (
        _config(seed=3, warmup_episodes=1)
        .env_runners(num_env_runners=runners, num_cpus_per_env_runner=0.5)
        .training(actor_hiddens=[32], critic_hiddens=[32])
    )
    tuner = tune.Tuner(
        DDPG,
        param_space=config,
        run_config=tune.RunConfig(
            stop={"training_iteration": 3}, storage_path=str(tmp_path), verbose=0
        ),
    )
    results = tuner.fit()
    assert not results.errors
    result = results[0]
    assert result.metrics["training_iteration"] == 3
    # one complete episode per env runner per iteration
    assert result.metrics["ddpg/episodes_total"] == 3 * max(1, runners)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="tau"):
        _config(tau=0.0).validate()
    with pytest.raises(ValueError, match="credit"):
        _config(credit_assignment="nope").validate()


def test_an_episode_the_infrastructure_failed_is_not_learned_from():
    """Its final info says so: dropped before credit assignment and the replay buffer."""
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from ajpq.agent.algorithm import DISCARD_INFO_KEY, _discarded

    def episode(info: dict) -> SingleAgentEpisode:
        played = SingleAgentEpisode(observations=[0.0], infos=[{}])
        played.add_env_step(1.0, 0.5, 0.0, infos=info, terminated=True)
        return played

    assert _discarded(episode({DISCARD_INFO_KEY: True}))
    assert not _discarded(episode({DISCARD_INFO_KEY: False, "reward": -1.0}))
    assert not _discarded(episode({}))


@pytest.mark.ray
@pytest.mark.parametrize("normalize", [False, True])
def test_reward_normalize_puts_advantages_on_one_scale(ray_session, normalize):
    algo = (
        DDPGConfig()
        .environment(
            HiddenTargetsEnv,
            env_config={"length": LENGTH, "scale": 100.0, "noise": 5.0},
            disable_env_checking=True,
        )
        .env_runners(num_env_runners=0)
        .training(warmup_episodes=12, reward_normalize=normalize)
        .debugging(seed=4)
        .build_algo()
    )
    try:
        for _ in range(12):
            algo.train()
        played = algo.local_replay_buffer.sample(num_items=12, n_step=1, sample_episodes=True)
        advantages = np.array([float(np.asarray(e.get_rewards())[-1]) for e in played])
        spread = np.abs(advantages).max()
        assert (spread < 5.0) if normalize else (spread > 20.0), advantages
    finally:
        algo.stop()
