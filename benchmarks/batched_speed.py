"""Speed of batched runs: many seeds in one process against one run at a time.

Aggregate training examples per second in steady state, side by side. Each trainer variant
trains once for one length L (one regression bin, or one image task) and once for 2L; the
rate is (examples of all runs in L) / (difference of the two wall times), so one-off setup
(building S streams and networks, writing S configs) is left out, while the per-bin (per-task)
metrics, logging and checkpoints of every run are counted; an untimed run of length L first
warms the process up. Variants (:data:`VARIANTS`):

- ``plain loop``: the single-run trainer with autograd (``train.hand_backprop=false``), the
  per-example loop ``train_supervised.py`` ran before batched runs existed; the reference of
  the "vs plain loop" column;
- ``minimal torch loop``: a bare per-example PyTorch loop of the same network -- an
  ``nn.Sequential``, ``torch.optim.SGD``, ``loss.backward()`` -- over examples drawn before
  the clock starts (the first tenth untimed, as warm-up), with the project's continual
  backprop attached through its hooks for the CBP cases; no trainer around it (no metrics,
  logging or checkpoints);
- ``single run``: the single-run trainer as it is now (hand-written backward for plain MLPs);
- ``batched``: ``train_runs`` with S seeds in one batched network.

Cases (:data:`CASES`): the slowly-changing regression (5 ReLU units, SGD 0.01) with backprop
and with continual backprop, 30 seeds; Online Permuted MNIST's learner shape (784 -> 3 x 100
-> 10, batch 1, SGD 0.003) with backprop and continual backprop, 10 seeds. The image stream
uses random 28x28 images written in the MNIST file format (speed does not depend on pixels).

    python benchmarks/batched_speed.py [--quick]

Writes ``benchmarks/results/batched_speed_<date>[-quick].md`` (and ``.json``). Run it on a
quiet machine: it measures wall time. :mod:`benchmarks.run` measures the same cases, each in
a fresh process, together with the PPO benchmark and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.methods import make_methods
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.datasets import SOURCES, ImageDataset, write_dataset
from plasticity_rl.supervised.regression import SlowlyChangingRegression
from plasticity_rl.supervised.trainer import train, train_runs

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Case:
    """One learner on one stream, and how many seeds its batched variant trains at once."""

    env: str
    agent: str
    runs: int

    @property
    def regression(self) -> bool:
        return self.env == "slowly-changing-regression"


CASES = {
    "regression, backprop": Case("slowly-changing-regression", "regression-bp", 30),
    "regression, continual backprop": Case("slowly-changing-regression", "regression-cbp", 30),
    "Online Permuted MNIST 3x100, backprop": Case("online-permuted-mnist", "bp", 10),
    "Online Permuted MNIST 3x100, CBP": Case("online-permuted-mnist", "cbp", 10),
}
"""The benchmarked learners by name."""
VARIANTS = ("plain loop", "minimal torch loop", "single run", "batched")
"""The ways of training a case (see the module docstring)."""
OPM_HIDDEN = [100, 100, 100]


def config(env: str, agent: str, **layers: Any) -> SupervisedRunConfig:
    return resolve(SupervisedRunConfig, {"stream": load_preset("envs", env)},
                   load_preset("agents", agent), layers)  # fmt: skip


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trainer_seconds(cfg: SupervisedRunConfig, seeds: list[int]) -> float:
    """Wall time of one single run (one seed) or of batched runs (several)."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / f"s{seed}" for seed in seeds]
        for d in dirs:
            d.mkdir()
        if len(seeds) == 1:
            return timed(lambda: train(cfg, dirs[0], show_progress=False))
        return timed(lambda: train_runs(cfg, seeds, dirs, show_progress=False))


def trainer_speed(make: Callable[[int], SupervisedRunConfig], seeds: list[int],
                  examples_per_run: int) -> float:  # fmt: skip
    """Steady-state aggregate examples/s: ``make(k)`` is the config with k lengths.

    An untimed run of one length first warms the process up (lazy imports, the first call of
    every op), which would otherwise count against the shorter timed run only.
    """
    trainer_seconds(make(1), seeds)
    once, twice = trainer_seconds(make(1), seeds), trainer_seconds(make(2), seeds)
    return len(seeds) * examples_per_run / (twice - once)


def image_dir(root: Path, num_train: int) -> Path:
    """Random MNIST-shaped images in the MNIST file format."""
    generator = torch.Generator().manual_seed(0)
    shape = SOURCES["mnist"].image_shape

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *shape), generator=generator).to(torch.uint8)
        return images, torch.arange(n) % 10

    dataset = ImageDataset("mnist", *split(num_train), *split(100), num_classes=10)
    return write_dataset(dataset, root, compress=False)


