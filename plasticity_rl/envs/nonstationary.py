"""Non-stationary MuJoCo tasks: the seeded change schedule, and physics resampled on it.

Dohare et al. 2024 (Nature), "Loss of plasticity in deep continual learning", RL experiments:
Ant whose friction coefficient is drawn log-uniformly from [0.02, 2.0] every 2M steps. Here the
schedule is one base class, :class:`ScheduledShift`, that every non-stationary wrapper of the
package uses (the physics ones below and those of :mod:`plasticity_rl.envs.task_shifts`);
:class:`PhysicsShift` rewrites any float array of the live ``mujoco.MjModel``
(``env.unwrapped.model``; no XML rewrite, no rebuild) on it, and :class:`FrictionShift` is that
wrapper with the friction defaults of the paper.

Schedule (units are env steps of *this* env copy, i.e. calls to ``step()``; one env step is
``frame_skip`` simulator steps):

- every ``step()`` increments a counter; the physics never changes mid-episode;
- on ``reset()``, if the counter has reached ``every_env_steps``, a new value is drawn and written
  into the model *before* the simulator is reset, the change count increases by one and the
  counter restarts at 0. So a change happens at the first episode boundary (termination,
  truncation by ``TimeLimit``, or any other reset) after ``every_env_steps`` steps.
- the values come from the wrapper's own ``numpy.random.Generator``, seeded at the first
  ``reset()``, from ``schedule_seed`` or, if that is ``None``, from the ``seed`` given to that
  first ``reset()`` (fresh OS entropy if both are ``None``). The seed is salted so the stream is
  not the env's own ``np_random`` stream for the same seed. A later ``reset(seed=...)`` restarts
  the schedule the same way (Gymnasium's rule, checked by ``check_env``: a reset with a seed
  starts the same episode, info included); ``reset()`` without a seed continues it, as the
  auto-resets of vectorised envs and a resumed run do. The agent's and the env's randomness
  never touch this generator, so two methods trained with the same seed see the same sequence
  of values.

Vectorised training: each copy has its own wrapper and counts its own steps, so with ``n_envs``
copies the agent sees a change every ``n_envs * every_env_steps`` total steps (``train_rl.py``
divides the configured interval by ``n_envs``, so there it counts the run's steps). SB3's
``make_vec_env(env_id, n_envs, seed=s)`` resets copy ``i`` with seed ``s + i``; without
``schedule_seed`` each copy then follows its own sequence, so at any time the agent trains on a
mixture of ``n_envs`` tasks. To reproduce Dohare's single-env setting (one
task at a time) pass the run's seed as ``schedule_seed`` (``env_kwargs={"schedule_seed": s}``):
all copies then share one sequence and switch within one episode of each other.

``info["nonstationary"]`` at every ``step()`` and ``reset()`` holds the wrapper's scalars and
``{"changes": number of changes so far, "env_steps_since_change": counter}``; for the physics
wrappers the scalar is ``{name: current value}`` with ``name`` ``"friction"`` for
:class:`FrictionShift` and the field name (or ``name=``) otherwise.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import mujoco
import numpy as np

from plasticity_rl.envs.fast_step import FAST_STEP_ENVS
from plasticity_rl.registry import ConfigError, accepted_kwargs, require

INFO_KEY = "nonstationary"
"""Key of the schedule's entry in ``info``."""

MODES = ("set", "scale")
DISTRIBUTIONS = ("log_uniform", "uniform")
INITIALS = ("sample", "default")

# Mixed into the schedule seed so that the schedule stream differs from gymnasium's
# ``np_random(seed)`` stream (both are PCG64 seeded through a SeedSequence).
_SCHEDULE_SALT = 0x5C4ED


