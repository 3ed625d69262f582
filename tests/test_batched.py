"""Batched runs: S runs in one batched network give the numbers of S separate single runs."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from plasticity_rl.config import REPO_ROOT, load_preset, resolve
from plasticity_rl.methods import ContinualBackprop, ShrinkAndPerturb
from plasticity_rl.nn import (
    BatchedLinear,
    build_mlp,
    build_runs,
    hidden_layers,
    run_module,
    run_state_dict,
    sample_weight,
    stack_run_state_dicts,
)
from plasticity_rl.optim.runs import make_run_optimizer
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.checkpoint import CHECKPOINT
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.learner import build_batched_learner, run_configs
from plasticity_rl.supervised.steps import run_class_mask
from plasticity_rl.supervised.streams import Task
from plasticity_rl.supervised.trainer import train, train_runs

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_supervised import main  # noqa: E402

SEEDS = [0, 1, 2]
REGRESSION = {"total_examples": 400, "bin_size": 100, "flip_every_examples": 50}
OFTEN = {"replacement_rate": 0.05, "maturity_threshold": 5}  # ~1 replacement per 4 steps


def config(env: str, agent: str, **layers: Any) -> SupervisedRunConfig:
    base = {"train": {"probe_size": 50, "log_every_steps": 50}}
    return resolve(
        SupervisedRunConfig,
        {"stream": load_preset("envs", env)},
        load_preset("agents", agent),
        base,
        layers,
    )


def regression_config(**layers: Any) -> SupervisedRunConfig:
    layers.setdefault("stream", {}).setdefault("kwargs", {}).update(REGRESSION)
    return config("slowly-changing-regression", "regression-bp", **layers)


def single_and_batched(cfg: SupervisedRunConfig, tmp_path: Path) -> tuple[list, list, list, list]:
    """Results and checkpoints of each seed as a single run and as one of the batched runs."""
    single_dirs = [tmp_path / f"single{s}" for s in SEEDS]
    batched_dirs = [tmp_path / f"batched{s}" for s in SEEDS]
    singles = []
    for run_cfg, run_dir in zip(run_configs(cfg, SEEDS), single_dirs, strict=True):
        run_dir.mkdir()
        singles.append(train(run_cfg, run_dir, show_progress=False))
    for run_dir in batched_dirs:
        run_dir.mkdir()
    batched = train_runs(cfg, SEEDS, batched_dirs, show_progress=False)
    load = [torch.load(d / CHECKPOINT, weights_only=True) for d in single_dirs + batched_dirs]
    return singles, batched, load[: len(SEEDS)], load[len(SEEDS) :]


def assert_close_tree(a: Any, b: Any, path: str = "") -> None:
    """Same structure; tensors and floats equal to float tolerance, everything else equal
    (``wall_seconds``, a time measured, aside)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key != "wall_seconds":
                assert_close_tree(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_tree(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        if a.dtype == torch.uint8:  # RNG states: the runs drew exactly the same numbers
            assert torch.equal(a, b), path
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=path)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5, nan_ok=True), path
    else:
        assert a == b, path


def logged_total(run_dir: Path, tag: str) -> float:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return sum(event.value for event in events.Scalars(tag))


def assert_same_runs(cfg: SupervisedRunConfig, tmp_path: Path) -> list[dict]:
    singles, batched, single_states, batched_states = single_and_batched(cfg, tmp_path)
    for s, b in zip(singles, batched, strict=True):
        assert_close_tree(s, b)
    for s, b in zip(single_states, batched_states, strict=True):
        assert_close_tree(s, b)
    return batched_states


def test_batched_forward_equals_each_runs_own_network():
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    batched = build_runs(lambda: build_mlp(4, [6, 5], 3, init="lecun_uniform"), generators)
    assert isinstance(batched.output, BatchedLinear) and batched.output.weight.shape == (3, 3, 5)
    layer = hidden_layers(batched)[1]  # unit j of run s: row [s, j] in, column [s, :, j] out
    assert layer.incoming.weight.shape == (3, 5, 6) and layer.width == 5
    x = torch.randn(3, 7, 4)
    for s, seed in enumerate(SEEDS):
        torch.manual_seed(seed)
        single = build_mlp(4, [6, 5], 3, init="lecun_uniform")
        torch.testing.assert_close(batched(x)[s], single(x[s]))
        for key, value in run_state_dict(batched, s).items():
            assert torch.equal(value, single.state_dict()[key]), key
        torch.testing.assert_close(run_module(batched, s)(x[s]), single(x[s]))
        # the run's generator continues where the single run's global RNG stands
        assert torch.equal(generators[s].get_state(), torch.get_rng_state())


