"""Train PPO with plasticity interventions on a (non-stationary) env, from one config.

Read top to bottom: build the env, build PPO with the project's networks and optimiser,
attach the interventions to the optimiser's steps, then learn with a callback that logs network
health and checkpoints. Differences from Dohare et al. 2024's PPO that stable-baselines3 forces:

- "no gradient clipping" is SB3's ``max_grad_norm = inf`` (the clip coefficient is then
  exactly 1, so gradients are unchanged);
- SB3 clips the sampled action to the action space's bounds before ``env.step``, and
  computes the value loss as ``mse(returns, values)`` (no value clipping);
- advantages are normalised per minibatch (SB3's ``normalize_advantage``).

Interventions act once per optimiser step: with 2048 steps per rollout, minibatches of 128
and 10 epochs, that is 160 times per rollout.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

import plasticity_rl.envs  # noqa: F401  (registers the plasticity_rl/ env ids)
from plasticity_rl.agents.callbacks import PlasticityCallback
from plasticity_rl.agents.checkpoint import load_checkpoint
from plasticity_rl.agents.config import RLRunConfig
from plasticity_rl.agents.policy import PlasticityActorCriticPolicy
from plasticity_rl.config import to_yaml
from plasticity_rl.envs.snapshot import Snapshot
from plasticity_rl.methods import Method, make_method
from plasticity_rl.optim import attach_step_hooks, sb3_optimizer_args
from plasticity_rl.registry import ConfigError, split_spec

CHECKPOINT = Path("checkpoints") / "latest.pt"
STATUS = "status.json"


def make_env(cfg: RLRunConfig) -> VecEnv:
    """``n_envs`` copies of the configured env, each seeded ``seed + rank`` by SB3.

    Non-stationary envs get ``schedule_seed = seed`` unless the preset sets one, so every copy
    follows the same sequence of physics values (each copy counts its own env steps).
    """
    vec_env_cls = SubprocVecEnv if cfg.env.vec_env == "subproc" else DummyVecEnv
    kwargs = dict(cfg.env.kwargs)
    if cfg.env.id.startswith("plasticity_rl/"):
        kwargs.setdefault("schedule_seed", cfg.seed)
    env = make_vec_env(
        # "module:id" makes sub-processes import the module that registers our ids.
        cfg.env.id if ":" in cfg.env.id else f"plasticity_rl.envs:{cfg.env.id}",
        n_envs=cfg.env.n_envs,
        seed=cfg.seed,
        env_kwargs=kwargs,
        vec_env_cls=vec_env_cls,
        wrapper_class=Snapshot,
    )
    if cfg.normalize_observations:
        env = VecNormalize(env, norm_obs=True, norm_reward=False, gamma=cfg.ppo.gamma)
    return env


def ppo_kwargs(cfg: RLRunConfig) -> dict[str, Any]:
    """SB3 ``PPO`` keyword arguments from ``cfg.ppo`` (no policy or learning rate), CPU."""
    p = cfg.ppo
    return {
        "n_steps": p.n_steps,
        "batch_size": p.batch_size,
        "n_epochs": p.n_epochs,
        "gamma": p.gamma,
        "gae_lambda": p.gae_lambda,
        "clip_range": p.clip_range,
        "ent_coef": p.ent_coef,
        "vf_coef": p.vf_coef,
        "max_grad_norm": float("inf") if p.max_grad_norm is None else p.max_grad_norm,
        "normalize_advantage": p.normalize_advantage,
        "target_kl": p.target_kl,
        "seed": cfg.seed,
        "device": "cpu",
    }


def build_agent(cfg: RLRunConfig, env: VecEnv) -> tuple[PPO, dict[str, Method]]:
    """PPO with the configured networks and optimiser, and the interventions attached."""
    name, optimizer_kwargs = split_spec(cfg.optimizer, "optimizer")
    lr = float(optimizer_kwargs.pop("lr", 1e-4))
    update_clip = optimizer_kwargs.pop("update_clip", None)
    optimizer_class, optimizer_kwargs = sb3_optimizer_args({"name": name, **optimizer_kwargs})
    model = PPO(
        PlasticityActorCriticPolicy,
        env,
        learning_rate=lr,
        **ppo_kwargs(cfg),
        policy_kwargs={
            "policy_net": asdict(cfg.policy_net),
            "value_net": asdict(cfg.value_net),
            "log_std_init": cfg.ppo.log_std_init,
            "optimizer_class": optimizer_class,
            "optimizer_kwargs": optimizer_kwargs,
        },
    )
    policy = model.policy
    attach_step_hooks(policy.optimizer, policy, update_clip=update_clip)
    methods = {n: make_method(n, **(kw or {})) for n, kw in cfg.method.items()}
    for name, method in methods.items():
        if method.uses_task_boundaries:
            raise ConfigError(f"method.{name}", name, "methods that need no task boundaries")
        method.attach(policy.networks, policy.optimizer)
    return model, methods


def write_status(run_dir: Path, state: str, **fields: Any) -> None:
    """``status.json``: ``running``, ``complete`` or ``failed``, with step counts."""
    (run_dir / STATUS).write_text(json.dumps({"state": state, **fields}, indent=2) + "\n")


def train(
    cfg: RLRunConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    progress_bar: bool = True,
    prepared: tuple[VecEnv, PPO, dict[str, Method]] | None = None,
) -> PPO:
    """Train (or, with ``resume``, continue) the run in ``run_dir``; returns the model.

    ``prepared`` passes an env and agent already built from ``cfg`` (the script builds them
    before creating the run directory, so a bad config leaves nothing behind).
    """
    torch.set_num_threads(1)
    if prepared is None:
        env = make_env(cfg)
        model, methods = build_agent(cfg, env)
    else:
        env, model, methods = prepared
    schedule = None
    if resume:
        path = run_dir / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        schedule = load_checkpoint(path, model, methods)["schedule"]
    else:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    model.set_logger(configure(str(run_dir), ["tensorboard"]))
    callback = PlasticityCallback(
        model.policy.networks, methods, cfg.logging, run_dir / CHECKPOINT, schedule
    )
    write_status(run_dir, "running", env_steps=model.num_timesteps, total_steps=cfg.total_steps)
    start = time.time()
    try:
        model.learn(
            total_timesteps=max(cfg.total_steps - model.num_timesteps, 0),
            callback=callback,
            reset_num_timesteps=not resume,
            progress_bar=progress_bar,
        )
    except BaseException:
        write_status(run_dir, "failed", env_steps=model.num_timesteps, total_steps=cfg.total_steps)
        raise
    finally:
        env.close()
    write_status(
        run_dir,
        "complete",
        env_steps=model.num_timesteps,
        total_steps=cfg.total_steps,
        wall_seconds=round(time.time() - start, 1),
    )
    return model
