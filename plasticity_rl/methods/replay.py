"""Experience replay from a reservoir buffer; with no capacity limit, the "full replay" baseline.

Full replay (every earlier example stays available) is the upper baseline of De Lange et al.
2023 ("Continual evaluation for lifelong learning: identifying the stability gap"), which shows
that even it has a stability gap. :meth:`Replay.on_batch` returns the incoming batch followed by
``batch_size`` examples drawn uniformly, with replacement, from the buffer (none while it is
empty), and then adds the incoming batch to the buffer, so a batch is never replayed with
itself.

With a ``capacity`` the buffer is a reservoir sample of everything seen (Vitter 1985,
Algorithm R): the n-th example (0-based) is stored at slot n while n < capacity, later it
replaces slot j for j drawn uniformly from {0, ..., n} if j < capacity, so each seen example is
in the buffer with probability capacity / seen. A batch is processed at once and gives the same
result as the sequential algorithm with the same draws (a later example wins a slot chosen twice).
Buffers are preallocated and grown geometrically (doubling, up to ``capacity``).

Randomness comes from the method's own generator (``seed``), never torch's global RNG. Per
batch it draws, in order: the replay indices (``torch.randint``, only if the buffer is not
empty), then, with a capacity, one float64 uniform per incoming example for Algorithm R. The
buffer, the count of seen examples and the generator state are in :meth:`Replay.state_dict`,
so a resumed run continues identically.

Replay needs no task-boundary signal, only the batches, so it also works on online streams
(batch size 1). It still sets ``uses_task_boundaries``: :meth:`on_batch` is called by the
supervised trainer only, and PPO (which never calls it) must refuse the method rather than
silently run without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from plasticity_rl.methods.base import METHODS, Method, Model, check_count


@METHODS.register("replay")
class Replay(Method):
    """Reservoir (or full) experience replay mixed into every training batch (module doc).

    Args:
        capacity: most examples kept; None = keep everything (full replay).
        batch_size: replayed examples per batch; None = the incoming batch's size.
        seed: seed of the method's generator.
    """

    uses_task_boundaries = True

    def __init__(self, capacity: int | None = None, batch_size: int | None = None, seed: int = 0):
        super().__init__()
        self.capacity = None if capacity is None else check_count(capacity, "replay.capacity", 1)
        self.batch_size = (
            None if batch_size is None else check_count(batch_size, "replay.batch_size", 1)
        )
        self.generator = torch.Generator().manual_seed(check_count(seed, "replay.seed", 0))
        self.seen = 0
        """Examples added to the reservoir so far."""
        self._x: Tensor | None = None
        self._y: Tensor | None = None

    def _attach(self, model: Model, optimizer: torch.optim.Optimizer) -> list[RemovableHandle]:
        return []

    @property
    def size(self) -> int:
        """Examples in the buffer: min(seen, capacity)."""
        return self.seen if self.capacity is None else min(self.seen, self.capacity)

    def buffer(self) -> tuple[Tensor, Tensor]:
        """The stored examples and targets (views of the first :attr:`size` slots)."""
        if self._x is None or self._y is None:
            raise RuntimeError("the replay buffer is empty")
        return self._x[: self.size], self._y[: self.size]

    def on_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, y)`` followed by examples replayed from the buffer; then store ``(x, y)``."""
        if self.size > 0:
            stored_x, stored_y = self.buffer()
            count = self.batch_size or x.shape[0]
            index = torch.randint(self.size, (count,), generator=self.generator).to(x.device)
            out = torch.cat([x, stored_x[index]]), torch.cat([y, stored_y[index]])
        else:
            out = (x, y)
        self.add(x, y)
        return out

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor) -> None:
        """Add a batch to the buffer by Algorithm R (module doc), vectorised over the batch."""
        count = x.shape[0]
        n = torch.arange(self.seen, self.seen + count)
        position = torch.arange(count)
        slots = n
        if self.capacity is not None:
            uniform = torch.rand(count, generator=self.generator, dtype=torch.float64)
            drawn = (uniform * (n + 1)).floor().long().minimum(n)  # uniform on {0, ..., n}
            slots = torch.where(n < self.capacity, n, drawn)
            kept = slots < self.capacity
            slots, position = slots[kept], position[kept]
        # A slot chosen by several examples of the batch goes to the last of them.
        unique_slots, inverse = torch.unique(slots, return_inverse=True)
        winner = torch.zeros_like(unique_slots).scatter_reduce(
            0, inverse, position, "amax", include_self=False
        )
        self.seen += count
        buffer_x, buffer_y = self._reserve(x, y)
        unique_slots, winner = unique_slots.to(x.device), winner.to(x.device)
        buffer_x[unique_slots] = x[winner].to(buffer_x.dtype)
        buffer_y[unique_slots] = y[winner].to(buffer_y.dtype)

    def _reserve(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Buffers with room for :attr:`size` examples shaped like ``x[0]``, ``y[0]`` (doubling)."""
        allocated = 0 if self._x is None else self._x.shape[0]
        if self._x is not None and self._y is not None and self.size <= allocated:
            return self._x, self._y
        new_size = max(self.size, 2 * allocated)
        if self.capacity is not None:
            new_size = min(new_size, self.capacity)
        grown_x = x.new_empty((new_size, *x.shape[1:]))
        grown_y = y.new_empty((new_size, *y.shape[1:]))
        if self._x is not None and self._y is not None:
            grown_x[:allocated] = self._x
            grown_y[:allocated] = self._y
        self._x, self._y = grown_x, grown_y
        return grown_x, grown_y

    def stats(self) -> dict[str, float]:
        """``buffer_size``: examples in the buffer."""
        return {"buffer_size": float(self.size)}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seen": self.seen, "generator": self.generator.get_state()}
        if self.size > 0:
            stored_x, stored_y = self.buffer()
            state.update(x=stored_x.clone(), y=stored_y.clone())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.generator.set_state(state["generator"])
        self._x, self._y = (state["x"].clone(), state["y"].clone()) if self.seen else (None, None)
        stored = 0 if self._x is None else self._x.shape[0]
        if stored != self.size:
            raise KeyError(f"state holds {stored} examples, expected {self.size}")
