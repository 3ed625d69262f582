"""EWC: the empirical Fisher by hand, the temperature, the penalty and its gradient, the state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from stand_ins import StandInTask, linear_with
from torch import Tensor, nn

from plasticity_rl.methods import EWC, make_method
from plasticity_rl.nn import build_mlp
from plasticity_rl.registry import ConfigError


def _train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 3, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()


def _task(n: int = 32, seed: int = 1) -> StandInTask:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)
    return StandInTask(x, y, classes=[0, 1, 2], active_classes=[0, 1, 2])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fisher_of_a_logistic_model_at_zero_weights(temperature: float):
    # W = 0, b = 0: p = (0.5, 0.5) at any temperature T. d log p(y)/d W_k = (1[k=y] - 0.5) x / T,
    # d/d b_k = (1[k=y] - 0.5) / T, so every squared gradient is 0.25 x^2 / T^2 (0.25 / T^2).
    # x1 = (1, 2), x2 = (3, -1): mean x^2 = ((1 + 9) / 2, (4 + 1) / 2) = (5, 2.5)
    # -> F_W rows = (1.25, 0.625) / T^2, F_b = 0.25 / T^2 for both classes.
    model = linear_with([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    task = StandInTask(torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.tensor([0, 1]))
    ewc = EWC(samples=None, softmax_temperature=temperature)
    ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    ewc.on_task_end(task, model)
    fisher_w, fisher_b = ewc.importance
    expected_w = torch.tensor([[1.25, 0.625], [1.25, 0.625]]) / temperature**2
    assert torch.allclose(fisher_w, expected_w)
    assert torch.allclose(fisher_b, torch.full((2,), 0.25 / temperature**2))


def test_temperature_keeps_the_fisher_of_a_saturated_softmax_alive():
    # One input x = 1, W = (10, -10), b = 0, label 0: logits (10, -10).
    # T = 1: 1 - p_0 = 1 - sigmoid(20) ~ 2.1e-9, so F ~ 4e-18 (vanishes).
    # T = 10: logits / T = (1, -1), 1 - p_0 = 1 - sigmoid(2) = 0.119203; the gradient of
    # log p_0 wrt W_0, W_1, b_0, b_1 is +-0.119203 / 10 -> F = 0.0119203^2 = 1.42093e-4 each.
    task = StandInTask(torch.tensor([[1.0]]), torch.tensor([0]))
    fishers = {}
    for temperature in (1.0, 10.0):
        model = linear_with([[10.0], [-10.0]], [0.0, 0.0])
        ewc = EWC(samples=None, softmax_temperature=temperature)
        ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
        ewc.on_task_end(task, model)
        fishers[temperature] = torch.cat([f.flatten() for f in ewc.importance])
    assert fishers[1.0].max() < 1e-16
    assert torch.allclose(fishers[10.0], torch.full((4,), 1.42093e-4), rtol=1e-4)


def _fisher_by_loop(model: nn.Module, task: StandInTask, temperature: float) -> list[Tensor]:
    """Mean squared per-sample gradient of log_softmax(logits[active] / T)[position of y]."""
    active = torch.tensor(task.active_classes)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x_n, y_n in zip(task.train_x, task.train_y, strict=True):
        model.zero_grad()
        logits = model(x_n.unsqueeze(0))[0, active]
        position = int((active == y_n).nonzero())
        torch.log_softmax(logits / temperature, dim=-1)[position].backward()
        total = [t + p.grad.square() for t, p in zip(total, model.parameters(), strict=True)]
    model.zero_grad(set_to_none=True)
    return [t / len(task.train_x) for t in total]


@pytest.mark.parametrize("powerprop_alpha", [None, 2.0])
def test_fisher_matches_a_per_sample_loop_with_active_classes(powerprop_alpha):
    # A 3 -> 5 -> 4 MLP (plain, and Powerprop: the stored parameter gets the importance);
    # the task uses output units 1 and 3 only, so the other rows of the output layer get 0.
    torch.manual_seed(0)
    model = build_mlp(3, [5], 4, powerprop_alpha=powerprop_alpha)
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([1, 3])[torch.randint(0, 2, (12,), generator=gen)]
    task = StandInTask(torch.randn(12, 3, generator=gen), labels, [1, 3], active_classes=[1, 3])
    ewc = EWC(samples=None, softmax_temperature=2.0)
    ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    model.train()
    ewc.on_task_end(task, model)
    assert model.training and all(p.grad is None for p in model.parameters())
    expected = _fisher_by_loop(model, task, temperature=2.0)
    for got, want in zip(ewc.importance, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-7)
    output_bias = ewc.importance[list(dict(model.named_parameters())).index("output.bias")]
    assert output_bias[[0, 2]].abs().max() == 0 and output_bias[[1, 3]].min() > 0


def test_labels_outside_the_active_classes_are_an_error():
    model = linear_with([[0.0], [0.0], [0.0]], [0.0, 0.0, 0.0])
    ewc = EWC()
    ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    task = StandInTask(torch.ones(2, 1), torch.tensor([0, 2]), active_classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        ewc.on_task_end(task, model)


def test_samples_are_a_seeded_subset_of_the_task():
    # With W = 0 the per-sample squared gradient of W_k is 0.25 x^2, so the Fisher is 0.25 times
    # the mean x^2 over the chosen examples: randperm(4) from a generator seeded with
    # seed + (task ends so far), first 2.
    xs = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    task = StandInTask(xs, torch.tensor([0, 1, 0, 1]))
    model = linear_with([[0.0], [0.0]], [0.0, 0.0])
    ewc = EWC(samples=2, seed=5, accumulate="replace")
    ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for task_end in range(2):
        ewc.on_task_end(task, model)
        chosen = torch.randperm(4, generator=torch.Generator().manual_seed(5 + task_end))[:2]
        expected = 0.25 * xs[chosen].square().mean()
        assert torch.allclose(ewc.importance[0], expected.expand(2, 1))


def test_penalty_is_zero_and_training_bit_identical_before_the_first_task_end():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 3)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    ewc = EWC(coefficient=1e3)
    ewc.attach(net, optimizer)
    _train(net, optimizer, 5)
    _train(plain, torch.optim.Adam(plain.parameters(), lr=1e-2), 5)
    assert ewc.penalty() == 0.0 and ewc.stats() == {"ewc/penalty": 0.0}
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_coefficient_zero_is_bit_identical_to_no_method_across_task_ends():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 3)
    plain = copy.deepcopy(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    ewc = EWC(coefficient=0.0)
    ewc.attach(net, optimizer)
    rng = torch.get_rng_state()
    for task_index in range(3):
        _train(net, optimizer, 3, seed=task_index)
        ewc.on_task_end(_task(seed=task_index), net)
        _train(plain, plain_optimizer, 3, seed=task_index)
    assert torch.equal(torch.get_rng_state(), rng)  # the Fisher draw uses its own generator
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)


def test_gradient_equals_that_of_loss_plus_penalty():
    # After a task end and some training, p.grad at the step (after the pre-hook) must equal
    # the autograd gradient of loss + (lambda / 2) sum F (theta - theta*)^2.
    torch.manual_seed(0)
    net = build_mlp(3, [8], 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    ewc = EWC(coefficient=50.0, samples=16)
    ewc.attach(net, optimizer)
    _train(net, optimizer, 3)
    ewc.on_task_end(_task(), net)
    _train(net, optimizer, 3, seed=1)
    params = list(net.parameters())

    x, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    explicit_penalty = 25.0 * sum(
        (f * (p - a).square()).sum()
        for p, f, a in zip(params, ewc.importance, ewc.anchor, strict=True)
    )
    assert ewc.penalty() == pytest.approx(explicit_penalty.item(), rel=1e-5)
    assert ewc.penalty() > 0
    loss = nn.functional.cross_entropy(net(x), y)
    expected = torch.autograd.grad(loss + explicit_penalty, params)

    optimizer.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()  # the pre-hook adds the penalty gradient to p.grad in place
    for p, g in zip(params, expected, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_accumulate_sum_adds_fishers_and_anchors_at_the_latest_parameters():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    summed, replaced = EWC(samples=None), EWC(samples=None, accumulate="replace")
    summed.attach(net, optimizer)
    replaced.attach(net, optimizer)
    summed.on_task_end(_task(seed=1), net)
    replaced.on_task_end(_task(seed=1), net)
    first = [f.clone() for f in summed.importance]
    _train(net, optimizer, 3)
    summed.on_task_end(_task(seed=2), net)
    replaced.on_task_end(_task(seed=2), net)
    single = EWC(samples=None)
    single.attach(net, torch.optim.SGD(net.parameters(), lr=0.1))
    single.on_task_end(_task(seed=2), net)
    for s, r, one, f1, p, a in zip(
        summed.importance,
        replaced.importance,
        single.importance,
        first,
        net.parameters(),
        summed.anchor,
        strict=True,
    ):
        assert torch.allclose(s, f1 + one) and torch.equal(r, one) and torch.equal(a, p)


def test_state_dict_round_trip_resumes_identically():
    torch.manual_seed(0)
    net = build_mlp(3, [8], 3)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ewc = EWC(coefficient=10.0, samples=8)
    ewc.attach(net, optimizer)
    ewc.on_task_end(_task(), net)
    _train(net, optimizer, 2)

    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "ewc": ewc.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = build_mlp(3, [8], 3)
    twin.load_state_dict(saved["net"])
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    resumed = EWC(coefficient=10.0, samples=8)
    resumed.attach(twin, twin_optimizer)
    resumed.load_state_dict(saved["ewc"])
    assert resumed.penalty() == ewc.penalty() > 0

    for method, model, opt in ((ewc, net, optimizer), (resumed, twin, twin_optimizer)):
        _train(model, opt, 2, seed=3)
        method.on_task_end(_task(seed=4), model)  # same draw: the task-end count was restored
    for p, q, f, g in zip(
        net.parameters(), twin.parameters(), ewc.importance, resumed.importance, strict=True
    ):
        assert torch.equal(p, q) and torch.equal(f, g)


def test_registered_and_flags_task_boundaries():
    ewc = make_method("ewc", coefficient=5.0, samples=10, softmax_temperature=2.0)
    assert isinstance(ewc, EWC) and ewc.uses_task_boundaries
    assert ewc.strength == 5.0 and ewc.samples == 10 and ewc.softmax_temperature == 2.0


@pytest.mark.parametrize(
    "key, value",
    [
        ("coefficient", -1.0),
        ("samples", 0),
        ("samples", 2.5),
        ("softmax_temperature", 0.0),
        ("accumulate", "mean"),
        ("seed", -1),
    ],
)
def test_bad_values_name_key_and_value(key: str, value: object):
    with pytest.raises(ConfigError) as err:
        make_method("ewc", **{key: value})
    assert err.value.key == f"ewc.{key}" and err.value.value == value


def test_unknown_keyword_is_named():
    with pytest.raises(ConfigError, match="method.ewc key: got 'lambda_'"):
        make_method("ewc", lambda_=1.0)


def test_fisher_of_a_gaba_topk_network_leaves_its_counters_alone():
    # The GABA switch counts firing units in every forward of the learner; the Fisher's
    # per-sample forwards (under torch.func, which cannot mutate buffers) must not count, and
    # must not fail (SDMLP + EWC, Bricken et al. 2023).
    torch.manual_seed(0)
    model = build_mlp(3, [6], 4, {"name": "topk", "k": 2, "gaba_switch_T": 10.0})
    gen = torch.Generator().manual_seed(3)
    task = StandInTask(torch.randn(8, 3, generator=gen), torch.randint(0, 4, (8,), generator=gen),
                       [0, 1, 2, 3], active_classes=[0, 1, 2, 3])  # fmt: skip
    model(task.train_x)  # one learner forward: sizes and moves the counters
    counts = [m.gaba_counts.clone() for m in model.modules() if hasattr(m, "gaba_counts")]
    ewc = EWC(samples=None)
    ewc.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    ewc.on_task_end(task, model)
    after = [m.gaba_counts for m in model.modules() if hasattr(m, "gaba_counts")]
    assert counts and all(torch.equal(a, b) for a, b in zip(counts, after, strict=True))
    assert ewc.importance[0].abs().sum() > 0  # the Fisher itself was computed
    model(task.train_x)  # the learner's own forwards count again
    assert not torch.equal(counts[0], after[0])
