#!/usr/bin/env bash
# SAE-FT on a Cloud TPU VM slice: create it, install on every worker, run the same command on all
# of them. JAX finds the other hosts through the TPU VM metadata server (saeft_jax.distributed),
# so no distributed flags are needed.
#
#   REPO=https://github.com/OWNER/saeft-jax.git BUCKET=gs://my-bucket \
#   ZONE=us-central2-b TYPE=v4-32 NAME=saeft CONFIG=configs/vitb16.py launch/tpu_pod.sh [--config.key=value ...]
#
# The TPU VM image's Python is 3.10, below the package's floor (3.11, as jax needs), so uv
# installs a 3.11 next to it; the install is pinned to the versions CI tested (constraints.txt).
# Data in TFDS ArrayRecord format in the bucket (TFDS_DATA_DIR=$BUCKET/tensorflow_datasets,
# prepared once from any machine with `tfds build ... --file_format=array_record
# --data_dir=$BUCKET/tensorflow_datasets`; folders with `python -m saeft_jax.data.prepare ...
# --data_dir=$BUCKET/tensorflow_datasets`). Every host reads the data and writes the workdir,
# $BUCKET/saeft/$RUN (RUN: the config's name and argument unless given), directly. Rerunning this
# script after a preemption continues the run.
set -euo pipefail
: "${REPO:?git URL of saeft-jax}" "${BUCKET:?gs:// bucket for the workdir and data}"
ZONE=${ZONE:-us-central2-b}; TYPE=${TYPE:-v4-32}; NAME=${NAME:-saeft}; CONFIG=${CONFIG:-configs/vitb16.py}
VERSION=${VERSION:-tpu-ubuntu2204-base}; PYTHON=${PYTHON:-3.11}
# The run's folder: the config file's name and its argument, in characters a bucket path keeps as they are
# (configs/transfer_vitb16.py:dataset=cifar10 -> transfer_vitb16_dataset-cifar10).
config_file=${CONFIG%%:*}; config_name=$(basename "$config_file" .py)
[ "$config_file" = "$CONFIG" ] || config_name="${config_name}_${CONFIG#*:}"
RUN=${RUN:-$(printf '%s' "$config_name" | tr -c 'A-Za-z0-9_.-' '-')}

# Each value reaches the workers' shell as one single-quoted word: a ';' or a space in it stays text.
quote() { local value=${1//\'/\'\\\'\'}; printf "'%s'" "$value"; }
words() { local word; for word in "$@"; do printf ' %s' "$(quote "$word")"; done; }

gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1 || \
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$VERSION"

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

on_all "set -e; command -v ~/.local/bin/uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; \
        [ -d saeft-jax ] || git clone $(quote "$REPO") saeft-jax; cd saeft-jax && git pull --ff-only; \
        ~/.local/bin/uv venv --allow-existing --python $(quote "$PYTHON") ~/venv && . ~/venv/bin/activate && \
        ~/.local/bin/uv pip install -c constraints.txt 'jax[tpu]' -e '.[gcs]'"
# Extra arguments of this script (--config.key=value ...) go to the run as they are.
on_all "cd saeft-jax && . ~/venv/bin/activate && TFDS_DATA_DIR=$(quote "$BUCKET/tensorflow_datasets") \
        python -m saeft_jax.main$(words "--config=$CONFIG" "--workdir=$BUCKET/saeft/$RUN" \
                                         "--config.data_dir=$BUCKET/tensorflow_datasets" "$@")"
