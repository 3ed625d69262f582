"""PPO (stable-baselines3) with the project's networks, optimisers and interventions."""

from plasticity_rl.agents.config import (
    EnvConfig,
    LoggingConfig,
    PPOConfig,
    RLRunConfig,
    rl_agent_presets,
    validate,
)
from plasticity_rl.agents.policy import PlasticityActorCriticPolicy
from plasticity_rl.agents.train import build_agent, make_env, train

__all__ = [
    "EnvConfig",
    "LoggingConfig",
    "PPOConfig",
    "PlasticityActorCriticPolicy",
    "RLRunConfig",
    "build_agent",
    "rl_agent_presets",
    "make_env",
    "train",
    "validate",
]
