"""Resetting the optimiser state of a few units' weights, for interventions that reset units.

When continual backprop or ReDo give a unit fresh weights, the optimiser still holds moment
estimates built for the old weights. Dohare et al. 2024 (AdamGnT) zero Adam's moments and the
per-weight step counts of the reset weights; Sokar et al. 2023 (ReDo) reset Adam's moments.
:func:`reset_optimizer_state` applies one of :data:`OPTIMIZER_STATE_RESETS` to one slice
(rows or columns) of one parameter's state -- for a batched parameter (a leading run dim, see
:mod:`plasticity_rl.nn.batched`), to a different slice in each run:

- ``keep``: leave the state as it is;
- ``zero_moments``: every state tensor shaped like the parameter has the slice set to zero
  (Adam's ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``, SGD's ``momentum_buffer``, RMSprop's
  ``square_avg``/``grad_avg``/``momentum_buffer``), except Adagrad's ``sum``, which goes back
  to the group's ``initial_accumulator_value``, and TRAC's reference, which is kept; the step
  count is kept (Kron's momentum is zeroed, its Kronecker factors, per tensor, are kept);
- ``zero_moments_and_step``: also zero the step count of the slice, which needs a per-element
  step count (:class:`plasticity_rl.optim.adam.Adam`); torch's optimisers keep one step count
  per tensor, for which this mode raises :class:`~plasticity_rl.registry.ConfigError`.

Optimisers whose per-element state is not a moment (e.g. Rprop's step sizes) are not meant for
this: their slices would be zeroed too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plasticity_rl.nn.layers import unit_selector
from plasticity_rl.optim.adam import UNIFORM_STEP
from plasticity_rl.optim.trac import TRAC_STATE
from plasticity_rl.registry import ConfigError, require

OPTIMIZER_STATE_RESETS = ("keep", "zero_moments", "zero_moments_and_step")
"""What happens to the optimiser state of reset weights (see the module docstring)."""


def check_optimizer_state_mode(mode: str, key: str = "optimizer_state") -> None:
    """Raise :class:`ConfigError` unless ``mode`` is one of :data:`OPTIMIZER_STATE_RESETS`."""
    require(mode in OPTIMIZER_STATE_RESETS, key, mode, OPTIMIZER_STATE_RESETS)


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, param: Tensor, index: Tensor, dim: int, mode: str
) -> None:
    """Apply ``mode`` to the slice ``index`` along ``dim`` of ``param``'s optimiser state.

    Args:
        optimizer: the optimiser holding ``param`` (for a parametrized layer, pass the stored
            tensor, ``plasticity_rl.nn.layers.layer_parameter(layer)``).
        param: the parameter whose state is reset; one without state yet is left alone.
        index: 1-D long tensor of the rows (``dim=0``) or columns (``dim=1``) to reset, or a
            bool unit mask ``(*run_dims, n)`` with the parameter's run dims (``(S, n)`` for a
            batched parameter: entry ``[s, j]`` selects row/column j of run s; see
            :func:`plasticity_rl.nn.layers.unit_selector`).
        dim: the dimension ``index`` selects along, within one run.
        mode: one of :data:`OPTIMIZER_STATE_RESETS`.

    Raises:
        ConfigError: ``mode`` is unknown, or it is ``zero_moments_and_step`` and the optimiser
            keeps one step count per tensor (all torch optimisers).
    """
    check_optimizer_state_mode(mode)
    state = optimizer.state.get(param)
    if mode == "keep" or not state:
        return
    if index.dtype != torch.bool:
        index = torch.zeros(param.shape[dim], dtype=torch.bool, device=param.device).index_fill_(
            0, index.to(param.device), True
        )
    _reset_entries(optimizer, param, state, unit_selector(index, param.dim(), dim), mode)


def _reset_entries(optimizer: torch.optim.Optimizer, param: Tensor, state: dict,
                   select: Tensor, mode: str) -> None:  # fmt: skip
    """Apply ``mode`` to the ``select``ed elements of each entry of ``state``, and of the dicts
    nested in it (heavyball's Kron keeps a parameter's state in ``state[p][0]``)."""
    for key, value in list(state.items()):
        if isinstance(value, dict):
            _reset_entries(optimizer, param, value, select, mode)
        elif key == "step":
            if mode != "zero_moments_and_step":
                continue
            if not (isinstance(value, Tensor) and value.shape == param.shape):
                raise ConfigError(
                    "optimizer_state",
                    mode,
                    f"keep or zero_moments for {type(optimizer).__name__}, "
                    "which keeps one step count per tensor",
                )
            value.masked_fill_(select, 0)
            if UNIFORM_STEP in state:
                state[UNIFORM_STEP] = None  # the elements' step counts now differ
        elif isinstance(value, Tensor) and value.shape == param.shape and key != TRAC_STATE:
            value.masked_fill_(select, _reset_value(optimizer, param, key))


def _reset_value(optimizer: torch.optim.Optimizer, param: Tensor, key: str) -> float:
    """0 for moments; the group's ``initial_accumulator_value`` for Adagrad's ``sum``."""
    if key == "sum":
        for group in optimizer.param_groups:
            if any(p is param for p in group["params"]) and "initial_accumulator_value" in group:
                return float(group["initial_accumulator_value"])
    return 0.0
