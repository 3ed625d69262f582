"""PSGD Kron: SGD with momentum, preconditioned by a learned Kronecker-factored matrix.

Li 2018, "Preconditioned Stochastic Gradient Descent" (IEEE TNNLS), with the Kronecker-factored
("Kron") preconditioner of Li's ``psgd_torch``. For each parameter tensor the update is

    m_t = beta m_{t-1} + (1 - beta) g_t,        theta <- theta - lr P m_t,

with P = Q^T Q and Q = Q_1 (x) ... (x) Q_k one factor per tensor dimension (triangular for a
dimension of size <= ``max_size_triangular``, diagonal otherwise). The factors are fitted online,
by a step of size ``precond_lr`` on Li's criterion, so that P whitens the (momentum) gradient;
they are updated at every step for the first 1,000 steps, then with probability
max(0.03, 0.999^(n - 1000)) (a deterministic accumulator, not a random draw).

The optimiser is the maintained ``heavyball`` package's ``PSGDKron`` (3.2.1, BSD-2-Clause), as
its defaults set it, with three changes so that it runs here, resumes exactly and is measured
like the other optimisers:

- eager mode: heavyball compiles its step by default (``max-autotune-no-cudagraphs``), which
  autotunes for minutes and then fails on the CPU with torch 2.13; :class:`Kron` switches
  heavyball's ``compile_mode`` off (for the whole process);
- exact state loading: ``torch.optim.Optimizer.load_state_dict`` casts every floating state
  tensor to its parameter's dtype, but heavyball keeps its running lower bound of the
  preconditioner's norm in float64; rounded to float32 it makes a resumed run drift from the
  uninterrupted one (about 5e-8 in the weights after 30 steps). :meth:`Kron.load_state_dict`
  puts the saved state back as saved;
- gradients kept: heavyball sets ``.grad`` to None in its step; here it stays, as with torch's
  optimisers (the gradient metrics read it after the step).

Its random draws (the dampening noise) come from torch's global generator, which checkpoints
save. Weight decay is decoupled, theta <- theta (1 - lr wd), as heavyball applies it. The
Kronecker factors span each whole tensor, so batched runs (several seeds stacked in one tensor)
would mix their seeds: :mod:`plasticity_rl.optim.runs` refuses it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import heavyball
import heavyball.utils

from plasticity_rl.device import to_device


class Kron(heavyball.PSGDKron):
    """heavyball's ``PSGDKron`` in eager mode, loading its state exactly (module doc)."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        heavyball.utils.compile_mode = None
        super().__init__(params, **kwargs)
        self.consume_grad = False  # keep .grad after the step, as torch's optimisers do

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """heavyball's load, then each parameter's state as saved (no dtype cast)."""
        super().load_state_dict(state_dict)
        saved = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, param in zip(saved, params, strict=True):
            if index in state_dict["state"]:
                self.state[param] = to_device(copy.deepcopy(state_dict["state"][index]),
                                              param.device)  # fmt: skip
