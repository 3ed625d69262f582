"""Env steps per second of plain SB3 PPO and of every agent preset, side by side.

Per env preset (``hopper-friction``, ``ant-friction``), every variant trains with the same
network sizes (two 256x256 ReLU MLPs), one torch thread each, in one process. *plain SB3 PPO*
is stock SB3 (its ``MlpPolicy``, ``DummyVecEnv``, no wrapper of ours) with the paper's layout
(Dohare et al.'s: 1 env x 2,048 steps per rollout, minibatch 128, 10 epochs); ``lop`` is the
paper's PPO as this project runs it; the ``*-fast`` presets use the layout of
``agents/fast.yaml`` (16 copies x 128 steps, minibatch 512). The presets include everything a
real run does: our policy and optimiser, the interventions, the network-health metrics (every
10,000 env steps, as by default) and checkpoints (every 100,000 steps). Rates are steady state
(:class:`SteadyStateTimer`): env steps per second from the start of the second rollout to the
end of the last update, so the first rollout (warm-up) and the per-run costs a long run pays
once (set-up, the final metrics and checkpoint) are left out for every variant alike. On
Hopper every preset runs *bare* and *full*; on Ant plain SB3, ``lop`` and two fast presets.
``benchmarks/run.py`` (the suite) times each variant in its own process and writes the table.

    python benchmarks/run.py --only "ppo:"     # all PPO variants, Hopper and Ant
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from plasticity_rl.agents import RLRunConfig, build_agent, make_env, rl_agent_presets, train
from plasticity_rl.agents.train import per_copy_env_kwargs, ppo_kwargs
from plasticity_rl.config import load_preset, resolve

ENV_PRESETS = ("hopper-friction", "ant-friction")
"""The env presets of the benchmark: Hopper (every preset) and Ant (the main variants)."""
PLAIN = "plain SB3 PPO"
ANT_VARIANTS = (PLAIN, "lop full", "ppo-fast full", "ppo-cbp-l2-fast full")


def config(agent: str, total_steps: int, ppo: dict[str, Any] | None = None,
           env: str = ENV_PRESETS[0]) -> RLRunConfig:  # fmt: skip
    """The preset's run config; ``ppo`` overrides PPO settings (e.g. tiny rollouts in tests)."""
    return resolve(
        RLRunConfig,
        {"env": load_preset("envs", env)},
        load_preset("agents", agent),
        {"total_steps": total_steps, "seed": 0, "ppo": ppo or {}},
    )


def variants(env: str = ENV_PRESETS[0]) -> list[str]:
    """On Hopper ``plain SB3 PPO``, then ``"<preset> bare"`` and ``"<preset> full"`` for
    ``lop`` and every agent preset; on Ant :data:`ANT_VARIANTS`."""
    if env != ENV_PRESETS[0]:
        return list(ANT_VARIANTS)
    presets = ["lop", *rl_agent_presets()]
    return [PLAIN, *(f"{p} {kind}" for p in presets for kind in ("bare", "full"))]


class SteadyStateTimer(BaseCallback):
    """Env steps/s from the start of the second rollout to the end of training (its
    ``on_training_end`` must run first: put it first in the callback list)."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts = 0
        self.start: tuple[float, int] | None = None
        self.rate = float("nan")

    def _on_rollout_start(self) -> None:
        self.rollouts += 1
        if self.rollouts == 2:
            self.start = (time.perf_counter(), self.num_timesteps)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.start is not None:
            seconds, steps = time.perf_counter() - self.start[0], self.num_timesteps - self.start[1]
            self.rate = steps / seconds


def timed_learn(model: PPO) -> SteadyStateTimer:
    """Make ``model.learn`` run :class:`SteadyStateTimer` before its other callbacks."""
    timer, learn = SteadyStateTimer(), model.learn

    def learn_timed(*args: Any, callback: Any = None, **kwargs: Any) -> Any:
        others = [] if callback is None else callback if isinstance(callback, list) else [callback]
        return learn(*args, callback=[timer, *others], **kwargs)

    model.learn = learn_timed  # type: ignore[method-assign]
    return timer


def measure(variant: str, total_steps: int, ppo: dict[str, Any] | None = None,
            env: str = ENV_PRESETS[0]) -> float:  # fmt: skip
    """Env steps/s of one of :func:`variants` on the env preset ``env``."""
    if variant == PLAIN:
        return time_plain_sb3(total_steps, ppo, env)
    preset, kind = variant.split()
    return time_preset(preset, total_steps, bare=kind == "bare", ppo=ppo, env=env)


def time_plain_sb3(total_steps: int, ppo: dict[str, Any] | None = None,
                   env_preset: str = ENV_PRESETS[0]) -> float:  # fmt: skip
    """Stock SB3: its MlpPolicy and ``DummyVecEnv`` with the paper's sizes and PPO settings."""
    cfg = config("lop", total_steps, ppo, env_preset)
    env = make_vec_env(cfg.env.id, n_envs=1, seed=cfg.seed, env_kwargs=per_copy_env_kwargs(cfg))
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=1e-4,
        **ppo_kwargs(cfg),
        policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": nn.ReLU},
    )
    timer = timed_learn(model)
    model.learn(total_timesteps=total_steps)
    env.close()
    return timer.rate


def time_preset(agent: str, total_steps: int, bare: bool = False,
                ppo: dict[str, Any] | None = None, env: str = ENV_PRESETS[0]) -> float:  # fmt: skip
    """A run of the preset through ``train`` (callback, metrics, checkpoints included).

    ``bare``: the same network, optimiser and PPO settings learning without interventions,
    callback, metrics or checkpoints; the difference to the full run is their cost.
    """
    cfg = config(agent, total_steps, ppo, env)
    if bare:
        cfg.method = {}
    vec_env = make_env(cfg)
    model, methods = build_agent(cfg, vec_env)
    timer = timed_learn(model)
    if bare:
        model.learn(total_timesteps=total_steps)
    else:
        with tempfile.TemporaryDirectory() as run_dir:
            train(cfg, Path(run_dir), progress_bar=False, prepared=(vec_env, model, methods))
    vec_env.close()
    return timer.rate
