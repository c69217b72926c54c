"""The search config: one typed section per concept, validated once at the edge."""

from pathlib import Path

import pytest

from ajpq.search.config import ConfigError, SearchConfig, load_config


def test_cifar_without_path_is_rejected(search_config_file):
    with pytest.raises(ConfigError, match="data.path: dataset cifar10 needs a local path"):
        load_config(search_config_file(), ["data.name=cifar10"])


def test_config_round_trip_and_missing_file(search_config_file, tmp_path):
    config = load_config(search_config_file())
    assert SearchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["digits_demo.yaml", "fmnist.yaml"])
def test_shipped_configs_are_valid(name):

    config = load_config(Path(__file__).parents[2] / "tune_configs" / name)
    assert config.agent.episodes > config.agent.warmup_episodes
    assert config.evaluator.num_evaluators >= config.agent.env_runners


def test_the_agent_section_defaults_are_the_agents_own():
    """One owner: the config section and DDPGConfig both start from ajpq.agent.defaults.HAQ,
    and the section builds the agent's training settings."""
    from ajpq.agent import HAQ, DDPGConfig

    agent = SearchConfig().agent
    ddpg = DDPGConfig()
    assert (agent.actor_lr, agent.critic_lr, agent.tau) == (ddpg.actor_lr, ddpg.critic_lr, ddpg.tau)
    assert agent.hiddens == ddpg.actor_hiddens == list(HAQ.hiddens)
    assert agent.batch_size == ddpg.train_batch_size_per_learner == HAQ.batch_size
    assert agent.credit_assignment is ddpg.credit_assignment is HAQ.credit_assignment
    assert agent.warmup_episodes == ddpg.warmup_episodes
    kwargs = agent.training_kwargs(40)
    ddpg.training(**kwargs)  # every key is one DDPGConfig.training takes
    assert ddpg.max_episodes == 40 and ddpg.noise_decay == agent.decay_over(40)


def test_each_section_is_the_core_type_and_validates_the_same_way(search_config_file):
    """One type per concept: the YAML section is the object the library uses, and building
    that object in a notebook checks the same ranges as loading a config."""
    from ajpq.core.budget import Budget
    from ajpq.task.data import DataConfig
    from ajpq.task.scoring import ScoreSettings
    from ajpq.task.train import FinetuneConfig

    config = load_config(search_config_file(), ["scoring.finetune.lr=0.02", "data.seed=3"])
    assert isinstance(config.data, DataConfig) and config.data.seed == 3
    assert isinstance(config.budget, Budget)
    assert isinstance(config.scoring, ScoreSettings)
    assert config.scoring.finetune == FinetuneConfig(steps=5, lr=0.02)
    for build in (
        lambda: FinetuneConfig(steps=-1),
        lambda: FinetuneConfig(lr=float("nan")),
        lambda: DataConfig("cifar10"),
        lambda: Budget("size", 1.5),
        lambda: ScoreSettings(val_samples=0),
    ):
        with pytest.raises(ValueError):
            build()


def test_exploration_noise_ends_at_its_final_sigma_over_the_learning_episodes():
    agent = SearchConfig.from_dict({"agent": {"episodes": 100, "warmup_episodes": 25}}).agent
    decay = agent.decay_over(100)
    assert agent.noise_sigma * decay**75 == pytest.approx(agent.noise_final_sigma)
    assert agent.decay_over(50) < decay  # fewer episodes: a faster decay
    pinned = SearchConfig.from_dict({"agent": {"noise_decay": 0.99}}).agent
    assert pinned.decay_over(100) == 0.99
    flat = SearchConfig.from_dict({"agent": {"noise_sigma": 0.01}}).agent
    assert flat.decay_over(100) == 1.0  # already below the final sigma


def test_a_latency_search_keeps_channel_blocks_unless_told_otherwise(search_config_file):
    """``space.channel_multiple`` unset: 16 under a latency budget (kernels' channel blocks),
    any width under size and BitOps budgets; set, it holds for every budget; 0 is refused."""
    from ajpq.core.budget import BudgetKind

    config = load_config(search_config_file())
    assert config.space.channel_multiple is None
    assert config.space.multiple_for(BudgetKind.LATENCY) == 16
    assert config.space.multiple_for(BudgetKind.SIZE) == 1
    assert config.space.multiple_for(BudgetKind.BITOPS) == 1
    eight = load_config(search_config_file(), ["space.channel_multiple=8"])
    assert {eight.space.multiple_for(kind) for kind in BudgetKind} == {8}
    with pytest.raises(ConfigError, match="channel_multiple"):
        load_config(search_config_file(), ["space.channel_multiple=0"])
