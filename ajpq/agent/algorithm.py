"""The DDPG algorithm: training step, exploration schedule, credit assignment, checkpoint state."""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.dqn.dqn import DQN
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

from ajpq.agent.config import CreditAssignment, DDPGConfig

__all__ = ["DDPG", "DISCARD_INFO_KEY", "ExplorationSetter", "greedy_action"]

DISCARD_INFO_KEY = "infra_failed"  # an episode whose final info sets this is not learned from

logger = logging.getLogger(__name__)


class ExplorationSetter:
    """Picklable callable run on every env runner: sets the module's exploration mode."""

    def __init__(self, random_actions: bool, sigma: float) -> None:
        self.random_actions = random_actions
        self.sigma = sigma

    def __call__(self, env_runner: Any) -> None:
        module = env_runner.module
        if module is None:
            return
        if isinstance(module, MultiRLModule):
            for sub in module.values():
                sub.set_exploration(self.random_actions, self.sigma)
        else:
            module.set_exploration(self.random_actions, self.sigma)


class EpisodeRequest:
    """Picklable callable run on one env runner: take the newest weights (if any), set the
    exploration mode, sample one complete episode, return it with the runner's metrics."""

    def __init__(self, module_state: dict | None, random_actions: bool, sigma: float) -> None:
        self.module_state = module_state
        self.exploration = ExplorationSetter(random_actions, sigma)

    def __call__(self, env_runner: Any) -> tuple[list, Any]:
        if self.module_state is not None:
            env_runner.set_state({COMPONENT_RL_MODULE: self.module_state})
        self.exploration(env_runner)
        episodes = env_runner.sample(num_episodes=1)
        return episodes, env_runner.get_metrics()


_SAMPLE_TAG = "ddpg_episode"


