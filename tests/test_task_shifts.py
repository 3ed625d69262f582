"""Tests for the observation/action permutation and reward-switch wrappers, the gravity preset and
exact resume of every non-stationary preset."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from plasticity_rl.envs import (
    INFO_KEY,
    PRESET_DIR,
    ActionPermutation,
    ObservationPermutation,
    RewardSwitch,
    find_schedule_wrapper,
    make_env_from_preset,
)
from plasticity_rl.envs.snapshot import Snapshot
from plasticity_rl.registry import ConfigError


def base(name: str = "Hopper", max_episode_steps: int = 1000) -> gym.Env:
    # No termination, so every episode lasts exactly max_episode_steps steps.
    return gym.make(
        f"{name}-v5", max_episode_steps=max_episode_steps, terminate_when_unhealthy=False
    )


def test_observation_permutation_permutes_the_plain_observation():
    env = ObservationPermutation(base(max_episode_steps=10), every_env_steps=10)
    plain = base(max_episode_steps=10)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, plain.reset(seed=0)[0])  # initial="default": identity
    assert info[INFO_KEY] == {"obs_fixed_fraction": 1.0, "changes": 0, "env_steps_since_change": 0}
    actions = np.random.default_rng(1)
    seen = []
    for _ in range(4):  # 4 episodes of 10 steps, a change at each reset
        for _ in range(10):
            action = actions.uniform(-1, 1, 3)
            obs, reward, *_, info = env.step(action)
            plain_obs, plain_reward, *_ = plain.step(action)
            perm = env.get_schedule_state()["value"]
            expected = plain_obs if perm is None else plain_obs[perm]
            np.testing.assert_array_equal(obs, expected)
            assert reward == plain_reward
        obs, info = env.reset()
        plain_obs = plain.reset()[0]
        perm = env.get_schedule_state()["value"]
        np.testing.assert_array_equal(obs, plain_obs[perm])
        assert sorted(perm) == list(range(11))
        fixed = np.mean(np.array(perm) == np.arange(11))
        assert info[INFO_KEY]["obs_fixed_fraction"] == fixed
        seen.append(tuple(perm))
    assert len(set(seen)) == 4  # a new permutation at each change (11! of them)


def test_observation_permutation_initial_sample_and_uniform_draws():
    env = ObservationPermutation(
        base(max_episode_steps=1), every_env_steps=1, initial="sample", schedule_seed=3
    )
    env.reset(seed=0)
    first = env.get_schedule_state()["value"]
    assert first is not None
    counts = np.zeros((11, 11))
    for _ in range(1100):
        env.step(np.zeros(3))
        env.reset()
        counts[np.arange(11), env.get_schedule_state()["value"]] += 1
    # Uniform permutations: each position takes each source 1100 / 11 = 100 times (sd ~ 9.5).
    assert np.abs(counts - 100).max() < 45


@pytest.mark.parametrize("mode", ["permute", "flip", "permute_flip"])
def test_action_permutation_routes_the_actions(mode):
    env = ActionPermutation(base(max_episode_steps=8), mode=mode, every_env_steps=8)
    plain = base(max_episode_steps=8)
    env.reset(seed=0)
    plain.reset(seed=0)
    actions = np.random.default_rng(1)
    mappings = []
    for _ in range(6):
        value = env.get_schedule_state()["value"]
        perm = np.arange(3) if value is None else np.array(value["permutation"])
        signs = np.ones(3) if value is None else np.array(value["signs"])
        if mode == "flip":
            np.testing.assert_array_equal(perm, np.arange(3))
        if mode == "permute":
            np.testing.assert_array_equal(signs, np.ones(3))
        for _ in range(8):
            action = actions.uniform(-1, 1, 3).astype(np.float32)
            obs, reward, *_, info = env.step(action)
            plain_obs, plain_reward, *_ = plain.step((signs * action[perm]).astype(np.float32))
            np.testing.assert_array_equal(obs, plain_obs)
            assert reward == plain_reward
        reported = info[INFO_KEY]
        if mode != "flip":
            assert reported["action_fixed_fraction"] == np.mean(perm == np.arange(3))
        if mode != "permute":
            assert reported["action_flipped_fraction"] == np.mean(signs < 0)
        assert ("action_fixed_fraction" in reported) == (mode != "flip")
        assert ("action_flipped_fraction" in reported) == (mode != "permute")
        mappings.append((tuple(perm), tuple(signs)))
        env.reset()
        plain.reset()
    assert len(set(mappings)) >= 3


def test_action_flips_are_fair_coins():
    env = ActionPermutation(
        base("Ant", max_episode_steps=1), mode="flip", every_env_steps=1, schedule_seed=0
    )
    env.reset(seed=0)
    signs = []
    for _ in range(500):
        env.step(np.zeros(8))
        env.reset()
        signs.append(env.get_schedule_state()["value"]["signs"])
    flipped = np.array(signs) < 0
    # 4000 fair coins: sd of the mean 0.008; every dimension flipped ~250 times (sd 11).
    assert abs(flipped.mean() - 0.5) < 0.04
    assert np.abs(flipped.sum(0) - 250).max() < 55


def test_reward_switch_direction_formula_and_alternation():
    env = RewardSwitch(base(max_episode_steps=20), every_env_steps=20)
    plain = base(max_episode_steps=20)
    env.reset(seed=0)
    plain.reset(seed=0)
    actions = np.random.default_rng(1)
    directions = []
    for _ in range(4):
        for _ in range(20):
            action = actions.uniform(-1, 1, 3)
            obs, reward, *_, info = env.step(action)
            plain_obs, plain_reward, *_, plain_info = plain.step(action)
            np.testing.assert_array_equal(obs, plain_obs)
            direction = info[INFO_KEY]["target_direction"]
            if env.get_schedule_state()["value"] is None:
                assert reward == plain_reward  # initial="default": the env's own reward
            else:
                # Hopper v5: r = survive + x_velocity + ctrl (forward weight 1).
                v = plain_info["x_velocity"]
                expected = plain_reward - v + direction * v
                assert reward == pytest.approx(expected, abs=1e-12)
                survive, ctrl = plain_info["reward_survive"], plain_info["reward_ctrl"]
                assert ctrl == pytest.approx(-1e-3 * float(np.sum(action**2)))
                assert reward == pytest.approx(survive + direction * v + ctrl, abs=1e-6)
        directions.append(direction)
        env.reset()
        plain.reset()
    assert directions == [1.0, -1.0, 1.0, -1.0]


def test_reward_switch_direction_sample_is_a_coin():
    firsts = []
    for seed in range(40):
        env = RewardSwitch(base(), initial="sample", schedule_seed=seed)
        firsts.append(env.reset(seed=0)[1][INFO_KEY]["target_direction"])
    assert set(firsts) == {-1.0, 1.0}
    assert 8 <= firsts.count(1.0) <= 32  # 40 fair coins: mean 20, sd 3.2


def test_reward_switch_speed_formula_and_ant_weight():
    # forward_reward_weight is a keyword of the base env: the wrapper reads it from there.
    inner = gym.make("Ant-v5", max_episode_steps=5, forward_reward_weight=2.0)
    plain = gym.make("Ant-v5", max_episode_steps=5, forward_reward_weight=2.0)
    env = RewardSwitch(
        inner, target="speed", low=0.5, high=1.5, every_env_steps=5, initial="sample"
    )
    env.reset(seed=0)
    plain.reset(seed=0)
    actions = np.random.default_rng(2)
    targets = []
    for _ in range(3):
        for _ in range(5):
            action = actions.uniform(-1, 1, 8)
            _, reward, *_, info = env.step(action)
            _, plain_reward, *_, plain_info = plain.step(action)
            target = info[INFO_KEY]["target_speed"]
            v = plain_info["x_velocity"]
            assert plain_info["reward_forward"] == pytest.approx(2.0 * v)
            expected = plain_reward - 2.0 * v - 2.0 * abs(v - target)
            assert reward == pytest.approx(expected, abs=1e-9)
        targets.append(target)
        env.reset()
        plain.reset()
    assert len(set(targets)) == 3 and all(0.5 <= t <= 1.5 for t in targets)
    default = RewardSwitch(base(), target="speed", initial="default")
    assert math.isnan(default.reset(seed=0)[1][INFO_KEY]["target_speed"])


def test_gravity_preset_scales_gravity_z():
    env = make_env_from_preset("hopper-gravity", every_env_steps=5)
    _, info = env.reset(seed=0)
    scale = info[INFO_KEY]["gravity_scale"]
    assert 0.5 <= scale <= 1.5 and set(info[INFO_KEY]) == {
        "gravity_scale",
        "changes",
        "env_steps_since_change",
    }
    np.testing.assert_allclose(env.unwrapped.model.opt.gravity, [0.0, 0.0, -9.81 * scale])


NEW_PRESETS = {
    "hopper-obs-permutation": "obs_fixed_fraction",
    "ant-obs-permutation": "obs_fixed_fraction",
    "hopper-action-permutation": "action_fixed_fraction",
    "hopper-action-flip": "action_flipped_fraction",
    "ant-action-flip": "action_flipped_fraction",
    "hopper-gravity": "gravity_scale",
    "ant-gravity": "gravity_scale",
    "hopper-reward-switch": "target_direction",
    "ant-reward-switch": "target_direction",
    "hopper-target-speed": "target_speed",
}


def test_new_presets_exist_and_report_their_quantity():
    names = {p.stem for p in PRESET_DIR.glob("*.yaml")}
    assert set(NEW_PRESETS) <= names
    for name, quantity in NEW_PRESETS.items():
        env = make_env_from_preset(name)
        _, info = env.reset(seed=0)
        assert set(info[INFO_KEY]) == {quantity, "changes", "env_steps_since_change"}, name
        assert find_schedule_wrapper(env).spec.kwargs["every_env_steps"] == 2_000_000


def rollout(env: gym.Env, actions: np.random.Generator, n_steps: int) -> list[tuple]:
    """``(observation, reward, terminated, truncated, schedule info)`` of n_steps steps."""
    out = []
    for _ in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(
            actions.uniform(-1, 1, env.action_space.shape)
        )
        out.append((obs.tolist(), float(reward), terminated, truncated, info[INFO_KEY]))
        if terminated or truncated:
            obs, info = env.reset()
            out.append((obs.tolist(), info[INFO_KEY]))
    return out


@pytest.mark.parametrize("name", sorted(NEW_PRESETS))
def test_snapshot_mid_run_restores_exactly(name):
    # every 15 env steps, episodes of at most 12: after 40 steps the run is mid-episode with
    # changes behind it; the restored env and the original then agree step for step.
    def make():
        return Snapshot(make_env_from_preset(name, every_env_steps=15, max_episode_steps=12))

    env = make()
    env.reset(seed=4)
    actions = np.random.default_rng(0)
    rollout(env, actions, 40)
    snapshot = env.get_snapshot()
    changes = find_schedule_wrapper(env).get_schedule_state()["changes"]
    assert changes >= 1
    restored = make()
    restored.set_snapshot(snapshot)
    state = actions.bit_generator.state
    continued = rollout(env, actions, 60)
    actions.bit_generator.state = state
    assert rollout(restored, actions, 60) == continued
    assert continued[-1][-1]["changes"] >= changes + 2


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: ActionPermutation(base(), mode="rotate"), "mode"),
        (lambda: RewardSwitch(base(), target="height"), "target"),
        (lambda: RewardSwitch(base(), target="speed", low=2.0, high=1.0), "low"),
        (lambda: RewardSwitch(gym.make("CartPole-v1")), "env"),
        # CartPole's observation entries have different bounds: a permutation would not keep
        # the observation space.
        (lambda: ObservationPermutation(gym.make("CartPole-v1")), "observation_space"),
        (lambda: ActionPermutation(gym.make("CartPole-v1")), "action_space"),
        (lambda: ObservationPermutation(base(), initial="zero"), "initial"),
        (lambda: ObservationPermutation(base(), every_env_steps=0), "every_env_steps"),
    ],
)
def test_config_errors(make, key):
    with pytest.raises(ConfigError, match=f"^{key}: got "):
        make()


def test_flip_needs_a_symmetric_action_space():
    asymmetric = gym.wrappers.RescaleAction(base(), 0.0, 1.0)
    ActionPermutation(asymmetric, mode="permute")  # a permutation keeps [0, 1]^3
    with pytest.raises(ConfigError, match=r"^action_space: .*symmetric"):
        ActionPermutation(asymmetric, mode="flip")


def test_unknown_wrapper_name():
    from plasticity_rl.envs import make_shift_env

    with pytest.raises(ConfigError, match="^wrapper: got 'Nope'.*RewardSwitch"):
        make_shift_env("Hopper-v5", "Nope")
