#!/usr/bin/env bash
# SAE-FT on a Cloud TPU pod slice: create the TPU VM, install on every worker, run the same
# command on all of them (JAX finds the other hosts itself; no distributed flags needed).
#
#   REPO=https://github.com/OWNER/saeft-jax.git BUCKET=gs://my-bucket \
#   ZONE=us-central2-b TYPE=v4-32 NAME=saeft CONFIG=configs/vitb16.py launch/tpu_pod.sh
#
# Data must be in TFDS ArrayRecord format on GCS (TFDS_DATA_DIR=gs://.../tensorflow_datasets, prepared
# once from any machine with `tfds build ... --file_format=array_record --data_dir=gs://...`).
# The workdir is gs://BUCKET/saeft/RUN, written by every host directly (gcsfs and Orbax's GCS driver).
set -euo pipefail
: "${REPO:?git URL of saeft-jax}" "${BUCKET:?gs:// bucket for the workdir and data}"
ZONE=${ZONE:-us-central2-b}; TYPE=${TYPE:-v4-32}; NAME=${NAME:-saeft}; CONFIG=${CONFIG:-configs/vitb16.py}
VERSION=${VERSION:-tpu-ubuntu2204-base}; RUN=${RUN:-$(basename "$CONFIG" .py)}

gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1 || \
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" --version "$VERSION"

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

on_all "set -e; [ -d saeft-jax ] || git clone $REPO saeft-jax; cd saeft-jax && git pull --ff-only; \
        python3 -m venv ~/venv && . ~/venv/bin/activate && pip install -q -U pip && \
        pip install -q 'jax[tpu]' -e '.[gcs]'"
# The same command on every host; rerunning it after a preemption continues the run.
on_all "cd saeft-jax && . ~/venv/bin/activate && TFDS_DATA_DIR=$BUCKET/tensorflow_datasets \
        python -m saeft_jax.main --config=$CONFIG --workdir=$BUCKET/saeft/$RUN"
