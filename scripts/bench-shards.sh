#!/usr/bin/env bash
# Shards on one machine: the same studies through `synthd process` as one
# process, then as SHARDS shard processes at once into one output (then
# `synthd merge`), with a CPU pipeline (PIPELINE, default deid-only).
# Prints studies/s and instances/s of each and the ratio, median of
# REPEAT=3 alternating runs. Studies are STUDIES (default 24) copies of the
# demo study (48 MR slices and a SEG each; fixtures/dicom/make_studies.py).
# SYNTHD=path/to/synthd uses that binary instead of a fresh release build.
# Not a test: figures vary by machine and by what else runs on it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh >/dev/null
synthd=${SYNTHD:-}
if [ -z "$synthd" ]; then
  cargo build --release --quiet
  synthd="$root/target/release/synthd"
fi
studies=${STUDIES:-24}
shards=${SHARDS:-2}
repeat=${REPEAT:-3}
pipeline=${PIPELINE:-$root/pipelines/deid-only.toml}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python fixtures/dicom/make_studies.py "$work/in" "$studies"
"$synthd" keygen "$work/site.key" >/dev/null
instances=$(find "$work/in" -type f | wc -l)

run_one() {
  "$synthd" process --pipeline "$pipeline" --input "$work/in" --output "$1" --key-file "$work/site.key" >/dev/null 2>&1
}
run_shards() {
  local pids=() i
  for ((i = 0; i < shards; i++)); do
    "$synthd" process --pipeline "$pipeline" --input "$work/in" --output "$1" --key-file "$work/site.key" \
      --shard "$i/$shards" >/dev/null 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  "$synthd" merge "$1" >/dev/null
}
seconds() { # command output-folder: wall seconds, output synced
  local start end
  start=$(date +%s.%N)
  "$1" "$2"
  sync -f "$2"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { print b - a }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

one=() many=()
for ((r = 0; r < repeat; r++)); do
  one+=("$(seconds run_one "$work/one-$r")")
  many+=("$(seconds run_shards "$work/many-$r")")
  rm -rf "$work/one-$r" "$work/many-$r"
done
t1=$(printf '%s\n' "${one[@]}" | median)
tn=$(printf '%s\n' "${many[@]}" | median)
echo "bench-shards: $studies studies ($instances input files), pipeline $(basename "$pipeline"), $(nproc) CPUs, median of $repeat"
awk -v s="$studies" -v i="$instances" -v n="$shards" -v t1="$t1" -v tn="$tn" 'BEGIN {
  printf "  1 process      %6.2f s  %7.2f studies/s  %8.1f instances/s\n", t1, s / t1, i / t1
  printf "  %d shards       %6.2f s  %7.2f studies/s  %8.1f instances/s (merge included)\n", n, tn, s / tn, i / tn
  printf "  ratio          %6.2f x (%d shards against 1 process, studies/s)\n", t1 / tn, n
}'
