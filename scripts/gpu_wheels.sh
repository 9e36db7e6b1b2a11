#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a GPU machine without a package index whose image has CUDA torch,
# accelerate, peft and pyarrow but not TRL, datasets or liger-kernel (bench/lm_head_vs_liger.py): downloads them (no dependencies) into .whl/ for
# Python 3.12 on x86-64 Linux. Versions as in bench/requirements-trl.txt. Add .whl/ to .git/info/exclude.
set -euo pipefail
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  trl==1.16.0 transformers==5.24.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0 tokenizers==0.23.3 \
  liger-kernel==0.8.5
ls -la .whl
