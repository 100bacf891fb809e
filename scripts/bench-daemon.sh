#!/usr/bin/env bash
# Daemon benchmark (a benchmark, not a test: it prints figures, asserts nothing).
#
# For 1 study of 1,000 instances and 100 studies of 10 (64x64 MR, FAKE
# values, made by fixtures/daemon/make_mr.py), it measures:
#   - `synthd deid` on the same files (baseline, same worker count),
#   - the daemon: files renamed into the inbox at once, then the time from
#     stable_age expiry to the last output in the outbox (latency), the
#     instances/s over that time (throughput), and the daemon's peak RSS.
# Target: the daemon adds <= 10% to `synthd deid`'s time.
#
# Usage: scripts/bench-daemon.sh   (release build; WORKERS=2 by default)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${SYNTHD_PYTHON:-$root/.venv/bin/python}
workers=${WORKERS:-2}
stable_age_s=1

# SYNTHD_BIN overrides the binary (e.g. a debug build, to check this script).
if [ -z "${SYNTHD_BIN:-}" ]; then
  cargo build --release --quiet
fi
bin=${SYNTHD_BIN:-$root/target/release/synthd}
scratch=$(mktemp -d)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

now() { date +%s.%N; }
count_outputs() { find "$1" -type f -name '*.dcm' | wc -l; }

bench_case() {
  local name=$1 studies=$2 per_study=$3
  local total=$((studies * per_study))
  local dir=$scratch/$name
  mkdir -p "$dir"
  "$python" fixtures/daemon/make_mr.py "$dir/src" "$studies" "$per_study"

  # Baseline: synthd deid, same pipeline, same worker count.
  "$bin" keygen "$dir/bench.key" >/dev/null
  local t0 t1
  t0=$(now)
  /usr/bin/time -f "%M" -o "$dir/deid.rss" "$bin" deid "$dir/src" --output "$dir/deid-out" \
    --key-file "$dir/bench.key" --pipeline pipelines/deid-only.toml --jobs "$workers" >/dev/null 2>"$dir/deid.log"
  t1=$(now)
  local deid_s
  deid_s=$(echo "$t1 - $t0" | bc -l)

  # The daemon, already serving; inputs renamed into the inbox (taken at once).
  "$bin" init "$dir/layout" >/dev/null
  local config=$dir/layout/synthd.toml
  sed -i -e "s/stable_age = \"60s\"/stable_age = \"${stable_age_s}s\"/" \
    -e 's/settle = "2s"/settle = "200ms"/' \
    -e 's/min_free_space = "512MiB"/min_free_space = "1MiB"/' \
    -e "s/deid_workers = 2/deid_workers = $workers/" \
    -e "s/output_workers = 2/output_workers = $workers/" \
    -e 's/summary_interval = "5m"/summary_interval = "1h"/' "$config"
  mkdir -p "$dir/layout/stage"
  cp -r "$dir/src/." "$dir/layout/stage/"
  "$bin" run --allow-root --config "$config" 2>"$dir/daemon.log" &
  daemon_pid=$!
  until grep -qs serving "$dir/daemon.log"; do sleep 0.05; done
  local t_in
  t_in=$(now)
  "$python" - "$dir/layout/stage" "$dir/layout/inbox" <<'PY'
import os, sys
stage, inbox = sys.argv[1], sys.argv[2]
for study in sorted(os.listdir(stage)):
    for name in sorted(os.listdir(os.path.join(stage, study))):
        os.rename(os.path.join(stage, study, name), os.path.join(inbox, f"{study}-{name}"))
PY
  local t_moved t_first= t_last
  t_moved=$(now)
  while :; do
    local n
    n=$(count_outputs "$dir/layout/outbox")
    if [ -z "$t_first" ] && [ "$n" -ge 1 ]; then t_first=$(now); fi
    if [ "$n" -ge "$total" ]; then t_last=$(now); break; fi
    sleep 0.02
  done
  local rss_kib
  rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$daemon_pid/status")
  kill -TERM "$daemon_pid"
  wait "$daemon_pid" || true
  daemon_pid=

  local expiry latency first throughput overhead
  expiry=$(echo "$t_moved + $stable_age_s" | bc -l)
  latency=$(echo "$t_last - $expiry" | bc -l)
  first=$(echo "$t_first - $expiry" | bc -l)
  throughput=$(echo "$total / $latency" | bc -l)
  overhead=$(echo "($latency / $deid_s - 1) * 100" | bc -l)
  printf '%s: %d studies x %d instances = %d\n' "$name" "$studies" "$per_study" "$total"
  printf '  synthd deid (--jobs %d):      %7.2f s  %7.1f inst/s  peak RSS %6.1f MiB\n' \
    "$workers" "$deid_s" "$(echo "$total / $deid_s" | bc -l)" "$(echo "$(cat "$dir/deid.rss") / 1024" | bc -l)"
  printf '  daemon (stable_age expiry -> last output): %7.2f s  %7.1f inst/s  peak RSS %6.1f MiB\n' \
    "$latency" "$throughput" "$(echo "$rss_kib / 1024" | bc -l)"
  printf '  daemon first output %.2f s after expiry; rename into inbox took %.2f s\n' \
    "$first" "$(echo "$t_moved - $t_in" | bc -l)"
  printf '  daemon vs synthd deid: %+.1f%% (target <= +10%%)\n' "$overhead"
}

echo "synthd daemon benchmark ($(nproc) cores, workers=$workers, stable_age=${stable_age_s}s)"
bench_case one-large 1 1000
bench_case many-small 100 10
