"""An SB3 actor-critic policy whose two networks come from the project's ``build_mlp``.

The policy and value functions are separate MLPs (obs -> hidden... -> action mean, and
obs -> hidden... -> value), as in Dohare et al. 2024's PPO. Each MLP is split at the SB3
override points: its ``hidden`` part becomes the ``mlp_extractor``'s policy/value branch and its
``output`` layer becomes ``action_net`` / ``value_net``, so every SB3 code path (rollouts,
``evaluate_actions``, saving) runs unchanged, and interventions see each network as one MLP
through :attr:`PlasticityActorCriticPolicy.networks`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import Tensor, nn

from plasticity_rl.nn import MLP, MLPConfig, build_mlp
from plasticity_rl.registry import ConfigError


class _SeparateExtractor(nn.Module):
    """SB3's ``mlp_extractor`` interface over the hidden parts of two MLPs."""

    def __init__(self, policy_net: nn.Module, value_net: nn.Module, latent_pi: int, latent_vf: int):
        super().__init__()
        self.policy_net, self.value_net = policy_net, value_net
        self.latent_dim_pi, self.latent_dim_vf = latent_pi, latent_vf

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.policy_net(features), self.value_net(features)

    def forward_actor(self, features: Tensor) -> Tensor:
        return self.policy_net(features)

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value_net(features)


class PlasticityActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic policy for continuous actions built from two :class:`MLPConfig`.

    Args:
        policy_net: config of the policy MLP (obs -> action mean).
        value_net: config of the value MLP (obs -> value).
        Other arguments as :class:`stable_baselines3.common.policies.ActorCriticPolicy`;
        ``ortho_init`` is forced off so the configured init is kept.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        policy_net: dict[str, Any] | MLPConfig | None = None,
        value_net: dict[str, Any] | MLPConfig | None = None,
        **kwargs: Any,
    ):
        if not isinstance(action_space, spaces.Box):
            raise ConfigError("action_space", type(action_space).__name__, "Box (continuous)")
        self._net_configs = {
            "pi": _as_dict(policy_net),
            "vf": _as_dict(value_net),
        }
        kwargs["ortho_init"] = False
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        obs_dim = self.features_dim
        action_dim = int(torch.Size(self.action_space.shape).numel())
        pi = build_mlp(obs_dim, out_dim=action_dim, **self._net_configs["pi"])
        vf = build_mlp(obs_dim, out_dim=1, **self._net_configs["vf"])
        # Plain dict, not submodules: the parameters are registered once, through the
        # extractor and the heads below.
        self.__dict__["networks"] = {"pi": pi, "vf": vf}
        self.mlp_extractor = _SeparateExtractor(
            pi.hidden, vf.hidden, pi.output.in_features, vf.output.in_features
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # Replace SB3's fresh linear heads by the output layers of our MLPs and rebuild the
        # optimizer over the final set of parameters.
        self.action_net = self.networks["pi"].output
        self.value_net = self.networks["vf"].output
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    networks: dict[str, MLP]
    """The policy (``"pi"``) and value (``"vf"``) MLPs, for interventions and metrics."""

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(policy_net=self._net_configs["pi"], value_net=self._net_configs["vf"])
        return data


def _as_dict(cfg: dict[str, Any] | MLPConfig | None) -> dict[str, Any]:
    if cfg is None:
        return asdict(MLPConfig())
    return asdict(cfg) if isinstance(cfg, MLPConfig) else dict(cfg)
