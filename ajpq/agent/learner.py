"""DDPG's TorchLearner: critic and actor losses; targets via DQN's learner base (Polyak, tau)."""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import ALL_MODULES

from ajpq.agent.config import CreditAssignment, DDPGConfig

__all__ = ["DDPGTorchLearner"]


class DDPGTorchLearner(DQNTorchLearner):
    """Critic: MSE to the target; actor: maximise Q(s, pi(s)). Two Adam optimizers."""

    def build(self) -> None:
        super().build()
        self._losses: dict[tuple[str, str], torch.Tensor] = {}

    def configure_optimizers_for_module(self, module_id: str, config: DDPGConfig = None) -> None:
        module = self._module[module_id]
        critic_params = self.get_parameters(module.critic)
        actor_params = self.get_parameters(module.actor)
        self.register_optimizer(
            module_id=module_id,
            optimizer_name="critic",
            optimizer=torch.optim.Adam(critic_params),
            params=critic_params,
            lr_or_lr_schedule=config.critic_lr,
        )
        self.register_optimizer(
            module_id=module_id,
            optimizer_name="actor",
            optimizer=torch.optim.Adam(actor_params),
            params=actor_params,
            lr_or_lr_schedule=config.actor_lr,
        )

    def compute_loss_for_module(
        self, *, module_id: str, config: DDPGConfig, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        module = self._module[module_id].unwrapped()
        rewards = batch[Columns.REWARDS].float()
        if CreditAssignment(config.credit_assignment) is CreditAssignment.EPISODE_BASELINE:
            target = rewards
        else:
            with torch.no_grad():
                q_next = module.forward_target(batch)["q_target_next"]
                not_done = 1.0 - batch[Columns.TERMINATEDS].float()
                target = rewards + config.gamma * not_done * q_next
        critic_loss = torch.mean((fwd_out["q_pred"] - target.detach()) ** 2)
        actor_loss = -fwd_out["q_of_pi"].mean()
        self._losses[(module_id, "critic")] = critic_loss
        self._losses[(module_id, "actor")] = actor_loss
        self.metrics.log_dict(
            {
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "q_mean": fwd_out["q_pred"].detach().mean(),
            },
            key=module_id,
            window=1,
        )
        return critic_loss + actor_loss

    def compute_gradients(self, loss_per_module: dict[str, torch.Tensor], **kwargs: Any) -> dict:
        """Each optimizer gets the gradient of its own loss w.r.t. its own parameters only."""
        grads: dict = {}
        for module_id in set(loss_per_module) - {ALL_MODULES}:
            for optim_name, optim in self.get_optimizers_for_module(module_id):
                params = self.filter_param_dict_for_optimizer(self._params, optim)
                loss = self._losses.pop((module_id, optim_name))
                values = torch.autograd.grad(
                    loss, list(params.values()), retain_graph=True, allow_unused=True
                )
                for (pid, param), grad in zip(params.items(), values):
                    grads[pid] = grad if grad is not None else torch.zeros_like(param)
        self._losses.clear()
        return grads
