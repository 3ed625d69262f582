"""Experiment presets: grid expansion, resolution of every preset, magnitude pruning."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from plasticity_rl.cli import resolve_run_config
from plasticity_rl.config import REPO_ROOT
from plasticity_rl.experiments.pruning import (
    PRUNING_RESULTS,
    layer_fractions,
    load_finished_network,
    magnitude_pruning_accuracy,
    prunable_weights,
    prune_,
    prune_smallest_,
    pruning_options,
    pruning_results_match,
)
from plasticity_rl.experiments.report import FIGURE_KINDS
from plasticity_rl.experiments.spec import (
    SCALES,
    experiment_names,
    load_experiment,
    resolve_trial,
    script,
    write_agent_preset,
)
from plasticity_rl.registry import ConfigError
from plasticity_rl.supervised.datasets import SOURCES, load_dataset
from plasticity_rl.supervised.learner import build_learner
from plasticity_rl.supervised.steps import class_mask
from plasticity_rl.supervised.streams import make_stream

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from train_supervised import main as train_supervised  # noqa: E402

TABLE_SOURCES = {"results", "scalar", "pruning", "status"}


def write_spec(tmp_path: Path, spec: dict, name: str = "exp") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


SPEC = {
    "title": "t",
    "script": "rl",
    "env": "hopper-friction",
    "agents": [
        "ppo",
        {"name": "wide", "agent": "ppo", "set": ["policy_net.hidden_sizes=[512,512]"]},
        {"name": "solo", "agent": "ppo-l2", "grid": False},
    ],
    "grid": {
        "opt": {
            "adam": [],
            "sgd": {"config": {"optimizer": {"name": "sgd", "lr": 0.1}}},
        }
    },
    "set": ["total_steps=4096"],
    "scales": {
        "small": {"budget": "tiny", "seeds": 2, "set": ["ppo.n_steps=512"]},
        "paper": {"budget": "big", "seeds": [7], "agents": ["ppo"]},
    },
}


def test_grid_expansion_by_hand(tmp_path):
    exp = load_experiment(write_spec(tmp_path, SPEC), "small")
    # 2 crossed agents x 2 levels + 1 uncrossed variant = 5 settings, x seeds 0, 1
    assert exp.settings == ["ppo+adam", "ppo+sgd", "wide+adam", "wide+sgd", "solo"]
    assert [t.run_name for t in exp.trials[:2]] == ["exp/ppo+adam__s0", "exp/ppo+adam__s1"]
    by_name = {t.run_name: t for t in exp.trials}
    wide_sgd = by_name["exp/wide+sgd__s1"]
    # experiment's set, then the scale's, then the variant's and levels'
    assert wide_sgd.overrides == [
        "total_steps=4096",
        "ppo.n_steps=512",
        "policy_net.hidden_sizes=[512,512]",
    ]
    assert wide_sgd.agent == "ppo" and wide_sgd.config == {"optimizer": {"name": "sgd", "lr": 0.1}}
    cfg = resolve_trial(wide_sgd, tmp_path / "presets")
    # a mapping whose name changes replaces the preset's (no Adam betas left on SGD)
    assert cfg.optimizer == {"name": "sgd", "lr": 0.1}
    assert cfg.policy_net.hidden_sizes == [512, 512] and cfg.ppo.n_steps == 512
    assert cfg.total_steps == 4096 and cfg.seed == 1
    assert cfg.agent_preset == str(tmp_path / "presets" / "wide+sgd.yaml")
    assert by_name["exp/ppo+adam__s0"].agent_ref(tmp_path) == "ppo"  # no preset to write
    paper = load_experiment(write_spec(tmp_path, SPEC), "paper")
    # one agent crossed with the grid: its name is left out; "set" of the scale is appended
    assert paper.settings == ["adam", "sgd"] and paper.seeds == [7]
    assert paper.trials[0].overrides == ["total_steps=4096"]


def test_written_preset_resolves_through_the_scripts_path(tmp_path):
    trial = next(t for t in load_experiment(write_spec(tmp_path, SPEC)).trials if t.config)
    presets = tmp_path / "presets"
    write_agent_preset(trial, presets)
    args = argparse.Namespace(resume=None, env=trial.env, agent=trial.agent_ref(presets),
                              seed=trial.seed)  # fmt: skip
    info = script(trial.script)
    via_script = resolve_run_config(info.schema, args, info.env_field, trial.overrides)
    assert via_script == resolve_trial(trial, presets)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"agentz": ["ppo"]}, "exp.agentz"),
        ({"scales": {"small": {"budget": "b", "seedz": 1}}}, "exp.scales.small.seedz"),
        ({"scales": {"small": {"seeds": 1}}}, "exp.scales.small.budget"),
        ({"scales": {"paper": {"budget": "b", "seeds": 1}}}, "exp.scales"),
        ({"agents": ["ppo", "ppo"], "grid": {}}, "exp setting"),
        ({"grid": {"a": {"x": {"sett": []}}}}, "exp.grid.a.x.sett"),
        ({"agents": [{"agent": "ppo", "grid": True}]}, "exp.agents.grid"),
        ({"script": "sl"}, "script"),
    ],
)
def test_bad_presets_name_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError) as err:
        load_experiment(write_spec(tmp_path, {**SPEC, **change}), "small")
    assert err.value.key == key


def test_unknown_experiment_lists_the_presets():
    with pytest.raises(ConfigError, match="dohare2024-rl-hopper"):
        load_experiment("dohare2024-rl-hoper")


def build_components(cfg, script_name: str, datasets: dict, make_image_dataset,
                     cfg_dir: Path) -> None:  # fmt: skip
    """Construct what the run would: stream (tiny synthetic data), network, optimiser and
    methods (on the meta device: names, keywords and shapes are checked, nothing allocated),
    or the RL env and PPO agent."""
    if script_name == "rl":
        from plasticity_rl.agents import build_agent, make_env

        env = make_env(cfg)
        try:
            build_agent(cfg, env)
        finally:
            env.close()
        return
    name = cfg.stream.dataset
    if name == "imagenet32_classes" and name not in datasets:  # two classes of 700 images
        folder = cfg_dir / "classes"
        folder.mkdir(parents=True)
        for c in range(2):
            np.save(folder / f"{c}.npy", np.zeros((700, 3, 32, 32), np.uint8))
        datasets[name] = load_dataset(name, cfg_dir)
    if name is not None and name not in datasets:
        # 51 training images per class: class-incremental CIFAR-100 holds 50 out for validation
        datasets[name] = make_image_dataset(name, 51 * SOURCES[name].num_classes, 100)
    stream = make_stream(cfg.stream.stream, datasets.get(name), **cfg.stream.kwargs)
    with torch.device("meta"):
        build_learner(cfg, stream)


@pytest.mark.parametrize("name", experiment_names())
def test_every_preset_expands_to_valid_trials_at_both_scales(name, tmp_path, image_dataset_factory):
    datasets: dict = {}
    built: set[str] = set()
    settings: set[str] = set()
    for scale in SCALES:
        exp = load_experiment(name, scale)
        assert exp.budget and exp.published.get("source")
        # every setting exactly once per seed, run names unique
        assert len(exp.trials) == len(exp.settings) * len(exp.seeds)
        assert len({t.run_name for t in exp.trials}) == len(exp.trials)
        settings |= set(exp.settings)
        published = exp.published.get("values") or {}
        columns = [c["name"] for c in exp.plot.get("table", [])]
        for spec in exp.plot.get("table", []):
            assert len(TABLE_SOURCES & set(spec)) == 1
        for value in published.values():
            assert value is None or set(value) <= set(columns)
        for figure in exp.plot.get("figures", []):
            assert figure.get("kind", "curves") in FIGURE_KINDS
        for trial in exp.trials[:: len(exp.seeds)]:  # the seed does not change validity
            cfg = resolve_trial(trial, tmp_path)
            key = {k: v for k, v in asdict(cfg).items() if k not in ("seed", "total_steps")}
            if json.dumps(key, sort_keys=True, default=str) not in built:
                built.add(json.dumps(key, sort_keys=True, default=str))
                build_components(cfg, trial.script, datasets, image_dataset_factory, tmp_path)
        if exp.evaluate:
            assert set(exp.evaluate) == {"magnitude_pruning"}
            assert all(0 <= f <= 1 for f in exp.evaluate["magnitude_pruning"]["fractions"])
    # published numbers are attached to settings the experiment runs (at some scale)
    assert {k for k, v in published.items() if v is not None} <= settings


def test_prune_smallest_by_hand():
    a = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    b = torch.tensor([[-0.1, 0.5]])
    # |w| sorted: 0.1 (b), 0.5 (a), 0.5 (b), 1, 2, 3; 6 weights, 50% -> the 3 smallest; the
    # tie at 0.5 is broken by position (a before b), so all three go
    assert prune_smallest_([a, b], 0.5) == 3
    assert a.tolist() == [[1.0, -3.0], [0.0, 2.0]] and b.tolist() == [[0.0, 0.0]]
    # 1/6 of 6 = 1 weight: the smallest remaining |w| is a zero already
    assert prune_smallest_([a, b], 1 / 6) == 1 and a.tolist() == [[1.0, -3.0], [0.0, 2.0]]
    with pytest.raises(ConfigError):
        prune_smallest_([a], 1.5)


def test_prune_each_layer_by_hand():
    a = torch.tensor([[1.0, -3.0], [0.5, 2.0]])  # a hidden layer
    b = torch.tensor([[-0.1, 0.5, 4.0, -2.0]])  # the output layer
    # scope layer, 75%: a loses its 3 smallest; b keeps twice a's share (2 of 4), loses 2
    assert layer_fractions(2, 0.75, 2.0) == [0.75, 0.5]
    assert prune_([a, b], 0.75, "layer", output_keep_factor=2.0) == 5
    assert a.tolist() == [[0.0, -3.0], [0.0, 0.0]] and b.tolist() == [[0.0, 0.0, 4.0, -2.0]]
    assert layer_fractions(3, 0.4, 2.0) == [0.4, 0.4, 0.0]  # the output layer keeps all
    with pytest.raises(ConfigError, match="magnitude_pruning.scope"):
        prune_([a], 0.5, "row")
    with pytest.raises(ConfigError, match="magnitude_pruning.output_keep_factor"):
        prune_([a], 0.5, "global", output_keep_factor=2.0)


def test_pruning_results_are_redone_when_their_options_change(tmp_path):
    options = {"fractions": [0.0, 0.5], "scope": "layer", "output_keep_factor": 2}
    assert not pruning_results_match(tmp_path, options)  # no file yet
    saved = {"fractions": [0.0, 0.5], "average_accuracy": [90.0, 80.0]}  # before scopes: global
    (tmp_path / PRUNING_RESULTS).write_text(json.dumps(saved))
    assert pruning_results_match(tmp_path, {"fractions": [0.0, 0.5]})
    assert not pruning_results_match(tmp_path, options)
    assert not pruning_results_match(tmp_path, {"fractions": [0.0, 0.9]})
    with pytest.raises(ConfigError, match="magnitude_pruning: got 'fraction'"):
        pruning_options({"fraction": [0.5]})


def test_magnitude_pruning_of_a_finished_powerprop_run(tmp_path, mnist_dir):
    args = ["--env", "split-mnist", "--agent", "powerprop", "--data-dir", str(mnist_dir),
            "--logdir", str(tmp_path), "--name", "r", "--no-progress",
            "--set", "network.hidden_sizes=[16]", "--set", "train.probe_size=20"]  # fmt: skip
    assert train_supervised(args) == 0
    run = tmp_path / "r"
    results = json.loads((run / "results.json").read_text())
    pruned = magnitude_pruning_accuracy(run, [0.0, 0.5, 1.0], str(mnist_dir))
    # weights of 784 -> 16 -> 10 (biases excluded): 784 * 16 + 16 * 10 = 12,704
    assert pruned["total_weights"] == 12_704
    assert pruned["pruned_weights"] == [0, 6_352, 12_704]
    # nothing pruned: the rebuilt network (Powerprop removed, w kept) gives the run's accuracy
    assert pruned["average_accuracy"][0] == pytest.approx(results["average_accuracy"])
    # all weights zero: the logits are the output biases b, so task t predicts
    # argmax(b + mask_t) for every image and its accuracy is that class's share of the test set
    model, stream = load_finished_network(run, str(mnist_dir))
    assert [tuple(w.shape) for w in prunable_weights(model)] == [(16, 784), (10, 16)]
    bias = model.output.bias.detach()
    for task, value in zip(stream.tasks, pruned["accuracy_per_task"][2], strict=True):
        mask = class_mask(task, stream.num_classes)
        predicted = int((bias if mask is None else bias + mask).argmax())
        assert value == pytest.approx(100.0 * float((task.test_y == predicted).float().mean()))


def test_committed_results_and_experiments_cite_the_papers_not_a_local_file():
    """``shared/reference-results.md`` is not in the repository: sources name the papers."""
    citing = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("benchmarks", "experiments")
        for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in (".md", ".yaml", ".json", ".py")
        and "reference-results" in path.read_text(errors="ignore")
    ]  # fmt: skip
    assert citing == []
