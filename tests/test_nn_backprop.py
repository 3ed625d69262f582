"""The hand-written MLP backward gives autograd's gradients, for plain and batched networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from plasticity_rl.nn import build_mlp, build_runs
from plasticity_rl.nn.backprop import HandBackprop
from plasticity_rl.supervised.steps import LOSSES, loss_and_gradient, run_losses


def _net(activation: str, runs: int | None) -> nn.Module:
    def build() -> nn.Module:
        return build_mlp(4, [6, 5], 3, activation, init="lecun_uniform")

    if runs is None:
        torch.manual_seed(0)
        return build()
    return build_runs(build, [torch.Generator().manual_seed(s) for s in range(runs)])


@pytest.mark.parametrize(
    "activation",
    ["relu", "tanh", "sigmoid", "leaky_relu", "elu", "swish", "identity", "crelu", "fourier"],
)
@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gradients_equal_autograd(activation: str, runs: int | None, loss: str):
    net = _net(activation, runs)
    batched = runs is not None
    lead = (runs, 7) if batched else (7,)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*lead, 4, generator=gen)
    y = torch.randn(*lead, 3, generator=gen) if loss == "mse" else torch.randint(3, lead)
    mask = torch.tensor([0.0, float("-inf"), 0.0]) if loss == "cross_entropy" else 0.0
    losses = run_losses(LOSSES[loss], net(x) + mask, y, batched)
    (losses.sum() if batched else losses).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    backprop = HandBackprop(net)
    output, cache = backprop.forward(x)
    hand_losses, grad = loss_and_gradient(loss, output + mask, y, batched)
    torch.testing.assert_close(hand_losses, losses.detach())
    backprop.backward(cache, grad)
    for p, g in zip(net.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_forward_hooks_see_a_training_forward_and_unsupported_models_are_named():
    net = _net("relu", None)
    seen = []
    net.hidden[1].register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    HandBackprop(net).forward(torch.randn(2, 4))
    assert seen == [True]
    for model in [
        build_mlp(4, [5], 2, "hard_ash"),  # no hand derivative: autograd
        build_mlp(4, [5], 2, powerprop_alpha=2.0),  # parametrized weight
        build_mlp(4, [5], 2, layer_norm=True),  # LayerNorm: autograd
        build_mlp(4, [5], 2, dropout=0.5),  # dropout: autograd
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
    ]:
        assert not HandBackprop.supports(model)
        with pytest.raises(ValueError, match="does not support"):
            HandBackprop(model)
    assert HandBackprop.supports(nn.Sequential(nn.Flatten(), build_mlp(4, [5], 2)))


def _train_step(net: nn.Module, optimizer: torch.optim.Optimizer, hand: bool, batch: int,
                runs: int | None) -> None:  # fmt: skip
    batched = runs is not None
    lead = (runs, batch) if batched else (batch,)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(*lead, 4, generator=gen), torch.randn(*lead, 3, generator=gen)
    if hand:
        backprop = HandBackprop(net, optimizer)
        output, cache = backprop.forward(x)
        backprop.backward(cache, loss_and_gradient("mse", output, y, batched)[1])
    else:
        optimizer.zero_grad()
        losses = run_losses(LOSSES["mse"], net(x), y, batched)
        (losses.sum() if batched else losses).backward()
    optimizer.step()


@pytest.mark.parametrize("runs", [None, 3])
@pytest.mark.parametrize("batch", [1, 5])  # outer product (addcmul_) or matmul (addmm_/baddbmm_)
@pytest.mark.parametrize(
    "make, fused",
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1), True),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), False),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01), False),
        (lambda ps: torch.optim.Adam(ps, lr=0.1), False),
    ],
)
def test_plain_sgd_steps_are_fused_into_backward_with_autograd_s_result(runs, batch, make, fused):
    reference, net = _net("relu", runs), _net("relu", runs)
    reference_optimizer, optimizer = make(reference.parameters()), make(net.parameters())
    for _ in range(2):  # a second step: nothing of the first is applied again
        _train_step(reference, reference_optimizer, False, batch, runs)
        _train_step(net, optimizer, True, batch, runs)
        for p, q in zip(net.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q)
            assert (p.grad is None) == fused  # a fused step leaves no gradient behind


def test_a_step_pre_hook_turns_fusing_off_and_sees_the_gradients():
    net, reference = _net("relu", 3), _net("relu", 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    seen = []
    handle = optimizer.register_step_pre_hook(
        lambda opt, *_: seen.append([p.grad is not None for p in net.parameters()])
    )
    _train_step(net, optimizer, True, 1, 3)
    _train_step(reference, reference_optimizer, False, 1, 3)
    assert seen == [[True] * 6]  # 3 layers: weight and bias each
    handle.remove()
    _train_step(net, optimizer, True, 1, 3)  # fused again: grads consumed, none left over
    _train_step(reference, reference_optimizer, False, 1, 3)
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)
        assert p.grad is None


def test_a_fully_fused_step_runs_each_post_hook_once_and_a_wrapped_step_runs_itself():
    net = _net("relu", 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(("local", args)))
    handle = register_optimizer_step_post_hook(lambda opt, *_: calls.append(("global", opt)))
    try:
        backprop = HandBackprop(net, optimizer)
        x = torch.randn(3, 1, 4)
        for _ in range(2):
            output, cache = backprop.forward(x)
            backprop.backward(cache, torch.ones_like(output))
            backprop.optimizer_step()
        # as torch's step() calls them: hook(optimizer, (optimizer,), {}), local before global
        assert calls == [("local", (optimizer,)), ("global", optimizer)] * 2
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)  # wraps optimizer.step
        optimizer._opt_called = False
        output, cache = backprop.forward(x)
        backprop.backward(cache, torch.ones_like(output))
        backprop.optimizer_step()
        assert optimizer._opt_called and len(calls) == 6  # the scheduler's counter saw it
    finally:
        handle.remove()


def _wide_net(runs: int | None) -> nn.Module:
    """An input layer of 200 x 100 weights: wide enough for deferred steps."""

    def build() -> nn.Module:
        return build_mlp(200, [100], 3, "relu", init="lecun_uniform")

    if runs is None:
        torch.manual_seed(0)
        return build()
    return build_runs(build, [torch.Generator().manual_seed(s) for s in range(runs)])


def _examples(runs: int | None, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    lead = (runs, 1) if runs is not None else (1,)
    return [(torch.randn(*lead, 200, generator=gen), torch.randn(*lead, 3, generator=gen))
            for _ in range(steps)]  # fmt: skip


def _hand_steps(backprops: list[HandBackprop], x: torch.Tensor, y: torch.Tensor,
                batched: bool) -> list[torch.Tensor]:  # fmt: skip
    """One MSE training step of each hand-written backward on (x, y); their outputs."""
    outputs = []
    for backprop in backprops:
        output, cache = backprop.forward(x)
        backprop.backward(cache, loss_and_gradient("mse", output, y, batched)[1])
        backprop.optimizer_step()
        outputs.append(output)
    return outputs


def _deferred_and_immediate(runs: int | None, lr: float, defer_steps: int
                            ) -> tuple[list[nn.Module], HandBackprop, HandBackprop]:  # fmt: skip
    """Two identical wide networks with SGD: one deferring input-layer steps, one not."""
    nets = [_wide_net(runs) for _ in range(2)]
    optimizers = [torch.optim.SGD(net.parameters(), lr=lr) for net in nets]
    return (nets, HandBackprop(nets[0], optimizers[0], defer_steps=defer_steps),
            HandBackprop(nets[1], optimizers[1], defer_steps=1))  # fmt: skip


@pytest.mark.parametrize("runs", [None, 3])
def test_deferred_input_layer_steps_give_the_outputs_and_weights_of_immediate_ones(runs):
    nets, deferred, immediate = _deferred_and_immediate(runs, lr=0.05, defer_steps=4)
    batched = runs is not None
    for step, (x, y) in enumerate(_examples(runs, 10)):
        outputs = _hand_steps([deferred, immediate], x, y, batched)
        torch.testing.assert_close(outputs[0], outputs[1])  # W x + pending = the stepped W x
        pending = deferred._deferred.count
        assert pending == (step + 1) % 4  # applied every 4 steps
    first = [net.hidden[0].weight for net in nets]
    assert not torch.allclose(first[0], first[1])  # 2 steps still pending
    torch.testing.assert_close(nets[0](x), nets[1](x))  # a module forward flushes them first
    assert deferred._deferred.count == 0
    torch.testing.assert_close(first[0], first[1])
    for p in nets[0].parameters():
        assert p.grad is None  # fused or deferred: no gradient left behind


def test_state_dict_flushes_and_a_post_hook_turns_deferring_off():
    net, reference = _wide_net(3), _wide_net(3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    backprop = HandBackprop(net, optimizer, defer_steps=8)
    examples = _examples(3, 4)
    for x, y in examples[:2]:
        _hand_steps([backprop], x, y, True)
        _autograd_step(reference, reference_optimizer, x, y)
    assert backprop._deferred.count == 2
    torch.testing.assert_close(net.state_dict(), reference.state_dict())
    assert backprop._deferred.count == 0
    seen = []  # a post-hook may read the weights: every step is applied at once
    optimizer.register_step_post_hook(lambda *_: seen.append(net.hidden[0].weight.clone()))
    reference_optimizer.register_step_post_hook(lambda *_: None)
    for x, y in examples[2:]:
        _hand_steps([backprop], x, y, True)
        _autograd_step(reference, reference_optimizer, x, y)
        assert backprop._deferred.count == 0
        torch.testing.assert_close(seen[-1], reference.hidden[0].weight)


def _autograd_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor) -> None:  # fmt: skip
    optimizer.zero_grad()
    run_losses(LOSSES["mse"], net(x), y, True).sum().backward()
    optimizer.step()


@pytest.mark.parametrize("runs", [None, 3])
def test_lookahead_over_announced_inputs_gives_the_numbers_of_immediate_steps(runs):
    nets, lookahead, immediate = _deferred_and_immediate(runs, lr=0.01, defer_steps=4)
    batched = runs is not None
    examples = _examples(runs, 13)
    upcoming = torch.cat([x for x, _ in examples[:10]], dim=-2)  # (S, 10, 200) or (10, 200)
    lookahead.prefetch(upcoming)
    for step, (x, y) in enumerate(examples):
        if step == 7:  # an input that was not announced ends the announcement
            x = x + 1.0
        outputs = _hand_steps([lookahead, immediate], x, y, batched)
        torch.testing.assert_close(outputs[0], outputs[1])
        if step < 7:  # blocks of 4 announced rows: 4, then 4 cut short at row 7
            assert lookahead._deferred.upcoming is not None
            assert lookahead._deferred.count == (step + 1) % 4
    assert lookahead._deferred.upcoming is None and lookahead._deferred.consumed == 7
    lookahead.flush()
    torch.testing.assert_close(nets[0].state_dict(), nets[1].state_dict())


def test_lookahead_block_is_cut_at_the_end_of_the_announced_rows():
    nets, lookahead, immediate = _deferred_and_immediate(2, lr=0.01, defer_steps=4)
    examples = _examples(2, 6)
    lookahead.prefetch(torch.cat([x for x, _ in examples], dim=1))  # blocks of 4 and 2
    for x, y in examples:
        outputs = _hand_steps([lookahead, immediate], x, y, True)
        torch.testing.assert_close(outputs[0], outputs[1])
    assert lookahead._deferred.count == 0  # the block of 2 was applied at its end
    torch.testing.assert_close(nets[0].hidden[0].weight, nets[1].hidden[0].weight)


@pytest.mark.parametrize("runs", [None, 3])
def test_deferred_steps_stay_under_continual_backprop_and_resets_see_them(runs):
    from plasticity_rl.methods import make_method

    nets = [_wide_net(runs) for _ in range(2)]
    optimizers = [torch.optim.SGD(net.parameters(), lr=0.01) for net in nets]
    methods = []
    for net, optimizer in zip(nets, optimizers, strict=True):
        method = make_method("continual_backprop", replacement_rate=0.05, maturity_threshold=2)
        method.attach(net, optimizer)
        methods.append(method)
    deferred = HandBackprop(nets[0], optimizers[0], defer_steps=8)
    immediate = HandBackprop(nets[1], optimizers[1], defer_steps=1)
    batched = runs is not None
    examples = _examples(runs, 12)
    deferred.prefetch(torch.cat([x for x, _ in examples], dim=-2))
    pending = []
    for step, (x, y) in enumerate(examples):
        outputs = []
        for backprop in (deferred, immediate):
            torch.manual_seed(step)  # the same fresh weights for both (plain layers)
            outputs += _hand_steps([backprop], x, y, batched)
        torch.testing.assert_close(outputs[0], outputs[1])
        pending.append(deferred._deferred.count)
    assert max(pending) > 1  # CBP's post-hook let steps stay pending
    replaced = [float(sum(m.stats().values())) for m in methods]
    assert replaced[0] == replaced[1] > 0  # resets happened, and flushed the pending steps first
    deferred.flush()
    torch.testing.assert_close(nets[0].state_dict(), nets[1].state_dict())
