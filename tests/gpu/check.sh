#!/usr/bin/env bash
# The GPU path in one run on one NVIDIA GPU: train every recipe on CUDA, export, compare the ONNX
# files on onnxruntime's CUDA and CPU providers, serve through BentoML on the GPU and on the CPU,
# print one table. `--dry-run` prints the plan; `--help` lists the options (tests/gpu/check.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" tests/gpu/check.py "$@"
