#!/usr/bin/env bash
# The GPU check of issue 15, for a machine with a CUDA device (the `device` tool runs it from the
# repository root; about 6-8 minutes): install the project with a CUDA build of torch, run the
# CUDA-marked tests (GPU runs, batched seeds, resumes across devices), then benchmarks/gpu.py
# (batched Online Permuted MNIST seeds, ResNet-18 epochs, PPO updates; GPU against CPU), whose
# dated table lands in benchmarks/results/ and in $OUT when that is set.
set -euo pipefail
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install --quiet torch==2.13.0
pip install --quiet -e ".[dev]"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
python -m pytest -q tests/test_device.py tests/test_nn_resnet.py
python benchmarks/gpu.py --quick ${OUT:+--out "$OUT"}
