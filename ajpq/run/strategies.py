"""Running a search's method against the evaluator pool: DDPG (the joint search, and both
stages of the stepwise one), the proposal baselines (random, TPE) and uniform; checkpoints and
progress as it goes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ajpq.agent import DDPG, DDPGConfig
from ajpq.agent.prior import clone_into
from ajpq.core.budget import Budget, budget_value
from ajpq.core.builder import uniform_policy
from ajpq.core.cost import CostModel
from ajpq.run import binding
from ajpq.run.experience import SharedExperience, write_agent
from ajpq.run.resources import ENV_RUNNER_CPUS
from ajpq.run.rundir import RunDir
from ajpq.run.session import OpenRun
from ajpq.search.config import Method, Prior, SearchConfig
from ajpq.search.env import CompressionEnv, Stage
from ajpq.search.methods import make_proposer, run_proposals, uniform_candidates
from ajpq.search.prior import prior_episode
from ajpq.search.record import PolicyRecord
from ajpq.search.reward import best_key
from ajpq.task.checks import cause

__all__ = [
    "CHECKPOINT_EVERY_S",
    "Progress",
    "Search",
    "SearchAborted",
    "ddpg_config",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)


CHECKPOINT_EVERY_S = 10.0


PROGRESS_EVERY_S = 1.0


Progress = Callable[[dict[str, float]], None]


def ddpg_config(
    config: SearchConfig,
    env_config: dict[str, Any],
    episodes: int | None = None,
    inherited: bool = False,
) -> DDPGConfig:
    agent, ev = config.agent, config.evaluator
    # an env runner mostly waits on the pool: it reserves little so evaluators can be scheduled;
    # a sample must never be dropped for being slow: allow every retry of an evaluation
    sample_timeout = ev.timeout_s * (ev.max_retries + 1) + 600.0
    return (
        DDPGConfig()
        .environment(binding.ENV_NAME, env_config=env_config, disable_env_checking=True)
        .env_runners(
            num_env_runners=agent.env_runners,
            num_cpus_per_env_runner=ENV_RUNNER_CPUS,
            sample_timeout_s=sample_timeout,
            rollout_fragment_length=1,
            batch_mode="complete_episodes",
        )
        .learners(num_learners=0)
        .training(
            **agent.training_kwargs(episodes, inherited),
            # env runners never wait for each other: learn from whichever episodes finished
            async_sampling=True,
        )
        .debugging(seed=agent.seed)
    )


class SearchAborted(ValueError):
    """The search cannot go on (its scorer fails every time, its disk is full): one line."""


def save_checkpoint(algo: DDPG, folder: RunDir, name: str = "checkpoint") -> Path:
    """Write the agent's checkpoint atomically (a crash or a full disk leaves the previous
    one, and no half-written one); SearchAborted when it cannot be written."""
    final = folder.checkpoint(name)
    try:
        write_agent(algo, final)
    except OSError as error:
        raise SearchAborted(
            f"cannot write the agent's checkpoint in {folder.path} ({cause(error)}); free "
            "space on its disk, then continue with --resume (every journaled record is kept)"
        ) from None
    return final


@dataclass
class Search:
    """Runs ``config.method`` against the evaluator pool until ``agent.episodes`` episodes."""

    config: SearchConfig
    open_run: OpenRun
    pool: Any
    pool_name: str
    namespace: str
    resume: bool
    on_progress: Progress | None

    def scored(self) -> int:
        return int(ray.get(self.pool.summary.remote())["episodes"])

    def run(self) -> None:
        method = self.config.method
        target = self.config.agent.episodes
        if method is Method.DDPG:
            self._ddpg(binding.env_config_for(self.pool_name, self.namespace), target, 0)
        elif method is Method.STEPWISE:
            self._stepwise(target)
        elif method is Method.UNIFORM:
            self._uniform(target)
        else:
            self._propose(method, target)

    # -- DDPG (the joint search, and each stage of the stepwise one) -------------------------
    def _ddpg(
        self, env_config: dict[str, Any], target: int, offset: int, name: str = "checkpoint"
    ) -> None:
        """DDPG until ``target`` episodes of its own; ``offset`` episodes came before it."""
        checkpoint = self.open_run.folder.checkpoint(name)
        resumed = self.resume and checkpoint.exists()
        shared = self._shared_experience()
        inherited = shared.agent() if shared is not None and not resumed else None
        # an agent that learned in earlier trials needs no random warm-up
        algo = ddpg_config(self.config, env_config, target, bool(inherited)).build_algo()
        try:
            if resumed:
                algo.restore_from_path(str(checkpoint))
            elif inherited is not None:
                self._inherit(algo, inherited)
            elif self.config.method is Method.DDPG and self.config.agent.prior is not Prior.NONE:
                agent = self.config.agent
                clone_into(
                    algo, *prior_episode(self.open_run.context, agent.prior), agent.prior_steps
                )
            if self.resume:
                # policies scored after the last checkpoint (or before any) are in the journal:
                # they count, and are never scored again, so N episodes give N policies
                algo.episodes_done = max(algo.episodes_done, self.scored() - offset)
                logger.info(
                    "resumed from %s at episode %d", self.open_run.run_dir, algo.episodes_done
                )
            self._train(algo, target, offset, name)
            if shared is not None:
                shared.share_agent(algo)
        finally:
            algo.stop()

    def _shared_experience(self) -> SharedExperience | None:
        """A sweep's shared folder, for the joint DDPG search (see ajpq.run.experience)."""
        folder = self.config.experience_dir
        if folder is None or self.config.method is not Method.DDPG:
            return None
        return SharedExperience(folder)

    def _inherit(self, algo: DDPG, agent: Path) -> None:
        """Start from an earlier trial's agent: its networks, replay buffer and reward
        baseline; this trial counts its own episodes from 0."""
        algo.restore_from_path(str(agent))
        algo.episodes_done = 0
        transitions = algo.local_replay_buffer.get_num_timesteps()
        logger.info("started from %s: %d transitions in the replay buffer", agent, transitions)
        self.open_run.tracker.client.set_tag(
            self.open_run.parent_run_id, "ajpq.inherited_transitions", str(transitions)
        )

    def _train(self, algo: DDPG, target: int, offset: int, name: str) -> None:
        """Each iteration learns from the episodes that finished while the others keep
        running. The agent is checkpointed every ``CHECKPOINT_EVERY_S``, at the end and on
        Ctrl-C / SIGTERM; records need no flush first (the pool journals each one durably)."""
        progress = ProgressLog(self, offset + target)
        try:
            while algo.episodes_done < target:
                algo.train()
                done = algo.episodes_done >= target
                if done or progress.since_checkpoint() >= CHECKPOINT_EVERY_S:
                    save_checkpoint(algo, self.open_run.folder, name)
                    progress.checkpointed()
                progress.update(offset + algo.episodes_done, done)
        except KeyboardInterrupt:
            save_checkpoint(algo, self.open_run.folder, name)
            raise

    def _stepwise(self, target: int) -> None:
        """AMC, then HAQ: DDPG prunes at the space's top bits to a stage budget, then DDPG
        searches bits (in ``space.precision``) on the best pruned network; half the episodes
        each. The stage budget splits the squeeze geometrically: with f the budget value of the
        unpruned network at the top bits, pruning goes to sqrt(budget x f) (at least budget)."""
        first = max(1, target // 2)
        base_file = self.open_run.folder.stepwise_base
        if not base_file.exists():
            context = self.open_run.context
            top = uniform_policy(
                context.graph,
                self.config.space.max_weight_bits,
                self.config.space.max_act_bits,
                self.config.model,
            )
            budget = self.config.budget
            at_top = budget_value(top, budget, CostModel(context.graph), context.latency_model)
            stage_budget = Budget(
                budget.kind, min(1.0, max(budget.value, (budget.value * at_top) ** 0.5))
            )
            logger.info(
                "stepwise: pruning at %d bits to %s %.4g, then bits to %.4g",
                self.config.space.max_weight_bits,
                budget.kind.value,
                stage_budget.value,
                budget.value,
            )
            stage = Stage(bits=False, budget=stage_budget)
            self._ddpg(
                binding.env_config_for(self.pool_name, self.namespace, stage),
                first,
                0,
                "checkpoint-prune",
            )
            # the pruning stage's best by its own reward (its policies are above the search's
            # budget, so they are never the search's best)
            records = [r for r in ray.get(self.pool.all_records.remote()) if not r.failed]
            if not records:
                raise RuntimeError("stepwise: every pruned policy failed; see the records")
            best = max(records, key=best_key)
            base_file.write_text(ray.get(self.pool.policy_json.remote(best.policy_key)))
        stage = Stage(prune=False, base_policy=base_file.read_text())
        self._ddpg(
            binding.env_config_for(self.pool_name, self.namespace, stage),
            target - first,
            first,
            "checkpoint-bits",
        )

    # -- baselines ---------------------------------------------------------------------------
    def _make_env(self) -> CompressionEnv:
        # the proposal baselines score every proposal: screening is a lever of the agent's
        return CompressionEnv(
            self.open_run.context, binding.PoolClient(self.pool_name, self.namespace)
        )

    def _propose(self, method: Method, target: int) -> None:
        done = self.scored() if self.resume else 0
        if done and method is Method.TPE:
            logger.warning(
                "tpe: resumed at %d episodes with a fresh sampler (its history is not kept)", done
            )
        agent = self.config.agent
        groups = len(self.open_run.context.graph.groups)  # one env step per group
        proposer = make_proposer(method, groups, agent.seed + done, agent.warmup_episodes)
        progress = ProgressLog(self, target)
        played = done

        def on_episode(record: Any) -> None:
            nonlocal played
            played += 1
            progress.update(played, played >= target)

        run_proposals(
            self._make_env,
            proposer,
            target - done,
            self.config.evaluator.num_evaluators,
            on_episode,
        )

    def _uniform(self, target: int) -> None:
        context = self.open_run.context
        candidates = uniform_candidates(
            context.model,
            context.graph,
            context.importance,
            self.config.budget,
            self.config.space,
            self.config.model,
            context.latency_model,
        )[:target]
        client = binding.PoolClient(self.pool_name, self.namespace)
        done = self.scored() if self.resume else 0
        progress = ProgressLog(self, len(candidates))
        for count, policy in enumerate(candidates[done:], start=done + 1):
            client(policy)
            progress.update(count, count >= len(candidates))


class ProgressLog:
    """Logs progress at most every ``PROGRESS_EVERY_S`` (and at the end); reports it to the
    ``on_progress`` callback (a sweep's trial tells Tune)."""

    def __init__(self, search: Search, target: int) -> None:
        self.search = search
        self.target = target
        self.started = self.last_log = self.last_checkpoint = time.time()
        self.logged = -1

    def since_checkpoint(self) -> float:
        return time.time() - self.last_checkpoint

    def checkpointed(self) -> None:
        self.last_checkpoint = time.time()

    def update(self, episodes: int, done: bool) -> None:
        summary = ray.get(self.search.pool.summary.remote())  # one call: the abort and the best
        if summary["abort"]:
            raise SearchAborted(summary["abort"])
        now = time.time()
        if episodes == self.logged or not (done or now - self.last_log >= PROGRESS_EVERY_S):
            return
        best = summary["best"]
        _log_progress(episodes, best, self.search.open_run, self.target, self.started)
        infra = summary["stats"].get("infra_failed", 0)
        if infra:
            logger.info(
                "  %d evaluation(s) failed on the infrastructure (not counted; scored again)",
                infra,
            )
        self.logged, self.last_log = episodes, now
        if self.search.on_progress is not None:
            self.search.on_progress(_progress_metrics(episodes, best))


def _progress_metrics(episodes: int, best: PolicyRecord | None) -> dict[str, float]:
    metrics = {"episodes": float(episodes)}
    if best is not None:
        metrics.update(
            best_accuracy=best.accuracy,
            best_compression_ratio=best.compression_ratio,
            best_bitops_ratio=best.bitops_ratio,
            best_reward=best.reward,
        )
    return metrics


def _log_progress(
    episodes: int, best: PolicyRecord | None, run: OpenRun, target: int, started: float
) -> None:
    if best is None:
        logger.info("episode %d/%d | no successful evaluation yet", episodes, target)
        return
    logger.info(
        "episode %d/%d | best val acc %.4f (fp32 %.4f) at %.1fx smaller, %.3f BitOps | %.2f s/episode",
        episodes,
        target,
        best.accuracy,
        run.context.fp32_val_accuracy,
        best.compression_ratio,
        best.bitops_ratio,
        (time.time() - started) / max(1, episodes),
    )