class ScheduledShift(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Base of the non-stationary wrappers: the seeded change schedule, shared by all of them.

    A subclass says *what* changes; this class decides *when* (see the module docstring): it
    counts env steps, draws a new value at the first reset after ``every_env_steps`` steps from
    its own salted generator, restarts on a seeded reset, puts ``info["nonstationary"]`` into
    every ``step()`` and ``reset()`` and saves/restores the schedule for exact resume. A subclass
    implements :meth:`_draw` (a new value, plain Python data, from ``self._rng``), :meth:`_apply`
    (put a value, or ``None`` for the unchanged env, in effect) and :meth:`_reported` (the scalars
    of ``info["nonstationary"]``), and overrides the identity hooks :meth:`_action`,
    :meth:`_observation` and :meth:`_reward` it needs. One schedule wrapper per env: an outer
    one's ``info["nonstationary"]`` replaces an inner one's.

    Args:
        env: the env to wrap.
        every_env_steps: env steps of this copy after which the next reset changes the value.
        initial: ``"sample"`` draws the first value at the first reset; ``"default"`` keeps the
            unchanged env until the first change.
        schedule_seed: seed of the value sequence; ``None`` uses the first reset's seed.
    """

    by_name: ClassVar[dict[str, type[ScheduledShift]]] = {}
    """Every subclass by class name (entry point :func:`make_shift_env`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ScheduledShift.by_name[cls.__name__] = cls

    def __init__(
        self,
        env: gym.Env,
        *,
        every_env_steps: int,
        initial: str,
        schedule_seed: int | None,
        **wrapper_args: Any,
    ):
        """``wrapper_args``: the subclass's own constructor arguments, recorded with the
        schedule's (:class:`gymnasium.utils.RecordConstructorArgs`) so ``make`` can rebuild it."""
        gym.utils.RecordConstructorArgs.__init__(
            self,
            **wrapper_args,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
        )
        gym.Wrapper.__init__(self, env)
        require(initial in INITIALS, "initial", initial, INITIALS)
        require(
            isinstance(every_env_steps, int) and every_env_steps >= 1,
            "every_env_steps",
            every_env_steps,
            "an integer >= 1",
        )
        require(
            schedule_seed is None or (isinstance(schedule_seed, int) and schedule_seed >= 0),
            "schedule_seed",
            schedule_seed,
            "None or an integer >= 0",
        )
        self._every_env_steps = every_env_steps
        self._initial = initial
        self._schedule_seed = schedule_seed
        self._rng: np.random.Generator | None = None  # created at the first reset
        self._value: Any = None  # None: the unchanged env
        self._changes = 0
        self._env_steps_since_change = 0

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Steps the env, counts the step and adds ``info["nonstationary"]``."""
        observation, reward, terminated, truncated, info = self.env.step(self._action(action))
        self._env_steps_since_change += 1
        info[INFO_KEY] = self._info()
        return (
            self._observation(observation),
            self._reward(reward, info),
            terminated,
            truncated,
            info,
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Applies a due change, then resets the env.

        The first call, and any call with a ``seed``, (re)starts the schedule: seeds it
        (``schedule_seed``, else ``seed``), zeroes its counters and, with ``initial="sample"``,
        draws and applies the first value (else restores the unchanged env). Other calls draw
        and apply a new value only if ``every_env_steps`` steps have passed since the last
        change.

        Args:
            seed: seed for the env (and for the schedule at the first call, see above).
            options: options for the env.

        Returns:
            The env's ``(observation, info)`` with ``info["nonstationary"]`` added.
        """
        if self._rng is None or seed is not None:
            self._rng = _schedule_rng(
                self._schedule_seed if self._schedule_seed is not None else seed
            )
            self._changes = self._env_steps_since_change = 0
            self._set(None)
            if self._initial == "sample":
                self._set(self._draw())
        elif self._env_steps_since_change >= self._every_env_steps:
            self._changes += 1
            self._env_steps_since_change = 0
            self._set(self._draw())
        observation, info = self.env.reset(seed=seed, options=options)
        info[INFO_KEY] = self._info()
        return self._observation(observation), info

    def get_schedule_state(self) -> dict[str, Any]:
        """The schedule as plain Python data (for checkpoints; JSON-serialisable).

        Returns:
            ``{"value", "changes", "env_steps_since_change", "rng_state"}``; ``value`` is
            ``None`` while the env is unchanged, ``rng_state`` is ``None`` before the first
            reset, else the generator's ``bit_generator.state`` dict.
        """
        return {
            "value": copy.deepcopy(self._value),
            "changes": self._changes,
            "env_steps_since_change": self._env_steps_since_change,
            "rng_state": None
            if self._rng is None
            else copy.deepcopy(self._rng.bit_generator.state),
        }

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_schedule_state` output and puts its value into effect.

        The next resets without a seed continue the saved sequence (a resumed run never
        resets with a seed).
        """
        self._changes = int(state["changes"])
        self._env_steps_since_change = int(state["env_steps_since_change"])
        self._rng = None
        if state["rng_state"] is not None:
            self._rng = np.random.Generator(np.random.PCG64())
            self._rng.bit_generator.state = copy.deepcopy(state["rng_state"])
        self._set(copy.deepcopy(state["value"]))

    def _set(self, value: Any) -> None:
        self._apply(value)
        self._value = value

    def _info(self) -> dict[str, Any]:
        return {
            **self._reported(),
            "changes": self._changes,
            "env_steps_since_change": self._env_steps_since_change,
        }

    def _draw(self) -> Any:
        """A new value from ``self._rng`` (plain Python data; ``self._changes`` is already the
        count including this change, 0 for the first value)."""
        raise NotImplementedError

    def _apply(self, value: Any) -> None:
        """Puts ``value`` (``None``: the unchanged env) into effect."""
        raise NotImplementedError

    def _reported(self) -> dict[str, float]:
        """The scalars of ``info["nonstationary"]`` besides the counters."""
        raise NotImplementedError

    def _action(self, action: Any) -> Any:
        return action

    def _observation(self, observation: Any) -> Any:
        return observation

    def _reward(self, reward: SupportsFloat, info: dict[str, Any]) -> SupportsFloat:
        return reward


class PhysicsShift(ScheduledShift):
    """Resamples one ``MjModel`` float array every ``every_env_steps`` env steps, at a reset.

    ``mode="set"`` writes the drawn value into every selected entry; ``mode="scale"`` writes the
    entry's original (XML) value times the drawn value. ``distribution="log_uniform"`` draws
    ``exp(U(log low, log high))``, ``"uniform"`` draws ``U(low, high)``. See the module docstring
    for the schedule, the seeding and the ``info`` entry.

    Example:
        >>> import gymnasium as gym
        >>> env = PhysicsShift(gym.make("Hopper-v5"), "body_mass", mode="scale", low=0.5,
        ...                    high=2.0, every_env_steps=100, schedule_seed=0)
        >>> _, info = env.reset(seed=0)
        >>> sorted(info["nonstationary"])
        ['body_mass', 'changes', 'env_steps_since_change']
        >>> 0.5 <= info["nonstationary"]["body_mass"] <= 2.0
        True

    Args:
        env: a MuJoCo env (``env.unwrapped.model`` is a ``mujoco.MjModel``).
        field: ``MjModel`` float array attribute, dotted for sub-structs (``"body_mass"``,
            ``"geom_friction"``, ``"actuator_gear"``, ``"opt.gravity"``).
        index: position(s) along the array's last axis to change, ``None`` for all entries:
            the column of a per-element table (``0`` = sliding friction of ``geom_friction``)
            or the component of a vector (``2`` = z of ``opt.gravity``).
        mode: ``"set"`` or ``"scale"``.
        low: smallest value drawn (> 0 for ``log_uniform``).
        high: largest value drawn (>= ``low``).
        distribution: ``"log_uniform"`` or ``"uniform"``.
        every_env_steps: env steps of this copy after which the next reset changes the value.
        initial: ``"sample"`` draws the first value at the first reset (as Dohare et al.);
            ``"default"`` keeps the XML values until the first change.
        schedule_seed: seed of the value sequence; ``None`` uses the first reset's seed.
        name: key of the value in ``info["nonstationary"]``; defaults to ``field``.
    """

    def __init__(
        self,
        env: gym.Env,
        field: str,
        *,
        index: int | list[int] | None = None,
        mode: str = "scale",
        low: float,
        high: float,
        distribution: str = "log_uniform",
        every_env_steps: int = 2_000_000,
        initial: str = "sample",
        schedule_seed: int | None = None,
        name: str | None = None,
    ):
        ScheduledShift.__init__(
            self,
            env,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
            field=field,
            index=index,
            mode=mode,
            low=low,
            high=high,
            distribution=distribution,
            name=name,
        )
        model = getattr(env.unwrapped, "model", None)
        require(
            isinstance(model, mujoco.MjModel),
            "env",
            type(env.unwrapped).__name__,
            "a MuJoCo env (env.unwrapped.model is a mujoco.MjModel)",
        )
        require(mode in MODES, "mode", mode, MODES)
        require(distribution in DISTRIBUTIONS, "distribution", distribution, DISTRIBUTIONS)
        require(math.isfinite(low) and math.isfinite(high), "low/high", (low, high), "finite")
        require(low <= high, "low", low, f"<= high ({high})")
        if distribution == "log_uniform":
            require(low > 0, "low", low, "> 0 for a log_uniform distribution")
        array = _model_array(model, field)
        if array is None:
            close = difflib.get_close_matches(field, _float_fields(model), n=6, cutoff=0.5)
            examples = close or ["body_mass", "geom_friction", "actuator_gear", "opt.gravity"]
            raise ConfigError("field", field, f"an MjModel float array, e.g. {', '.join(examples)}")
        self._key = _index_key(index, field, array)

        self._field = field
        self._mode = mode
        self._low, self._high = float(low), float(high)
        self._distribution = distribution
        self._name = field if name is None else name
        self._original = np.array(array[self._key], copy=True)

    def _draw(self) -> float:
        assert self._rng is not None
        if self._distribution == "log_uniform":
            return math.exp(self._rng.uniform(math.log(self._low), math.log(self._high)))
        return float(self._rng.uniform(self._low, self._high))

    def _apply(self, value: float | None) -> None:
        array = _model_array(self.env.unwrapped.model, self._field)
        if value is None:
            array[self._key] = self._original
        elif self._mode == "set":
            array[self._key] = value
        else:
            array[self._key] = self._original * value

    def _reported(self) -> dict[str, float]:
        return {self._name: self._reported_value()}

    def _reported_value(self) -> float:
        # With the XML values in place: scale 1 in scale mode; in set mode the common value of
        # the selected entries, or NaN when they differ (no single value describes them).
        if self._value is not None:
            return float(self._value)
        if self._mode == "scale":
            return 1.0
        values = np.unique(self._original)
        return float(values[0]) if values.size == 1 else math.nan


class FrictionShift(PhysicsShift):
    """Dohare et al. 2024 friction task: sliding friction of every geom resampled every N steps.

    :class:`PhysicsShift` on ``geom_friction`` column 0 (sliding friction) of all geoms, floor
    included. ``mode="set"`` gives every geom the drawn value (what the reference does by
    editing Ant's default geom class); ``mode="scale"`` multiplies each geom's own XML value.
    The value is reported as ``info["nonstationary"]["friction"]``.

    Example:
        >>> import gymnasium as gym
        >>> env = FrictionShift(gym.make("Hopper-v5"), every_env_steps=50, schedule_seed=0)
        >>> _, info = env.reset(seed=0)
        >>> friction = info["nonstationary"]["friction"]
        >>> bool((env.unwrapped.model.geom_friction[:, 0] == friction).all())
        True
        >>> info["nonstationary"]["changes"], info["nonstationary"]["env_steps_since_change"]
        (0, 0)

    Args:
        env: a MuJoCo env.
        every_env_steps: env steps of this copy after which the next reset changes friction.
        low: smallest friction (or factor) drawn.
        high: largest friction (or factor) drawn.
        mode: ``"set"`` or ``"scale"``.
        distribution: ``"log_uniform"`` (Dohare et al.) or ``"uniform"``.
        initial: ``"sample"`` (first value drawn at the first reset) or ``"default"``.
        schedule_seed: seed of the friction sequence; ``None`` uses the first reset's seed.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        every_env_steps: int = 2_000_000,
        low: float = 0.02,
        high: float = 2.0,
        mode: str = "set",
        distribution: str = "log_uniform",
        initial: str = "sample",
        schedule_seed: int | None = None,
    ):
        # Recorded first, so the env spec rebuilds a FrictionShift (the parent's record is
        # then ignored, see gymnasium.utils.RecordConstructorArgs).
        gym.utils.RecordConstructorArgs.__init__(
            self,
            every_env_steps=every_env_steps,
            low=low,
            high=high,
            mode=mode,
            distribution=distribution,
            initial=initial,
            schedule_seed=schedule_seed,
        )
        super().__init__(
            env,
            "geom_friction",
            index=0,
            mode=mode,
            low=low,
            high=high,
            distribution=distribution,
            every_env_steps=every_env_steps,
            initial=initial,
            schedule_seed=schedule_seed,
            name="friction",
        )


def find_schedule_wrapper(env: gym.Env) -> ScheduledShift:
    """The outermost :class:`ScheduledShift` in a wrapper chain (walks ``env.env``).

    ``VecEnv.env_method("get_schedule_state")`` already reaches the wrapper through
    ``get_wrapper_attr``; this helper is for code holding a single env.

    Raises:
        ValueError: if no wrapper in the chain is a :class:`ScheduledShift`.
    """
    current = env
    while True:
        if isinstance(current, ScheduledShift):
            return current
        if not isinstance(current, gym.Wrapper):
            raise ValueError(f"no ScheduledShift wrapper in {env}")
        current = current.env


def make_shift_env(base_id: str, wrapper: str, **kwargs: Any) -> ScheduledShift:
    """Entry point of the ``plasticity_rl/*-v5`` ids: ``<wrapper>(base env)``.

    Args:
        base_id: the Gymnasium id of the base env (``"Hopper-v5"``).
        wrapper: class name of a :class:`ScheduledShift` subclass (``"FrictionShift"``).
        **kwargs: keywords the wrapper accepts configure it; the others go to the base env
            (e.g. ``terminate_when_unhealthy``).

    Hopper-v5 and Walker2d-v5 are built as :mod:`plasticity_rl.envs.fast_step`'s subclasses
    (Gymnasium's numbers, a faster step). The base env is built without ``TimeLimit``, checker
    or order enforcement:
    ``gymnasium.make`` adds those around the wrapper, so its reset sees every episode boundary.
    """
    require(wrapper in ScheduledShift.by_name, "wrapper", wrapper, sorted(ScheduledShift.by_name))
    cls = ScheduledShift.by_name[wrapper]
    accepted = accepted_kwargs(cls) or set()
    wrapper_kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    base_kwargs = {k: v for k, v in kwargs.items() if k not in accepted}
    fast = FAST_STEP_ENVS.get(base_id)
    if fast is not None:  # Gymnasium's env and numbers, a faster step (envs/fast_step.py)
        base = fast(**{**gym.spec(base_id).kwargs, **base_kwargs})
    else:
        base = gym.make(base_id, max_episode_steps=-1, disable_env_checker=True, **base_kwargs)
    return cls(base.unwrapped, **wrapper_kwargs)


def shift_default(env_id: str, keyword: str) -> Any:
    """The default of ``keyword`` in the schedule wrapper of a registered ``plasticity_rl/*-v5``
    id (e.g. ``every_env_steps``: 2,000,000 for every wrapper but :class:`PhysicsShift`)."""
    spec = gym.spec(env_id)
    wrapper = ScheduledShift.by_name[spec.kwargs["wrapper"]]
    return inspect.signature(wrapper.__init__).parameters[keyword].default


def _schedule_rng(seed: int | None) -> np.random.Generator:
    entropy = np.random.SeedSequence().entropy if seed is None else seed
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([entropy, _SCHEDULE_SALT])))


def _model_array(model: mujoco.MjModel, field: str) -> np.ndarray | None:
    """The live float array ``model.<field>`` (dotted path), or ``None`` if there is none."""
    obj: Any = model
    for part in field.split("."):
        if part.startswith("_") or not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    if isinstance(obj, np.ndarray) and np.issubdtype(obj.dtype, np.floating) and obj.size:
        return obj
    return None


def _float_fields(model: mujoco.MjModel) -> list[str]:
    names = [n for n in dir(model) if _model_array(model, n) is not None]
    return names + [
        f"opt.{n}" for n in dir(model.opt) if _model_array(model, f"opt.{n}") is not None
    ]


def _index_key(index: int | list[int] | None, field: str, array: np.ndarray) -> tuple[Any, ...]:
    """The numpy key ``[..., index]`` selecting ``index`` along the last axis of ``array``."""
    if index is None:
        return (Ellipsis,)
    positions = [index] if isinstance(index, int) else list(index)
    size = array.shape[-1]
    require(
        len(positions) > 0
        and all(isinstance(i, int) and not isinstance(i, bool) for i in positions)
        and all(-size <= i < size for i in positions),
        "index",
        index,
        f"None, or integer position(s) along the last axis of {field} (size {size})",
    )
    return (Ellipsis, index if isinstance(index, int) else positions)
