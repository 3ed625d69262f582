"""Speed of batched runs: many seeds in one process against one run at a time.

Aggregate training examples per second in steady state, side by side: each trainer variant
trains once for one length L (one regression bin, or one image task) and once for 2L; the
rate is (examples of all runs in L) / (difference of the two wall times), so one-off setup
(building S streams and networks, writing S configs) is left out, while the per-bin (per-task)
metrics, logging and checkpoints of every run are counted:

- ``plain loop``: the single-run trainer with autograd (``train.hand_backprop=false``), the
  per-example loop ``train_supervised.py`` ran before batched runs existed;
- ``minimal torch loop`` (regression, backprop): a hand-written nn.Sequential + SGD loop over
  the same examples, no trainer around it;
- ``single run``: the single-run trainer as it is now (hand-written backward for plain MLPs);
- ``batched``: ``train_runs`` with S seeds in one batched network.

Cases: the slowly-changing regression (5 ReLU units, SGD 0.01) with backprop and with
continual backprop, 30 seeds; Online Permuted MNIST's learner shape (784 -> 3 x 100 -> 10,
batch 1, SGD 0.003) with backprop and continual backprop, 10 seeds. The image stream uses
random 28x28 images written in the MNIST file format (speed does not depend on the pixels).

    python benchmarks/batched_speed.py [--quick]

Writes ``benchmarks/results/batched_speed_<date>[-quick].md`` (and ``.json``). Run it on a
quiet machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from plasticity_rl.config import load_preset, resolve
from plasticity_rl.supervised.config import SupervisedRunConfig
from plasticity_rl.supervised.datasets import SOURCES, ImageDataset, write_dataset
from plasticity_rl.supervised.regression import SlowlyChangingRegression
from plasticity_rl.supervised.trainer import train, train_runs

RESULTS = Path(__file__).parent / "results"


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
    """Steady-state aggregate examples/s: ``make(k)`` is the config with k lengths."""
    once, twice = trainer_seconds(make(1), seeds), trainer_seconds(make(2), seeds)
    return len(seeds) * examples_per_run / (twice - once)


def minimal_regression_loop(examples: int) -> float:
    """Examples/s of a bare per-example PyTorch loop of the regression learner (SGD)."""
    torch.manual_seed(0)
    x, y = SlowlyChangingRegression(seed=0).sample(examples)
    net = torch.nn.Sequential(torch.nn.Linear(21, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)

    def loop() -> None:
        for i in range(examples):
            loss = F.mse_loss(net(x[i : i + 1]), y[i : i + 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return examples / timed(loop)


def image_dir(root: Path, num_train: int) -> Path:
    """Random MNIST-shaped images in the MNIST file format."""
    generator = torch.Generator().manual_seed(0)
    shape = SOURCES["mnist"].image_shape

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *shape), generator=generator).to(torch.uint8)
        return images, torch.arange(n) % 10

    dataset = ImageDataset("mnist", *split(num_train), *split(100), num_classes=10)
    return write_dataset(dataset, root, compress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples (about 1 minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 4_000 if args.quick else 20_000  # regression examples per run
    images = 1_000 if args.quick else 5_000  # Online Permuted MNIST examples per run
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def add(case: str, variant: str, runs: int, speed: float, baseline: float | None) -> float:
        ratio = None if baseline is None else speed / baseline
        rows.append({"case": case, "variant": variant, "runs": runs,
                     "examples_per_second": speed, "vs_plain_loop": ratio})  # fmt: skip
        shown = "" if ratio is None else f" ({ratio:.1f}x plain loop)"
        print(f"{case:32s} {variant:20s} runs={runs:3d} {speed:10.0f} examples/s{shown}",
              flush=True)  # fmt: skip
        return speed

    def regression(agent: str, hand_backprop: bool = True) -> Callable[[int], Any]:
        return lambda k: config(
            "slowly-changing-regression", agent,
            stream={"kwargs": {"total_examples": k * steps, "bin_size": steps}},
            train={"hand_backprop": hand_backprop},
        )  # fmt: skip

    trainer_seconds(regression("regression-cbp")(1), [0, 1])  # warm-up (imports, first use)
    for agent, case in [("regression-bp", "regression, backprop"),
                        ("regression-cbp", "regression, continual backprop")]:  # fmt: skip
        plain = add(case, "plain loop", 1,
                    trainer_speed(regression(agent, False), [0], steps), None)  # fmt: skip
        if agent == "regression-bp":
            add(case, "minimal torch loop", 1, minimal_regression_loop(steps), plain)
        add(case, "single run", 1, trainer_speed(regression(agent), [0], steps), plain)
        add(case, "batched", 30, trainer_speed(regression(agent), list(range(30)), steps), plain)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = image_dir(Path(tmp), images)

        def online(agent: str, hand_backprop: bool = True) -> Callable[[int], Any]:
            return lambda k: config(
                "online-permuted-mnist", agent, data_dir=str(data_dir),
                stream={"kwargs": {"num_tasks": k}},
                network={"hidden_sizes": [100, 100, 100]},
                train={"probe_size": 200, "hand_backprop": hand_backprop},
            )  # fmt: skip

        for agent, case in [("bp", "Online Permuted MNIST 3x100, backprop"),
                            ("cbp", "Online Permuted MNIST 3x100, CBP")]:  # fmt: skip
            plain = add(case, "plain loop", 1,
                        trainer_speed(online(agent, False), [0], images), None)  # fmt: skip
            add(case, "single run", 1, trainer_speed(online(agent), [0], images), plain)
            add(case, "batched", 10, trainer_speed(online(agent), list(range(10)), images), plain)
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
