"""The SB3 callback that logs network health and the env's physics, and writes checkpoints.

TensorBoard tags (all against env steps, SB3's ``num_timesteps``):

- ``plasticity/<net>/<layer>/<metric>``: ``dead_fraction``, ``dormant_ratio``,
  ``effective_rank``, ``srank99``, ``approximate_rank``, ``stable_rank``,
  ``activation_sparsity``, ``feature_norm``, ``duplicate_fraction`` and, for tanh and sigmoid
  layers, ``saturated_fraction`` of each hidden layer on a probe batch of observations from the
  latest rollout (``<net>`` is ``pi`` or ``vf``);
- ``plasticity/<net>/weight_magnitude`` (mean |w|) and ``plasticity/<net>/max_weight_change``
  (the largest sum |delta w| of one optimiser step since the previous log);
- ``plasticity/<net>/gradient_norm``: the global L2 norm of the gradients of the last
  minibatch (after SB3's clipping; absent before the first update), and
  ``plasticity/<net>/<layer>/grama_dormant_ratio``: the fraction of the layer's units whose
  incoming-weight gradient magnitude, relative to the layer's mean, is at most ``dormant_tau``
  (GraMa, Liu et al. 2025; the same minibatch);
- ``plasticity/<net>/output_churn``: mean |change| of the network's outputs since the previous
  log on a fixed reference batch (the first log's probe, kept in the checkpoint; absent at the
  first log);
- ``plasticity/<net>/<layer>/<counter>``: what the interventions did since the previous log
  (e.g. units replaced by continual backprop, reset by ReDo);
- ``env/<quantity>``: the non-stationary env's current value (e.g. ``env/friction``) and its
  change count, averaged over env copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from plasticity_rl.agents.checkpoint import save_checkpoint
from plasticity_rl.agents.config import LoggingConfig
from plasticity_rl.methods import Method
from plasticity_rl.metrics import (
    OutputChurn,
    WeightChangeMonitor,
    hidden_layer_health,
    run_gradient_metrics,
    weight_magnitude,
)
from plasticity_rl.nn import MLP
from plasticity_rl.rundir import StopSignals

ENV_INFO_KEY = "nonstationary"
"""Key of the dict that non-stationary env wrappers put in ``info``."""


class PlasticityCallback(BaseCallback):
    """Logs network health every ``metrics_every_env_steps`` and checkpoints the run.

    Args:
        networks: the MLPs to watch by name (``{"pi": ..., "vf": ...}``).
        methods: the attached interventions by name (their counters are logged, their state
            checkpointed).
        logging: intervals, probe size and dormant threshold.
        checkpoint_path: where to write the checkpoint (None: no checkpoints).
        stop: polled at each rollout start; once it has received a signal, the run
            checkpoints there and stops (:class:`plasticity_rl.rundir.StopSignals`).
        on_checkpoint: called with the env steps after each checkpoint (``status.json``).
        resumed_from: the callback's record in the checkpoint resumed from (None: a new run):
            ``schedule`` (the next env step at which to log metrics / checkpoint), ``churn``
            (each network's output-churn state), ``max_weight_change`` (the largest step
            change since the last log), ``gradient_metrics`` (each network's, logged while
            the resumed run has no ``.grad`` yet, before its first update, as the
            uninterrupted run logs them then) and ``pending_logs`` (values recorded but not
            yet written, e.g. SB3's ``train/*`` of the last update, written at the next dump),
            so that a resumed run logs what the uninterrupted one does; ``wall_seconds``
            (the training time up to the checkpoint, see :attr:`wall_seconds`).

    A new run also logs metrics at its first rollout end, and every run at the end of
    training, so a short run has them. No checkpoint is written before the first env step of
    this ``learn`` call (a resumed run keeps the checkpoint it resumed from until it has
    trained). At each rollout start the policy's parameters are checked: NaN or infinite ones
    stop the run with :attr:`diverged_at_step` set.
    """

    def __init__(
        self,
        networks: dict[str, MLP],
        methods: dict[str, Method],
        logging: LoggingConfig,
        checkpoint_path: Path | None,
        stop: StopSignals | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
        resumed_from: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.networks, self.methods, self.cfg = networks, methods, logging
        self.checkpoint_path = checkpoint_path
        resumed_from = resumed_from or {}
        self.schedule = dict(resumed_from.get("schedule") or {
            "next_metrics": logging.metrics_every_env_steps,
            "next_checkpoint": logging.checkpoint_every_env_steps,
        })  # fmt: skip
        self.stop, self.on_checkpoint = stop, on_checkpoint
        self.stopped = False
        self.checkpoint_steps: int | None = None
        """The env steps of the last checkpoint written (None: none yet in this call)."""
        self.diverged_at_step: int | None = None
        self._start_steps = 0
        self._metrics_logged_at: int | None = None
        self._monitor = WeightChangeMonitor()
        self._max_weight_change_at_checkpoint = resumed_from.get("max_weight_change")
        churn = resumed_from.get("churn") or {}
        self._churn = {name: OutputChurn(churn.get(name)) for name in networks}
        self._gradient_metrics_at_checkpoint = resumed_from.get("gradient_metrics") or {}
        self._pending_logs = resumed_from.get("pending_logs") or {}
        self._seconds_before = float(resumed_from.get("wall_seconds", 0.0))
        self._started = time.time()
        self._handles: list[Any] = []
        self._env_values: dict[int, dict[str, float]] = {}

    @property
    def wall_seconds(self) -> float:
        """The run's training time so far, over all its invocations: the checkpoint's (work
        redone after an interruption counts once) plus this ``learn`` call's."""
        return self._seconds_before + time.time() - self._started

    def _on_training_start(self) -> None:
        self._started = time.time()
        self._start_steps = self.num_timesteps
        self._handles = [self._monitor.attach(self.networks, self.model.policy.optimizer)]
        self._monitor.load_running_max(self._max_weight_change_at_checkpoint)
        for key, (value, exclude) in self._pending_logs.items():
            self.logger.record(key, value, exclude)

    def _on_step(self) -> bool:
        for i, info in enumerate(self.locals.get("infos", ())):
            if ENV_INFO_KEY in info:
                self._env_values[i] = info[ENV_INFO_KEY]
        return not self.stopped

    def _on_rollout_start(self) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.policy.parameters()):
            self.diverged_at_step, self.stopped = self.num_timesteps, True
            return
        if self.stop is not None and self.stop.received is not None:
            self.save()
            self.stopped = True
            return
        if self.num_timesteps >= self.schedule["next_checkpoint"]:
            self._advance("next_checkpoint", self.cfg.checkpoint_every_env_steps)
            self.save()

    def _on_rollout_end(self) -> None:
        self._log_env()
        new_run = self._start_steps == 0 and self._metrics_logged_at is None
        first = new_run and self.num_timesteps > 0
        if first or self.num_timesteps >= self.schedule["next_metrics"]:
            self._advance("next_metrics", self.cfg.metrics_every_env_steps)
            self._log_metrics()

    def _on_training_end(self) -> None:
        trained = self.num_timesteps > self._start_steps
        if not self.stopped:
            if trained and self._metrics_logged_at != self.num_timesteps:
                self._log_metrics()
                self.logger.dump(self.num_timesteps)
            self.save()
        for handle in self._handles:
            handle.remove()

    def _log_metrics(self) -> None:
        self._metrics_logged_at = self.num_timesteps
        self._log_network_health()
        self._log_method_counters()

    def save(self) -> None:
        """Write the checkpoint now; nothing before this ``learn`` call's first env step (nor
        without a checkpoint path)."""
        if self.checkpoint_path is not None and self.num_timesteps > self._start_steps:
            churn = {name: monitor.state for name, monitor in self._churn.items()}
            gradients = {name: self._gradient_metrics(name) for name in self.networks}
            extra = {"schedule": dict(self.schedule), "churn": churn,
                     "max_weight_change": self._monitor.running_max(),
                     "pending_logs": self._pending_log_values(),
                     "wall_seconds": self.wall_seconds,
                     "gradient_metrics": gradients}  # fmt: skip
            save_checkpoint(self.checkpoint_path, self.model, self.methods, extra)
            self.checkpoint_steps = self.num_timesteps
            if self.on_checkpoint is not None:
                self.on_checkpoint(self.num_timesteps)

    def _pending_log_values(self) -> dict[str, tuple[float, tuple[str, ...] | None]]:
        """The logger's numbers recorded since its last dump, with their excluded formats."""
        logger = self.logger
        return {key: (float(value), logger.name_to_excluded.get(key))
                for key, value in logger.name_to_value.items()
                if isinstance(value, int | float | np.number)}  # fmt: skip

    def _advance(self, key: str, every: int) -> None:
        while self.schedule[key] <= self.num_timesteps:
            self.schedule[key] += every

    def _log_env(self) -> None:
        values: dict[str, list[float]] = {}
        for info in self._env_values.values():
            for key, value in info.items():
                if isinstance(value, int | float | np.number):
                    values.setdefault(key, []).append(float(value))
        for key, vals in values.items():
            self.logger.record(f"env/{key}", float(np.mean(vals)))

    def _probe(self) -> torch.Tensor:
        obs = self.model.rollout_buffer.observations  # (steps, envs, ...), flat after training
        flat = obs.reshape(-1, *self.model.observation_space.shape)
        rows = np.linspace(0, len(flat) - 1, min(self.cfg.probe_size, len(flat))).astype(int)
        with torch.no_grad():
            probe = torch.as_tensor(flat[rows], device=self.model.device)
            return self.model.policy.extract_features(probe)

    def _log_network_health(self) -> None:
        probe = self._probe()
        record: Callable[[str, float], None] = self.logger.record
        for net_name, net in self.networks.items():
            for key, value in hidden_layer_health(net, probe, self.cfg.dormant_tau).items():
                record(f"plasticity/{net_name}/{key}", value)
            record(f"plasticity/{net_name}/weight_magnitude", weight_magnitude(net))
            optional = {**(self._gradient_metrics(net_name) or {}),
                        "output_churn": self._churn[net_name].measure(net, probe)}  # fmt: skip
            for key, value in optional.items():
                if value is not None:
                    record(f"plasticity/{net_name}/{key}", value)
        for net_name, change in self._monitor.pop_max().items():
            record(f"plasticity/{net_name}/max_weight_change", change)

    def _gradient_metrics(self, net_name: str) -> dict[str, float] | None:
        """The network's gradient metrics (:func:`~plasticity_rl.metrics.run_gradient_metrics`,
        GraMa at ``dormant_tau``); before the first update of a resumed run, which has no
        ``.grad`` yet, those its checkpoint recorded."""
        metrics = run_gradient_metrics(self.networks[net_name], self.cfg.dormant_tau)
        if metrics is None:
            return self._gradient_metrics_at_checkpoint.get(net_name)
        return metrics[0]

    def _log_method_counters(self) -> None:
        for method in self.methods.values():
            for key, value in method.stats().items():
                self.logger.record(f"plasticity/{key}", value)


class EnvStepProgress(BaseCallback):
    """A progress bar of env steps up to the run's total (SB3's own bar ends past the total
    when the last rollout overshoots it, and restarts from 0 on a resumed run).

    Args:
        total_steps: the run's total env steps (``total_steps`` of the config).
    """

    def __init__(self, total_steps: int):
        super().__init__()
        self.total_steps = total_steps
        self._bar: tqdm | None = None

    def _on_training_start(self) -> None:
        done = min(self.num_timesteps, self.total_steps)
        self._bar = tqdm(total=self.total_steps, initial=done, unit=" env steps", unit_scale=True,
                         dynamic_ncols=True)  # fmt: skip

    def _on_step(self) -> bool:
        assert self._bar is not None
        self._bar.update(min(self.num_timesteps, self.total_steps) - self._bar.n)
        return True

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
