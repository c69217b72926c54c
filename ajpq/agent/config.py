"""DDPGConfig: RLlib AlgorithmConfig for DDPG with HAQ's defaults."""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from ajpq.agent.defaults import HAQ, CreditAssignment

__all__ = ["CreditAssignment", "DDPGConfig"]


class DDPGConfig(AlgorithmConfig):
    """Configuration of :class:`ajpq.agent.DDPG`.

    .. code-block:: python

        config = DDPGConfig().environment("Pendulum-v1").training(actor_lr=1e-3)
        algo = config.build()
        algo.train()
    """

    def __init__(self, algo_class: type | None = None) -> None:
        from ajpq.agent.algorithm import DDPG

        super().__init__(algo_class=algo_class or DDPG)
        # HAQ defaults (ajpq.agent.defaults owns them; the search config's agent section too)
        self.actor_hiddens = list(HAQ.hiddens)
        self.critic_hiddens = list(HAQ.hiddens)
        self.actor_lr = HAQ.actor_lr
        self.critic_lr = HAQ.critic_lr
        self.lr = None
        self.tau = HAQ.tau
        self.gamma = 1.0
        self.train_batch_size_per_learner = HAQ.batch_size
        self.grad_clip = None
        # exploration
        self.warmup_episodes = HAQ.warmup_episodes
        self.noise_sigma = HAQ.noise_sigma  # fraction of the action range
        self.noise_decay = HAQ.noise_decay  # per finished (post warm-up) episode
        self.noise_min_sigma = 0.0
        # warm-up episodes: uniformly random actions (HAQ), or noise of noise_sigma around the
        # actor (after a prior was cloned into it, so the warm-up explores near the prior)
        self.warmup_random = True
        # credit assignment
        self.credit_assignment = HAQ.credit_assignment
        self.baseline_decay = HAQ.baseline_decay
        # divide each advantage by the standard deviation of the search's returns so far, so
        # the critic's targets have one scale whatever the reward's spread
        self.reward_normalize = False
        # replay and updates
        # HAQ's replay memory is small (rmsize 128 transitions): with terminal-only rewards and a
        # moving baseline, recent transitions carry the useful signal. Measured on the 8-step
        # hidden-targets toy (seed 0, 600 episodes): capacity 128 reached -0.005, 100k only -0.2.
        self.replay_buffer_config = {"type": "EpisodeReplayBuffer", "capacity": 128}
        self.store_buffer_in_checkpoints = True
        self.updates_per_step = 1.0  # gradient updates per sampled env step
        self.target_network_update_freq = 0  # Polyak-average after every update
        self.num_steps_sampled_before_learning_starts = 0
        # sampling: whole episodes, one per env runner per round
        self.batch_mode = "complete_episodes"
        self.rollout_fragment_length = 1
        self.episodes_per_round = 1
        # async sampling: every remote env runner always has one episode in flight; an iteration
        # learns from whichever episodes have finished, so no runner waits for another
        self.async_sampling = False
        self.max_episodes: int | None = None  # async: never start more episodes than this
        # async: requests queued per runner; 2 lets a runner start its next episode as soon as
        # one ends, without waiting for the driver to fetch it and send another
        self.episodes_in_flight_per_runner = 2

    def training(
        self,
        *,
        actor_hiddens: list[int] | None = NotProvided,
        critic_hiddens: list[int] | None = NotProvided,
        actor_lr: float | None = NotProvided,
        critic_lr: float | None = NotProvided,
        tau: float | None = NotProvided,
        warmup_episodes: int | None = NotProvided,
        noise_sigma: float | None = NotProvided,
        noise_decay: float | None = NotProvided,
        noise_min_sigma: float | None = NotProvided,
        warmup_random: bool | None = NotProvided,
        credit_assignment: CreditAssignment | str | None = NotProvided,
        baseline_decay: float | None = NotProvided,
        reward_normalize: bool | None = NotProvided,
        updates_per_step: float | None = NotProvided,
        replay_buffer_config: dict[str, Any] | None = NotProvided,
        store_buffer_in_checkpoints: bool | None = NotProvided,
        async_sampling: bool | None = NotProvided,
        max_episodes: int | None = NotProvided,
        episodes_in_flight_per_runner: int | None = NotProvided,
        **kwargs: Any,
    ) -> DDPGConfig:
        super().training(**kwargs)
        for name, value in list(locals().items()):
            if name in ("self", "kwargs", "__class__") or value is NotProvided:
                continue
            setattr(self, name, value)
        if replay_buffer_config is not NotProvided:
            self.replay_buffer_config = {
                **DDPGConfig().replay_buffer_config,
                **replay_buffer_config,
            }
        return self

    def validate(self) -> None:
        super().validate()
        try:
            self.credit_assignment = CreditAssignment(self.credit_assignment)
        except ValueError:
            options = ", ".join(c.value for c in CreditAssignment)
            raise ValueError(
                f"credit_assignment {self.credit_assignment!r} is unknown; use one of: {options}"
            ) from None
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau {self.tau} must lie in (0, 1]")
        if self.noise_sigma < 0 or not 0 < self.noise_decay <= 1:
            raise ValueError("noise_sigma must be >= 0 and noise_decay in (0, 1]")
        if self.async_sampling:
            # connector states would be synced through every runner after each iteration,
            # a blocking call that waits for the busy ones (DDPG's connectors hold no state)
            self._dont_auto_sync_env_runner_states = True
            self.max_requests_in_flight_per_env_runner = max(
                self.max_requests_in_flight_per_env_runner, self.episodes_in_flight_per_runner
            )
        if self.warmup_episodes < 0:
            raise ValueError("warmup_episodes must be >= 0")
        if self.replay_buffer_config.get("type") != "EpisodeReplayBuffer":
            raise ValueError(
                "DDPG replays from RLlib's EpisodeReplayBuffer; set replay_buffer_config.type accordingly"
            )
        if self.lr is not None:
            raise ValueError("DDPG uses actor_lr and critic_lr; leave lr=None")

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from ajpq.agent.module import DDPGTorchRLModule

        return RLModuleSpec(module_class=DDPGTorchRLModule)

    def get_default_learner_class(self) -> type:
        from ajpq.agent.learner import DDPGTorchLearner

        return DDPGTorchLearner

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {
            "actor_hiddens": self.actor_hiddens,
            "critic_hiddens": self.critic_hiddens,
        }
