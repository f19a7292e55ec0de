#!/usr/bin/env bash
# SAE-FT on one machine with one or more NVIDIA GPUs: one process sees every GPU and shards over them.
#
#   CONFIG=configs/vitb16.py WORKDIR=/scratch/saeft/vitb16 launch/gpu_node.sh
#
# Data in TFDS ArrayRecord format under $TFDS_DATA_DIR (see the README's Data section). The first run
# makes .venv with Python 3.11 or newer and the versions CI tested (constraints.txt).
set -euo pipefail
CONFIG=${CONFIG:-configs/vitb16.py}; WORKDIR=${WORKDIR:?where the run goes}; PYTHON=${PYTHON:-python3.11}
cd "$(dirname "$0")/.."
[ -d .venv ] || { "$PYTHON" -m venv .venv && . .venv/bin/activate && pip install -q -U pip && \
                  pip install -q -c constraints.txt 'jax[cuda12]' -e .; }
. .venv/bin/activate
# XLA takes 75% of GPU memory by default; the input pipeline lives in host memory, so let it take more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# XLA's deterministic GPU kernels (scatter-adds without atomics, fixed algorithm choice), so a resumed
# run ends bit-identical to an uninterrupted one; DETERMINISTIC=0 trades that for some speed.
if [ "${DETERMINISTIC:-1}" = 1 ]; then export XLA_FLAGS="--xla_gpu_deterministic_ops=true ${XLA_FLAGS:-}"; fi
exec python -m saeft_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
