"""Slowly-changing regression (Dohare et al. 2024, Nature, "Loss of plasticity in deep continual
learning"; called the bit-flipping problem in Dohare et al. 2021).

Input (``m = num_bits`` values, all 0 or 1), column layout ``[slow | fast]``:

- the first ``f = num_slow_bits`` bits change slowly: they are drawn uniformly once, and at every
  ``T = flip_every_examples`` examples (example indices ``T, 2T, ...``) ``flip="all"`` redraws
  all ``f`` slow bits uniformly (a redraw may leave bits unchanged; what the authors' code,
  ``generate_problem_data`` with ``flip_one=False`` as ``cfg/prob.json`` calls it, generated for
  the published curves), ``flip="one"`` flips one slow bit chosen uniformly at random (the
  paper's text);
- the remaining ``m - f`` bits are drawn uniformly for every example.

The learner sees these ``m`` bits; its layers have their own biases (no constant input bit).

Target: a fixed random network with ``n = num_hidden`` linear threshold units (LTUs, Sutton and
Whitehead 1993, as used by Dohare et al.). Input weights ``w_ij``, input biases ``b_i`` and
output weights ``v_i`` are +1 or -1 uniformly at random. Unit ``i`` fires (outputs 1, else 0)
iff its input sum strictly exceeds its threshold::

    LTU_i(x) = 1[sum_j w_ij x_j + b_i > tau_i],   tau_i = (m + 1) * beta - S_i,

and ``y = sum_i v_i LTU_i(x) + c``, with ``beta = 0.7``. ``target`` chooses ``S_i`` and ``c``:

- ``"reference"`` (default; the authors' ``FixLTUNet``, which made the published data):
  ``S_i = (m - sum_j w_ij + b_i) / 2`` and an output bias ``c`` of +1 or -1 at random;
- ``"paper"`` (the paper's text): ``S_i`` is the number of negative weights among the ``m + 1``
  input weights (the bias is the weight of a constant bit), ``(m + 1 - sum_j w_ij - b_i) / 2``,
  and ``c = 0``. Unit ``i`` then fires iff more than a fraction ``beta`` of the ``m + 1`` bits
  (constant bit included) *match* its sign pattern (bit 1 where the weight is +1, 0 where -1).

The two agree for units with ``b_i = +1`` (fire iff at least 15 of 21 bits match, for m = 20);
a ``"reference"`` unit with ``b_i = -1`` needs at least 17 matching bits.

Randomness: one ``torch.Generator`` seeded with ``seed`` draws the target (``w``, ``b``, ``v``,
``c``), then the initial slow bits, then period by period (a period is ``T`` consecutive
examples): the slow-bit change (from period 1 on) and the ``(T, m - f)`` fast bits of the
period. A period is drawn when its first example is requested, so the sequence does not depend
on how it is split into :meth:`SlowlyChangingRegression.sample` calls (``sample(5)`` then
``sample(5)`` equals ``sample(10)``). The reference code draws from torch's global RNG in
another order, so its sequences are matched in distribution, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.registry import ConfigError, require

FLIP_MODES = ("all", "one")
TARGETS = ("reference", "paper")


def ltu_thresholds(input_weights: Tensor, input_bias: Tensor, beta: float, target: str) -> Tensor:
    """The LTU thresholds ``tau_i = (m + 1) * beta - S_i`` (module docstring).

    Args:
        input_weights: +-1 weights ``w``, shape ``(n, m)``.
        input_bias: +-1 biases ``b``, shape ``(n,)``.
        beta: the LTU threshold parameter.
        target: ``"reference"`` (``S_i = (m - sum_j w_ij + b_i) / 2``) or ``"paper"``
            (``S_i = (m + 1 - sum_j w_ij - b_i) / 2``, the negative weights with the bias).

    Returns:
        ``(n,)`` float32 thresholds.
    """
    m = input_weights.shape[1]
    sign = 1.0 if target == "reference" else -1.0
    negatives = (m + (target == "paper") - input_weights.sum(1) + sign * input_bias) / 2
    return (m + 1) * beta - negatives


def ltu_features(
    x: Tensor, input_weights: Tensor, input_bias: Tensor, thresholds: Tensor
) -> Tensor:
    """LTU outputs ``1[x @ w_i + b_i > tau_i]`` for every unit ``i``, as float 0/1.

    Args:
        x: inputs, shape ``(N, m)``.
        input_weights: +-1 weights, shape ``(n, m)``.
        input_bias: +-1 biases, shape ``(n,)``.
        thresholds: ``tau``, shape ``(n,)`` (:func:`ltu_thresholds`).

    Returns:
        ``(N, n)`` float32 tensor of 0/1.
    """
    return (x @ input_weights.T + input_bias > thresholds).to(torch.float32)


def ltu_target(
    x: Tensor,
    input_weights: Tensor,
    input_bias: Tensor,
    thresholds: Tensor,
    output_weights: Tensor,
    output_bias: Tensor | float,
) -> Tensor:
    """The target network ``y = sum_i v_i LTU_i(x) + c``, shape ``(N, 1)`` (module docstring)."""
    features = ltu_features(x, input_weights, input_bias, thresholds)
    return (features @ output_weights + output_bias).unsqueeze(1)


class SlowlyChangingRegression:
    """Seeded, resumable generator of slowly-changing regression examples (module docstring).

    Example:
        >>> problem = SlowlyChangingRegression(seed=0)
        >>> x, y = problem.sample(3)
        >>> tuple(x.shape), tuple(y.shape)
        ((3, 20), (3, 1))

    Args:
        num_bits: ``m``, input bits.
        num_slow_bits: ``f``, the first ``f`` bits, which change slowly.
        flip_every_examples: ``T``, examples between slow-bit changes.
        num_hidden: ``n``, LTUs in the target network.
        beta: LTU threshold parameter.
        flip: ``"all"`` redraws every slow bit per period (the authors' code), ``"one"`` flips
            one random slow bit (the paper's text).
        target: ``"reference"`` (the authors' target network) or ``"paper"`` (the paper's text):
            the LTU thresholds and the output bias (module docstring).
        seed: seed of the generator (target weights and data).
    """

    def __init__(
        self,
        num_bits: int = 20,
        num_slow_bits: int = 15,
        flip_every_examples: int = 10_000,
        num_hidden: int = 100,
        beta: float = 0.7,
        flip: str = "all",
        target: str = "reference",
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
        if target not in TARGETS:
            raise ConfigError("target", target, TARGETS)
        self.num_bits = num_bits
        self.num_slow_bits = num_slow_bits
        self.flip_every_examples = flip_every_examples
        self.num_hidden = num_hidden
        self.beta = beta
        self.flip = flip
        self.target = target
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.input_weights = self._random_signs((num_hidden, num_bits))
        """+-1 weights ``w`` of the LTUs, shape ``(n, m)``."""
        self.input_bias = self._random_signs((num_hidden,))
        """+-1 biases ``b`` of the LTUs, shape ``(n,)``."""
        self.output_weights = self._random_signs((num_hidden,))
        """+-1 output weights ``v``, shape ``(n,)``."""
        self.output_bias = self._random_signs(()) * (target == "reference")
        """The output bias ``c`` (0-d): +-1 for ``target="reference"``, 0 for ``"paper"``."""
        self.examples_drawn = 0
        """Examples returned by :meth:`sample` so far."""
        self._slow_bits = self._random_bits((num_slow_bits,))
        self._fast_bits = torch.empty(0, num_bits - num_slow_bits, dtype=torch.uint8)

    @property
    def input_dim(self) -> int:
        """``m``: the learner's inputs."""
        return self.num_bits

    @property
    def thresholds(self) -> Tensor:
        """The LTU thresholds ``tau``, shape ``(n,)`` (:func:`ltu_thresholds`)."""
        return ltu_thresholds(self.input_weights, self.input_bias, self.beta, self.target)

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
            ``x`` float32 ``(n, m)`` (columns ``[slow | fast]``) and ``y`` float32 ``(n, 1)``.
        """
        require(n >= 0, "n", n, "an integer >= 0")
        period_len = self.flip_every_examples
        x = torch.empty(n, self.input_dim)
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
        y = ltu_target(x, self.input_weights, self.input_bias, self.thresholds,
                       self.output_weights, self.output_bias)  # fmt: skip
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the sequence exactly (tensors and ints)."""
        return {
            "generator_state": self._generator.get_state(),
            "examples_drawn": self.examples_drawn,
            "slow_bits": self._slow_bits.clone(),
            "fast_bits": self._fast_bits.clone(),
            "input_weights": self.input_weights.clone(),
            "input_bias": self.input_bias.clone(),
            "output_weights": self.output_weights.clone(),
            "output_bias": self.output_bias.clone(),
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
        self.input_bias = state["input_bias"].clone()
        self.output_weights = state["output_weights"].clone()
        self.output_bias = torch.as_tensor(state["output_bias"], dtype=torch.float32).clone()


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
        """``(m,)``."""
        return (self.generator.input_dim,)
