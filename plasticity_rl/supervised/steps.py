"""One training step and its batches: losses and their gradients, class masks, example order.

Batched runs stack each step's data along a leading run dim; the loss is the sum of the runs'
mean losses, so each run's gradient is its single-run gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plasticity_rl.methods.base import training_records_paused
from plasticity_rl.nn.sparse import activity_counters_paused
from plasticity_rl.optim.sam import is_sharpness_aware
from plasticity_rl.supervised.learner import Learner
from plasticity_rl.supervised.streams import Task

CHUNK_EXAMPLES = 4096
"""Training examples gathered per run at a time (then sliced into batches)."""


LOSSES: dict[str, Callable[..., Tensor]] = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def class_mask(task: Task, num_classes: int) -> Tensor | None:
    """Additive logit mask: 0 for the task's active classes, -inf for the others (or None)."""
    if len(task.active_classes) == num_classes:
        return None
    mask = torch.full((num_classes,), float("-inf"), device=task.train_x.device)
    mask[task.active_classes] = 0.0
    return mask


def run_class_mask(tasks: Sequence[Task], num_classes: int, batched: bool) -> Tensor | None:
    """:func:`class_mask` of the task of each run: ``(S, 1, classes)`` for batched runs (each
    run's own classes, broadcast over its batch), the single run's mask otherwise."""
    masks = [class_mask(task, num_classes) for task in tasks]
    if not batched or all(m is None for m in masks):
        return masks[0]
    zeros = torch.zeros(num_classes, device=tasks[0].train_x.device)
    return torch.stack([zeros if m is None else m for m in masks]).unsqueeze(1)


def class_mask_of_run(mask: Tensor | None, run: int, batched: bool) -> Tensor | None:
    """Run ``run``'s class mask out of :func:`run_class_mask`'s (``(S, 1, classes)`` batched)."""
    return mask[run, 0] if batched and mask is not None and mask.dim() == 3 else mask


def task_order_generator(seed: int, task_index: int) -> torch.Generator:
    """The generator of a run's example orders (each epoch) and probe of task ``task_index``."""
    return torch.Generator().manual_seed(seed * 100_003 + task_index)