@pytest.mark.parametrize("bias", [True, False])
def test_batched_linear_gradients_match_autograd_of_the_plain_formula(bias):
    torch.manual_seed(0)
    layer = BatchedLinear(2, 4, 3, bias=bias).double()
    nn.init.normal_(layer.weight)
    if bias:
        nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 4, dtype=torch.double, requires_grad=True)
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(layer(x).square().sum(), params)
    plain = torch.einsum("sbi,soi->sbo", x, layer.weight)
    if bias:
        plain = plain + layer.bias.unsqueeze(1)
    expected = torch.autograd.grad(plain.square().sum(), params)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))


def test_fresh_weights_of_a_run_come_from_its_own_generator():
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    batched = build_runs(lambda: build_mlp(4, [6], 3), generators)
    states = [g.get_state() for g in generators]
    fresh = sample_weight(batched.hidden[0], runs=torch.tensor([False, True, False]))
    assert torch.all(fresh[0] == 0) and torch.all(fresh[2] == 0)
    assert torch.equal(generators[0].get_state(), states[0])
    torch.set_rng_state(states[1])
    torch.manual_seed(1)
    single = build_mlp(4, [6], 3)
    torch.testing.assert_close(fresh[1], sample_weight(single.hidden[0]))


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": 0.01}, {"name": "adam", "lr": 1e-3}])
def test_regression_backprop_batched_equals_single_runs(optimizer, tmp_path):
    assert_same_runs(regression_config(optimizer=optimizer), tmp_path)


@pytest.mark.parametrize(
    "optimizer, state",
    [({"name": "sgd", "lr": 0.01}, "zero_moments"),
     ({"name": "adam", "lr": 1e-3}, "zero_moments_and_step")],
)  # fmt: skip
def test_regression_cbp_batched_equals_single_runs_through_replacements(optimizer, state, tmp_path):
    cbp = {"continual_backprop": {**OFTEN, "optimizer_state": state}}
    assert_same_runs(regression_config(optimizer=optimizer, method=cbp), tmp_path)
    tag = "plasticity/net/hidden1/replacements"
    # rho * 5 units = at most 0.25 per step: < 100 in 400 steps (fewer: new units must mature)
    for seed in SEEDS:
        total = logged_total(tmp_path / f"batched{seed}", tag)
        assert total == logged_total(tmp_path / f"single{seed}", tag)
        assert 50 <= total < 100


@pytest.mark.parametrize("utility", ["contribution", "adaptable_contribution"])
@pytest.mark.parametrize("accumulate", [True, False])
def test_regression_cbp_options_batched_equal_single_runs(utility, accumulate, tmp_path):
    # accumulate=False: each run draws its Bernoulli replacement from its own generator, as a
    # single run draws it from the global RNG
    cbp = {"continual_backprop": {**OFTEN, "utility": utility, "accumulate": accumulate,
                                  "outgoing": "mean"}}  # fmt: skip
    assert_same_runs(config("slowly-changing-regression", "regression-cbp",
                            stream={"kwargs": REGRESSION}, method=cbp), tmp_path)  # fmt: skip
    tag = "plasticity/net/hidden1/replacements"
    for seed in SEEDS:
        total = logged_total(tmp_path / f"batched{seed}", tag)
        assert total == logged_total(tmp_path / f"single{seed}", tag)
        assert 40 <= total < 110


def test_regression_linear_learner_batched_equals_single_runs(tmp_path):
    assert_same_runs(regression_config(network={"hidden_sizes": []}), tmp_path)


