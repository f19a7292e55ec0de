#!/usr/bin/env bash
# SAE-FT on one machine with one or more NVIDIA GPUs: one process sees every GPU and shards over them.
#
#   CONFIG=configs/vitb16.py WORKDIR=/scratch/saeft/vitb16 launch/gpu_node.sh
#
# Data in TFDS ArrayRecord format under $TFDS_DATA_DIR (see the README's Data section).
set -euo pipefail
CONFIG=${CONFIG:-configs/vitb16.py}; WORKDIR=${WORKDIR:?where the run goes}
cd "$(dirname "$0")/.."
[ -d .venv ] || { python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && \
                  pip install -q 'jax[cuda12]' -e .; }
. .venv/bin/activate
# XLA takes 75% of GPU memory by default; the input pipeline lives in host memory, so let it take more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec python -m saeft_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
