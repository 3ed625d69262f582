"""The one interface for plasticity interventions, and the pieces they share.

A :class:`Method` attaches to a model and its optimiser through PyTorch's own extension points
only -- forward hooks on the hidden activations and optimiser step post-hooks -- so the trainers
(SB3 PPO, the supervised loop) need not know about it::

    methods = make_methods({"continual_backprop": {"replacement_rate": 1e-4}, "redo": None})
    handle = attach_methods(methods, {"pi": policy_net, "vf": value_net}, optimizer)
    ...  # train as usual; log {k: v for m in methods for k, v in m.stats().items()}
    handle.remove()

``model`` is one network or a mapping of named networks; a network is a module or a list of
modules in forward order (what :func:`plasticity_rl.nn.mlp.hidden_layers` accepts). Hidden
layers are named ``"hidden1"``, ... for one network and ``"<net>/hidden1"`` for a mapping.

Activations are recorded only on training forwards: the activation module is in training mode
and grad is enabled, so SB3 rollouts (eval mode, ``no_grad``) and evaluation passes do not
count. Every interval is counted in optimiser steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from plasticity_rl.nn.backprop import keeps_deferred_steps
from plasticity_rl.nn.layers import (
    layer_parameter,
    run_shape,
    sample_bias,
    sample_weight,
    set_weight,
    weight_shape,
    with_run_dim,
)
from plasticity_rl.nn.mlp import HiddenLayer, hidden_layers
from plasticity_rl.optim.state import reset_optimizer_state
from plasticity_rl.registry import Registry, require

if TYPE_CHECKING:
    from plasticity_rl.supervised.streams import Task

Network = nn.Module | Sequence[nn.Module]
"""A module, or a list of modules in forward order."""
Model = Network | Mapping[str, Network]
"""One network, or named networks such as ``{"pi": policy_net, "vf": value_net}``."""


class MethodHandle:
    """Several hooks (or other handles) removed together with one :meth:`remove` call."""

    def __init__(self, handles: Iterable[RemovableHandle | MethodHandle]):
        self._handles = list(handles)

    def remove(self) -> None:
        """Remove every hook; calling it again does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Method:
    """An intervention that acts on a model through forward hooks and optimiser step hooks.

    Subclasses implement :meth:`_attach`, and override :meth:`state_dict` /
    :meth:`load_state_dict` / :meth:`stats` when they keep state or counters.

    Task-aware methods (EWC, MAS, SI, replay) also override :meth:`on_batch` and/or
    :meth:`on_task_end`. These hooks are called by the supervised trainer; PPO has no task
    boundaries and never calls them, so it must refuse methods with ``uses_task_boundaries``.
    """

    uses_task_boundaries: bool = False
    """True if the method needs the supervised trainer's :meth:`on_batch` / :meth:`on_task_end`."""
    needs_autograd: bool = False
    """True if the method needs autograd (tensor gradient hooks, a forward hook that adds
    trained parameters, or reading ``.grad``, which the fused SGD step never writes), so the
    trainer must not use the hand-written backward (:mod:`plasticity_rl.nn.backprop`)."""

    def __init__(self) -> None:
        self._attached = False

    def attach(self, model: Model, optimizer: torch.optim.Optimizer) -> MethodHandle:
        """Register the method's hooks on ``model`` and ``optimizer``; a method attaches once."""
        if self._attached:
            raise RuntimeError(f"{type(self).__name__} is already attached; use a new object")
        self._attached = True
        return MethodHandle(self._attach(model, optimizer))

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        raise NotImplementedError

    def on_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training batch to use instead of ``(x, y)``; unchanged by default.

        Called by the supervised trainer before each training forward (never by PPO).
        """
        return x, y

    def on_task_start(self, task: Task, model: nn.Module) -> None:
        """Called by the supervised trainer once before the first step on ``task`` (never by
        PPO, nor for online streams)."""

    def on_task_end(self, task: Task, model: nn.Module) -> None:
        """Called by the supervised trainer once after the last step on ``task`` (never by PPO)."""

    def on_training_loss(self, losses: Tensor) -> None:
        """The task loss of the latest update, one value per batched run; ignored by default.

        The supervised trainer passes each run's mean loss after every optimiser step; PPO
        passes its clipped-surrogate policy loss after each rollout's training (the mean over
        the rollout's minibatches, as SB3 records it). C-CHAIN scales its coefficient by it.
        """

    def evaluating_task(self, task: int) -> contextlib.AbstractContextManager[None]:
        """The network as it should answer for task ``task`` (0-based) inside the block: the
        supervised trainer evaluates each task inside it. Unchanged by default; EfficientPackNet
        masks the weights of later tasks."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: tensors and plain numbers only."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (after :meth:`attach` to an identical model)."""
        if state:
            raise KeyError(f"{type(self).__name__} keeps no state; got keys {sorted(state)}")

    def stats(self) -> dict[str, float]:
        """Counters since the last call, for logging (then reset); summed over batched runs."""
        return {}

    def run_stats(self, runs: int) -> list[dict[str, float]]:
        """:meth:`stats` of each of ``runs`` batched runs (one dict per run; then reset).

        For a single-run model (``runs == 1``) this is ``[self.stats()]``; methods without
        per-run counters report their whole-model values for every run.
        """
        stats = self.stats()
        return [dict(stats) for _ in range(runs)]

    def run_state_dict(self, run: int) -> dict[str, Any]:
        """:meth:`state_dict` of run ``run`` of a batched model, as a single run would save it:
        the entries that :meth:`_run_shaped` marks are taken at index ``run``.

        Methods that keep no per-run state return :meth:`state_dict`.
        """
        return _state_of_run(self.state_dict(), self._run_shaped(), run)

    def load_run_state_dicts(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Load run s's single-run state ``states[s]`` into this batched method: the inverse
        of :meth:`run_state_dict` for all runs at once (shared entries from run 0)."""
        self.load_state_dict(_stack_runs(states, self._run_shaped()))

    def _run_shaped(self) -> Any:
        """Which entries of :meth:`state_dict` carry a leading run dim (True), as a tree
        (none unless overridden; a single-run model has none)."""
        return {}