def test_regression_redo_and_shrink_and_perturb_batched_equal_single_runs(tmp_path):
    # S&P noise: run s draws from its generator, which continues the state a single run's
    # global RNG has after torch.manual_seed(seed) and the network init, so the noise matches.
    methods = {
        "redo": {"tau": 0.3, "period": 20},
        "shrink_and_perturb": {"shrink": 1e-3, "noise_std": 1e-2},
    }
    states = assert_same_runs(regression_config(method=methods), tmp_path)
    assert all(c["methods"]["redo"]["steps"] == 400 for c in states)


@pytest.mark.parametrize(
    "methods",
    [
        {"reset_layers": {"every_optimizer_steps": 50},
         "hare_tortoise": {"ema_rate": 0.9, "reset_every_optimizer_steps": 70}},
        {"regrama": {"tau": 0.3, "period": 20},
         "self_normalized_resets": {"percentile": 0.9}},
    ],
    ids=["reset-layers-hare-tortoise", "regrama-snr"],
)  # fmt: skip
def test_regression_layer_and_unit_resets_batched_equal_single_runs(methods, tmp_path):
    # fresh layers and units: run s draws from its own generator, as the single run does
    states = assert_same_runs(regression_config(method=methods), tmp_path)
    names = list(methods)
    assert all(c["methods"][names[0]]["steps"] == 400 for c in states)
    if "regrama" in methods:  # both reset units, each under its own counter
        for counter in ("grama_resets", "silence_resets"):
            assert logged_total(tmp_path / "batched1", f"plasticity/net/hidden1/{counter}") > 0


@pytest.mark.parametrize(
    "network", [{"activation": "crelu"}, {"dropout": 0.1}, {"layer_norm": True}]
)
def test_regression_network_options_with_cbp_batched_equal_single_runs(network, tmp_path):
    # dropout: run s draws its masks from its own generator, as a single run from the global
    # RNG; layer_norm: each run has its own gain and bias, which replacements reset
    cbp = {"continual_backprop": OFTEN}
    states = assert_same_runs(regression_config(network=network, method=cbp), tmp_path)
    tag = "plasticity/net/hidden1/replacements"
    assert logged_total(tmp_path / "batched1", tag) == logged_total(tmp_path / "single1", tag) > 0
    if network.get("layer_norm"):
        assert states[0]["model"]["hidden.1.weight"].shape == (5,)  # a single run's LayerNorm


def test_a_batched_layer_norm_is_each_runs_own_and_round_trips_through_run_state_dicts():
    generators = [torch.Generator().manual_seed(seed) for seed in SEEDS]
    batched = build_runs(lambda: build_mlp(4, [6], 3, layer_norm=True), generators)
    with torch.no_grad():  # distinct gains and biases per run
        batched.hidden[1].weight.uniform_(0.5, 1.5)
        batched.hidden[1].bias.normal_()
    assert hidden_layers(batched)[0].norm is batched.hidden[1]
    x = torch.randn(len(SEEDS), 5, 4)
    states = [run_state_dict(batched, s) for s in range(len(SEEDS))]
    for s, state in enumerate(states):
        assert state["hidden.1.weight"].shape == (6,)
        torch.testing.assert_close(run_module(batched, s)(x[s]), batched(x)[s])
    restacked = stack_run_state_dicts(batched, states)
    assert all(torch.equal(restacked[k], v) for k, v in batched.state_dict().items())


def online_permuted_config(mnist_dir: Path, **train: Any) -> SupervisedRunConfig:
    """CBP on Online Permuted MNIST with an input layer of 784 x 32 weights: wide enough for
    the hand-written backward's deferred input-layer steps and their lookahead."""
    return config(
        "online-permuted-mnist", "cbp", data_dir=str(mnist_dir),
        stream={"kwargs": {"num_tasks": 2}},
        network={"hidden_sizes": [32, 16, 16]},
        method={"continual_backprop": OFTEN},
        train=train,
    )  # fmt: skip


def test_online_permuted_mnist_batched_equals_single_runs(tmp_path, mnist_dir):
    assert_same_runs(online_permuted_config(mnist_dir), tmp_path)
    replaced = logged_total(tmp_path / "batched1", "plasticity/net/hidden2/replacements")
    assert replaced > 100  # 0.05 * 16 units per step once mature, 600 steps


