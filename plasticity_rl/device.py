"""Where a run's networks and updates live: ``device: auto | cpu | cuda | cuda:N``.

Shared by RL (the policy, value network and updates; environments always step on the CPU) and
supervised runs (the network, its data and updates). Networks are built and initialised on the
CPU and then moved, so a run draws the same initial weights on every device; random draws of
batched runs come from their own CPU generators and are moved to the device, so batched runs
match single runs on any device. Checkpoints load onto the CPU first (``map_location``) and are
then copied into the run's device, so a run checkpointed on a GPU resumes on a CPU and back
(the floating-point results of the two devices differ in their last bits, so such a run is not
bit-identical to one that never moved).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from plasticity_rl.registry import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(spec: str) -> torch.device:
    """The device a config's ``device`` names.

    ``auto`` is the first CUDA device when torch sees one, else the CPU.

    Raises:
        ConfigError: an unknown name, ``cuda`` without a CUDA device (``error: device: got
            'cuda'; allowed: cpu (no CUDA device found)``), or a CUDA index past the last.
    """
    if not isinstance(spec, str) or not _PATTERN.fullmatch(spec):
        raise ConfigError("device", spec, DEVICE_CHOICES)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return torch.device("cuda:0" if count else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if count == 0:
            raise ConfigError("device", spec, "cpu (no CUDA device found)")
        if (device.index or 0) >= count:
            raise ConfigError("device", spec, f"cpu or cuda:0 ... cuda:{count - 1}")
    return device


def to_device(tree: Any, device: torch.device) -> Any:
    """``tree`` with every tensor moved to ``device`` (mappings, lists and tuples walked; other
    values kept): method states and progress records loaded from a checkpoint."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, Mapping):
        return {key: to_device(value, device) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_device(value, device) for value in tree)
    return tree


def cuda_rng_state(device: torch.device) -> torch.Tensor | None:
    """The CUDA generator's state of ``device`` (None on the CPU): saved in checkpoints, so a
    resumed GPU run draws (dropout, noise) what the uninterrupted one draws."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_cuda_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    """Restore :func:`cuda_rng_state` output on ``device`` (nothing for the CPU or None)."""
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cpu(), device)