class DDPG(DQN):
    """Deep Deterministic Policy Gradient on RLlib's API stack (see ``ajpq.agent``)."""

    @classmethod
    def get_default_config(cls) -> DDPGConfig:
        return DDPGConfig()

    def setup(self, config: DDPGConfig) -> None:
        super().setup(config)
        self.episodes_done = 0
        self.reward_baseline: float | None = None
        self.return_stats = [0, 0.0, 0.0]  # count, mean, sum of squared deviations (Welford)
        self.updates_done = 0
        # async sampling: requests in flight per env runner, the weights version (updates done)
        # each runner was last sent, finished episodes not yet handed to the learner
        self._in_flight: collections.Counter[int] = collections.Counter()
        self._runner_version: dict[int, int] = {}
        self._pending_episodes: list = []
        self._pending_metrics: list = []

    # -- exploration schedule -----------------------------------------------------------------
    def noise_sigma(self) -> float:
        """Current noise scale as a fraction of the action range (0 during warm-up)."""
        config: DDPGConfig = self.config
        decayed = max(0, self.episodes_done - config.warmup_episodes)
        return max(config.noise_sigma * config.noise_decay**decayed, config.noise_min_sigma)

    def in_warmup(self) -> bool:
        return self.episodes_done < self.config.warmup_episodes

    def _random_actions(self, episodes_started: int) -> bool:
        return episodes_started < self.config.warmup_episodes and self.config.warmup_random

    def _set_exploration(self) -> None:
        # the module works in [-1, 1]: a sigma of x of the range is 2x there
        setter = ExplorationSetter(
            self._random_actions(self.episodes_done), 2.0 * self.noise_sigma()
        )
        self.env_runner_group.foreach_env_runner(setter, local_env_runner=True)

    # -- credit assignment --------------------------------------------------------------------
    def _assign_credit(self, episodes: list) -> list[float]:
        returns = []
        config: DDPGConfig = self.config
        for episode in episodes:
            if not episode.is_done:
                continue
            episode_return = float(episode.get_return())
            returns.append(episode_return)
            if CreditAssignment(config.credit_assignment) is CreditAssignment.EPISODE_BASELINE:
                if self.reward_baseline is None:
                    self.reward_baseline = episode_return
                advantage = (episode_return - self.reward_baseline) / self._return_scale(
                    episode_return
                )
                length = len(episode)
                rewards = episode.rewards.data
                if isinstance(rewards, np.ndarray) and not rewards.flags.writeable:
                    # episodes from remote env runners arrive as read-only views of the object store
                    episode.rewards.data = rewards.copy()
                episode.set_rewards(
                    new_data=np.full(length, advantage, dtype=np.float32),
                    at_indices=slice(0, length),
                )
                self.reward_baseline += (1.0 - config.baseline_decay) * (
                    episode_return - self.reward_baseline
                )
        return returns

    def _return_scale(self, episode_return: float) -> float:
        """With ``reward_normalize``: the standard deviation of the returns so far (this one
        included; 1 until there are two), else 1."""
        stats = self.return_stats
        stats[0] += 1
        delta = episode_return - stats[1]
        stats[1] += delta / stats[0]
        stats[2] += delta * (episode_return - stats[1])
        if not self.config.reward_normalize or stats[0] < 2:
            return 1.0
        return max(math.sqrt(stats[2] / (stats[0] - 1)), 1e-6)

    # -- the training step --------------------------------------------------------------------
    def _poll_episodes(self) -> None:
        """Collect the episodes that have finished and give their runners new requests at
        once. Called while waiting and between learner updates, so a finished runner waits at
        most one gradient update for its next episode."""
        group = self.env_runner_group
        # a non-zero timeout would wait for *all* requests in flight, up to it
        for runner_id, (episodes, metrics) in group.fetch_ready_async_reqs(
            tags=_SAMPLE_TAG, timeout_seconds=0.0
        ):
            self._in_flight[runner_id] -= 1
            self._pending_episodes.extend(e for e in episodes if e.is_done)
            self._pending_metrics.append(metrics)
        # a runner that died loses its episode; it gets a new request once healthy again
        healthy = set(group.healthy_env_runner_ids())
        self._in_flight = collections.Counter(
            {i: n for i, n in self._in_flight.items() if i in healthy and n > 0}
        )
        self._dispatch_episodes(len(self._pending_episodes))

    def _sample_async(self) -> tuple[list, list]:
        """Keep one episode in flight on every healthy remote env runner; return the episodes
        that have finished (waiting only until at least one has). A runner gets its next
        request, with the newest weights, as soon as its episode is fetched, so it never waits
        for the others or for the learner."""
        config: DDPGConfig = self.config
        deadline = time.time() + config.sample_timeout_s
        while True:
            self._poll_episodes()
            if self._pending_episodes or not self._in_flight.total():
                break
            if time.time() > deadline:
                logger.warning("no episode finished within %.0f s", config.sample_timeout_s)
                break
            time.sleep(0.01)
        episodes, metrics = self._pending_episodes, self._pending_metrics
        self._pending_episodes, self._pending_metrics = [], []
        return episodes, metrics

    def _dispatch_episodes(self, fetched: int) -> None:
        """Top up every healthy runner to ``episodes_in_flight_per_runner`` requests (the
        second one waits on the runner, so it starts its next episode without a round trip to
        the driver); ``fetched`` episodes have finished but are not counted in
        ``episodes_done`` yet."""
        config: DDPGConfig = self.config
        group = self.env_runner_group
        limit = config.max_episodes
        per_runner = max(1, config.episodes_in_flight_per_runner)
        idle = [
            i
            for i in group.healthy_env_runner_ids()
            for _ in range(per_runner - self._in_flight[i])
        ]
        state = None
        for runner_id in idle:
            started = self.episodes_done + fetched + self._in_flight.total()
            if limit is not None and started >= limit:
                return
            if self._runner_version.get(runner_id) != self.updates_done:
                if state is None:
                    state = self.learner_group.get_state(
                        components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}",
                        inference_only=True,
                    )[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
                module_state = state
            else:
                module_state = None
            # exploration as if the episodes in flight had already finished
            request = EpisodeRequest(
                module_state, self._random_actions(started), 2.0 * self.noise_sigma()
            )
            sent = group.foreach_env_runner_async(
                request, tag=_SAMPLE_TAG, remote_worker_ids=[runner_id]
            )
            if sent:
                self._in_flight[runner_id] += 1
                self._runner_version[runner_id] = self.updates_done

    def episodes_in_flight(self) -> int:
        return self._in_flight.total()

    def training_step(self) -> None:
        config: DDPGConfig = self.config
        async_sampling = (
            config.async_sampling and self.env_runner_group.num_remote_env_runners() > 0
        )
        if async_sampling:
            episodes, metrics_list = self._sample_async()
            if metrics_list:
                self.metrics.aggregate(metrics_list, key=ENV_RUNNER_RESULTS)
        else:
            self._set_exploration()
            episodes, runner_metrics = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                concat=True,
                sample_timeout_s=config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            self.metrics.aggregate(runner_metrics, key=ENV_RUNNER_RESULTS)
        sampled_steps = sum(len(e) for e in episodes)
        episodes = [e for e in episodes if not _discarded(e)]
        returns = self._assign_credit(episodes)
        self.local_replay_buffer.add(episodes)
        self.episodes_done += len(returns)

        buffered = self.local_replay_buffer.get_num_timesteps()
        if (
            not self.in_warmup()
            and buffered >= config.train_batch_size_per_learner
            and sampled_steps
        ):
            updates = max(1, int(math.ceil(config.updates_per_step * sampled_steps)))
            lifetime_steps = self.metrics.peek(
                (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
            )
            for _ in range(updates):
                batch = self.local_replay_buffer.sample(
                    num_items=config.train_batch_size_per_learner,
                    n_step=1,
                    gamma=config.gamma,
                    sample_episodes=True,
                )
                learner_results = self.learner_group.update(
                    episodes=batch,
                    timesteps={
                        NUM_ENV_STEPS_SAMPLED_LIFETIME: lifetime_steps,
                        NUM_AGENT_STEPS_SAMPLED_LIFETIME: lifetime_steps,
                    },
                )
                self.updates_done += 1
                if async_sampling:
                    self._poll_episodes()
            self.metrics.aggregate(learner_results, key="learners")
            if not config.async_sampling:  # async requests carry the newest weights themselves
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, inference_only=True
                )
        self.metrics.log_value("ddpg/episodes_total", self.episodes_done, window=1)
        self.metrics.log_value(
            "ddpg/noise_sigma", 0.0 if self.in_warmup() else self.noise_sigma(), window=1
        )
        self.metrics.log_value("ddpg/updates_total", self.updates_done, window=1)
        if self.reward_baseline is not None:
            self.metrics.log_value("ddpg/reward_baseline", self.reward_baseline, window=1)
        if returns:
            self.metrics.log_value("ddpg/episode_return_last", returns[-1], window=1)

    # -- checkpoint state ---------------------------------------------------------------------
    def get_state(
        self, components: Any = None, *, not_components: Any = None, **kwargs: Any
    ) -> dict:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state["ddpg"] = {
            "episodes_done": self.episodes_done,
            "reward_baseline": self.reward_baseline,
            "return_stats": list(self.return_stats),
            "updates_done": self.updates_done,
            "replay": self.local_replay_buffer.get_state()
            if self.config.store_buffer_in_checkpoints
            else None,
        }
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        own = state.get("ddpg")
        if own:
            self.episodes_done = own["episodes_done"]
            self.reward_baseline = own["reward_baseline"]
            self.return_stats = list(own.get("return_stats", [0, 0.0, 0.0]))
            self.updates_done = own["updates_done"]
            if own.get("replay") is not None:
                self.local_replay_buffer.set_state(own["replay"])


def _discarded(episode: Any) -> bool:
    """An episode whose last info says ``DISCARD_INFO_KEY`` (its evaluation failed on the
    infrastructure, so its reward says nothing about its actions): never learned from and not
    counted as done; the search plays another instead."""
    if not episode.is_done:
        return False
    info = episode.get_infos(-1)
    return bool(isinstance(info, dict) and info.get(DISCARD_INFO_KEY))


def greedy_action(algo: Algorithm, observation: np.ndarray) -> np.ndarray:
    """The actor's deterministic action for one observation, in the env's action space."""
    module = algo.get_module()
    obs = torch.as_tensor(np.asarray(observation, dtype=np.float32))[None]
    with torch.no_grad():
        action = module.forward_inference({Columns.OBS: obs})[Columns.ACTIONS][0].numpy()
    space = module.action_space
    return np.clip(
        space.low + (action + 1.0) * 0.5 * (space.high - space.low), space.low, space.high
    )
