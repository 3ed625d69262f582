"""Magnitude pruning of a finished supervised run (Schwarz et al. 2021, Powerpropagation, Fig. 2).

The network is rebuilt from the run's ``config.yaml`` and loaded from
``checkpoints/latest.pt`` (the state after the last task); for each fraction f the weights of
smallest |w| are set to zero (every weight matrix and conv kernel, biases excluded) and the test
accuracy of every task is measured, with each task's class mask as in training. Two scopes
(:data:`PRUNING_SCOPES`):

- ``global``: the ``round(f * N)`` smallest of all N weights, one threshold across layers;
- ``layer``: each layer's own ``round(f_l * N_l)`` smallest, with f_l = f except for the output
  layer, which keeps ``output_keep_factor`` times the share the others keep (at most all):
  f_out = 1 - min(1, k (1 - f)). ``layer`` with k = 2 follows the MNIST notebook released with
  Powerpropagation (Schwarz et al. 2021), as a public PyTorch re-implementation of it prunes.

Reparametrised weights (Powerprop w = v |v|^(alpha - 1), weight norm) are pruned in their
effective value w: the parametrizations are removed first, keeping w.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.utils import parametrize

from plasticity_rl.config import resolve
from plasticity_rl.registry import require
from plasticity_rl.supervised.checkpoint import CHECKPOINT
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.evaluation import accuracy
from plasticity_rl.supervised.learner import build_network, build_stream
from plasticity_rl.supervised.steps import class_mask
from plasticity_rl.supervised.streams import TaskStream

PRUNING_RESULTS = "pruning.json"
"""Written into the run directory by :func:`write_pruning_results`."""
PRUNING_SCOPES = ("global", "layer")
"""Where the smallest weights are ranked: over the whole network, or in each layer."""


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weight tensors magnitude pruning acts on: every parameter named ``weight`` with at
    least two dimensions (linear and conv layers; biases and norm scales excluded)."""
    return [p for name, p in model.named_parameters() if name.endswith("weight") and p.ndim >= 2]


@torch.no_grad()
def prune_smallest_(weights: Sequence[torch.Tensor], fraction: float) -> int:
    """Zero the ``round(fraction * N)`` entries of smallest |w| over all ``weights`` in place.

    One global ranking across tensors; ties are broken by position. Returns how many were set
    to zero.
    """
    require(0.0 <= fraction <= 1.0, "magnitude_pruning.fractions", fraction, "numbers in [0, 1]")
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(fraction * magnitudes.numel())
    mask = torch.ones_like(magnitudes, dtype=torch.bool)
    mask[torch.argsort(magnitudes, stable=True)[:count]] = False
    offset = 0
    for w in weights:
        w.mul_(mask[offset : offset + w.numel()].view_as(w))
        offset += w.numel()
    return count


def layer_fractions(layers: int, fraction: float, output_keep_factor: float) -> list[float]:
    """The fraction pruned in each of ``layers`` layers (the last one is the output layer) for
    scope ``layer``: ``fraction`` in each, except f_out = 1 - min(1, k (1 - fraction))."""
    require(output_keep_factor >= 1, "magnitude_pruning.output_keep_factor", output_keep_factor,
            "a number >= 1")  # fmt: skip
    output = 1.0 - min(1.0, output_keep_factor * (1.0 - fraction))
    return [fraction] * (layers - 1) + [output]


def prune_(weights: Sequence[torch.Tensor], fraction: float, scope: str = "global",
           output_keep_factor: float = 1.0) -> int:  # fmt: skip
    """Prune ``fraction`` of ``weights`` (in forward order) in ``scope`` (module docstring) in
    place; returns how many weights were set to zero."""
    require(scope in PRUNING_SCOPES, "magnitude_pruning.scope", scope, PRUNING_SCOPES)
    if scope == "global":
        require(output_keep_factor == 1, "magnitude_pruning.output_keep_factor",
                output_keep_factor, "1 with scope global (it applies to scope layer)")  # fmt: skip
        return prune_smallest_(weights, fraction)
    fractions = layer_fractions(len(weights), fraction, output_keep_factor)
    return sum(prune_smallest_([w], f) for w, f in zip(weights, fractions, strict=True))