def test_deferred_steps_with_lookahead_give_the_numbers_of_autograd(tmp_path, mnist_dir,
                                                                     monkeypatch):  # fmt: skip
    from plasticity_rl.nn.backprop import _DeferredSteps

    blocks = []  # lookahead blocks started
    start_block = _DeferredSteps._start_block
    monkeypatch.setattr(
        _DeferredSteps, "_start_block", lambda self: blocks.append(1) or start_block(self)
    )
    results, states = [], []
    for hand in (True, False):
        run_dir = tmp_path / f"hand{hand}"
        run_dir.mkdir()
        cfg = run_configs(online_permuted_config(mnist_dir, hand_backprop=hand), [1])[0]
        results.append(train(cfg, run_dir, show_progress=False))
        states.append(torch.load(run_dir / CHECKPOINT, weights_only=True))
    assert len(blocks) > 600 / 32  # the lookahead ran, restarting after CBP's resets
    for hand, result in zip((True, False), results, strict=True):
        norms = [entry["metrics"].pop("gradient_norm", None) for entry in result["plasticity"]]
        # plain SGD steps fused into the hand-written backward leave no gradients to measure
        assert all(norm is None for norm in norms) == hand
        for entry, norm in zip(result["plasticity"], norms, strict=True):
            grama = [k for k in entry["metrics"] if k.endswith("/grama_dormant_ratio")]
            assert bool(grama) == (norm is not None)  # measured with the gradient norm
            for key in grama:
                entry["metrics"].pop(key)
    assert_close_tree(results[0], results[1])
    assert_close_tree(states[0]["model"], states[1]["model"])


@pytest.mark.parametrize(
    "env, agent, layers",
    [
        # class-incremental: class masks grow task by task; CBP replaces units on the way
        ("split-mnist", "cbp", {"method": {"continual_backprop": OFTEN}}),
        ("permuted-mnist", "relu-adam", {"stream": {"kwargs": {"num_tasks": 2}}}),
        # the stability-gap evaluations every few steps run on each run's own network
        ("rotated-mnist", "bp", {"train": {"eval_every_steps": 4, "eval_examples_per_task": 20}}),
    ],
)
def test_epoch_streams_batched_equal_single_runs(env, agent, layers, tmp_path, mnist_dir):
    train_cfg = {"batch_size": 16, "epochs_per_task": 2, **layers.pop("train", {})}
    cfg = config(env, agent, data_dir=str(mnist_dir), network={"hidden_sizes": [16]},
                 train=train_cfg, **layers)  # fmt: skip
    states = assert_same_runs(cfg, tmp_path)
    assert all(len(state["progress"]["accuracy_matrix"]) >= 2 for state in states)
    if env == "permuted-mnist":  # each run its own permutations: the runs differ
        results = [json.loads((tmp_path / f"batched{s}" / "results.json").read_text())
                   for s in SEEDS]  # fmt: skip
        assert results[0]["accuracy_matrix"] != results[1]["accuracy_matrix"]


@pytest.mark.parametrize(
    "env, agent, layers",
    [
        # Adam's per-element step counts; CBP's utilities, ages and replacement counters
        ("split-mnist", "cbp", {"optimizer": {"name": "adam", "lr": 1e-3},
                                "method": {"continual_backprop": OFTEN},
                                "train": {"epochs_per_task": 4}}),
        # per-run step sizes (SGDM's momentum buffers are stored divided by lr_s); ReDo
        ("permuted-mnist", "bp", {"optimizer": {"name": "sgdm", "lr": [0.03, 0.01, 0.003],
                                                "momentum": 0.9},
                                  "method": {"redo": {"period": 5, "tau": 0.5}},
                                  "stream": {"kwargs": {"num_tasks": 3}}}),
    ],
)  # fmt: skip
def test_batched_runs_resume_from_their_checkpoints(env, agent, layers, tmp_path, mnist_dir):
    train_cfg = {"batch_size": 16, **layers.pop("train", {})}
    cfg = config(env, agent, data_dir=str(mnist_dir), network={"hidden_sizes": [16]},
                 train=train_cfg, **layers)  # fmt: skip
    assert_batched_resume_is_exact(cfg, tmp_path)