METHODS: Registry[Method] = Registry("method")
"""Interventions by name (filled by the modules of :mod:`plasticity_rl.methods`)."""


def make_method(name: str, **kwargs: Any) -> Method:
    """Create one method by name; unknown names and keywords raise ``ConfigError``."""
    return METHODS.create(name, **kwargs)


def make_methods(spec: Mapping[str, Mapping[str, Any] | None] | None) -> list[Method]:
    """Create methods from config data ``{name: {option: value} or None}``, in order.

    Example:
        >>> [type(m).__name__ for m in make_methods({"redo": {"tau": 0.05}, "neuronal_decay": {}})]
        ['ReDo', 'NeuronalDecay']
    """
    if spec is None:
        return []
    require(isinstance(spec, Mapping), "methods", spec, "a mapping from method name to options")
    methods = []
    for name, kwargs in spec.items():
        require(
            kwargs is None or isinstance(kwargs, Mapping),
            f"methods.{name}",
            kwargs,
            "null or a mapping of options",
        )
        methods.append(make_method(name, **dict(kwargs or {})))
    return methods


def attach_methods(
    methods: Iterable[Method], model: Model, optimizer: torch.optim.Optimizer
) -> MethodHandle:
    """Attach every method; the returned handle removes all their hooks."""
    handles: list[MethodHandle] = []
    try:
        for method in methods:
            handles.append(method.attach(model, optimizer))
    except Exception:
        MethodHandle(handles).remove()
        raise
    return MethodHandle(handles)


def check_number(value: Any, key: str, ok: Callable[[float], bool], allowed: str) -> float:
    """``value`` as a float, or ``ConfigError(key, value, allowed)`` unless ``ok(value)``."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    require(is_number and ok(float(value)), key, value, allowed)
    return float(value)


def check_count(value: Any, key: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (integral floats such as ``1e4`` accepted)."""
    check_number(value, key, lambda v: v.is_integer() and v >= minimum, f"an integer >= {minimum}")
    return int(value)


