"""EfficientPackNet (Schwarz et al. 2021, "Powerpropagation", NeurIPS; after PackNet, Mallya &
Lazebnik 2018): each task gets its own subset of the weights, found by magnitude pruning with a
search over sparsities, and frozen afterwards.

Every weight of the network's linear layers is *free* or *owned* by one task. Training on task t
changes only the free weights (owned ones are restored after each optimiser step; their gradient
is zeroed before it, so no optimiser state builds up for them). At the end of task t:

1. a = accuracy on the first ``search_examples`` training examples of task t (its class mask
   applied), with the weights task t would be evaluated with (below);
2. for each sparsity S in ``sparsities``, from the largest: zero the smallest-magnitude fraction
   S of the free weights (those at or below the ceil(S n)-th smallest magnitude of the n free
   weights, one threshold over all layers; for a Powerprop layer the magnitude of
   its stored v orders the weights as |w| = |v|^alpha does) and measure a_S; take the first S
   with a - a_S <= ``max_accuracy_drop`` (percentage points); S = 0 if none;
3. the kept free weights become task t's (frozen); the pruned ones are redrawn from the layer's
   init distribution and stay free for the next tasks (a zero Powerprop weight would never
   learn again: its gradient is proportional to |v|^(alpha - 1)). Biases are trained on the
   first task only and frozen after it (PackNet).

Evaluation on task j (task-incremental) uses the weights owned by tasks 0..j and zero for the
others (:meth:`EfficientPackNet.evaluating_task`), so later tasks cannot change task j's outputs.
The search is "efficient" in that, unlike PackNet, nothing is retrained after pruning; the
sparsity is chosen per task instead of fixed. Schwarz et al. do not publish code; the sparsity
grid, the tolerance and the redraw of pruned weights are this project's reading of the paper,
options here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import METHODS, Method, check_count, check_number, weight_layers
from plasticity_rl.nn.layers import layer_parameter, sample_weight, stored_weight
from plasticity_rl.registry import require

if TYPE_CHECKING:
    from plasticity_rl.supervised.streams import Task

FREE = -1
DEFAULT_SPARSITIES = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


@METHODS.register("efficient_packnet")
class EfficientPackNet(Method):
    """Per-task weight subsets by magnitude pruning with a sparsity search (module docstring).

    Args:
        sparsities: the fractions of the free weights to try pruning, largest first.
        max_accuracy_drop: the largest accepted drop of the task's accuracy, in points.
        search_examples: training examples of the task the search measures accuracy on.
    """

    uses_task_boundaries = True

    def __init__(
        self,
        sparsities: Sequence[float] = DEFAULT_SPARSITIES,
        max_accuracy_drop: float = 1.0,
        search_examples: int = 2000,
    ) -> None:
        super().__init__()
        require(len(sparsities) > 0 and all(0 < float(s) < 1 for s in sparsities),
                "efficient_packnet.sparsities", list(sparsities),
                "a non-empty list of fractions in (0, 1)")  # fmt: skip
        self.sparsities = sorted((float(s) for s in sparsities), reverse=True)
        self.max_accuracy_drop = check_number(
            max_accuracy_drop, "efficient_packnet.max_accuracy_drop", lambda v: v >= 0, ">= 0"
        )
        self.search_examples = check_count(search_examples, "efficient_packnet.search_examples", 1)
        self.layers: list[nn.Linear] = []
        self.owners: list[Tensor] = []  # per layer: the task owning each stored weight, or FREE
        self.frozen: list[Tensor] = []  # per layer: the stored weight values of owned weights
        self.frozen_biases: list[Tensor | None] = []
        self.tasks_done = 0
        self.chosen_sparsities: list[float] = []

    def _attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        self.layers = weight_layers(model)
        for layer in self.layers:
            stored = layer_parameter(layer)
            require(stored.dim() == 2, "method.efficient_packnet", "batched network",
                    "a single run (one seed per process)")  # fmt: skip
            self.owners.append(torch.full(stored.shape, FREE, dtype=torch.int16,
                                          device=stored.device))  # fmt: skip
            self.frozen.append(torch.zeros_like(stored))
            self.frozen_biases.append(None)
        return [optimizer.register_step_pre_hook(self._zero_owned_gradients),
                optimizer.register_step_post_hook(self._restore_owned)]  # fmt: skip

    def _zero_owned_gradients(self, *_: Any) -> None:
        for layer, owner, bias in zip(self.layers, self.owners, self.frozen_biases, strict=True):
            stored = layer_parameter(layer)
            if stored.grad is not None:
                stored.grad.masked_fill_(owner != FREE, 0.0)
            if bias is not None and layer.bias is not None and layer.bias.grad is not None:
                layer.bias.grad.zero_()

    @torch.no_grad()
    def _restore_owned(self, *_: Any) -> None:
        for layer, owner, frozen, bias in zip(self.layers, self.owners, self.frozen,
                                              self.frozen_biases, strict=True):  # fmt: skip
            stored = layer_parameter(layer)
            stored.copy_(torch.where(owner != FREE, frozen, stored))
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias)

    @contextlib.contextmanager
    def evaluating_task(self, task: int) -> Iterator[None]:
        """The weights of tasks 0..``task`` only (the others zero) inside the block; before any
        task has ended, the network as it is."""
        if self.tasks_done == 0:
            yield
            return
        with self._only([(owner != FREE) & (owner <= task) for owner in self.owners]):
            yield

    @contextlib.contextmanager
    def _only(self, keep: list[Tensor]) -> Iterator[None]:
        """The stored weights outside ``keep`` (one mask per layer) zero inside the block."""
        saved = [layer_parameter(layer).detach().clone() for layer in self.layers]
        try:
            with torch.no_grad():
                for layer, mask in zip(self.layers, keep, strict=True):
                    layer_parameter(layer).masked_fill_(~mask, 0.0)
            yield
        finally:
            with torch.no_grad():
                for layer, values in zip(self.layers, saved, strict=True):
                    layer_parameter(layer).copy_(values)

    def _kept_free(self, threshold: float | None) -> list[Tensor]:
        """Per layer: the free weights whose magnitude is above ``threshold`` (all if None)."""
        return [(owner == FREE) & (threshold is None or layer_parameter(layer).abs() > threshold)
                for layer, owner in zip(self.layers, self.owners, strict=True)]  # fmt: skip

    @torch.no_grad()
    def on_task_end(self, task: Task, model: nn.Module) -> None:
        """Search the sparsity, give the kept free weights to this task, redraw the rest."""
        # imported here: the supervised evaluation imports this package
        from plasticity_rl.supervised.evaluation import accuracy
        from plasticity_rl.supervised.steps import class_mask

        t = self.tasks_done
        x, y = task.train_x[: self.search_examples], task.train_y[: self.search_examples]
        mask = class_mask(task, self.layers[-1].out_features)
        earlier = [(owner != FREE) & (owner < t) for owner in self.owners]

        def accuracy_keeping(threshold: float | None) -> float:
            kept = self._kept_free(threshold)
            with self._only([a | b for a, b in zip(earlier, kept, strict=True)]):
                return accuracy(model, x, y, mask)

        free_magnitudes = torch.cat([layer_parameter(layer).abs()[owner == FREE]
                                     for layer, owner in zip(self.layers, self.owners,
                                                             strict=True)])  # fmt: skip
        chosen, threshold = 0.0, None
        if free_magnitudes.numel():
            reference = accuracy_keeping(None)
            for sparsity in self.sparsities:
                # the k-th smallest magnitude, k = ceil(S n): torch.quantile caps its input size
                k = max(1, math.ceil(sparsity * free_magnitudes.numel()))
                candidate = float(free_magnitudes.kthvalue(k).values)
                if reference - accuracy_keeping(candidate) <= self.max_accuracy_drop:
                    chosen, threshold = sparsity, candidate
                    break
        for i, (layer, keep) in enumerate(zip(self.layers, self._kept_free(threshold),
                                              strict=True)):  # fmt: skip
            stored = layer_parameter(layer)
            pruned = (self.owners[i] == FREE) & ~keep
            self.owners[i][keep] = t
            self.frozen[i] = torch.where(keep, stored, self.frozen[i])
            if pruned.any():
                fresh = stored_weight(layer, sample_weight(layer))
                stored.copy_(torch.where(pruned, fresh, stored))
            if self.frozen_biases[i] is None and layer.bias is not None:
                self.frozen_biases[i] = layer.bias.detach().clone()
        self.chosen_sparsities.append(chosen)
        self.tasks_done += 1

    def stats(self) -> dict[str, float]:
        """``packnet_free_fraction``: the share of weights no task owns yet;
        ``packnet_sparsity``: the sparsity the last search chose."""
        total = sum(o.numel() for o in self.owners)
        free = sum(int((o == FREE).sum()) for o in self.owners)
        stats = {"packnet_free_fraction": free / total if total else 0.0}
        if self.chosen_sparsities:
            stats["packnet_sparsity"] = self.chosen_sparsities[-1]
        return stats

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"owners": [o.clone() for o in self.owners],
                "frozen": [f.clone() for f in self.frozen],
                "frozen_biases": [b.clone() if b is not None else torch.empty(0)
                                  for b in self.frozen_biases],
                "tasks_done": self.tasks_done,
                "chosen_sparsities": list(self.chosen_sparsities)}  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: D102
        self.owners = [o.clone() for o in state["owners"]]
        self.frozen = [f.clone() for f in state["frozen"]]
        self.frozen_biases = [b.clone() if b.numel() else None for b in state["frozen_biases"]]
        self.tasks_done = int(state["tasks_done"])
        self.chosen_sparsities = [float(v) for v in state["chosen_sparsities"]]
