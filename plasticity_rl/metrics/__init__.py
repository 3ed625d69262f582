"""Metrics of network health and of learning."""

from plasticity_rl.metrics.network import (
    HookHandles,
    WeightChangeMonitor,
    activation_sparsity,
    collect_activations,
    dead_fraction,
    dormancy_scores,
    dormant_ratio,
    effective_rank,
    layer_health,
    srank,
    stable_rank,
    weight_change,
    weight_magnitude,
    weight_snapshot,
)

__all__ = [
    "HookHandles",
    "WeightChangeMonitor",
    "activation_sparsity",
    "collect_activations",
    "dead_fraction",
    "dormancy_scores",
    "dormant_ratio",
    "effective_rank",
    "layer_health",
    "srank",
    "stable_rank",
    "weight_change",
    "weight_magnitude",
    "weight_snapshot",
]
