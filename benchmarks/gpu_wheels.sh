#!/usr/bin/env bash
# Run here (with network to the package registry), in the repository root, before
# benchmarks/gpu_check.sh: the device machine cannot fetch anything, and its python3 (3.12, with a
# CUDA build of torch) lacks these packages, so they travel as wheels in .whl/ (about 23 MB;
# `carry: [".whl"]`). Versions are the ones this project's CPU environment was tested with.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d .whl gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.1 \
    mujoco-core==4.0.1 mujoco-studio==4.0.1 glfw==2.11.0 pyopengl==3.1.10 \
    stable-baselines3==2.9.2 omegaconf==2.4.0
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: built here
ls .whl