def assert_batched_resume_is_exact(cfg: SupervisedRunConfig, tmp_path: Path) -> None:
    """Batched runs stopped after the first task and resumed give the uninterrupted runs'
    results and final checkpoints."""
    whole, parts = ([tmp_path / f"{kind}{s}" for s in SEEDS] for kind in ("whole", "parts"))
    for run_dir in whole + parts:
        run_dir.mkdir()
    expected = train_runs(cfg, SEEDS, whole, show_progress=False)
    stopped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_after_tasks=1))
    train_runs(stopped, SEEDS, parts, show_progress=False)
    assert not (parts[0] / "results.json").exists()
    resumed = train_runs(cfg, SEEDS, parts, resume=True, show_progress=False)
    for a, b in zip(expected, resumed, strict=True):
        assert_close_tree(a, b)
    for a, b in zip(whole, parts, strict=True):
        assert_close_tree(torch.load(a / CHECKPOINT, weights_only=True),
                          torch.load(b / CHECKPOINT, weights_only=True))  # fmt: skip


def test_batched_runs_mask_each_runs_own_classes():
    empty = torch.zeros(0)
    tasks = [Task("a", empty, empty, empty, empty, [0, 1], active) for active in ([0, 1], [2, 3])]
    mask = run_class_mask(tasks, 4, batched=True)
    inf = float("-inf")
    assert torch.equal(mask, torch.tensor([[[0.0, 0.0, inf, inf]], [[inf, inf, 0.0, 0.0]]]))
    assert torch.equal(run_class_mask(tasks, 4, batched=False), mask[0, 0])
    every = [Task("a", empty, empty, empty, empty, [0], [0, 1, 2, 3])] * 2
    assert run_class_mask(every, 4, batched=True) is None


def test_task_boundary_methods_are_refused_in_batched_runs(mnist_dir):
    for method in ({"ewc": {"coefficient": 1.0}}, {"replay": {}}):
        cfg = config("split-mnist", "bp", data_dir=str(mnist_dir), method=method)
        with pytest.raises(ConfigError, match="no task-boundary method .*--runs 1"):
            build_batched_learner(cfg, SEEDS)


def test_per_run_sgd_step_sizes_equal_separate_runs(tmp_path):
    lrs = [0.03, 0.01, 0.003]
    cfg = regression_config(optimizer={"name": "sgdm", "lr": lrs, "momentum": 0.9,
                                       "weight_decay": 1e-3})  # fmt: skip
    assert [c.optimizer["lr"] for c in run_configs(cfg, SEEDS)] == lrs
    states = assert_same_runs(cfg, tmp_path)
    assert [c["optimizer"]["param_groups"][0]["lr"] for c in states] == lrs


def test_per_run_cbp_rates_equal_separate_runs(tmp_path):
    cbp = {"continual_backprop": {"replacement_rate": [0.0, 0.05, 0.2], "maturity_threshold": 5}}
    assert_same_runs(regression_config(method=cbp), tmp_path)
    tag = "plasticity/net/hidden1/replacements"
    totals = [logged_total(tmp_path / f"batched{seed}", tag) for seed in SEEDS]
    assert totals[0] == 0 and 50 <= totals[1] < 100 and totals[2] > 2 * totals[1]


def test_per_run_step_sizes_are_refused_for_adaptive_optimizers():
    cfg = regression_config(optimizer={"name": "adam", "lr": [1e-3, 1e-4, 1e-5]})
    with pytest.raises(ConfigError, match=r"optimizer.lr: got \[.*one number for adam"):
        build_batched_learner(cfg, SEEDS)
    generators = [torch.Generator().manual_seed(s) for s in range(2)]
    net = build_runs(lambda: nn.Sequential(nn.Linear(2, 2)), generators)
    with pytest.raises(ConfigError, match="a list of 2"):
        make_run_optimizer(net, {"name": "sgd"}, 2, [0.1, 0.2, 0.3])


