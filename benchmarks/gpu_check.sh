#!/usr/bin/env bash
# The GPU check of issue 15, run by the `device` tool from the repository root with
# `carry: [".whl"]` after benchmarks/gpu_wheels.sh made the wheels here (about 6-8 minutes):
# the machine's python3 (with a CUDA build of torch) gets the project's other packages from the
# carried wheels, runs the CUDA-marked tests (GPU runs, batched seeds, resumes across devices),
# then benchmarks/gpu.py (batched Online Permuted MNIST seeds, ResNet-18 training, PPO updates;
# GPU against CPU), whose dated table lands in benchmarks/results/ and in $OUT when that is set.
set -euo pipefail
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_nn_resnet.py
python3 benchmarks/gpu.py --quick ${OUT:+--out "$OUT"}
