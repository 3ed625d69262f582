"""Adam with a per-element step count and optional bias correction.

The step count is stored per weight (a float tensor shaped like the parameter) so that an
intervention that resets a unit can also reset the step count of just that unit's weights,
as Dohare et al.'s AdamGnT does (see :mod:`plasticity_rl.optim.state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from plasticity_rl.registry import require


def check_adam_args(
    lr: float, betas: Sequence[float], eps: float, weight_decay: float
) -> tuple[float, float]:
    """Validate Adam's arguments (raising ``ConfigError``) and return ``betas`` as a float pair."""
    require(lr >= 0, "optimizer.lr", lr, "a number >= 0")
    require(
        len(betas) == 2 and all(0.0 <= float(b) < 1.0 for b in betas),
        "optimizer.betas",
        betas,
        "two numbers in [0, 1)",
    )
    require(eps >= 0, "optimizer.eps", eps, "a number >= 0")
    require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, "a number >= 0")
    return float(betas[0]), float(betas[1])


UNIFORM_STEP = "uniform_step"
"""State key: the step count shared by every element of the tensor, or None once a reset
(:func:`plasticity_rl.optim.state.reset_optimizer_state`) made the counts differ."""


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015) with a per-element step count and optional bias correction.

    With gradient g (plus coupled L2 decay, g <- g + weight_decay * p, as ``torch.optim.Adam``):

        m <- beta1 m + (1 - beta1) g,    v <- beta2 v + (1 - beta2) g^2,    t <- t + 1
        m_hat = m / (1 - beta1^t),       v_hat = v / (1 - beta2^t)   (element-wise t)
        p <- p - lr m_hat / (sqrt(v_hat) + eps)

    With ``bias_correction=False``, m_hat = m and v_hat = v: the variant used by Keskinen 2024
    (Hard ASH). Dohare et al. 2024 tune beta1 = beta2 = 0.99 (preset ``adam_tuned``).

    State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (v) and ``step`` (t), each a tensor of
    the parameter's shape and dtype (a float32 step count is exact up to 2^24 steps), and
    ``uniform_step`` (:data:`UNIFORM_STEP`), which lets tensors without reset elements use
    scalar bias corrections (as fast as ``torch.optim.Adam``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: decay rates (beta1, beta2) of the first and second moment averages.
        eps: added to sqrt(v_hat) in the denominator.
        weight_decay: coupled L2 coefficient added to the gradient.
        bias_correction: divide the moments by (1 - beta^t).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
    ):
        betas = check_adam_args(lr, betas, eps, weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults)
        self.register_load_state_dict_post_hook(_move_steps_to_params)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Adam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state[UNIFORM_STEP] = 0
                if state.get(UNIFORM_STEP) is not None:
                    state[UNIFORM_STEP] += 1
            _adam_update(
                params,
                [p.grad for p in params],
                [self.state[p]["exp_avg"] for p in params],
                [self.state[p]["exp_avg_sq"] for p in params],
                [self.state[p]["step"] for p in params],
                [self.state[p].get(UNIFORM_STEP) for p in params],
                lr=group["lr"],
                betas=group["betas"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                bias_correction=group["bias_correction"],
            )
        return loss


def _adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    uniform_steps: list[int | None],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    bias_correction: bool,
) -> None:
    """The update formula of :class:`Adam`, vectorised over parameters with ``_foreach`` ops.

    A tensor whose elements all share one step count (``uniform_steps[i]`` is that count; no
    element was reset) takes the scalar bias corrections torch's Adam uses; the others take
    the element-wise ones. Both compute m / ((1 - beta1^t) (sqrt(v / (1 - beta2^t)) + eps)).
    """
    beta1, beta2 = betas
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    torch._foreach_add_(steps, 1.0)
    if not bias_correction:
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-lr)
        return
    uniform = [i for i, t in enumerate(uniform_steps) if t is not None]
    if uniform:
        pick = lambda xs: [xs[i] for i in uniform]  # noqa: E731
        counts = [uniform_steps[i] for i in uniform]
        denom = torch._foreach_sqrt(pick(exp_avg_sqs))
        torch._foreach_div_(denom, [math.sqrt(1.0 - beta2**t) for t in counts])
        torch._foreach_add_(denom, eps)
        step_sizes = [-lr / (1.0 - beta1**t) for t in counts]
        torch._foreach_addcdiv_(pick(params), pick(exp_avgs), denom, step_sizes)
    mixed = [i for i, t in enumerate(uniform_steps) if t is None]
    if mixed:
        pick = lambda xs: [xs[i] for i in mixed]  # noqa: E731
        mixed_steps = pick(steps)
        denom = torch._foreach_div(pick(exp_avg_sqs), _one_minus_pow(beta2, mixed_steps))
        denom = torch._foreach_sqrt(denom)
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(denom, _one_minus_pow(beta1, mixed_steps))
        torch._foreach_addcdiv_(pick(params), pick(exp_avgs), denom, value=-lr)


def _one_minus_pow(beta: float, steps: list[Tensor]) -> list[Tensor]:
    """1 - beta^t element-wise for each step tensor t, as -expm1(t ln beta).

    expm1 is exact to float32 rounding even where beta^t is close to 1 (beta2 = 0.999, small t),
    and faster than ``pow`` with a tensor exponent. beta = 0 gives 1 (ln 0 = -inf).
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    powers = torch._foreach_mul(steps, log_beta)
    torch._foreach_expm1_(powers)
    torch._foreach_neg_(powers)
    return powers


def _move_steps_to_params(optimizer: torch.optim.Optimizer) -> None:
    # torch's load_state_dict leaves "step" on its saved device/dtype (it assumes a scalar count);
    # ours is per element, so it must follow the parameter like exp_avg does.
    for p, state in optimizer.state.items():
        if "step" in state:
            state["step"] = state["step"].to(dtype=p.dtype, device=p.device)