def load_finished_network(
    run_dir: Path, data_dir: str | None = None
) -> tuple[nn.Module, TaskStream]:
    """The run's network with its final weights (parametrizations removed), and its stream."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    overrides = [] if data_dir is None else [f"data_dir={data_dir}"]
    cfg = resolve(SupervisedRunConfig, saved, overrides=overrides)
    stream = build_stream(cfg)
    require(isinstance(stream, TaskStream), "stream", cfg.stream.stream, "a classification stream")
    model = build_network(cfg, tuple(stream.input_shape), stream.num_classes)
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    model.load_state_dict(state["model"])
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    model.eval()
    return model, stream


def magnitude_pruning_accuracy(
    run_dir: Path,
    fractions: Sequence[float],
    data_dir: str | None = None,
    scope: str = "global",
    output_keep_factor: float = 1.0,
) -> dict[str, Any]:
    """Test accuracy (%) of every task after pruning each fraction of the smallest weights.

    Returns ``{"fractions", "scope", "output_keep_factor", "average_accuracy" (mean over
    tasks, one per fraction), "accuracy_per_task" (one list per fraction), "pruned_weights",
    "total_weights"}``.
    """
    model, stream = load_finished_network(Path(run_dir), data_dir)
    weights = prunable_weights(model)
    original = [w.detach().clone() for w in weights]
    tasks = [(t.test_x, t.test_y, class_mask(t, stream.num_classes)) for t in stream.tasks]
    result: dict[str, Any] = {
        "fractions": [float(f) for f in fractions],
        "scope": scope,
        "output_keep_factor": float(output_keep_factor),
        "average_accuracy": [],
        "accuracy_per_task": [],
        "pruned_weights": [],
        "total_weights": sum(w.numel() for w in weights),
    }
    for fraction in fractions:
        with torch.no_grad():
            for w, w0 in zip(weights, original, strict=True):
                w.copy_(w0)
        result["pruned_weights"].append(
            prune_(weights, float(fraction), scope, output_keep_factor))  # fmt: skip
        per_task = [accuracy(model, x, y, mask) for x, y, mask in tasks]
        result["accuracy_per_task"].append(per_task)
        result["average_accuracy"].append(sum(per_task) / len(per_task))
    return result


PRUNING_OPTIONS = ("fractions", "scope", "output_keep_factor")
"""The keys of an experiment's ``evaluate: magnitude_pruning`` mapping."""


def pruning_options(evaluate: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment's ``magnitude_pruning`` options with their defaults:
    ``{fractions, scope, output_keep_factor}``; unknown keys raise ``ConfigError``."""
    for key in evaluate:
        require(key in PRUNING_OPTIONS, "magnitude_pruning", key, PRUNING_OPTIONS)
    return {"fractions": [float(f) for f in evaluate["fractions"]],
            "scope": str(evaluate.get("scope", "global")),
            "output_keep_factor": float(evaluate.get("output_keep_factor", 1.0))}  # fmt: skip


def pruning_results_match(run_dir: Path, evaluate: Mapping[str, Any]) -> bool:
    """Whether ``<run_dir>/pruning.json`` exists and was made with these options."""
    path = Path(run_dir) / PRUNING_RESULTS
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())  # files from before scopes have the defaults
    made_with = pruning_options({k: v for k, v in saved.items() if k in PRUNING_OPTIONS})
    return made_with == pruning_options(evaluate)


def write_pruning_results(
    run_dir: Path, evaluate: Mapping[str, Any], data_dir: str | None = None
) -> dict[str, Any]:
    """Run :func:`magnitude_pruning_accuracy` with the ``magnitude_pruning`` options
    ``evaluate`` (:func:`pruning_options`) and write it to ``<run_dir>/pruning.json``."""
    result = magnitude_pruning_accuracy(run_dir, data_dir=data_dir, **pruning_options(evaluate))
    (Path(run_dir) / PRUNING_RESULTS).write_text(json.dumps(result, indent=2) + "\n")
    return result