def resolve_hidden_layers(model: Model) -> list[HiddenLayer]:
    """Every hidden layer of ``model``; names get a ``"<net>/"`` prefix for a mapping.

    Raises:
        ValueError: if no hidden layer is found.
    """
    if isinstance(model, Mapping):
        layers = [
            replace(layer, name=f"{net}/{layer.name}")
            for net, network in model.items()
            for layer in hidden_layers(network)
        ]
    else:
        layers = hidden_layers(model)
    if not layers:
        raise ValueError("found no hidden layer (linear, activation, linear) in the model")
    return layers


def network_roots(model: Model) -> list[list[nn.Module]]:
    """The modules of each network of ``model``: one list for one network, one per network
    of a mapping (a network given as a module is a list of one)."""
    networks = model.values() if isinstance(model, Mapping) else [model]
    return [list(net) if isinstance(net, Sequence) else [net] for net in networks]


WeightLayer = nn.Linear | nn.Conv2d
"""A layer with a weight matrix (a conv's: one row per output channel)."""


def network_weight_layers(model: Model) -> list[list[WeightLayer]]:
    """The ``nn.Linear`` and ``nn.Conv2d`` layers of each network of ``model`` in registration
    (forward) order: one list for one network, one per network of a mapping (so ``[-1]`` is a
    network's output layer)."""
    per_network = []
    for roots in network_roots(model):
        found: dict[int, WeightLayer] = {}
        for root in roots:
            for module in root.modules():
                if isinstance(module, nn.Linear | nn.Conv2d):
                    found.setdefault(id(module), module)
        per_network.append(list(found.values()))
    return per_network


def weight_layers(model: Model, output_layers: bool = True) -> list[WeightLayer]:
    """Every distinct ``nn.Linear`` and ``nn.Conv2d`` of ``model``, in registration order.

    With ``output_layers=False`` the last weight layer of each network (its output layer)
    is left out.
    """
    found: dict[int, WeightLayer] = {}
    for layers in network_weight_layers(model):
        for layer in layers if output_layers else layers[:-1]:
            found.setdefault(id(layer), layer)
    return list(found.values())


def model_parameters(model: Model) -> list[Tensor]:
    """Every distinct trainable parameter of ``model``'s networks, in registration order."""
    found: dict[int, Tensor] = {}
    for roots in network_roots(model):
        for root in roots:
            for p in root.parameters():
                if p.requires_grad:
                    found.setdefault(id(p), p)
    return list(found.values())


def is_batched(model: Model) -> bool:
    """Whether ``model`` holds batched runs (:class:`~plasticity_rl.nn.layers.BatchedLinear`)."""
    return any(run_shape(layer) for layer in weight_layers(model))


_records_paused = [False]
"""Whether training forwards are not recorded now (inside :func:`training_records_paused`)."""


@contextlib.contextmanager
def training_records_paused() -> Iterator[None]:
    """Inside, training forwards are computed but not recorded by the methods (hooks of
    :func:`on_training_forward` with ``record=True``): the second pass of a sharpness-aware step
    (:mod:`plasticity_rl.optim.sam`), whose forward at perturbed weights is not the learner's."""
    before = _records_paused[0]
    _records_paused[0] = True
    try:
        yield
    finally:
        _records_paused[0] = before


def on_training_forward(
    layers: Iterable[HiddenLayer], fn: Callable[[HiddenLayer, Tensor], None], record: bool = True
) -> list[RemovableHandle]:
    """Call ``fn(layer, h)`` with each layer's activation output h on training forwards.

    A forward counts when the activation module is in training mode and grad is enabled.
    ``h`` is the module's output itself (not a copy); ``fn`` must not change it. ``record``:
    ``fn`` records statistics (skipped inside :func:`training_records_paused`); False for a term
    of the loss, which every training forward needs.
    """

    def hook_for(layer: HiddenLayer) -> Callable[[nn.Module, Any, Tensor], None]:
        def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                if record and _records_paused[0]:
                    return
                fn(layer, output)

        return hook

    return [layer.activation.register_forward_hook(hook_for(layer)) for layer in layers]


