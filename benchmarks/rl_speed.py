"""Env steps per second of plain SB3 PPO and of every agent preset, side by side.

All variants train on the same env (``plasticity_rl/HopperFriction-v5``) with the same
network sizes (two 256x256 ReLU MLPs) and PPO settings (Dohare et al.'s: 2048 steps per
rollout, minibatch 128, 10 epochs), one torch thread each, in one process. Variants are
interleaved over repeats so slow drifts of the machine hit all of them alike; the median of the
repeats is reported. The presets include everything a real run does: our policy and optimiser,
the interventions, the network-health metrics (every 10,000 env steps, as by default) and
checkpoints (every 100,000 steps). Writes a dated markdown table to ``benchmarks/results/``.

    python benchmarks/rl_speed.py            # 20,480 env steps per run, 3 repeats (~25 min)
    python benchmarks/rl_speed.py --quick    # 10,240 env steps per run, 1 repeat
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from stable_baselines3 import PPO
from torch import nn

from plasticity_rl.agents import RLRunConfig, build_agent, make_env, rl_agent_presets, train
from plasticity_rl.agents.train import ppo_kwargs
from plasticity_rl.config import load_preset, resolve

ENV_PRESET = "hopper-friction"
RESULTS = Path(__file__).parent / "results"


PLAIN = "plain SB3 PPO"


def config(agent: str, total_steps: int, ppo: dict[str, Any] | None = None) -> RLRunConfig:
    """The preset's run config; ``ppo`` overrides PPO settings (e.g. tiny rollouts in tests)."""
    return resolve(
        RLRunConfig,
        {"env": load_preset("envs", ENV_PRESET)},
        load_preset("agents", agent),
        {"total_steps": total_steps, "seed": 0, "ppo": ppo or {}},
    )


def variants() -> list[str]:
    """``plain SB3 PPO``, then ``"<preset> bare"`` and ``"<preset> full"`` for every preset."""
    return [PLAIN, *(f"{p} {kind}" for p in rl_agent_presets() for kind in ("bare", "full"))]


def measure(variant: str, total_steps: int, ppo: dict[str, Any] | None = None) -> float:
    """Env steps/s of one of :func:`variants`."""
    if variant == PLAIN:
        return time_plain_sb3(total_steps, ppo)
    preset, kind = variant.split()
    return time_preset(preset, total_steps, bare=kind == "bare", ppo=ppo)


def time_plain_sb3(total_steps: int, ppo: dict[str, Any] | None = None) -> float:
    """SB3's own MlpPolicy with the same sizes and PPO settings, no callback."""
    cfg = config("ppo", total_steps, ppo)
    env = make_env(cfg)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=1e-4,
        **ppo_kwargs(cfg),
        policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": nn.ReLU},
    )
    start = time.perf_counter()
    model.learn(total_timesteps=total_steps)
    elapsed = time.perf_counter() - start
    env.close()
    return model.num_timesteps / elapsed


def time_preset(agent: str, total_steps: int, bare: bool = False,
                ppo: dict[str, Any] | None = None) -> float:  # fmt: skip
    """A full run of the preset through ``train`` (callback, metrics, checkpoints included).

    ``bare``: the same network, optimiser and PPO settings learning without interventions,
    callback, metrics or checkpoints; the difference to the full run is their cost.
    """
    cfg = config(agent, total_steps, ppo)
    if bare:
        cfg.method = {}
    env = make_env(cfg)
    model, methods = build_agent(cfg, env)
    start = time.perf_counter()
    if bare:
        model.learn(total_timesteps=total_steps)
    else:
        with tempfile.TemporaryDirectory() as run_dir:
            train(cfg, Path(run_dir), progress_bar=False, prepared=(env, model, methods))
    elapsed = time.perf_counter() - start
    env.close()
    return model.num_timesteps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,240 steps per run, 1 repeat")
    args = parser.parse_args()
    total_steps, repeats = (10_240, 1) if args.quick else (20_480, 3)
    torch.set_num_threads(1)
    presets = rl_agent_presets()
    speeds: dict[str, list[float]] = {v: [] for v in variants()}
    wall = time.perf_counter()
    for repeat in range(repeats):
        for variant in speeds:
            speed = measure(variant, total_steps)
            speeds[variant].append(speed)
            print(f"repeat {repeat + 1}/{repeats} {variant:>22}: {speed:7.1f} env steps/s")
    wall = time.perf_counter() - wall
    median = {v: statistics.median(runs) for v, runs in speeds.items()}
    lines = [
        f"# PPO speed, {date.today().isoformat()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"thread, Python {platform.python_version()}, torch {torch.__version__}. "
        f"Env `{ENV_PRESET}`, {total_steps} env steps per run, median of {repeats} interleaved "
        f"repeat(s); wall time of the benchmark {wall / 60:.1f} min. "
        f"Command: `python benchmarks/rl_speed.py{' --quick' if args.quick else ''}`.",
        "",
        "*bare*: the preset's network, optimiser and PPO settings, learning with no "
        "interventions, no callback, no metrics, no checkpoints. *full*: the preset as "
        "`train_rl.py` runs it (interventions, network-health metrics every 10,000 steps, "
        "weight-change monitor on every optimiser step, checkpoint at the end). The overhead "
        "of interventions + metrics is full vs bare. Plain SB3 PPO (its own MlpPolicy, "
        "orthogonal init, torch Adam) is the reference; its speed also differs because a "
        "different init changes how often the hopper falls (env resets).",
        "",
        f"Plain SB3 PPO: {median['plain SB3 PPO']:.0f} env steps/s "
        f"(runs: {', '.join(f'{s:.0f}' for s in speeds['plain SB3 PPO'])}).",
        "",
        "| preset | bare (env steps/s) | full (env steps/s) | full vs bare | full vs plain SB3 |",
        "|---|---|---|---|---|",
    ]
    for preset in presets:
        bare, full = median[f"{preset} bare"], median[f"{preset} full"]
        lines.append(
            f"| `{preset}` | {bare:.0f} | {full:.0f} | {100 * (full / bare - 1):+.1f}% "
            f"| {100 * (full / median['plain SB3 PPO'] - 1):+.1f}% |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"rl_speed_{date.today().isoformat()}{suffix}.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
