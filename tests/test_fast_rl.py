"""The fast RL path: the one-process vec env, the run-level schedule and the fast layout."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from plasticity_rl.agents import RLRunConfig, rl_agent_presets
from plasticity_rl.agents.train import make_env, per_copy_env_kwargs
from plasticity_rl.config import load_preset, resolve
from plasticity_rl.envs.snapshot import Snapshot
from plasticity_rl.envs.vec_env import DummyVecEnvNoInfoCopy
from plasticity_rl.registry import ConfigError


def test_no_info_copy_vec_env_equals_sb3_dummy_vec_env_step_for_step():
    # 3 Hopper copies, friction every 150 steps, random actions for 1,200 steps: falls,
    # resets, terminal observations and friction changes all happen.
    def build(cls):
        return make_vec_env("plasticity_rl/HopperFriction-v5", n_envs=3, seed=5,
                            env_kwargs={"every_env_steps": 150, "schedule_seed": 1},
                            vec_env_cls=cls, wrapper_class=Snapshot)  # fmt: skip

    ours, sb3 = build(DummyVecEnvNoInfoCopy), build(DummyVecEnv)
    assert np.array_equal(ours.reset(), sb3.reset())
    actions = np.random.default_rng(0).uniform(-1, 1, (1200, 3, 3)).astype(np.float32)
    kept, dones = [], 0
    for action in actions:
        obs_a, rew_a, done_a, infos_a = ours.step(action)
        obs_b, rew_b, done_b, infos_b = sb3.step(action)
        assert np.array_equal(obs_a, obs_b) and np.array_equal(rew_a, rew_b)
        assert np.array_equal(done_a, done_b)
        for a, b in zip(infos_a, infos_b, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if key == "episode":  # Monitor's return and length; "t" is wall time
                    assert (a[key]["r"], a[key]["l"]) == (b[key]["r"], b[key]["l"])
                elif isinstance(a[key], np.ndarray):
                    assert np.array_equal(a[key], b[key]), key
                else:
                    assert a[key] == b[key], key
        kept.append((infos_a, [dict(i) for i in infos_a]))
        dones += int(done_a.sum())
    assert dones > 10 and infos_a[0]["nonstationary"]["changes"] >= 2
    # infos returned earlier are not changed by later steps
    for infos, copies in kept:
        assert [i.keys() for i in infos] == [c.keys() for c in copies]


def config(**env: object) -> RLRunConfig:
    return resolve(RLRunConfig, {"env": {"id": "plasticity_rl/HopperFriction-v5", **env}})


def test_every_env_steps_counts_the_runs_env_steps_over_all_copies():
    assert per_copy_env_kwargs(config(n_envs=16, kwargs={"every_env_steps": 32_000})) == {
        "every_env_steps": 2_000, "schedule_seed": 0}  # fmt: skip
    # the wrapper's default (2M) when unset; one copy keeps it as it is
    assert per_copy_env_kwargs(config(n_envs=16))["every_env_steps"] == 125_000
    assert per_copy_env_kwargs(config(kwargs={"every_env_steps": 7}))["every_env_steps"] == 7
    # a plain Gymnasium id has no schedule
    assert per_copy_env_kwargs(config(id="Hopper-v5", n_envs=4)) == {}
    with pytest.raises(ConfigError, match=r"^env.kwargs.every_env_steps: got 1000; allowed: "
                       r"a multiple of env.n_envs = 16"):  # fmt: skip
        per_copy_env_kwargs(config(n_envs=16, kwargs={"every_env_steps": 1000}))


def test_sixteen_copies_change_friction_after_the_runs_every_env_steps():
    cfg = config(n_envs=16, kwargs={"every_env_steps": 1600})
    env = make_env(cfg)
    env.reset()
    for _ in range(99):  # 1,584 run env steps: no copy has changed yet
        env.step(np.zeros((16, 3)))
    assert {s["changes"] for s in env.env_method("get_schedule_state")} == {0}
    for _ in range(1100):  # falls within 100 steps: a change every 100 of a copy's steps
        env.step(np.ones((16, 3)))
    assert {s["changes"] for s in env.env_method("get_schedule_state")} == {1199 // 100 - 1}
    env.close()


def test_a_list_of_bases_merges_left_to_right_under_the_file(tmp_path):
    fast = load_preset("agents", "fast")
    agent = load_preset("agents", "ppo-cbp-l2-fast")
    paper = load_preset("agents", "ppo-cbp-l2")
    assert agent["env"] == fast["env"] and agent["ppo"] == {**paper["ppo"], **fast["ppo"]}
    # fast's optimizer has no name: it changes the lr only, the agent's optimiser stays
    assert agent["optimizer"] == {**paper["optimizer"], "lr": 2e-4}
    cbp = agent["method"]["continual_backprop"]
    assert (cbp["replacement_rate"], cbp["maturity_threshold"], cbp["utility"]) == (
        4e-4, 2500, "contribution")  # fmt: skip
    assert "fast" not in rl_agent_presets() and "ppo-cbp-l2-fast" in rl_agent_presets()
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [ppo, 3]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: base: got \['ppo', 3\]; allowed: a preset"):
        load_preset("agents", bad)