def train_step(learner: Learner, x: Tensor, y: Tensor, loss: str,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One optimiser step on the batch (x, y): returns the output and each run's mean loss.

    Gradients come from autograd or, for a plain MLP, from the hand-written backward
    (:attr:`Learner.backprop`); batched runs descend on the sum of the runs' mean losses.
    ``mask`` is added to the output (class masks; it has no gradient). The methods get the
    losses after the step (:meth:`~plasticity_rl.methods.base.Method.on_training_loss`). A
    sharpness-aware optimiser (:mod:`plasticity_rl.optim.sam`) steps on the gradients of a
    second pass at its perturbed weights (:func:`perturbed_pass`); output and losses are
    those at the weights.
    """
    batched = learner.batched
    if learner.backprop is None:
        optimizer = learner.optimizer

        def forward_backward() -> tuple[Tensor, Tensor]:
            output = learner.model(x)
            if mask is not None:
                output = output + mask
            losses = run_losses(LOSSES[loss], output, y, batched)
            (losses.sum() if batched else losses).backward()
            return output, losses

        optimizer.zero_grad(set_to_none=True)
        output, losses = forward_backward()
        if is_sharpness_aware(optimizer):  # the gradients at w + e (SAM), output and loss at w
            with perturbed_pass(learner.model):
                optimizer.sharpness_aware_gradients(forward_backward)  # type: ignore[attr-defined]
        optimizer.step()
    else:
        output, cache = learner.backprop.forward(x)
        if mask is not None:
            output = output + mask
        losses, grad_output = loss_and_gradient(loss, output, y, batched)
        learner.backprop.backward(cache, grad_output)
        learner.backprop.optimizer_step()  # optimizer.step() (or what is left of it, if fused)
    for method in learner.methods.values():
        method.on_training_loss(losses)
    return output, losses


@contextmanager
def perturbed_pass(model: nn.Module) -> Iterator[None]:
    """Inside, training forwards of ``model`` count for the gradient only: the methods do not
    record them (:func:`~plasticity_rl.methods.base.training_records_paused`), Top-K's
    counters are paused and BatchNorm keeps its running statistics (momentum 0, as davda54/sam's
    ``disable_running_stats``); dropout still draws its masks."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        with training_records_paused(), activity_counters_paused(model):
            yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum


def loss_and_gradient(loss: str, output: Tensor, target: Tensor,
                      batched: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Each run's mean loss (as :func:`run_losses`) and the gradient of their sum by ``output``.

    MSE: d/d output of mean((output - target)^2) is 2 (output - target) / n; cross entropy:
    (softmax(output) - one_hot(target)) / n, with n the loss terms per run (masked logits at
    -inf get 0).
    """
    count = target.numel() // len(target) if batched else target.numel()  # terms per run
    if loss == "mse":
        diff = output - target
        squared = diff.square().reshape(len(diff) if batched else 1, -1)  # (runs, terms)
        # one term per run (one example, one output): the mean is that term
        losses = squared.select(1, 0) if count == 1 else squared.mean(1)
        return (losses if batched else losses.reshape(())), diff.mul_(2.0 / count)
    losses = run_losses(LOSSES[loss], output, target, batched)
    grad = torch.softmax(output, -1)
    grad.scatter_add_(-1, target.unsqueeze(-1), torch.full_like(grad[..., :1], -1.0))
    return losses, grad if count == 1 else grad.div_(count)


def run_losses(
    loss: Callable[..., Tensor], output: Tensor, target: Tensor, batched: bool
) -> Tensor:
    """Each run's mean loss: 0-d for a single run, ``(S,)`` for batched ``(S, B, ...)`` outputs.

    The batched runs train on the sum, whose gradient for run s is run s's mean-loss gradient.
    """
    if not batched:
        return loss(output, target)
    per_example = loss(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
    return per_example.view(output.shape[0], -1).mean(1)


def chunk_examples(n: int, runs: int, batch_size: int, batched: bool) -> int:
    """Examples per run that :func:`run_batches` gathers at a time: about
    :data:`CHUNK_EXAMPLES` over all runs, a multiple of ``batch_size`` (or all ``n``).

    A chunk's end is a point where a run can be checkpointed and continued exactly (the
    hand-written backward's lookahead starts afresh at each chunk)."""
    per_run = max(1, CHUNK_EXAMPLES // (runs * batch_size)) * batch_size
    return min(n, per_run if batched else max(1, CHUNK_EXAMPLES // batch_size) * batch_size)


def run_batches(
    tasks: Sequence[Task],
    orders: Sequence[Tensor],
    batch_size: int,
    batched: bool,
    on_chunk: Callable[[Tensor], None] | None = None,
    start: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch's training batches: run s's batches take ``tasks[s]`` in ``orders[s]``.

    Yields ``(x, y)`` of the single run, or of all runs stacked as ``(S, B, ...)``. Examples
    are gathered :func:`chunk_examples` at a time (over all runs) and then sliced, to keep
    per-step work small; batched runs gather into one buffer, so a batch is only valid until
    the next one is taken. ``on_chunk`` is called with each chunk's inputs before its batches
    are yielded (``(S, n, ...)`` or ``(n, ...)``; :meth:`HandBackprop.prefetch`). ``start``:
    the epoch's first example to yield (a chunk boundary: a run continued mid-task).
    """
    n = len(orders[0])
    chunk = chunk_examples(n, len(tasks), batch_size, batched)
    dim = 1 if batched else 0
    first_x, first_y = tasks[0].train_x, tasks[0].train_y
    if batched:  # (S, chunk, ...), filled in place: no new chunk-sized tensor per chunk
        x_buffer = first_x.new_empty(len(tasks), chunk, *first_x.shape[1:])
        y_buffer = first_y.new_empty(len(tasks), chunk, *first_y.shape[1:])
    for first in range(start, n, chunk):
        indices = [order[first : first + chunk] for order in orders]
        if batched:
            size = len(indices[0])
            x, y = x_buffer[:, :size], y_buffer[:, :size]
            for s, (task, i) in enumerate(zip(tasks, indices, strict=True)):
                i = i.to(task.train_x.device)
                torch.index_select(task.train_x, 0, i, out=x[s])
                torch.index_select(task.train_y, 0, i, out=y[s])
        else:
            x, y = first_x[indices[0]], first_y[indices[0]]
        if on_chunk is not None:
            on_chunk(x)
        size = x.shape[dim]
        for i in range(0, size, batch_size):
            b = min(batch_size, size - i)
            yield x.narrow(dim, i, b), y.narrow(dim, i, b)
