#!/usr/bin/env bash
# One-GPU check of the rollout and update paths, nothing downloaded (about 3 minutes on an H100; stopped after 8):
# a randomly initialised model of Qwen3-0.6B's shape; generation tokens/s (HFGenerator, and vLLM if importable);
# update tokens/s and MFU with bf16 ZeRO-2 through PolicyTrainer; peak GPU memory. JSON to $OUT/gpu_check.json
# (or --out FILE). Usage: bench/gpu_check.sh [--out FILE] [--peak-tflops F]   (--smoke: a tiny CPU run)
#
# The GPU machine has torch and transformers but no network. If it lacks deepspeed, carry it in bench/wheels
# (git-ignored), fetched beforehand on a machine with network, for the GPU machine's Python (3.12 here):
#   pip download deepspeed==0.19.8 hjson==3.1.0 --no-deps -d bench/wheels
#   pip download pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 --no-deps \
#     --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 -d bench/wheels
# This script installs them into a private folder (no network, no build isolation: deepspeed's sdist builds
# against the torch already there, its ops left to JIT).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('deepspeed') is None)"; then
  if ! compgen -G "bench/wheels/*" >/dev/null; then
    echo "deepspeed is not installed and bench/wheels is empty: see the header of $0" >&2
    exit 1
  fi
  site=${HICRA_WHEELS_SITE:-/tmp/hicra-gpu-check-site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" bench/wheels/*
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout 480 "$PYTHON" bench/gpu_check.py "$@"