class WeightLayerMethod(Method):
    """A method that changes weight layers' parameters (:func:`weight_layers`: linear and conv
    layers) after optimiser steps: shrink and perturb, weight clipping, normalize-and-project.

    After every ``every_optimizer_steps``-th optimiser step (a step post-hook; the step count
    :attr:`steps` is the method's state) :meth:`_apply` runs on each layer of :attr:`layers`,
    the layers :meth:`_select_layers` picks at attach, under ``torch.no_grad()``.

    Args:
        every_optimizer_steps: act after every this many optimiser steps.
        name: the method's registry name, used in config error keys.
    """

    def __init__(self, every_optimizer_steps: int, name: str):
        super().__init__()
        self.name = name
        self.every_optimizer_steps = check_count(
            every_optimizer_steps, f"{name}.every_optimizer_steps", 1
        )
        self.layers: list[WeightLayer] = []
        self.steps = 0
        """Optimiser steps since attach."""

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        self.layers = self._select_layers(model)
        return [optimizer.register_step_post_hook(self._after_step)]

    def _select_layers(self, model: Model) -> list[nn.Linear]:
        """The layers to act on: every ``nn.Linear`` of the model unless overridden."""
        return weight_layers(model)

    def _after_step(self, *_: Any) -> None:
        self.steps += 1
        if self.steps % self.every_optimizer_steps != 0:
            return
        with torch.no_grad():
            for layer in self.layers:
                self._apply(layer)

    def _apply(self, layer: nn.Linear) -> None:
        """Change ``layer``'s trainable tensors in place (gradients are off)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])


def refuse_parametrized(layers: Iterable[nn.Linear], key: str) -> None:
    """``ConfigError`` at ``key`` if a layer's weight is parametrized (weight norm, Powerprop):
    a method whose formula is about the weight itself cannot act on the stored tensor."""
    for layer in layers:
        require(not parametrize.is_parametrized(layer, "weight"), key, "a parametrized layer",
                "plain linear layers (no weight norm or powerprop)")  # fmt: skip


class HiddenLayerMethod(Method):
    """A method acting on hidden layers after each optimiser step (continual backprop, ReDo).

    It keeps each layer's activations (detached; a conv layer's as channel means,
    :meth:`~plasticity_rl.nn.mlp.HiddenLayer.unit_activations`) from the last training forward
    and, after
    every optimiser step, hands them to :meth:`_after_step`; a forward's activations are used
    by one step only. Per-layer counters appear in :meth:`stats` as ``"<layer>/<counter>"``;
    they are float64 tensors with the layer's run dims (0-d for a plain layer, ``(S,)`` for a
    batched one), so :meth:`run_stats` reports each run's own.
    """

    counter = "events"
    """Name of the per-layer counter reported by :meth:`stats`."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[HiddenLayer] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._activations: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        self.layers = resolve_hidden_layers(model)
        self.optimizer = optimizer
        self._counts = {layer.name: self._zero_counts(layer) for layer in self.layers}
        self._setup()

        def record(layer: HiddenLayer, h: Tensor) -> None:
            self._activations[layer.name] = layer.unit_activations(h.detach())

        def after_step(*_: Any) -> None:
            activations, self._activations = self._activations, {}
            self._after_step(activations)

        handles = on_training_forward(self.layers, record)
        # _after_step writes weights only through reset_units (set_weight) and reads outgoing
        # weights only, never a network's input layer: deferred input-layer steps may stay
        handles.append(optimizer.register_step_post_hook(keeps_deferred_steps(after_step)))
        return handles

    def _setup(self) -> None:
        """Allocate per-layer state once ``self.layers`` is known."""

    def _after_step(self, activations: dict[str, Tensor]) -> None:
        """Act on the layers after a step; may read outgoing weights (``layer.outgoing``) and
        may write weights only through :func:`reset_units` (see
        :func:`~plasticity_rl.nn.backprop.keeps_deferred_steps`)."""
        raise NotImplementedError

    @staticmethod
    def _zero_counts(layer: HiddenLayer) -> Tensor:
        return torch.zeros(run_shape(layer.incoming), dtype=torch.float64,
                           device=layer_parameter(layer.incoming).device)  # fmt: skip

    def stats(self) -> dict[str, float]:
        out = {f"{name}/{self.counter}": float(c.sum()) for name, c in self._counts.items()}
        for count in self._counts.values():
            count.zero_()
        return out

    def run_stats(self, runs: int) -> list[dict[str, float]]:
        layers = {layer.name: layer for layer in self.layers}
        per_run = {name: with_run_dim(count, layers[name].incoming).tolist()
                   for name, count in self._counts.items()}  # fmt: skip
        for count in self._counts.values():
            count.zero_()
        return [{f"{name}/{self.counter}": values[s] for name, values in per_run.items()}
                for s in range(runs)]  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"counts": {name: count.tolist() for name, count in self._counts.items()}}

    def run_state_dict(self, run: int) -> dict[str, Any]:
        if not any(run_shape(layer.incoming) for layer in self.layers):
            return self.state_dict()  # a single-run model
        return _state_of_run(self.state_dict(), self._run_shaped(), run)

    def _run_shaped(self) -> dict[str, Any]:
        return {"counts": dict.fromkeys(self._counts, True)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self._attached:
            raise RuntimeError(f"attach {type(self).__name__} before load_state_dict")
        counts = state["counts"]
        if set(counts) != set(self._counts):
            raise KeyError(f"state is for layers {sorted(counts)}, not {sorted(self._counts)}")
        for name, count in counts.items():
            self._counts[name].copy_(torch.as_tensor(count, dtype=torch.float64))


def _stack_runs(states: Sequence[Any], run_shaped: Any) -> Any:
    """The inverse of :func:`_state_of_run`: entries marked True gathered over the runs
    (tensors stacked, other values listed), the others taken from run 0."""
    if run_shaped is True:
        return torch.stack(list(states)) if isinstance(states[0], Tensor) else list(states)
    if isinstance(run_shaped, Mapping):
        return {k: _stack_runs([s[k] for s in states], run_shaped.get(k, False))
                for k in states[0]}  # fmt: skip
    if isinstance(run_shaped, list):
        return [_stack_runs([s[i] for s in states], marked)
                for i, marked in enumerate(run_shaped)]  # fmt: skip
    return states[0]


def _state_of_run(state: Any, run_shaped: Any, run: int) -> Any:
    """``state`` with every entry marked True in ``run_shaped`` taken at index ``run`` (a
    mapping marks its entries by key, a list by position; tensors are copied out)."""
    if run_shaped is True:
        value = state[run]
        return value.clone() if isinstance(value, Tensor) else value
    if isinstance(run_shaped, Mapping):
        return {k: _state_of_run(v, run_shaped.get(k, False), run) for k, v in state.items()}
    if isinstance(run_shaped, list):
        return [_state_of_run(v, marked, run) for v, marked in zip(state, run_shaped, strict=True)]
    return state


def reset_units(
    layer: HiddenLayer,
    units: Tensor,
    optimizer: torch.optim.Optimizer,
    optimizer_state: str = "zero_moments",
) -> None:
    """Give ``units`` of ``layer`` fresh incoming weights and zero outgoing weights.

    Incoming weight rows are drawn from the layer's init distribution (then projected back for
    SDM layers), incoming biases set to 0 and outgoing weight columns set to 0, so the units do
    not change the network's output when they are added. ``optimizer_state`` (one of
    :data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`) is then applied to exactly those
    rows, bias entries and columns. Used by continual backprop and ReDo.

    A unit of a concatenating activation (CReLU, Fourier) has all its k outgoing columns
    zeroed (:meth:`~plasticity_rl.nn.mlp.HiddenLayer.per_feature`). A pre-activation
    LayerNorm gets gain 1 and bias 0 at the units (its init), with their optimiser state
    reset the same way; since the norm mixes all units of the layer, the other units' outputs
    change a little when a unit's incoming weights are redrawn. A conv layer's unit is an
    output channel (its kernel ``incoming.weight[j]``, the kernels ``outgoing.weight[:, j]``);
    its BatchNorm gets gain 1, bias 0 and the running statistics of a new BatchNorm (mean 0,
    variance 1) at the channel.

    ``units`` is a 1-D long tensor of unit indices, or a bool unit mask with the layer's run
    dims (``(width,)`` for a plain layer, ``(S, width)`` for a batched one: ``units[s, j]``
    resets unit j of run s). Each run with a reset draws one fresh weight matrix from its own
    generator (:func:`plasticity_rl.nn.layers.sample_weight`), as a single run would.
    """
    incoming, outgoing = layer.incoming, layer.outgoing
    if units.dtype != torch.bool:
        device = layer_parameter(incoming).device
        units = torch.zeros(layer.width, dtype=torch.bool, device=device).index_fill_(
            0, units.to(device), True
        )
    with torch.no_grad():
        drawn = units.any(-1) if units.dim() > 1 else None
        set_weight(incoming, units, sample_weight(incoming, runs=drawn), dim=0)
        if hasattr(incoming, "project_"):
            incoming.project_()
        if incoming.bias is not None:
            incoming.bias.masked_fill_(units, 0.0)
        columns = layer.outgoing_columns(units)
        set_weight(outgoing, columns, torch.zeros_like(outgoing.weight), dim=1)
        norm_parameters = [] if layer.norm is None else [
            (p, value) for p, value in ((layer.norm.weight, 1.0), (layer.norm.bias, 0.0))
            if p is not None]  # fmt: skip
        for param, value in norm_parameters:
            param.masked_fill_(units, value)
        if isinstance(layer.norm, nn.BatchNorm2d) and layer.norm.track_running_stats:
            layer.norm.running_mean.masked_fill_(units, 0.0)
            layer.norm.running_var.masked_fill_(units, 1.0)
    reset_optimizer_state(optimizer, layer_parameter(incoming), units, 0, optimizer_state)
    if incoming.bias is not None:
        reset_optimizer_state(optimizer, incoming.bias, units, 0, optimizer_state)
    for param, _ in norm_parameters:
        reset_optimizer_state(optimizer, param, units, 0, optimizer_state)
    reset_optimizer_state(optimizer, layer_parameter(outgoing), columns, 1, optimizer_state)


def reset_layer(
    layer: nn.Linear,
    optimizer: torch.optim.Optimizer,
    optimizer_state: str = "zero_moments",
    zero: bool = False,
) -> None:
    """Re-initialise all of ``layer``: weight drawn from its init distribution
    (:func:`~plasticity_rl.nn.layers.sample_weight`, each batched run from its own generator),
    bias as a new layer's (:func:`~plasticity_rl.nn.layers.sample_bias`), or both zero
    (``zero``), and ``optimizer_state`` (:data:`plasticity_rl.optim.state.OPTIMIZER_STATE_RESETS`)
    applied to every row of both. The whole-layer counterpart of :func:`reset_units`
    (reset_layers, Nikishin et al. 2022)."""
    every_row = torch.ones(*run_shape(layer), weight_shape(layer)[0], dtype=torch.bool,
                           device=layer_parameter(layer).device)  # fmt: skip
    with torch.no_grad():
        weight = torch.zeros_like(layer.weight) if zero else sample_weight(layer)
        set_weight(layer, every_row, weight, dim=0)
        if hasattr(layer, "project_"):
            layer.project_()
        if layer.bias is not None:
            layer.bias.copy_(torch.zeros_like(layer.bias) if zero else sample_bias(layer))
    reset_optimizer_state(optimizer, layer_parameter(layer), every_row, 0, optimizer_state)
    if layer.bias is not None:
        reset_optimizer_state(optimizer, layer.bias, every_row, 0, optimizer_state)