def test_per_run_lists_must_have_one_value_per_run_and_gaba_is_refused():
    cfg = regression_config(method={"continual_backprop": {"replacement_rate": [0.1, 0.2]}})
    with pytest.raises(ConfigError, match="continual_backprop.replacement_rate.*a list of 3"):
        build_batched_learner(cfg, SEEDS)
    topk = {"name": "topk", "k": 2, "gaba_switch_T": 10.0}
    with pytest.raises(ConfigError, match="gaba_switch_T.*null for batched runs"):
        network = {"activation": topk, "init": "kaiming_uniform"}
        build_batched_learner(regression_config(network=network), SEEDS)
    with pytest.raises(ConfigError, match="shrink_and_perturb.shrink"):
        ShrinkAndPerturb(shrink=[0.1, 0.2])
    with pytest.raises(ConfigError, match="replacement_rate"):
        ContinualBackprop(replacement_rate=[0.1, 2.0])


def test_cli_runs_writes_one_complete_directory_per_run(tmp_path):
    args = ["--env", "slowly-changing-regression", "--agent", "regression-cbp", "--runs", "3",
            "--seed", "4", "--logdir", str(tmp_path), "--name", "sweep", "--no-progress",
            "--set", "stream.kwargs.total_examples=300", "--set", "stream.kwargs.bin_size=100",
            "--set", "train.probe_size=20"]  # fmt: skip
    assert main(args) == 0
    for seed in (4, 5, 6):
        run_dir = tmp_path / f"sweep__s{seed}"
        results = json.loads((run_dir / "results.json").read_text())
        assert len(results["squared_error_bins"]) == 3 and results["stream"]["seed"] == seed
        assert f"seed: {seed}\n" in (run_dir / "config.yaml").read_text()
        assert (run_dir / CHECKPOINT).is_file() and list(run_dir.glob("events.out.tfevents.*"))


def test_cli_resumes_the_runs_of_a_batched_group_together(tmp_path, mnist_dir, capsys):
    common = ["--data-dir", str(mnist_dir), "--no-progress"]
    args = ["--env", "split-mnist", "--agent", "bp", "--seeds", "3,5", "--logdir", str(tmp_path),
            "--name", "group", "--set", "network.hidden_sizes=[8]",
            "--set", "train.stop_after_tasks=2", *common]  # fmt: skip
    assert main(args) == 0
    run_dirs = [str(tmp_path / f"group__s{seed}") for seed in (3, 5)]
    assert not any(Path(d, "results.json").exists() for d in run_dirs)
    # the saved configs stop after task 2: continue with that lifted
    resume = ["--resume", *run_dirs, "--set", "train.stop_after_tasks=null", *common]
    assert main(resume) == 0
    assert "resuming 2 batched runs (seeds [3, 5])" in capsys.readouterr().out
    for run_dir in run_dirs:
        results = json.loads(Path(run_dir, "results.json").read_text())
        assert len(results["accuracy_matrix"]) == 5  # tasks 3-5 after the resume
    other = tmp_path / "other"
    assert main(["--env", "split-mnist", "--agent", "bp", "--logdir", str(tmp_path), "--name",
                 "other", "--set", "train.stop_after_tasks=1", *common]) == 0  # fmt: skip
    assert main(["--resume", run_dirs[0], str(other), *common]) == 2
    assert "the runs of one batched group" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--runs", "0"], r"--runs: got 0; allowed: an integer >= 1"),
        (["--seeds", "0,x"], r"--seeds: got '0,x'"),
        (["--seeds", "1,1"], r"--seeds: got \[1, 1\]; allowed: distinct seeds"),
        (["--runs", "2", "--seeds", "0,1"], r"--runs: got 2; allowed: not with --seeds"),
        (
            ["--runs", "2", "--env", "split-mnist", "--set", "method.ewc.coefficient=1.0"],
            r"method.ewc: got \{'coefficient': 1.0\}; allowed: no task-boundary method",
        ),
    ],
)
def test_bad_run_counts_exit_2_and_write_nothing(extra, message, tmp_path, capsys, mnist_dir):
    args = ["--env", "slowly-changing-regression", "--agent", "regression-bp",
            "--data-dir", str(mnist_dir), "--logdir", str(tmp_path / "runs"), *extra]  # fmt: skip
    assert main(args) == 2
    err = "".join(
        line
        for line in capsys.readouterr().err.splitlines(True)
        if not line.startswith("warning: ")
    )  # the test data is not the published MNIST
    assert err.startswith("error: ") and __import__("re").search(message, err), err
    assert not (tmp_path / "runs").exists()
