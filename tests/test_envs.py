"""Tests for the non-stationary MuJoCo wrappers, their registered ids and the env presets."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from plasticity_rl.envs import (
    INFO_KEY,
    PRESET_DIR,
    FrictionShift,
    PhysicsShift,
    find_schedule_wrapper,
    load_env_preset,
    make_env_from_preset,
)
from plasticity_rl.registry import ConfigError


def hopper(max_episode_steps: int = 1000) -> gym.Env:
    # No termination, so every episode lasts exactly max_episode_steps steps.
    return gym.make(
        "Hopper-v5", max_episode_steps=max_episode_steps, terminate_when_unhealthy=False
    )


def run(env: gym.Env, n_steps: int, actions: np.random.Generator | None = None) -> list[dict]:
    """Steps ``env`` n_steps times (resetting at episode ends); the schedule info after each."""
    infos = []
    for _ in range(n_steps):
        action = np.zeros(env.action_space.shape) if actions is None else actions.uniform(-1, 1, 3)
        _, _, terminated, truncated, info = env.step(action)
        infos.append(info[INFO_KEY])
        if terminated or truncated:
            _, info = env.reset()
            infos.append(info[INFO_KEY])
    return infos


def sequence(infos: list[dict], name: str = "friction") -> list[float]:
    """The distinct values in order of appearance."""
    values = [infos[0][name]]
    for info in infos[1:]:
        if info[name] != values[-1]:
            values.append(info[name])
    return values


def with_value(env: PhysicsShift, value: float | None) -> PhysicsShift:
    env.set_schedule_state({**env.get_schedule_state(), "value": value})
    return env


def trajectory(friction: float, seed: int = 0) -> np.ndarray:
    env = FrictionShift(hopper(), initial="default")
    env.reset(seed=seed)  # a seeded reset restarts the schedule: set the value after it
    with_value(env, friction)
    actions = np.random.default_rng(1)
    return np.array([env.step(actions.uniform(-1, 1, 3))[0] for _ in range(40)])


def test_friction_changes_the_physics():
    same = trajectory(0.1), trajectory(0.1)
    np.testing.assert_array_equal(*same)
    assert np.abs(trajectory(0.1) - trajectory(1.5)).max() > 1e-2


def test_change_only_at_first_reset_after_every_env_steps():
    # every 50 steps, episodes of 30 steps. Hand count of steps since the last change:
    # ep1 30 -> reset: 30 < 50, no change; ep2 31..60, passes 50 mid-episode: no change;
    # reset: 60 >= 50 -> change 1, counter 0; ep3 30 no change; ep4 60 -> change 2.
    env = FrictionShift(hopper(max_episode_steps=30), every_env_steps=50, schedule_seed=0)
    _, info = env.reset(seed=0)
    infos = [info[INFO_KEY]] + run(env, 120)
    after_reset = infos[31::31]  # the reset infos follow steps 30, 60, 90, 120
    assert [i["changes"] for i in after_reset] == [0, 1, 1, 2]
    assert [i["env_steps_since_change"] for i in after_reset] == [30, 0, 30, 0]
    episode2 = infos[32:62]
    assert [i["env_steps_since_change"] for i in episode2] == list(range(31, 61))
    assert {i["friction"] for i in infos[:62]} == {infos[0]["friction"]}
    assert len(sequence(infos)) == 3


@pytest.mark.parametrize(("episode_steps", "changes"), [(9, 0), (10, 1), (11, 1)])
def test_change_threshold_is_every_env_steps(episode_steps, changes):
    # every 10 steps: the reset after a 9-step episode keeps the value, after 10 or 11 it changes.
    env = FrictionShift(hopper(max_episode_steps=episode_steps), every_env_steps=10)
    env.reset(seed=0)
    assert run(env, episode_steps)[-1]["changes"] == changes


@pytest.mark.parametrize("distribution", ["log_uniform", "uniform"])
def test_values_in_range_and_distributed(distribution):
    env = FrictionShift(
        hopper(max_episode_steps=1),
        every_env_steps=1,
        distribution=distribution,
        schedule_seed=0,
    )
    env.reset(seed=0)
    values = np.array([i["friction"] for i in run(env, 2000)[1::2]])  # the reset infos
    assert values.min() >= 0.02 and values.max() <= 2.0
    # log-uniform on [0.02, 2]: log value ~ U(log 0.02, log 2), mean log 0.2 = -1.609, sd of the
    # mean 4.605 / sqrt(12 * 2000) = 0.03; half the draws below 0.2. Uniform: mean 1.01, sd of
    # the mean 1.98 / sqrt(12 * 2000) = 0.013; P(x < 0.2) = 0.18 / 1.98 = 0.09.
    if distribution == "log_uniform":
        assert abs(np.log(values).mean() - math.log(0.2)) < 0.1
        assert abs((values < 0.2).mean() - 0.5) < 0.05
    else:
        assert abs(values.mean() - 1.01) < 0.05
        assert abs((values < 0.2).mean() - 0.09) < 0.03


def test_sequence_reproducible_and_independent_of_other_randomness():
    def values(reset_seed, schedule_seed=None, action_seed=0, reseed=False):
        env = FrictionShift(
            hopper(max_episode_steps=20), every_env_steps=1, schedule_seed=schedule_seed
        )
        env.reset(seed=reset_seed)
        actions = np.random.default_rng(action_seed)
        out = []
        for _ in range(5):
            run(env, 19, actions)  # stays inside the episode
            env.step(actions.uniform(-1, 1, 3))
            _, info = env.reset(seed=reset_seed if reseed else None)
            out.append(info[INFO_KEY]["friction"])
        return out

    base = values(reset_seed=3)
    assert len(set(base)) == 5
    assert values(reset_seed=3, action_seed=1) == base  # actions do not matter
    # a reset with the seed restarts the sequence (Gymnasium's rule): its first value again
    reseeded = values(reset_seed=3, reseed=True)
    assert len(set(reseeded)) == 1 and reseeded[0] not in base
    assert values(reset_seed=4) != base  # derived from the first reset's seed
    # An explicit schedule_seed decides alone, whatever the env seed.
    assert values(reset_seed=3, schedule_seed=7) == values(reset_seed=4, schedule_seed=7)


@pytest.mark.parametrize("mode", ["set", "scale"])
def test_friction_modes_on_live_model(mode):
    env = FrictionShift(hopper(), mode=mode, schedule_seed=0)
    model = env.unwrapped.model
    original = model.geom_friction.copy()  # Hopper XML: floor 1.0, limbs 0.9, feet 2.0
    _, info = env.reset(seed=0)
    value = info[INFO_KEY]["friction"]
    expected = np.full(model.ngeom, value) if mode == "set" else original[:, 0] * value
    np.testing.assert_allclose(model.geom_friction[:, 0], expected)
    assert model.geom(0).name == "floor"
    np.testing.assert_array_equal(model.geom_friction[:, 1:], original[:, 1:])  # torsional, rolling


def test_initial_default_keeps_xml_until_first_change():
    env = FrictionShift(hopper(max_episode_steps=10), every_env_steps=10, initial="default")
    original = env.unwrapped.model.geom_friction.copy()
    _, info = env.reset(seed=0)
    # set mode, Hopper's geoms differ (1.0, 0.9, 2.0): no single value -> NaN.
    assert math.isnan(info[INFO_KEY]["friction"])
    np.testing.assert_array_equal(env.unwrapped.model.geom_friction, original)
    infos = run(env, 10)
    assert infos[-1]["changes"] == 1 and 0.02 <= infos[-1]["friction"] <= 2.0
    # Scale mode reports the identity factor.
    scaled = FrictionShift(hopper(), mode="scale", initial="default")
    assert scaled.reset(seed=0)[1][INFO_KEY]["friction"] == 1.0


def test_general_wrapper_body_mass_and_gravity():
    env = PhysicsShift(hopper(), "body_mass", mode="scale", low=0.5, high=2.0, schedule_seed=0)
    model = env.unwrapped.model
    original = model.body_mass.copy()
    _, info = env.reset(seed=0)
    factor = info[INFO_KEY]["body_mass"]
    assert 0.5 <= factor <= 2.0 and factor != 1.0
    np.testing.assert_allclose(model.body_mass, original * factor)
    # Dotted field and index: only the z component of gravity (0, 0, -9.81) changes.
    env = PhysicsShift(hopper(), "opt.gravity", index=2, mode="scale", low=0.5, high=0.5)
    env.reset(seed=0)
    np.testing.assert_allclose(env.unwrapped.model.opt.gravity, [0.0, 0.0, -9.81 * 0.5])


def test_info_keys_at_step_and_reset():
    env = FrictionShift(hopper(), schedule_seed=0)
    _, info = env.reset(seed=0)
    friction = info[INFO_KEY]["friction"]
    assert info[INFO_KEY] == {"friction": friction, "changes": 0, "env_steps_since_change": 0}
    info = env.step(np.zeros(3))[4]
    assert info[INFO_KEY] == {"friction": friction, "changes": 0, "env_steps_since_change": 1}


def test_schedule_state_restore_continues_sequence():
    def make():
        return FrictionShift(hopper(max_episode_steps=15), every_env_steps=20)

    env = make()
    env.reset(seed=5)
    # Resets after 15 (15 < 20), 30 (change 1) and 45 steps (15 < 20): after 47 steps the run is
    # mid-episode with 1 change and 17 steps since it.
    run(env, 47)
    state = env.get_schedule_state()
    assert (state["changes"], state["env_steps_since_change"]) == (1, 17)
    json.dumps(state)  # plain Python data only
    resumed = make()
    resumed.set_schedule_state(state)
    resumed.reset()  # a resumed run continues with unseeded resets
    np.testing.assert_array_equal(
        resumed.unwrapped.model.geom_friction, env.unwrapped.model.geom_friction
    )
    env.reset()  # both now at an episode boundary with the same counters
    continued, restored = run(env, 200), run(resumed, 200)
    assert sequence(continued) == sequence(restored)
    assert len(sequence(continued)) > 3


def test_find_schedule_wrapper():
    env = Monitor(FrictionShift(hopper()))
    assert isinstance(find_schedule_wrapper(env), FrictionShift)
    with pytest.raises(ValueError, match="no ScheduledShift"):
        find_schedule_wrapper(hopper())


@pytest.mark.parametrize("base", ["Ant", "Hopper", "Walker2d"])
def test_registered_ids(base):
    env = gym.make(f"plasticity_rl/{base}Friction-v5", every_env_steps=1000)
    assert env.spec.max_episode_steps == 1000
    wrapper = find_schedule_wrapper(env)
    assert isinstance(wrapper, FrictionShift)
    assert wrapper.spec.kwargs["base_id"] == f"{base}-v5"
    _, info = env.reset(seed=0)
    assert set(info[INFO_KEY]) == {"friction", "changes", "env_steps_since_change"}
    step_info = env.step(env.action_space.sample())[4][INFO_KEY]
    assert step_info == {**info[INFO_KEY], "env_steps_since_change": 1}
    assert isinstance(find_schedule_wrapper(gym.make(env.spec)), FrictionShift)  # rebuild


def test_registered_id_keeps_truncation_boundaries():
    env = gym.make(
        "plasticity_rl/HopperFriction-v5",
        every_env_steps=5,
        max_episode_steps=8,
        terminate_when_unhealthy=False,  # goes to the base env
    )
    env.reset(seed=0)
    infos = run(env, 8)
    assert infos[7]["env_steps_since_change"] == 8 and infos[8]["changes"] == 1


def test_dummy_vec_env_separate_counters():
    # every 50 steps; episodes of 20 (env 0) and 35 (env 1) steps. After 60 vec steps:
    # env 0 reset after 20, 40 (no change), 60 (60 >= 50: change, counter 0);
    # env 1 reset after 35 (35 < 50: no change), counter 60 - 35 + 35 = 60, changes 0.
    def factory(length):
        return lambda: FrictionShift(hopper(max_episode_steps=length), every_env_steps=50)

    vec = DummyVecEnv([factory(20), factory(35)])
    vec.seed(0)
    vec.reset()
    for _ in range(60):
        vec.step(np.zeros((2, 3)))
    states = vec.env_method("get_schedule_state")
    assert [(s["changes"], s["env_steps_since_change"]) for s in states] == [(1, 0), (0, 60)]


@pytest.mark.parametrize("schedule_seed", [None, 11])
def test_make_vec_env_seeding(schedule_seed):
    # Copy i is reset with seed 0 + i: without schedule_seed the copies draw their own
    # sequences; with one they share it.
    vec = make_vec_env(
        "plasticity_rl/HopperFriction-v5",
        n_envs=2,
        seed=0,
        env_kwargs={"every_env_steps": 1, "schedule_seed": schedule_seed},
    )
    vec.reset()
    values = [s["value"] for s in vec.env_method("get_schedule_state")]
    assert (values[0] == values[1]) == (schedule_seed is not None)
    vec.env_method("set_schedule_state", vec.env_method("get_schedule_state", indices=0)[0])
    assert vec.env_method("get_schedule_state")[0] == vec.env_method("get_schedule_state")[1]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"low": 0.0}, "low"),  # log-uniform needs low > 0
        ({"low": 3.0}, "low"),  # low > high
        ({"mode": "add"}, "mode"),
        ({"distribution": "normal"}, "distribution"),
        ({"initial": "zero"}, "initial"),
        ({"every_env_steps": 0}, "every_env_steps"),
        ({"schedule_seed": -1}, "schedule_seed"),
    ],
)
def test_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        FrictionShift(hopper(), **kwargs)


def test_config_errors_general_wrapper():
    with pytest.raises(ConfigError, match="field: got 'body_mas'.*body_mass"):
        PhysicsShift(hopper(), "body_mas", low=0.5, high=2.0)
    with pytest.raises(ConfigError, match="field: got 'geom_type'"):  # an int array
        PhysicsShift(hopper(), "geom_type", low=0.5, high=2.0)
    with pytest.raises(ConfigError, match=r"index: got 3.*size 3"):
        PhysicsShift(hopper(), "geom_friction", index=3, low=0.5, high=2.0)
    with pytest.raises(ConfigError, match="env: got 'CartPoleEnv'"):
        PhysicsShift(gym.make("CartPole-v1"), "body_mass", low=0.5, high=2.0)


def test_presets():
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    assert {"ant-friction", "hopper-friction", "walker2d-friction", "hopper-mass"} <= set(names)
    preset = load_env_preset("ant-friction")
    assert preset == {
        "id": "plasticity_rl/AntFriction-v5",
        "kwargs": {"every_env_steps": 2000000, "low": 0.02, "high": 2.0, "mode": "set"},
    }
    assert load_env_preset(PRESET_DIR / "ant-friction.yaml") == preset
    env = make_env_from_preset("hopper-mass", every_env_steps=7)
    wrapper = find_schedule_wrapper(env)
    assert wrapper.spec.kwargs["field"] == "body_mass"
    assert wrapper.get_schedule_state()["value"] is None
    env.reset(seed=0)
    run(env, 7)
    assert wrapper.get_schedule_state()["env_steps_since_change"] == 7
    with pytest.raises(ConfigError, match="env preset: got 'nope'.*ant-friction"):
        load_env_preset("nope")


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("plasticity_rl/HopperFriction-v5", {}),
        ("plasticity_rl/AntFriction-v5", {}),
        ("plasticity_rl/Walker2dFriction-v5", {"every_env_steps": 3}),
        ("plasticity_rl/HopperShift-v5", {"field": "body_mass", "low": 0.5, "high": 2.0}),
        (
            "plasticity_rl/HopperShift-v5",
            {"field": "opt.gravity", "index": 2, "low": 0.5, "high": 1.5},
        ),  # fmt: skip
        ("plasticity_rl/HopperObsPermutation-v5", {"every_env_steps": 3}),
        ("plasticity_rl/AntObsPermutation-v5", {"initial": "sample"}),
        ("plasticity_rl/HopperActionPermutation-v5", {"every_env_steps": 3}),
        (
            "plasticity_rl/Walker2dActionPermutation-v5",
            {"mode": "permute_flip", "initial": "sample"},
        ),  # fmt: skip
        ("plasticity_rl/HopperRewardSwitch-v5", {"every_env_steps": 3}),
        ("plasticity_rl/AntRewardSwitch-v5", {"target": "speed", "initial": "sample"}),
    ],
)
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_gymnasiums_own_env_checker_passes(env_id, kwargs):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, **kwargs)
    check_env(env, skip_render_check=True)
