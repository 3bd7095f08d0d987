#!/usr/bin/env bash
# Runs one t2i command on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh NAME ZONE -- t2i train --config configs/x.py:arg --workdir gs://bucket/run
#
# Every worker gets the same command (CONVENTIONS 13); T2I_MULTIHOST=1 makes t2i call
# jax.distributed.initialize() before touching a device. The repository is expected at
# ~/t2i on each worker (copy it with `gcloud compute tpus tpu-vm scp --worker=all`),
# installed with `pip install -e '.[tpu]'`. Data and workdir must be on storage every
# host can read (a GCS bucket or a shared disk).
set -euo pipefail
if [[ $# -lt 4 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
name=$1 zone=$2
shift 3
command="cd ~/t2i && T2I_MULTIHOST=1 $(printf '%q ' "$@")"
exec gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$command"
