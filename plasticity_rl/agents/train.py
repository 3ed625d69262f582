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

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecNormalize

import plasticity_rl.envs  # noqa: F401  (registers the plasticity_rl/ env ids)
from plasticity_rl.agents.callbacks import EnvStepProgress, PlasticityCallback
from plasticity_rl.agents.checkpoint import load_checkpoint
from plasticity_rl.agents.config import RLRunConfig
from plasticity_rl.agents.policy import PlasticityActorCriticPolicy
from plasticity_rl.config import to_yaml
from plasticity_rl.device import resolve_device
from plasticity_rl.envs.nonstationary import shift_default
from plasticity_rl.envs.snapshot import Snapshot
from plasticity_rl.envs.vec_env import DummyVecEnvNoInfoCopy
from plasticity_rl.methods import Method, make_method
from plasticity_rl.optim import attach_step_hooks, sb3_optimizer_args
from plasticity_rl.registry import ConfigError, require, require_number, split_spec
from plasticity_rl.rundir import (
    CHECKPOINT,
    Diverged,
    Interrupted,
    RunLock,
    StopSignals,
    write_status,
    write_text_atomic,
)


def make_env(cfg: RLRunConfig) -> VecEnv:
    """``n_envs`` copies of the configured env, each seeded ``seed + rank`` by SB3.

    Non-stationary envs get ``schedule_seed = seed`` unless the preset sets one, so every copy
    follows the same sequence of values (physics, permutations, reward targets). Each copy
    counts its own env steps; ``env.kwargs.every_env_steps`` counts the run's, so each copy
    gets ``every_env_steps / n_envs`` (:func:`per_copy_env_kwargs`) and the agent meets a
    change every ``every_env_steps`` env steps whatever the number of copies.
    """
    vec_env_cls = SubprocVecEnv if cfg.env.vec_env == "subproc" else DummyVecEnvNoInfoCopy
    kwargs = per_copy_env_kwargs(cfg)
    check_env_kwargs(cfg.env.id, kwargs)
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


def per_copy_env_kwargs(cfg: RLRunConfig) -> dict[str, Any]:
    """The keywords each env copy is made with: ``schedule_seed`` defaulted to the run's seed
    and ``every_env_steps`` (run env steps, the wrapper's default if unset) divided by
    ``n_envs``.

    Raises:
        ConfigError: ``every_env_steps`` is not a positive multiple of ``env.n_envs``.
    """
    kwargs = dict(cfg.env.kwargs)
    env_id = cfg.env.id.split(":")[-1]
    if not env_id.startswith("plasticity_rl/") or env_id not in gym.registry:
        return kwargs  # check_env_kwargs refuses an unknown id
    kwargs.setdefault("schedule_seed", cfg.seed)
    every = kwargs.get("every_env_steps", shift_default(env_id, "every_env_steps"))
    n = cfg.env.n_envs
    if n > 1:
        ok = isinstance(every, int) and every >= n and every % n == 0
        require(ok, "env.kwargs.every_env_steps", every, f"a multiple of env.n_envs = {n} (it "
                "counts the run's env steps; each copy changes after every_env_steps / n_envs "
                "of its own)")  # fmt: skip
        kwargs["every_env_steps"] = every // n
    return kwargs


