#!/bin/bash
# Submits a synthd dataset run to Slurm: a job array with one task per shard
# (synthd-array.sbatch, a GPU each) and the merge job (synthd-merge.sbatch),
# which starts only when every task succeeded (--dependency=afterok).
#
#   SYNTHD_PIPELINE=... SYNTHD_INPUT=... SYNTHD_OUTPUT=... SYNTHD_KEY_FILE=... \
#     deploy/slurm/submit.sh
#
# Settings (environment):
#   SYNTHD_SHARDS          shards [8]
#   SYNTHD_ARRAY           which shards to (re)run, as sbatch --array [0-(SHARDS-1)];
#                          e.g. SYNTHD_ARRAY=3,5 re-runs two failed shards
#   SYNTHD_GPUS_PER_TASK   GPUs per task [1]; 0 for a CPU pipeline
#   SYNTHD_PARALLEL        at most this many tasks at once [all]
#   SYNTHD_LOG_DIR         task logs [SYNTHD_OUTPUT-logs]
#   SBATCH_EXTRA           more sbatch options, e.g. "--partition=gpu --account=lab"
#   SYNTHD, SYNTHD_CONFIG  as in synthd-array.sbatch
# Prints the array and merge job ids on the last line.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SYNTHD_OUTPUT:?set SYNTHD_OUTPUT to the shared output folder}"
shards=${SYNTHD_SHARDS:-8}
array=${SYNTHD_ARRAY:-0-$((shards - 1))}
if [ -n "${SYNTHD_PARALLEL:-}" ]; then array="$array%$SYNTHD_PARALLEL"; fi
gpus=${SYNTHD_GPUS_PER_TASK:-1}
resources=()
if [ "$gpus" -gt 0 ]; then resources=(--gres="gpu:$gpus"); fi
logs=${SYNTHD_LOG_DIR:-$SYNTHD_OUTPUT-logs}
mkdir -p "$logs"
export SYNTHD_SHARD_COUNT=$shards
# shellcheck disable=SC2086 # SBATCH_EXTRA is a list of options
array_job=$(sbatch --parsable --export=ALL --array="$array" "${resources[@]}" \
  --output="$logs/shard-%a.log" ${SBATCH_EXTRA:-} "$here/synthd-array.sbatch")
array_job=${array_job%%;*}
# shellcheck disable=SC2086
merge_job=$(sbatch --parsable --export=ALL --dependency="afterok:$array_job" --kill-on-invalid-dep=yes \
  --output="$logs/merge.log" ${SBATCH_EXTRA:-} "$here/synthd-merge.sbatch")
merge_job=${merge_job%%;*}
echo "submitted: array job $array_job (shards $array of $shards), merge job $merge_job; logs in $logs"
echo "$array_job $merge_job"
