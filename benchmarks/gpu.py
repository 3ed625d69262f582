"""GPU against CPU on one machine: batched seeds, ResNet-18 training and PPO updates.

Three measurements, each on the CPU and on ``cuda`` in the same process (the same machine;
the CPU side with one thread, as the runs set it):

- Online Permuted MNIST's learner (784 -> 3 x 100 -> 10, batch 1, SGD 0.003, continual
  backprop), S seeds trained as one batched network (``train_runs``), S = 10 and 100:
  aggregate training examples per second in steady state (:func:`batched_speed.trainer_speed`
  on random MNIST-shaped files);
- ResNet-18 (``network.kind: resnet18``, ``agents/resnet18-cbp.yaml``) on CIFAR-shaped random
  images: training images per second over the epochs of a first increment of one class (450
  images, batches of 90, augmentation, per-epoch evaluation and early stopping on) through
  ``train_supervised.py``'s trainer (one class keeps the CPU side short);
- PPO (``agents/ppo-cbp-l2.yaml``, Hopper with friction changes, 2,048-step rollouts): the
  updates (10 epochs of 16 minibatches) per second, env stepping excluded, via SB3's own
  ``train()`` on a filled rollout buffer.

    python benchmarks/gpu.py [--quick] [--out DIR]

Writes ``gpu_<date>.md`` to ``benchmarks/results/`` (and to ``--out``). Without CUDA it
measures the CPU only and says so.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from batched_speed import CASES, case_config, image_dir, trainer_speed  # noqa: E402

from plasticity_rl.supervised.datasets import SOURCES, ImageDataset, write_dataset  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def opm_batched(device: str, seeds: int, examples: int, data_dir: Path) -> float:
    case = CASES["Online Permuted MNIST 3x100, CBP"]

    def make(lengths: int):
        cfg = case_config(case, lengths, examples, hand_backprop=True, data_dir=data_dir)
        cfg.stream.kwargs["examples_per_task"] = examples
        cfg.device = device
        return cfg

    return trainer_speed(make, list(range(seeds)), examples)


def resnet_images_per_second(device: str, root: Path) -> float:
    from plasticity_rl.config import load_preset, resolve
    from plasticity_rl.supervised.config import SupervisedRunConfig
    from plasticity_rl.supervised.trainer import train

    generator = torch.Generator().manual_seed(0)
    shape = SOURCES["cifar100"].image_shape

    def split(n: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, *shape), generator=generator).to(torch.uint8)
        return images, torch.arange(n) // per_class

    data = ImageDataset("cifar100", *split(50_000, 500), *split(10_000, 100), num_classes=100)
    data_dir = write_dataset(data, root / "cifar100", compress=False)

    def seconds(epochs: int) -> float:
        cfg = resolve(SupervisedRunConfig,
                      {"stream": load_preset("envs", "class-incremental-cifar100")},
                      load_preset("agents", "resnet18-cbp"),
                      {"data_dir": str(data_dir), "device": device,
                       "stream": {"kwargs": {"classes_per_step": 1}},
                       "train": {"epochs_per_task": epochs, "stop_after_tasks": 1,
                                 "probe_size": 100}})  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train(cfg, Path(tmp), show_progress=False)
            return time.perf_counter() - start

    seconds(1)  # warm-up
    return 450 / (seconds(2) - seconds(1))


def ppo_updates_per_second(device: str) -> float:
    from plasticity_rl.agents import RLRunConfig, build_agent, make_env
    from plasticity_rl.config import load_preset, resolve

    cfg = resolve(RLRunConfig, {"env": load_preset("envs", "hopper-friction")},
                  load_preset("agents", "ppo-cbp-l2"), {"device": device})  # fmt: skip
    env = make_env(cfg)
    try:
        model, _ = build_agent(cfg, env)
        model.learn(cfg.ppo.n_steps)  # one rollout and update: fills the buffer, warms up
        start, updates = time.perf_counter(), 3
        for _ in range(updates):
            model.train()
        return updates / (time.perf_counter() - start)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer examples")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    examples = 300 if args.quick else 2000
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        mnist = image_dir(Path(tmp) / "mnist", examples)
        for seeds in (10, 100):
            rows.append((f"Online Permuted MNIST 3x100 CBP, {seeds} seeds batched (examples/s)",
                         {d: opm_batched(d, seeds, examples, mnist) for d in devices}))  # fmt: skip
            print(rows[-1], flush=True)
        rows.append(("ResNet-18 CBP, training images/s (450-image increment, batch 90)",
                     {d: resnet_images_per_second(d, Path(tmp)) for d in devices}))  # fmt: skip
        print(rows[-1], flush=True)
    rows.append(("PPO + CBP + L2 update, 2,048 samples x 10 epochs (updates/s)",
                 {d: ppo_updates_per_second(d) for d in devices}))  # fmt: skip
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    lines = [f"## GPU against CPU ({date.today().isoformat()})", "",
             f"`python benchmarks/gpu.py{' --quick' if args.quick else ''}` on {name}, "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}.", "",
             "| measurement | " + " | ".join(devices) + " | cuda / cpu |",
             "|---|" + "---|" * (len(devices) + 1)]  # fmt: skip
    for label, values in rows:
        ratio = values["cuda"] / values["cpu"] if "cuda" in values else float("nan")
        lines.append(f"| {label} | " + " | ".join(f"{values[d]:.3g}" for d in devices)
                     + f" | {ratio:.2f}x |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    for folder in [RESULTS, *([args.out] if args.out else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"gpu_{date.today().isoformat()}.md").write_text(text)


if __name__ == "__main__":
    main()