def check_env_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Build the env once in this process, so that an unknown id or a keyword typo is a
    one-line error here rather than a ``TypeError`` inside ``gymnasium.make`` (or a worker).

    Raises:
        ConfigError: an unknown env id, or a keyword neither the env nor its base env takes.
    """
    env_id = env_id.split(":")[-1]
    if env_id not in gym.registry:
        raise ConfigError("env.id", env_id, "a registered Gymnasium id, e.g. "
                          "plasticity_rl/HopperFriction-v5")  # fmt: skip
    try:
        gym.make(env_id, **kwargs).close()
    except TypeError as err:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if found is None:
            raise
        raise ConfigError("env.kwargs", found.group(1), f"the keywords of {env_id} and its "
                          "base env (see plasticity_rl.envs)") from None  # fmt: skip


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
        "device": str(resolve_device(cfg.device)),
    }


class MethodsPPO(PPO):
    """SB3 ``PPO`` that passes each rollout's policy loss to the interventions after training
    on it (:meth:`~plasticity_rl.methods.base.Method.on_training_loss`): the mean over the
    rollout's minibatches of the clipped-surrogate loss, which SB3's ``train`` records as
    ``train/policy_gradient_loss``."""

    methods: dict[str, Method]

    def train(self) -> None:
        super().train()
        loss = torch.tensor(self.logger.name_to_value["train/policy_gradient_loss"])
        for method in self.methods.values():
            method.on_training_loss(loss)


def build_agent(cfg: RLRunConfig, env: VecEnv) -> tuple[PPO, dict[str, Method]]:
    """PPO with the configured networks and optimiser, and the interventions attached."""
    name, optimizer_kwargs = split_spec(cfg.optimizer, "optimizer")
    lr = optimizer_kwargs.pop("lr", 1e-4)
    require_number("optimizer.lr", lr)
    require(lr > 0, "optimizer.lr", lr, "a number > 0")
    update_clip = optimizer_kwargs.pop("update_clip", None)
    optimizer_class, optimizer_kwargs = sb3_optimizer_args({"name": name, **optimizer_kwargs})
    model = MethodsPPO(
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
    model.methods = methods
    return model, methods


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
    before creating the run directory, so a bad config leaves nothing behind). The checkpoint
    of a resumed run is verified and checked against ``cfg`` before anything is written.
    ``status.json`` follows the run (:mod:`plasticity_rl.rundir`).

    Raises:
        ConfigError: no usable checkpoint to resume, or another process trains ``run_dir``.
        Interrupted: SIGINT, SIGTERM or SIGHUP; the run checkpointed at the next rollout start.
        Diverged: the policy's parameters or outputs became NaN or infinite.
        DiskFull: the disk filled up while writing a checkpoint (the previous one is kept).
    """
    torch.set_num_threads(cfg.torch_threads)
    if prepared is None:
        env = make_env(cfg)
        model, methods = build_agent(cfg, env)
    else:
        env, model, methods = prepared
    extra: dict[str, Any] = {}
    try:
        if resume:
            extra = load_checkpoint(run_dir / CHECKPOINT, model, methods)
        with RunLock(run_dir), StopSignals() as stop:
            return _learn(cfg, run_dir, model, methods, extra, stop, progress_bar, resume)
    finally:
        env.close()


def _finite(model: PPO) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.policy.parameters())


def _learn(cfg: RLRunConfig, run_dir: Path, model: PPO, methods: dict[str, Method],
           extra: dict[str, Any], stop: StopSignals, progress_bar: bool,
           resume: bool) -> PPO:  # fmt: skip
    write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))  # a resume may extend total_steps
    model.set_logger(configure(str(run_dir), ["tensorboard"]))

    def status(state: str, **fields: Any) -> None:
        steps = {"env_steps": model.num_timesteps, "total_steps": cfg.total_steps}
        write_status(run_dir, state, **steps, **fields)

    def on_checkpoint(steps: int) -> None:
        status("running", checkpoint_env_steps=steps)

    # extra: the callback's record in the checkpoint resumed from ({} for a new run)
    callback = PlasticityCallback(model.policy.networks, methods, cfg.logging,
                                  run_dir / CHECKPOINT, stop, on_checkpoint, extra)  # fmt: skip
    status("running")
    try:
        model.learn(
            total_timesteps=max(cfg.total_steps - model.num_timesteps, 0),
            callback=[callback, EnvStepProgress(cfg.total_steps)] if progress_bar else callback,
            reset_num_timesteps=not resume,
        )
    except ValueError as err:  # torch's Normal refuses a NaN mean: the network diverged
        if _finite(model) and "invalid values" not in str(err):
            status("failed", error=f"ValueError: {err}"[:300])
            raise
        callback.diverged_at_step = model.num_timesteps
    except BaseException as err:
        status("failed", error=f"{type(err).__name__}: {err}"[:300])
        raise
    if callback.diverged_at_step is not None:
        status("diverged", diverged_at_step=callback.diverged_at_step)
        raise Diverged("the policy's parameters or outputs", callback.diverged_at_step)
    if callback.stopped:  # at a rollout start, after the checkpoint (SB3 took one more step)
        assert stop.received is not None
        steps = model.num_timesteps if callback.checkpoint_steps is None else (
            callback.checkpoint_steps)  # fmt: skip
        write_status(run_dir, "interrupted", env_steps=steps, total_steps=cfg.total_steps,
                     checkpoint_env_steps=steps, signal=stop.received)  # fmt: skip
        raise Interrupted(stop.received, steps)
    status("complete", wall_seconds=round(callback.wall_seconds, 1))
    return model
