"""Slowly-changing regression (Dohare et al. 2024, Nature, "Loss of plasticity in deep continual
learning"; called the bit-flipping problem in Dohare et al. 2021).

Input (``num_bits + 1`` values, all 0 or 1), column layout ``[slow | fast | bias]``:

- the first ``f = num_slow_bits`` bits change slowly: they are drawn uniformly once, and at every
  ``T = flip_every_examples`` examples (example indices ``T, 2T, ...``) ``flip="one"`` flips one
  slow bit chosen uniformly at random (the paper's text), ``flip="all"`` redraws all ``f`` slow
  bits uniformly (the reference code's default, ``flip_one=False``; a redraw may leave bits
  unchanged);
- the remaining ``m - f`` bits (``m = num_bits``) are drawn uniformly for every example;
- the last entry is a constant bias bit, 1.

Target: a fixed random network with ``n = num_hidden`` linear threshold units (LTUs, Sutton and
Whitehead 1993, as used by Dohare et al.). Input weights ``w_ij`` (bias weight included) and
output weights ``v_i`` are +1 or -1 uniformly at random. Unit ``i`` fires (outputs 1, else 0)
iff its input sum strictly exceeds its threshold::

    LTU_i(x) = 1[sum_j w_ij x_j > theta_i],   theta_i = (m + 1) * beta - S_i,

with ``S_i`` the number of negative input weights of unit ``i`` (over all ``m + 1`` inputs) and
``beta = 0.7``. Equivalently, unit ``i`` fires iff more than a fraction ``beta`` of the ``m + 1``
input bits *match* its sign pattern (bit 1 where ``w_ij = +1``, bit 0 where ``w_ij = -1``): the
sum is ``P_on - N_on`` and ``(P_on - N_on) + S_i = P_on + N_off`` is the number of matching
bits. The target is ``y = sum_i v_i LTU_i(x)`` (no output bias).

Differences from the reference code (``lop/nets/fix_ltu_net.py``): there the bias is a separate
``nn.Linear`` bias of +-1 rather than a weight on a bias bit, the output layer also has a +-1
bias, and ``S_i`` is computed as ``(m - sum_j w_ij + b_i) / 2``; here the paper's definition is
used throughout.

Randomness: one ``torch.Generator`` seeded with ``seed`` draws the target weights, then the
initial slow bits, then period by period (a period is ``T`` consecutive examples): the slow-bit
change (from period 1 on) and the ``(T, m - f)`` fast bits of the period. A period is drawn when
its first example is requested, so the sequence does not depend on how it is split into
:meth:`SlowlyChangingRegression.sample` calls (``sample(5)`` then ``sample(5)`` equals
``sample(10)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.registry import ConfigError, require

FLIP_MODES = ("one", "all")


def ltu_features(x: Tensor, input_weights: Tensor, beta: float) -> Tensor:
    """LTU outputs ``1[x @ w_i > (D * beta - S_i)]`` for every unit ``i``, as float 0/1.

    Args:
        x: inputs, shape ``(N, D)`` (bias bit included, so ``D = m + 1``).
        input_weights: +-1 weights, shape ``(n, D)``.
        beta: the fraction of matching input bits above which a unit fires.

    Returns:
        ``(N, n)`` float32 tensor of 0/1.
    """
    num_inputs = input_weights.shape[1]
    num_negative = (input_weights < 0).sum(dim=1)
    thresholds = num_inputs * beta - num_negative
    return (x @ input_weights.T.to(x.dtype) > thresholds).to(torch.float32)


def ltu_target(x: Tensor, input_weights: Tensor, output_weights: Tensor, beta: float) -> Tensor:
    """The target network ``y = sum_i v_i LTU_i(x)``, shape ``(N, 1)`` (see module docstring)."""
    return ltu_features(x, input_weights, beta) @ output_weights.to(torch.float32).unsqueeze(1)


class SlowlyChangingRegression:
    """Seeded, resumable generator of slowly-changing regression examples (module docstring).

    Example:
        >>> problem = SlowlyChangingRegression(seed=0)
        >>> x, y = problem.sample(3)
        >>> tuple(x.shape), tuple(y.shape), x[:, -1].tolist()
        ((3, 21), (3, 1), [1.0, 1.0, 1.0])

    Args:
        num_bits: ``m``, input bits without the bias bit.
        num_slow_bits: ``f``, the first ``f`` bits, which change slowly.
        flip_every_examples: ``T``, examples between slow-bit changes.
        num_hidden: ``n``, LTUs in the target network.
        beta: LTU threshold parameter.
        flip: ``"one"`` flips one random slow bit per period, ``"all"`` redraws every slow bit.
        seed: seed of the generator (target weights and data).
    """

    def __init__(
        self,
        num_bits: int = 20,
        num_slow_bits: int = 15,
        flip_every_examples: int = 10_000,
        num_hidden: int = 100,
        beta: float = 0.7,
        flip: str = "one",
        seed: int = 0,
    ):
        require(num_bits >= 1, "num_bits", num_bits, "an integer >= 1")
        require(
            0 <= num_slow_bits <= num_bits,
            "num_slow_bits",
            num_slow_bits,
            f"an integer in [0, num_bits = {num_bits}]",
        )
        require(flip_every_examples >= 1, "flip_every_examples", flip_every_examples, ">= 1")
        require(num_hidden >= 1, "num_hidden", num_hidden, "an integer >= 1")
        require(0.0 <= beta <= 1.0, "beta", beta, "a number in [0, 1]")
        if flip not in FLIP_MODES:
            raise ConfigError("flip", flip, FLIP_MODES)
        self.num_bits = num_bits
        self.num_slow_bits = num_slow_bits
        self.flip_every_examples = flip_every_examples
        self.num_hidden = num_hidden
        self.beta = beta
        self.flip = flip
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.input_weights = self._random_signs((num_hidden, num_bits + 1))
        """+-1 weights of the LTUs, shape ``(n, m + 1)``; the last column is the bias weight."""
        self.output_weights = self._random_signs((num_hidden,))
        """+-1 output weights ``v``, shape ``(n,)``."""
        self.examples_drawn = 0
        """Examples returned by :meth:`sample` so far."""
        self._slow_bits = self._random_bits((num_slow_bits,))
        self._fast_bits = torch.empty(0, num_bits - num_slow_bits, dtype=torch.uint8)

    @property
    def input_dim(self) -> int:
        """``m + 1``: the bits plus the bias bit."""
        return self.num_bits + 1

    def _random_bits(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 2, shape, generator=self._generator, dtype=torch.uint8)

    def _random_signs(self, shape: tuple[int, ...]) -> Tensor:
        return self._random_bits(shape).to(torch.float32) * 2 - 1

    def _draw_period(self, period: int) -> None:
        """Draw the slow-bit change (period >= 1) and the fast bits of ``period``."""
        if period > 0 and self.num_slow_bits > 0:
            if self.flip == "one":
                index = torch.randint(0, self.num_slow_bits, (1,), generator=self._generator)
                self._slow_bits[index] ^= 1
            else:
                self._slow_bits = self._random_bits((self.num_slow_bits,))
        fast = self.num_bits - self.num_slow_bits
        self._fast_bits = self._random_bits((self.flip_every_examples, fast))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """The next ``n`` examples of the sequence.

        Returns:
            ``x`` float32 ``(n, m + 1)`` (columns ``[slow | fast | bias]``) and ``y`` float32
            ``(n, 1)``.
        """
        require(n >= 0, "n", n, "an integer >= 0")
        period_len = self.flip_every_examples
        x = torch.ones(n, self.input_dim)
        start = self.examples_drawn
        filled = 0
        while filled < n:
            position = start + filled
            period, offset = divmod(position, period_len)
            if offset == 0:  # the first example of a period: draw the period
                self._draw_period(period)
            count = min(n - filled, period_len - offset)
            rows = slice(filled, filled + count)
            x[rows, : self.num_slow_bits] = self._slow_bits.to(torch.float32)
            x[rows, self.num_slow_bits : self.num_bits] = self._fast_bits[offset : offset + count]
            filled += count
        self.examples_drawn = start + n
        return x, ltu_target(x, self.input_weights, self.output_weights, self.beta)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the sequence exactly (tensors and ints)."""
        return {
            "generator_state": self._generator.get_state(),
            "examples_drawn": self.examples_drawn,
            "slow_bits": self._slow_bits.clone(),
            "fast_bits": self._fast_bits.clone(),
            "input_weights": self.input_weights.clone(),
            "output_weights": self.output_weights.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a generator built with the same sizes."""
        shape = tuple(state["input_weights"].shape)
        require(
            shape == tuple(self.input_weights.shape),
            "slowly_changing_regression state input_weights shape",
            shape,
            f"{tuple(self.input_weights.shape)} (a generator built with the same sizes)",
        )
        self._generator.set_state(state["generator_state"])
        self.examples_drawn = int(state["examples_drawn"])
        self._slow_bits = state["slow_bits"].clone()
        self._fast_bits = state["fast_bits"].clone()
        self.input_weights = state["input_weights"].clone()
        self.output_weights = state["output_weights"].clone()


@dataclass
class RegressionStream:
    """An online regression run: one pass over ``total_examples`` examples of ``generator``.

    The trainer draws examples in order (Dohare et al. 2024: batch size 1, each example used
    once; drawing chunks, e.g. ``bin_size`` examples, and iterating their rows gives the same
    sequence) and reports the mean squared error over consecutive bins of ``bin_size`` examples.
    There are no tasks and no task-boundary signal (methods with ``uses_task_boundaries`` are
    refused).
    """

    name: str
    generator: SlowlyChangingRegression
    total_examples: int
    """Examples in the run (one pass)."""
    bin_size: int
    """Examples per reported squared-error bin."""
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(m + 1,)``."""
        return (self.generator.input_dim,)