def case_config(case: Case, lengths: int, examples_per_run: int, hand_backprop: bool,
                data_dir: Path | None) -> SupervisedRunConfig:  # fmt: skip
    """The trainer config of ``case`` for ``lengths`` bins (regression) or tasks (images)."""
    if case.regression:
        stream = {"kwargs": {"total_examples": lengths * examples_per_run,
                             "bin_size": examples_per_run}}  # fmt: skip
        return config(case.env, case.agent, stream=stream,
                      train={"hand_backprop": hand_backprop})  # fmt: skip
    return config(
        case.env, case.agent, data_dir=None if data_dir is None else str(data_dir),
        stream={"kwargs": {"num_tasks": lengths}},
        network={"hidden_sizes": OPM_HIDDEN},
        train={"probe_size": 200, "hand_backprop": hand_backprop},
    )  # fmt: skip


def minimal_loop(case: Case, examples: int) -> float:
    """Examples/s of a bare per-example PyTorch loop of the case's learner (SGD).

    The network is an ``nn.Sequential`` of the case's sizes; examples are drawn before the
    clock starts; continual backprop (the case's preset) is attached through its hooks.
    """
    cfg = case_config(case, 1, examples, False, None)
    torch.manual_seed(0)
    if case.regression:
        x, y = SlowlyChangingRegression(seed=0).sample(examples)
        sizes, loss_fn = [x.shape[1], *cfg.network.hidden_sizes, 1], F.mse_loss
    else:
        x, y = torch.rand(examples, 28 * 28), torch.randint(0, 10, (examples,))
        sizes, loss_fn = [28 * 28, *cfg.network.hidden_sizes, 10], F.cross_entropy
    modules: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        modules += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    net = nn.Sequential(*modules[:-1])
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.optimizer["lr"])
    for method in make_methods(cfg.method):
        method.attach(net, optimizer)

    def loop(start: int, stop: int) -> None:
        for i in range(start, stop):
            loss = loss_fn(net(x[i : i + 1]), y[i : i + 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    warm_up = examples // 10  # untimed: the first call of every op
    loop(0, warm_up)
    return (examples - warm_up) / timed(lambda: loop(warm_up, examples))


def measure(case_name: str, variant: str, examples_per_run: int) -> float:
    """Aggregate examples/s of one variant (:data:`VARIANTS`) of one case (:data:`CASES`).

    ``examples_per_run``: the length L of the steady-state measurement (a regression bin, or
    one image task), per run.
    """
    case = CASES[case_name]
    if variant == "minimal torch loop":
        return minimal_loop(case, examples_per_run)
    seeds = list(range(case.runs)) if variant == "batched" else [0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = None if case.regression else image_dir(Path(tmp), examples_per_run)
        make = partial(case_config, case, examples_per_run=examples_per_run,
                       hand_backprop=variant != "plain loop", data_dir=data_dir)  # fmt: skip
        return trainer_speed(make, seeds, examples_per_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples (about 1 minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 4_000 if args.quick else 20_000  # regression examples per run
    images = 1_000 if args.quick else 5_000  # Online Permuted MNIST examples per run
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for case_name, case in CASES.items():
        plain = None
        for variant in VARIANTS:
            speed = measure(case_name, variant, steps if case.regression else images)
            plain = speed if variant == "plain loop" else plain
            ratio = None if variant == "plain loop" else speed / plain  # type: ignore[operator]
            runs = case.runs if variant == "batched" else 1
            rows.append({"case": case_name, "variant": variant, "runs": runs,
                         "examples_per_second": speed, "vs_plain_loop": ratio})  # fmt: skip
            shown = "" if ratio is None else f" ({ratio:.1f}x plain loop)"
            print(f"{case_name:38s} {variant:20s} runs={runs:3d} {speed:10.0f} examples/s"
                  f"{shown}", flush=True)  # fmt: skip
    wall = time.perf_counter() - start

    today = date.today().isoformat()
    suffix = "-quick" if args.quick else ""
    lines = [
        f"# Batched runs: speed, {today}",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, 1 torch thread, "
        f"Python {platform.python_version()}, torch {torch.__version__}. Command: "
        f"`python benchmarks/batched_speed.py{' --quick' if args.quick else ''}`; wall time "
        f"{wall / 60:.1f} min. Regression: {steps:,} examples per run; Online Permuted MNIST "
        f"shape: {images:,} examples per run (one task). Steady-state examples/s, aggregated "
        "over all runs of a row (per-bin/per-task metrics and checkpoints included, one-off "
        "setup excluded; see the module docstring).",
        "",
        "| case | variant | runs | examples/s | vs plain loop |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "" if row["vs_plain_loop"] is None else f"{row['vs_plain_loop']:.1f}x"
        lines.append(f"| {row['case']} | {row['variant']} | {row['runs']} | "
                     f"{row['examples_per_second']:,.0f} | {ratio} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"batched_speed_{today}{suffix}.md").write_text(text)
    raw = {"rows": rows, "wall_seconds": wall, "examples_per_run": [steps, images]}
    (RESULTS / f"batched_speed_{today}{suffix}.json").write_text(json.dumps(raw, indent=2) + "\n")


if __name__ == "__main__":
    main()
