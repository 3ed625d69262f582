"""Batched runs: S independent runs of one network, stacked along a leading run dim.

Plasticity studies train many seeds of small networks one example at a time, where a plain
PyTorch loop is bound by per-step overhead. Here S runs become ONE network whose linear layers
are :class:`~plasticity_rl.nn.layers.BatchedLinear` (weights ``(S, out, in)``, batched matmuls):
the input is ``(S, B, ...)`` and the output ``(S, B, ...)``. Activations act on the last dim, so
they work per sample and run unchanged. Interventions, optimiser-state resets and the weight
helpers of :mod:`plasticity_rl.nn.layers` understand the run dim (unit j of run s is
``weight[s, j, :]``), and element-wise optimisers update every run independently.

A batched network is built as S plain networks stacked (:func:`build_runs`), so run s starts
exactly as a single run built from the same random state would; :func:`run_state_dict` and
:func:`run_module` give run s back as an ordinary single-run ``state_dict`` / module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticity_rl.nn.layers import BATCHED_MODULES, BatchedLayerNorm, BatchedLinear, Dropout
from plasticity_rl.registry import ConfigError


def build_runs(build: Callable[[], nn.Module], generators: Sequence[torch.Generator]) -> nn.Module:
    """Build run s with ``build()`` drawing from ``generators[s]``, then stack the runs.

    ``build()`` runs with torch's global RNG set to ``generators[s]``'s state, and the generator
    continues from where the build left the RNG; the global RNG itself is left unchanged. So run
    s is the network a single run gets from ``torch.manual_seed(seed_s); build()`` when
    ``generators[s]`` was seeded with ``seed_s``, and its later draws (:func:`sample_weight`,
    :func:`sample_normal`) continue that run's random sequence.
    """
    networks = []
    for generator in generators:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator.get_state())
            networks.append(build())
            generator.set_state(torch.get_rng_state())
    return stack_runs(networks, generators)


def stack_runs(networks: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> nn.Module:
    """One batched network whose run s is ``networks[s]`` (all of the same architecture).

    Every ``nn.Linear`` becomes a :class:`BatchedLinear` of the stacked layers, ``nn.Flatten``
    keeps the run dim, :class:`~plasticity_rl.nn.layers.Dropout` draws each run's mask from
    the run's generator, ``nn.LayerNorm`` becomes a :class:`BatchedLayerNorm`; other
    parameter-free modules (activations) are shared. Modules with other parameters
    (convolutions, other normalisations) are refused, and so is Top-K's GABA switch, whose
    counters are per unit and not per run.

    The returned module keeps a copy of ``networks[0]`` as ``run_template`` for
    :func:`run_module`.
    """
    template = networks[0]
    batched = copy.deepcopy(template)
    linear_names: list[str] = []
    for name, module in template.named_modules():
        if any(name.startswith(f"{linear}.") for linear in linear_names):
            continue  # the parametrizations of a linear layer
        if isinstance(module, nn.Linear):
            linear_names.append(name)
            layers = [net.get_submodule(name) for net in networks]
            _replace(batched, name, BatchedLinear.stack(layers, generators))
        elif isinstance(module, nn.Flatten):
            start = module.start_dim + 1 if module.start_dim >= 0 else module.start_dim
            end = module.end_dim + 1 if module.end_dim >= 0 else module.end_dim
            _replace(batched, name, nn.Flatten(start, end))
        elif isinstance(module, Dropout):
            _replace(batched, name, Dropout(module.p, generators))
        elif isinstance(module, nn.LayerNorm):
            norms = [net.get_submodule(name) for net in networks]
            _replace(batched, name, BatchedLayerNorm.stack(norms))  # type: ignore[arg-type]
        elif next(module.parameters(recurse=False), None) is not None:
            raise ConfigError(
                "network", type(module).__name__, "linear layers and parameter-free modules "
                "(an MLP) for batched runs"
            )  # fmt: skip
        elif getattr(module, "gaba_switch_T", None) is not None:
            raise ConfigError(
                "network.activation.gaba_switch_T", module.gaba_switch_T,
                "null for batched runs (the GABA counters are per unit, not per run)",
            )  # fmt: skip
    object.__setattr__(batched, "run_template", copy.deepcopy(template))  # not a submodule
    return batched


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def runs_of(model: nn.Module) -> int | None:
    """S for a batched network, None for a plain one."""
    layer = next((m for m in model.modules() if isinstance(m, BatchedLinear)), None)
    return None if layer is None else layer.runs


def run_state_dict(model: nn.Module, run: int) -> dict[str, Tensor]:
    """Run ``run`` of a batched network as the ``state_dict`` of a single-run network.

    Tensors of batched layers are sliced at ``run``; other tensors (e.g. Top-K's forward
    counter) are shared by all runs and copied. Every tensor is a copy.
    """
    prefixes = _batched_prefixes(model)
    return {
        key: (value[run] if prefixes and key.startswith(prefixes) else value).clone()
        for key, value in model.state_dict().items()
    }


def stack_run_state_dicts(
    model: nn.Module, states: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """The batched network's ``state_dict`` whose run s is ``states[s]``: the inverse of
    :func:`run_state_dict` (tensors of batched layers stacked, shared tensors from run 0)."""
    prefixes = _batched_prefixes(model)
    return {
        key: torch.stack([state[key] for state in states])
        if prefixes and key.startswith(prefixes)
        else value
        for key, value in states[0].items()
    }


def _batched_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The ``state_dict`` key prefixes of the modules whose tensors have the run dim."""
    return tuple(f"{n}." if n else "" for n, m in model.named_modules()
                 if isinstance(m, BATCHED_MODULES))  # fmt: skip


def run_module(model: nn.Module, run: int, into: nn.Module | None = None) -> nn.Module:
    """Run ``run`` of a batched network as an ordinary single-run network (a copy).

    With ``into`` (a network returned by an earlier call for the same batched network), run
    ``run`` is loaded into it instead of copying the template anew, which is much cheaper
    when many runs are looked at in turn. A plain network is returned itself (``run`` must
    be 0).
    """
    template: Any = getattr(model, "run_template", None)
    if template is None:
        if run != 0:
            raise IndexError(f"run {run} of a single-run network")
        return model
    single = copy.deepcopy(template) if into is None else into
    single.load_state_dict(run_state_dict(model, run))
    single.train(model.training)
    return single
